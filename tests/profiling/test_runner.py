from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from shoal.devices.emulation import CpuLimit
from shoal.errors import DataError
from shoal.profiling.dataset import read_dataset
from shoal.profiling.jobs import run_jobs, waves
from shoal.profiling.runner import DatasetMismatch, current_marker, prepare_job
from shoal.profiling.settings import SamplerSettings, TimingSettings
from tests.profiling.helpers import CountingMeasure, FailingMeasure, fake_measure

TIMING = TimingSettings(repeats=3, warmup=0)


def _job(config, path: Path, samples: int = 20, **kw):
    return prepare_job("dev", config, path, SamplerSettings(samples, seed=1), kw.pop("timing", TIMING), **kw)


def test_run_writes_every_shape_and_remeasures_a_subset(tiny_config, tmp_path):
    path = tmp_path / "m.jsonl"
    job = _job(tiny_config, path, remeasure=0.25)
    assert job.total == 20 + 5 and len(job.items) == 25
    seen: list[tuple[str, int, int]] = []
    run_jobs([job], measure=fake_measure, progress=lambda d, done, total: seen.append((d, done, total)))
    data = read_dataset(path)
    assert len(data.first_pass()) == 20 and len(data.pairs()) == 5 and not data.failures
    assert data.header["family"] == tiny_config.fingerprint()
    assert data.header["timing"]["threads"] == 1 and data.header["cpu_limit"]["quota"] is None
    assert seen[-1] == ("profiling dev", 25, 25)
    m = data.measurements[0]
    assert m.peak_memory_bytes == m.weight_bytes + m.activation_bytes > 0


def test_interrupted_run_resumes_without_repeating(tiny_config, tmp_path):
    path = tmp_path / "m.jsonl"
    job = _job(tiny_config, path)
    first = CountingMeasure()
    partial = type(job)(job.name, job.config, job.dataset, job.items[:8], job.total, job.timing)
    run_jobs([partial], measure=first)
    resumed = _job(tiny_config, path)
    assert len(resumed.items) == len(job.items) - 8
    second = CountingMeasure()
    run_jobs([resumed], measure=second)
    assert len(first.shapes) == 8 and len(second.shapes) == len(job.items) - 8
    data = read_dataset(path)
    keys = [(m.id, m.pass_) for m in data.measurements]
    assert len(keys) == len(set(keys)) == job.total and len(data.first_pass()) == 20
    assert _job(tiny_config, path).items == ()


def test_truncated_last_line_is_tolerated_and_cut_on_resume(tiny_config, tmp_path, caplog):
    path = tmp_path / "m.jsonl"
    run_jobs([_job(tiny_config, path)], measure=fake_measure)
    whole = path.read_bytes()
    path.write_bytes(whole[: len(whole) - 40])  # a crash in the middle of the last record
    data = read_dataset(path)
    assert data.truncated_tail and len(data.measurements) == len(read_dataset_bytes(whole, tmp_path)) - 1
    with caplog.at_level(logging.INFO, logger="shoal"):
        job = _job(tiny_config, path)
    assert len(job.items) == 1 and "truncated last line" in caplog.messages[0]
    run_jobs([job], measure=fake_measure)
    assert not read_dataset(path).truncated_tail and path.read_bytes() == whole


def read_dataset_bytes(raw: bytes, tmp_path: Path):
    other = tmp_path / "copy.jsonl"
    other.write_bytes(raw)
    return read_dataset(other).measurements


def test_corrupt_line_names_file_and_line(tiny_config, tmp_path):
    path = tmp_path / "m.jsonl"
    run_jobs([_job(tiny_config, path)], measure=fake_measure)
    lines = path.read_text().splitlines(keepends=True)
    lines[3] = '{"record": "measurement", "index": oops}\n'
    path.write_text("".join(lines))
    with pytest.raises(DataError, match=r"m\.jsonl:4: corrupt line"):
        read_dataset(path)
    with pytest.raises(DataError, match=r"m\.jsonl:4"):
        _job(tiny_config, path)
    lines[3] = json.dumps({"record": "measurement", "index": 1}) + "\n"
    path.write_text("".join(lines))
    with pytest.raises(DataError, match=r"m\.jsonl:4: not a valid measurement record"):
        read_dataset(path)
    path.write_text('{"record": "measurement"}\n')
    with pytest.raises(DataError, match="first record must be the header"):
        read_dataset(path)


