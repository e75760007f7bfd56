from __future__ import annotations

import pytest
import torch

from shoal.errors import ConfigError, PlatformError
from shoal.models import SubModelSpec, build_submodel, spec_cost
from shoal.profiling.machine import DeviceProbe, probe_device
from shoal.profiling.timing import LatencyStats, measure_latency, peak_memory_bytes


def test_measure_latency_stats_and_threads_restored(tiny_vit, tiny_config):
    before = torch.get_num_threads()
    stats = measure_latency(tiny_vit, tiny_config.input_shape, repeats=7, warmup=2, threads=1)
    assert stats.n == 7 and stats.warmup == 2 and stats.threads == 1 and stats.device == "cpu"
    assert 0 < stats.min_ms <= stats.p10_ms <= stats.median_ms <= stats.p90_ms
    assert stats.spread >= 0
    assert torch.get_num_threads() == before


def test_measure_latency_accepts_batch_shape_and_rejects_bad(tiny_vit, tiny_config):
    assert measure_latency(tiny_vit, (1, *tiny_config.input_shape), repeats=2, warmup=0).n == 2
    with pytest.raises(ConfigError, match="input_shape"):
        measure_latency(tiny_vit, (16, 16), repeats=2)
    with pytest.raises(ConfigError, match="repeats"):
        measure_latency(tiny_vit, tiny_config.input_shape, repeats=0)


def test_latency_stats_quantiles():
    stats = LatencyStats.from_times([5, 1, 2, 3, 4], warmup=0, threads=1, device="cpu")
    assert stats.median_ms == 3 and stats.min_ms == 1 and stats.p10_ms == pytest.approx(1.4)
    assert stats.p90_ms == pytest.approx(4.6) and stats.mean_ms == 3
    with pytest.raises(ConfigError, match="p10"):
        LatencyStats(1.0, 2.0, 3.0, 1.0, 0.5, 3, 0, 1, "cpu")


def test_peak_memory_grows_with_the_sub_model(tiny_config):
    full = SubModelSpec.full(tiny_config)
    small = SubModelSpec((0,), tuple(range(8)), ((0,),), ((0, 1),), full.family)
    w_full, a_full = peak_memory_bytes(build_submodel(tiny_config, full), tiny_config.input_shape)
    w_small, a_small = peak_memory_bytes(build_submodel(tiny_config, small), tiny_config.input_shape)
    assert w_full == spec_cost(tiny_config, full).weight_bytes
    assert w_small < w_full and 0 < a_small < a_full


def test_probe_round_trip():
    probe = probe_device(threads=1)
    assert probe.threads == 1 and probe.logical_cpus >= 1 and probe.torch_version == torch.__version__
    assert DeviceProbe.from_dict(probe.to_dict()) == probe
    assert "thread" in probe.describe()
    with pytest.raises(ConfigError, match="missing"):
        DeviceProbe.from_dict({"hostname": "x"})


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_probe_refuses_missing_cuda():
    with pytest.raises(PlatformError, match="--device cuda: no CUDA device is visible here"):
        probe_device(device="cuda")


def test_a_time_budget_cuts_the_repeats_but_never_below_the_minimum():
    import time as _time

    from shoal.profiling.timing import MIN_TIMED

    class Slow(torch.nn.Module):
        def forward(self, x):
            _time.sleep(0.02)
            return x

    stats = measure_latency(Slow(), (1, 4, 4), repeats=50, warmup=20, budget_ms=100.0)
    assert MIN_TIMED <= stats.n < 50 and 1 <= stats.warmup < 20   # 50 calls of 20 ms would take 1 s
    assert measure_latency(Slow(), (1, 4, 4), repeats=3, warmup=0, budget_ms=1.0).n == 3   # fewer asked: all
    full = measure_latency(Slow(), (1, 4, 4), repeats=6, warmup=1)
    assert full.n == 6


def test_timing_settings_write_the_budget_only_when_set():
    from shoal.profiling.settings import TimingSettings

    assert "budget_ms" not in TimingSettings().to_dict()
    assert TimingSettings(**TimingSettings(budget_ms=1500.0).to_dict()).budget_ms == 1500.0
    with pytest.raises(ConfigError, match="budget_ms must be a positive"):
        TimingSettings(budget_ms=0)
