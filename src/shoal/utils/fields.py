"""Field-by-field reading of a JSON object into a typed record.

`Fields(data, "plan.json")` wraps one decoded JSON object; each accessor takes a
key, checks the value's type and returns it, and `done()` refuses keys nobody
read. Every error is a `DataError` naming the dotted path of the field
(`plan.json: predicted.devices.hub.compute_ms must be a number, got 'x'`), so a
record's `from_dict` reads like its field list:

    f = Fields(data, "predicted")
    out = Predicted(total_ms=f.number("total_ms"), straggler=f.text("straggler"), ...)
    f.done()

A record of scalars alone (str, int, float, bool, optionally None) derives both directions
from its annotations: subclass `FlatRecord`.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from shoal.errors import DataError

T = TypeVar("T")
R = TypeVar("R", bound="FlatRecord")
_MISSING: Any = object()


class Fields:
    """One JSON object being read; `where` is its dotted path for messages."""

    def __init__(self, data: object, where: str) -> None:
        if not isinstance(data, Mapping):
            raise DataError(f"{where} must be a JSON object, got {type(data).__name__}")
        self.data: Mapping[str, Any] = data
        self.where = where
        self._read: set[str] = set()

    # -- plumbing -------------------------------------------------------------------------
    def path(self, key: str) -> str:
        return f"{self.where}.{key}"

    def has(self, key: str) -> bool:
        return key in self.data

    def raw(self, key: str, default: Any = _MISSING) -> Any:
        """The value as decoded; missing keys take `default` or are an error."""
        self._read.add(key)
        if key not in self.data:
            if default is _MISSING:
                raise DataError(f"{self.where} lacks the field {key!r}")
            return default
        return self.data[key]

    def _bad(self, key: str, what: str, value: Any) -> DataError:
        return DataError(f"{self.path(key)} must be {what}, got {value!r}"[:300])

    def done(self) -> None:
        """Refuse the keys no accessor read (a typo or a field of another version)."""
        unknown = sorted(set(self.data) - self._read)
        if unknown:
            raise DataError(f"{self.where} has unknown field(s) {unknown}")

    # -- scalars --------------------------------------------------------------------------
    def text(self, key: str, default: Any = _MISSING) -> Any:
        value = self.raw(key, default)
        if value is not default and not isinstance(value, str):
            raise self._bad(key, "a string", value)
        return value

    def integer(self, key: str, default: Any = _MISSING) -> Any:
        value = self.raw(key, default)
        if value is not default and (isinstance(value, bool) or not isinstance(value, int)):
            raise self._bad(key, "an integer", value)
        return value

    def number(self, key: str, default: Any = _MISSING) -> Any:
        value = self.raw(key, default)
        if value is default:
            return value
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self._bad(key, "a number", value)
        return float(value)

    def flag(self, key: str, default: Any = _MISSING) -> Any:
        value = self.raw(key, default)
        if value is not default and not isinstance(value, bool):
            raise self._bad(key, "true or false", value)
        return value

    def choice(self, key: str, choices: tuple[str, ...], default: Any = _MISSING) -> Any:
        value = self.text(key, default)
        if value is not default and value not in choices:
            raise self._bad(key, f"one of {list(choices)}", value)
        return value

    # -- containers -----------------------------------------------------------------------
    def floats(self, key: str, default: Any = _MISSING) -> Any:
        value = self.raw(key, default)
        if value is default:
            return value
        if not isinstance(value, list) or any(isinstance(v, bool) or not isinstance(v, (int, float))
                                               for v in value):
            raise self._bad(key, "a list of numbers", value)
        return tuple(float(v) for v in value)

    def strs(self, key: str, default: Any = _MISSING) -> Any:
        value = self.raw(key, default)
        if value is default:
            return value
        if not isinstance(value, list) or any(not isinstance(v, str) for v in value):
            raise self._bad(key, "a list of strings", value)
        return tuple(value)

    def obj(self, key: str) -> Fields:
        """A nested object (required)."""
        return Fields(self.raw(key), self.path(key))

    def record(self, key: str, read: Callable[[Fields], T], default: Any = _MISSING) -> Any:
        """A nested object read by `read` (which calls `done`); `default` when absent."""
        value = self.raw(key, default)
        if value is default:
            return value
        return read(Fields(value, self.path(key)))

    def records(self, key: str, read: Callable[[Fields], T], default: Any = _MISSING) -> Any:
        """An object of objects {name: record}, each read by `read`, order kept."""
        value = self.raw(key, default)
        if value is default:
            return value
        inner = Fields(value, self.path(key))
        return {name: read(Fields(inner.raw(name), inner.path(name))) for name in list(inner.data)}

    def float_map(self, key: str, default: Any = _MISSING) -> Any:
        """An object {name: number}."""
        return self._map(key, default, Fields.number)

    def str_map(self, key: str, default: Any = _MISSING) -> Any:
        """An object {name: string}."""
        return self._map(key, default, Fields.text)

    def int_map(self, key: str, default: Any = _MISSING) -> Any:
        """An object {name: integer}."""
        return self._map(key, default, Fields.integer)

    def _map(self, key: str, default: Any, read: Callable[[Fields, str], Any]) -> Any:
        value = self.raw(key, default)
        if value is default:
            return value
        inner = Fields(value, self.path(key))
        return {name: read(inner, name) for name in list(inner.data)}

    def scalar_map(self, key: str, default: Any = _MISSING) -> Any:
        """An object {name: string | number | bool | null} (settings recorded for the reader)."""
        value = self.raw(key, default)
        if value is default:
            return value
        inner = Fields(value, self.path(key))
        out = {}
        for name in list(inner.data):
            v = inner.raw(name)
            if v is not None and not isinstance(v, (str, int, float, bool)):
                raise inner._bad(name, "a string, number, boolean or null", v)
            out[name] = v
        return out


_READERS: dict[Any, Callable[[Fields, str, Any], Any]] = {
    str: Fields.text, int: Fields.integer, float: Fields.number, bool: Fields.flag,
}


_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    """A record class's resolved annotations (once per class: plans read hundreds of rows)."""
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


class FlatRecord:
    """Base of a frozen dataclass whose fields are all scalars (str, int, float, bool, or one of
    them or None): `to_dict` is its fields in order, `read` reads each field by its annotation
    (an optional field, or one with a default, may be absent) and refuses unknown keys."""

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}  # type: ignore[arg-type]

    @classmethod
    def read(cls: type[R], f: Fields) -> R:
        hints = _hints(cls)
        values = {}
        for field in dataclasses.fields(cls):  # type: ignore[arg-type]
            kind = hints[field.name]
            args = typing.get_args(kind)
            optional = type(None) in args
            base = next((a for a in args if a is not type(None)), kind) if args else kind
            if field.default is not dataclasses.MISSING:
                default = field.default
            else:
                default = None if optional else _MISSING
            values[field.name] = _READERS[base](f, field.name, default)
        f.done()
        return cls(**values)
