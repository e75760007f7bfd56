"""Deterministic stand-ins for timing, so tests assert behaviour, never wall-clock numbers."""

from __future__ import annotations

from shoal.models.accounting import shape_cost
from shoal.models.config import ViTConfig
from shoal.models.partition import SubModelShape
from shoal.profiling.settings import TimingSettings
from shoal.profiling.timing import LatencyStats


def fake_latency_ms(config: ViTConfig, shape: SubModelShape) -> float:
    """A latency that is an exact linear function of cost terms (0.2 ms + 0.05 ms per branch + 0.1 ms per MFLOP)."""
    branches = sum(h > 0 for h in shape.head_counts) + sum(m > 0 for m in shape.mlp_widths)
    return 0.2 + 0.05 * branches + shape_cost(config, shape.width, shape.head_counts, shape.mlp_widths).flops * 1e-7


def fake_measure(config: ViTConfig, shape: SubModelShape, timing: TimingSettings) -> tuple[LatencyStats, int, int]:
    value = fake_latency_ms(config, shape)
    stats = LatencyStats.from_times([value * 0.99, value, value * 1.01], warmup=timing.warmup,
                                    threads=timing.threads, device=timing.device)
    cost = shape_cost(config, shape.width, shape.head_counts, shape.mlp_widths)
    return stats, cost.weight_bytes, cost.activation_bytes


class FailingMeasure:
    """`fake_measure`, but shapes wider than `max_width` raise like an out-of-memory error."""

    def __init__(self, max_width: int) -> None:
        self.max_width = max_width
        self.calls = 0

    def __call__(self, config: ViTConfig, shape: SubModelShape, timing: TimingSettings):
        self.calls += 1
        if shape.width > self.max_width:
            raise RuntimeError(f"DefaultCPUAllocator: not enough memory: you tried to allocate {shape.width} GB")
        return fake_measure(config, shape, timing)


class CountingMeasure:
    """`fake_measure` that records which shapes it timed."""

    def __init__(self) -> None:
        self.shapes: list[SubModelShape] = []

    def __call__(self, config: ViTConfig, shape: SubModelShape, timing: TimingSettings):
        self.shapes.append(shape)
        return fake_measure(config, shape, timing)
