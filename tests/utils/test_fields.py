"""FlatRecord reads a record of scalars by its annotations: wrong types, missing and unknown
fields are refused by their dotted path; optional fields and defaults may be absent."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from shoal.errors import DataError
from shoal.utils.fields import Fields, FlatRecord


@dataclass(frozen=True)
class _Row(FlatRecord):
    name: str
    count: int
    share: float
    done: bool
    note: str | None
    weight: float = 1.0


def test_a_flat_record_round_trips_and_fills_what_may_be_absent():
    row = _Row("a", 3, 0.5, True, None, 2.0)
    assert _Row.read(Fields(row.to_dict(), "row")) == row
    assert _Row.read(Fields({"name": "a", "count": 3, "share": 1, "done": False}, "row")) == \
        _Row("a", 3, 1.0, False, None, 1.0)   # an int where a float goes; note and weight absent


@pytest.mark.parametrize("data, message", [
    ({"name": "a", "count": "3", "share": 0.5, "done": True}, r"row\.count must be an integer, got '3'"),
    ({"name": "a", "count": 3, "share": 0.5, "done": 1}, r"row\.done must be true or false, got 1"),
    ({"name": "a", "count": 3, "done": True}, r"row lacks the field 'share'"),
    ({"name": "a", "count": 3, "share": 0.5, "done": True, "colour": "red"},
     r"row has unknown field\(s\) \['colour'\]"),
    ({"name": "a", "count": True, "share": 0.5, "done": True}, r"row\.count must be an integer, got True"),
])
def test_a_bad_field_is_refused_by_its_path(data, message):
    with pytest.raises(DataError, match=message):
        _Row.read(Fields(data, "row"))
