"""How a device is profiled: how each shape is timed and which shapes are sampled.

Importable without torch, so the command line takes its option defaults from here.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

from shoal.errors import ConfigError
from shoal.models.spec import MIN_WIDTH

DeviceKind = Literal["cpu", "cuda"]


@dataclass(frozen=True)
class TimingSettings:
    """How each shape is timed.

    Attributes:
        repeats: Timed calls per shape (the median is kept).
        warmup: Untimed calls first.
        threads: Torch intra-op threads.
        device: "cpu" or "cuda".
        budget_ms: Wall time per shape after which warm-up and timing stop early (at least
            one warm-up and five timed calls are made); None: no limit. For real-scale
            teachers on slow devices, where one call takes a third of a second.
    """

    repeats: int = 25
    warmup: int = 5
    threads: int = 1
    device: DeviceKind = "cpu"
    budget_ms: float | None = None

    def __post_init__(self) -> None:
        for name, low in (("repeats", 1), ("warmup", 0), ("threads", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(f"{name} must be an integer of at least {low}, got {value!r}")
        if self.device not in ("cpu", "cuda"):
            raise ConfigError(f"device must be 'cpu' or 'cuda', got {self.device!r}")
        if self.budget_ms is not None and (isinstance(self.budget_ms, bool) or not self.budget_ms > 0):
            raise ConfigError(f"budget_ms must be a positive number of milliseconds, got {self.budget_ms!r}")

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        if self.budget_ms is None:   # written only when set: profiles made without it read unchanged
            del out["budget_ms"]
        return out


@dataclass(frozen=True)
class SamplerSettings:
    """How the profiler samples shapes.

    Attributes:
        samples: Number of shapes to time.
        seed: Seed of the sample (same seed and count: same list).
        min_width: Smallest residual width sampled.
    """

    samples: int
    seed: int = 0
    min_width: int = MIN_WIDTH

    def __post_init__(self) -> None:
        if isinstance(self.samples, bool) or not isinstance(self.samples, int) or self.samples < 2:
            raise ConfigError(f"samples must be an integer of at least 2, got {self.samples!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ConfigError(f"seed must be an integer, got {self.seed!r}")
        if isinstance(self.min_width, bool) or not isinstance(self.min_width, int) or self.min_width < 1:
            raise ConfigError(f"min_width must be a positive integer, got {self.min_width!r}")

    def to_dict(self) -> dict[str, int]:
        return {"samples": self.samples, "seed": self.seed, "min_width": self.min_width}
