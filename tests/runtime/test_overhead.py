from __future__ import annotations

import os

import pytest

from shoal.devices.emulation import CpuLimit
from shoal.profiling.timing import LatencyStats
from shoal.runtime.overhead import measure_rpc


def _children() -> set[int]:
    out = set()
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/stat") as fh:
                    if int(fh.read().rsplit(")", 1)[1].split()[1]) == os.getpid():
                        out.add(int(pid))
            except (OSError, IndexError, ValueError):
                pass
    return out


def test_rpc_probe_times_real_round_trips_and_cleans_up():
    before = _children()
    stats = measure_rpc(CpuLimit(None, (0,)), (1, 8, 8), 16, calls=20, warmup=5)
    assert stats.n == 20 and stats.warmup == 5 and 0 < stats.p10_ms <= stats.median_ms <= stats.p90_ms
    assert stats.mean_ms is not None and stats.p10_ms <= stats.mean_ms
    assert LatencyStats(**stats.to_dict()) == stats   # what a profile records reads back
    assert _children() <= before


def test_evaluator_counts_the_measured_call_overhead():
    import torch

    from shoal.devices.spec import DeviceSet, DeviceSpec
    from shoal.models import SubModelSpec, config_from_timm
    from shoal.planner.objective import Evaluator
    from tests.conftest import make_vit
    from tests.planner.conftest import FlopsPredictor

    teacher = make_vit()
    config = config_from_timm(teacher)
    devices = DeviceSet((DeviceSpec("c", 1 << 28, central=True), DeviceSpec("w", 1 << 28, link_latency_ms=0.0,
                                                                              link_mbps=1e6)))
    preds = [FlopsPredictor(config, 10.0), FlopsPredictor(config, 10.0)]
    x, y = torch.randn(24, *config.input_shape), torch.randint(0, 5, (24,))
    plain = Evaluator(teacher, config, devices, preds, x, x, y, delta=0.1)
    probed = Evaluator(teacher, config, devices, preds, x, x, y, delta=0.1, rpc_ms=[0.4, 0.9])
    full = SubModelSpec.full(config)
    half = SubModelSpec(full.layers, tuple(range(24)), full.heads, full.neurons)
    other = SubModelSpec(full.layers, tuple(range(24, 48)), full.heads, full.neurons)
    from shoal.models import Policy

    policy = Policy(("c", "w"), (half, other))
    a, b = plain.latency(policy), probed.latency(policy)
    assert b.transfer_ms[0] == 0.0 and b.transfer_ms[1] == pytest.approx(a.transfer_ms[1] + 0.9)
    assert b.request_ms == 0.4 and b.total_ms == pytest.approx(
        max(c + t for c, t in zip(b.compute_ms, b.transfer_ms)) + b.aggregate_ms + 0.4)
