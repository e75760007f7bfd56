from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

import shoal.commands.profile as profile_cmd
from shoal.cli import app
from shoal.models import SubModelSpec, config_from_timm
from shoal.profiling.sampling import sample_shapes, shape_to_spec
from shoal.profiling.settings import SamplerSettings
from tests.conftest import make_vit


@pytest.fixture
def tiny_teacher(monkeypatch, tiny_config):
    real = profile_cmd.teacher_family

    def family(model, checkpoint):
        return (tiny_config, "tiny") if model is None and checkpoint is None else real(model, checkpoint)

    monkeypatch.setattr(profile_cmd, "teacher_family", family)
    return tiny_config


def _run(*args: str):
    return CliRunner().invoke(app, list(args))


def _specs_file(path, config, n=4):
    specs = [shape_to_spec(config, s) for s in sample_shapes(config, SamplerSettings(n, seed=2))]
    path.write_text("".join(s.to_json() + "\n" for s in specs))
    return path


@pytest.mark.slow
def test_profile_predict_measure(tiny_teacher, tmp_path):
    out = tmp_path / "prof"
    result = _run("profile", "--samples", "12", "--repeats", "3", "--out", str(out), "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["device"]["name"] == "local" and data["teacher"]["family"] == tiny_teacher.fingerprint()
    specs = _specs_file(tmp_path / "specs.jsonl", tiny_teacher)
    predicted = _run("predict", str(out), str(specs), "--json")
    assert predicted.exit_code == 0, predicted.output
    rows = json.loads(predicted.stdout)["specs"]
    assert len(rows) == 4 and all(r["predicted_ms"] > 0 for r in rows)
    measured = _run("measure", str(specs), "--repeats", "3", "--profile", str(out), "--json")
    assert measured.exit_code == 0, measured.output
    rows = json.loads(measured.stdout)["specs"]
    assert all(r["median_ms"] > 0 and r["predicted_ms"] > 0 for r in rows)
    table = _run("predict", str(out), str(specs))
    assert table.exit_code == 0 and "predicted ms" in table.output


def test_unknown_model_is_one_line(tmp_path):
    result = _run("profile", "--model", "vit_nonexistent_model", "--out", str(tmp_path / "p"))
    assert result.exit_code == 1
    assert "unknown timm model 'vit_nonexistent_model'" in result.output
    assert len(result.output.strip().splitlines()) <= 2


def test_bad_spec_files(tiny_teacher, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(SubModelSpec.full(tiny_teacher).to_json() + "\n{not json\n")
    result = _run("measure", str(bad))
    assert result.exit_code == 1 and "bad.jsonl:2" in result.output and "not valid JSON" in result.output
    other = config_from_timm(make_vit(embed_dim=24, num_heads=2))
    foreign = tmp_path / "foreign.jsonl"
    foreign.write_text(SubModelSpec.full(other).to_json() + "\n")
    result = _run("measure", str(foreign))
    assert result.exit_code == 1 and "another teacher family" in result.output
    assert other.fingerprint() in result.output and tiny_teacher.fingerprint() in result.output
    result = _run("predict", str(tmp_path / "none"), str(foreign))
    assert result.exit_code == 1 and "does not exist" in result.output


def test_corrupt_dataset_on_resume_is_one_line_and_kept(tiny_teacher, tmp_path):
    out = tmp_path / "prof"
    out.mkdir()
    text = '{"record":"header","family":"x"}\n{"record": broken\n{"record":"failure"}\n'
    (out / "measurements.jsonl").write_text(text)
    result = _run("profile", "--samples", "12", "--out", str(out))
    assert result.exit_code == 1 and "measurements.jsonl:2: corrupt line" in result.output
    assert (out / "measurements.jsonl").read_text() == text


def test_cpu_quota_where_cgroups_cannot_be_written(tiny_teacher, tmp_path, monkeypatch):
    monkeypatch.setattr(profile_cmd, "quota_unavailable_reason", lambda: "CPU quotas need root to write cgroups")
    result = _run("profile", "--cpu-quota", "0.5", "--cpus", "0", "--out", str(tmp_path / "p"))
    assert result.exit_code == 1 and "cannot emulate --cpu-quota 0.5: CPU quotas need root" in result.output
    result = _run("profile", "--cpus", "zero", "--out", str(tmp_path / "p"))
    assert result.exit_code == 1 and "--cpus must be core numbers" in result.output
