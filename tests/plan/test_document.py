"""plan.json is read field by field: plans of the previous writer load unchanged, and a field of
the wrong type, a missing one or an unknown one is refused by its dotted path."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from shoal.errors import DataError
from shoal.plan.document import PlanDocument, Score

DATA = Path(__file__).parent / "data"
WRITTEN = {stage: json.loads((DATA / f"be59031-{stage}.json").read_text())
           for stage in ("searched", "decomposed", "calibrated")}


@pytest.mark.parametrize("stage", sorted(WRITTEN))
def test_plans_of_the_previous_writer_round_trip_unchanged(stage):
    raw = WRITTEN[stage]
    doc = PlanDocument.from_dict(raw)
    assert doc.stage == stage
    assert doc.to_dict() == raw
    assert PlanDocument.from_dict(doc.to_dict()) == doc


def test_typed_fields_read_back():
    doc = PlanDocument.from_dict(WRITTEN["calibrated"])
    assert doc.predicted is not None and doc.accuracy is not None and doc.search is not None
    assert doc.predicted.straggler in doc.policy.devices
    assert doc.accuracy.ensemble.vs_teacher is not None
    assert doc.accuracy.ensemble.vs_teacher.test.b10 == 11
    low, high = doc.accuracy.ensemble.ci95
    assert low <= doc.accuracy.ensemble.top1 <= high
    assert doc.search.evaluations == len(doc.search.psi) == 5
    assert doc.phases[0].phase == "loading teacher and data"
    assert doc.aggregator is not None and len(doc.aggregator.widths) == len(doc.policy.devices)


def _broken(path: list[str | int], value: object, stage: str = "calibrated") -> dict:
    raw = copy.deepcopy(WRITTEN[stage])
    node = raw
    for key in path[:-1]:
        node = node[key]
    if value is KeyError:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return raw


@pytest.mark.parametrize("path, value, message", [
    (["predicted", "devices", "hub", "compute_ms"], "fast", r"predicted\.devices\.hub\.compute_ms must be a number"),
    (["predicted", "total_ms"], KeyError, r"predicted lacks the field 'total_ms'"),
    (["accuracy", "ensemble", "correct"], 3, r"accuracy\.ensemble: top1 .* is not correct / n"),
    (["accuracy", "teacher", "n"], True, r"accuracy\.teacher\.n must be an integer"),
    (["accuracy", "ensemble", "vs_teacher", "significant"], False, r"significant does not follow"),
    (["search", "psi"], [1, "x"], r"search\.psi must be a list of numbers"),
    (["objective", "colour"], "red", r"objective has unknown field\(s\) \['colour'\]"),
    (["stage"], "trained", r"stage must be one of"),
    (["family"], "0000", r"family '0000' is not the fingerprint"),
    (["phases", 0, "seconds"], None, r"phases\[0\]\.seconds must be a number"),
    (["aggregator"], KeyError, r"a calibrated plan needs its aggregator"),
    (["policy", "devices", "edge-b", "heads"], KeyError, r"device 'edge-b': SubModelSpec is missing"),
])
def test_a_bad_field_is_refused_by_its_path(path, value, message):
    with pytest.raises(DataError, match=message) as info:
        PlanDocument.from_dict(_broken(path, value))
    assert "\n" not in str(info.value)


def test_score_interval_without_a_recorded_count():
    """Scores of plans before `correct` was recorded still give an interval (from top1·n)."""
    s = Score(top1=0.5, loss=1.0, n=100)
    assert s.ci95[0] < 0.5 < s.ci95[1]
    assert "ci95" not in s.to_dict()


def test_a_random_weight_teacher_is_recorded_and_read_back():
    data = json.loads(json.dumps(WRITTEN["calibrated"]))
    assert not PlanDocument.from_dict(data).random_weights and "random_weights" not in data["teacher"]
    data["teacher"]["random_weights"] = True
    doc = PlanDocument.from_dict(data)
    assert doc.random_weights and doc.to_dict()["teacher"]["random_weights"] is True


def test_the_prediction_follows_the_input_bytes_actually_sent():
    doc = PlanDocument.from_dict(WRITTEN["calibrated"])
    predicted = doc.predicted
    assert predicted is not None
    same = predicted.total_ms_for_input(doc.devices, 4096, 4096)
    assert same == pytest.approx(predicted.total_ms)
    fewer = predicted.total_ms_for_input(doc.devices, 4096, 1024)
    assert fewer <= same
    worker = next(d for d in doc.devices.devices if not d.central)
    assert same - fewer <= (4096 - 1024) * 8 / (worker.link_mbps * 1e6) * 1e3 + 1e-9


def test_the_input_spec_reads_back_and_refuses_a_bad_format():
    from shoal.plan.document import InputSpec
    from shoal.utils.fields import Fields

    spec = InputSpec((0.5,), (0.25,), "jpeg", 5123)
    assert InputSpec.read(Fields(spec.to_dict(), "input")) == spec
    with pytest.raises(DataError, match="input.format must be one of"):
        InputSpec.read(Fields({**spec.to_dict(), "format": "gif"}, "input"))


def test_subset_accuracies_read_old_missing_rows_and_answer_what_a_subset_is_worth():
    data = json.loads(json.dumps(WRITTEN["calibrated"]))
    ensemble = data["accuracy"]["ensemble"]
    half = {k: v for k, v in ensemble.items() if k not in ("vs_teacher", "agreement_with_teacher", "ci95")}
    half.update(top1=0.5, correct=64, n=128)
    data["accuracy"]["missing"] = {"edge-b": half}   # the form of plans before subsets
    acc = PlanDocument.from_dict(data).accuracy
    assert acc is not None and set(acc.subsets) == {"hub+edge-a"}
    assert acc.expected(["hub", "edge-a", "edge-b"]) == ensemble["top1"]
    assert acc.expected(["edge-a", "hub"]) == 0.5          # order does not matter
    assert acc.expected(["hub"]) is None                    # not evaluated: unknown, not guessed
    assert "missing" not in acc.to_dict() and "subsets" in acc.to_dict()