def test_other_conditions_refuse_resume_and_no_resume_keeps_the_old_file(tiny_config, tmp_path):
    path = tmp_path / "m.jsonl"
    run_jobs([_job(tiny_config, path)], measure=fake_measure)
    with pytest.raises(DatasetMismatch, match="threads.*--no-resume"):
        _job(tiny_config, path, timing=TimingSettings(repeats=3, warmup=0, threads=2))
    job = _job(tiny_config, path, timing=TimingSettings(repeats=3, warmup=0, threads=2), resume=False)
    assert len(job.items) == job.total
    backups = list(tmp_path.glob("m.jsonl.*.bak"))
    assert len(backups) == 1 and len(read_dataset(backups[0]).first_pass()) == 20


def test_failing_shape_is_recorded_and_profiling_goes_on(tiny_config, tmp_path):
    path = tmp_path / "m.jsonl"
    measure = FailingMeasure(max_width=30)
    run_jobs([_job(tiny_config, path, remeasure=0.5)], measure=measure)
    data = read_dataset(path)
    assert data.failures and all("not enough memory" in f.error for f in data.failures)
    assert all(f.shape.width > 30 for f in data.failures)
    assert len(data.first_pass()) + len([f for f in data.failures if f.pass_ == 1]) == 20
    assert all(f.pass_ == 1 for f in data.failures)  # pass 2 skips shapes whose pass 1 failed
    calls = measure.calls
    assert _job(tiny_config, path, remeasure=0.5).items == ()  # failures are not retried on resume
    assert measure.calls == calls


def test_waves_keep_overlapping_cores_apart(tiny_config, tmp_path):
    jobs = [type(_job(tiny_config, tmp_path / f"{n}.jsonl"))(n, tiny_config, tmp_path / f"{n}.jsonl", (), 0, TIMING,
                                                             CpuLimit(q, c))
            for n, q, c in (("hub", 1.0, (0,)), ("a", 0.6, (1,)), ("b", 0.35, (1,)), ("free", None, None))]
    assert [[j.name for j in w] for w in waves(jobs, concurrent=True)] == [["hub", "a"], ["b"], ["free"]]
    assert len(waves(jobs, concurrent=False)) == 4


def test_shape_that_killed_the_process_is_recorded_on_resume(tiny_config, tmp_path, caplog):
    path = tmp_path / "m.jsonl"
    job = _job(tiny_config, path)
    victim = job.items[5]
    calls = {"n": 0}

    def dies_on_sixth(config, shape, timing):
        calls["n"] += 1
        if calls["n"] == 6:  # what the kernel's OOM killer leaves: the marker names the victim
            raise _Killed
        return fake_measure(config, shape, timing)

    with pytest.raises(_Killed):
        run_jobs([job], measure=dies_on_sixth)
    assert current_marker(path).exists()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="shoal"):
        resumed = _job(tiny_config, path)
    assert victim not in resumed.items and "died while timing shape" in caplog.messages[0]
    [failure] = read_dataset(path).failures
    assert failure.index == victim.index and "died" in failure.error and not current_marker(path).exists()


def test_interrupt_is_not_a_crash(tiny_config, tmp_path):
    path = tmp_path / "m.jsonl"

    def interrupted(config, shape, timing):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_jobs([_job(tiny_config, path)], measure=interrupted)
    assert not current_marker(path).exists()
    assert len(_job(tiny_config, path).items) == 20 + 3 and not read_dataset(path).failures


class _Killed(BaseException):
    """Stands in for SIGKILL: not an Exception, so the runner neither records it nor cleans up."""
