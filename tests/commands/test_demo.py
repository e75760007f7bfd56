"""The README's main job, end to end, on a tiny budget: profile, plan, serve, bench."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from shoal.cli import app


@pytest.mark.slow
def test_demo_runs_the_whole_job(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, [
        "demo", "--out", "demo", "--profile-samples", "16", "--init", "3", "--iterations", "2", "--epochs", "1",
        "--aggregator-epochs", "3", "--requests", "20", "--max-per-split", "128", "--use-all-devices", "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout[result.stdout.index("{"):])
    plan, bench = out["plan"], out["bench"]
    assert plan["stage"] == "calibrated" and set(plan["policy"]["devices"]) == {"hub", "edge-a", "edge-b"}
    assert bench["errors"] == {} and bench["requests"] == 20
    assert {d["device"] for d in bench["devices"]} == {"hub", "edge-a", "edge-b"}
    assert bench["accuracy"] is not None and 0.0 <= bench["accuracy"] <= 1.0
    assert bench["accuracy_ci95"][0] <= bench["accuracy"] <= bench["accuracy_ci95"][1]
    assert bench["teacher"] is not None and bench["speedup"] > 0
    for name in ("hub", "edge-a", "edge-b"):
        assert (tmp_path / ".shoal" / "profiles" / name / "profile.json").is_file()
    assert (tmp_path / "demo" / "plan" / "figures" / "latency.png").is_file()
