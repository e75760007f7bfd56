"""`shoal plan show` prints each accuracy with its 95% interval and the ensemble-vs-teacher test."""

from __future__ import annotations

from pathlib import Path

from shoal.commands import plan as plan_cmd
from shoal.commands._common import console
from shoal.utils.stats import Accuracy, mcnemar


def _score(correct: int, n: int) -> dict:
    return {**Accuracy(correct, n).to_dict(), "loss": 0.1}


def test_show_prints_intervals_and_the_paired_test(monkeypatch):
    monkeypatch.setattr(console, "width", 240)
    n = 360
    teacher = [True] * 357 + [False] * 3
    ensemble = [True] * 350 + [False] * 10
    doc = {"stage": "calibrated", "accuracy": {
        "n": n, "teacher": _score(357, n), "submodels": {"hub": _score(200, n)},
        "ensemble": {**_score(350, n), "vs_teacher": {"a": "teacher", "b": "ensemble",
                                                      **mcnemar(teacher, ensemble).to_dict()}},
        "ablation": {"decompose_only": {"ensemble": _score(300, n)}}}}
    with console.capture() as cap:
        plan_cmd.show_document(doc, Path("p"))
    out = " ".join(cap.get().split())
    assert "95% CI" in out and "[97.58%, 99.72%]" in out      # Wilson interval of 357/360
    assert "McNemar p = 0.0156" in out and "significant at 0.05" in out and "not significant" not in out


def test_show_derives_intervals_for_plans_written_before_ci95(monkeypatch):
    monkeypatch.setattr(console, "width", 240)
    doc = {"stage": "calibrated", "accuracy": {
        "n": 360, "teacher": {"top1": 357 / 360, "loss": 0.1}, "submodels": {},
        "ensemble": {"top1": 350 / 360, "loss": 0.2}}}
    with console.capture() as cap:
        plan_cmd.show_document(doc, Path("p"))
    out = " ".join(cap.get().split())
    assert "[97.58%, 99.72%]" in out and "McNemar" not in out
