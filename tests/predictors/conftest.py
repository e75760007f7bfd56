from __future__ import annotations

import pytest

from shoal.profiling.dataset import read_dataset
from shoal.profiling.jobs import run_jobs
from shoal.profiling.runner import prepare_job
from shoal.profiling.settings import SamplerSettings, TimingSettings
from tests.profiling.helpers import fake_measure


@pytest.fixture
def fake_dataset(tiny_config, tmp_path):
    """A 60-shape dataset whose latencies are an exact function of cost terms (no timing)."""
    path = tmp_path / "measurements.jsonl"
    job = prepare_job("fake", tiny_config, path, SamplerSettings(60, seed=0), TimingSettings(repeats=3, warmup=0))
    run_jobs([job], measure=fake_measure)
    return read_dataset(path)
