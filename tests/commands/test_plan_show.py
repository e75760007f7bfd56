"""`shoal plan show` prints each accuracy with its 95% interval and the ensemble-vs-teacher test."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from shoal.commands import plan as plan_cmd
from shoal.commands._common import console
from shoal.plan.document import AblationScores, PairedTest, PlanAccuracy, PlanDocument, Score
from shoal.utils.stats import mcnemar

CALIBRATED = PlanDocument.from_dict(json.loads(
    (Path(__file__).parents[1] / "plan" / "data" / "be59031-calibrated.json").read_text()))


def _score(correct: int, n: int) -> Score:
    return Score(correct / n, 0.1, n, correct)


def _shown(accuracy: PlanAccuracy) -> str:
    with console.capture() as cap:
        plan_cmd.show_document(replace(CALIBRATED, accuracy=accuracy), Path("p"))
    return " ".join(cap.get().split())


def test_show_prints_intervals_and_the_paired_test(monkeypatch):
    monkeypatch.setattr(console, "width", 240)
    n = 360
    teacher = [True] * 357 + [False] * 3
    ensemble = [True] * 350 + [False] * 10
    out = _shown(PlanAccuracy(
        n, _score(357, n), {"hub": _score(200, n)},
        replace(_score(350, n), vs_teacher=PairedTest("teacher", "ensemble", mcnemar(teacher, ensemble))),
        ablation={"decompose_only": AblationScores(_score(300, n), {})}))
    assert "95% CI" in out and "[97.58%, 99.72%]" in out      # Wilson interval of 357/360
    assert "McNemar p = 0.0156" in out and "significant at 0.05" in out and "not significant" not in out
    assert "T = " in out and "time per phase" in out


def test_show_derives_intervals_for_plans_written_before_ci95(monkeypatch):
    monkeypatch.setattr(console, "width", 240)
    out = _shown(PlanAccuracy(360, Score(357 / 360, 0.1, 360), {}, Score(350 / 360, 0.2, 360)))
    assert "[97.58%, 99.72%]" in out and "McNemar" not in out
