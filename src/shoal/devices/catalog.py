"""Edge boards you may not have at hand: an analytic latency *estimate* from their datasheets.

Figures are CoFormer's Table VII (memory, peak FP32 throughput, TDP). A
sub-model's latency is estimated as

    t = FLOPs / (peak * efficiency) + per_block_ms * l + base_ms

with `efficiency` the share of peak a batch-1 ViT reaches (small matmuls,
kernel launches, memory-bound norms and softmax): 0.15 on the Jetson GPUs,
0.25 on the Raspberry Pi's CPU, and a fixed overhead per block (kernel
launches on a GPU, op dispatch on a CPU). These factors are rough guesses
for planning before the hardware arrives, not measurements: every place that
shows such a prediction marks it as an estimate, and a measured profile of
the device always replaces it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

from shoal.errors import ConfigError
from shoal.models.accounting import shape_cost
from shoal.models.config import TeacherConfig

GIB = 1 << 30


@dataclass(frozen=True)
class Board:
    """One catalog board.

    Attributes:
        name: Catalog key, e.g. "jetson-tx2".
        title: Human name.
        memory_bytes: Device memory (shared CPU/GPU on Jetsons).
        peak_gflops: Peak FP32 throughput (Table VII).
        tdp_w: Thermal design power.
        processor: Where inference runs: "gpu" or "cpu".
        efficiency: Assumed share of `peak_gflops` a batch-1 ViT reaches.
        per_block_ms: Assumed fixed cost per transformer block (launch / dispatch overhead).
        base_ms: Assumed fixed cost per inference (embedding, head, framework).
    """

    name: str
    title: str
    memory_bytes: int
    peak_gflops: float
    tdp_w: float
    processor: Literal["gpu", "cpu"]
    efficiency: float
    per_block_ms: float
    base_ms: float

    def __post_init__(self) -> None:
        if not 0 < self.efficiency <= 1:
            raise ConfigError(f"board {self.name!r}: efficiency must be in (0, 1], got {self.efficiency!r}")
        if self.peak_gflops <= 0:
            raise ConfigError(f"board {self.name!r}: peak_gflops must be positive, got {self.peak_gflops!r}")

    def estimate_ms(self, config: TeacherConfig, width: int, heads: Sequence[int], mlp: Sequence[int]) -> float:
        """Estimated batch-1 latency (ms) of a sub-model with these unit counts."""
        flops = shape_cost(config, width, heads, mlp).flops
        return flops / (self.peak_gflops * 1e9 * self.efficiency) * 1e3 + self.per_block_ms * len(heads) + self.base_ms

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


BOARDS: dict[str, Board] = {b.name: b for b in (
    Board("jetson-nano", "NVIDIA Jetson Nano", 4 * GIB, 235.8, 10.0, "gpu", 0.15, 0.6, 2.0),
    Board("jetson-tx2", "NVIDIA Jetson TX2", 8 * GIB, 665.6, 15.0, "gpu", 0.15, 0.4, 1.5),
    Board("jetson-orin-nano", "NVIDIA Jetson Orin Nano", 4 * GIB, 640.0, 10.0, "gpu", 0.15, 0.25, 1.0),
    Board("raspberry-pi-4b", "Raspberry Pi 4B", 8 * GIB, 13.5, 7.3, "cpu", 0.25, 0.3, 1.0),
)}


def board(name: str) -> Board:
    """The catalog board `name` (case and '_' / ' ' insensitive)."""
    key = name.strip().lower().replace("_", "-").replace(" ", "-")
    key = {"nano": "jetson-nano", "tx2": "jetson-tx2", "orin-nano": "jetson-orin-nano", "rpi4": "raspberry-pi-4b",
           "raspberry-pi-4": "raspberry-pi-4b", "pi4": "raspberry-pi-4b"}.get(key, key)
    if key not in BOARDS:
        raise ConfigError(f"unknown catalog board {name!r}; the catalog has {sorted(BOARDS)}")
    return BOARDS[key]
