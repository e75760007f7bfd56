"""How latency predictors are trained. Importable without torch (the command line's defaults)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from shoal.errors import ConfigError

CANDIDATES = ("flops-linear", "mlp", "terms-linear", "mlp-terms-residual", "ensemble")
Target = Literal["median", "mean", "p10", "min"]
TARGETS: tuple[str, ...] = ("auto", "median", "mean", "p10", "min")
DEFAULT_TARGET = "auto"  # mean under a CPU quota, p10 otherwise (docs/decisions/005-latency-predictor.md)


@dataclass(frozen=True)
class TrainSettings:
    """How predictors are trained.

    Attributes:
        test_share: Share of measured shapes held out for the reported metrics.
        val_share: Share of the rest used to choose (and early-stop) the predictors.
        epochs: MLP training epochs.
        seed: Seed of the split and of the MLP initialisation.
        candidates: Which predictors to train (a subset of `CANDIDATES`).
        target: Which per-shape statistic of the timed calls is learnt and scored: "median",
            "mean", "p10" or "min"; "auto" (default) takes "mean" for a device measured under a
            CPU quota (throttling makes single calls bimodal; their mean is the quota'd speed)
            and "p10" otherwise (the undisturbed latency; the median drifts with the load of a
            shared machine).
    """

    test_share: float = 0.25
    val_share: float = 0.15
    epochs: int = 300
    seed: int = 0
    candidates: tuple[str, ...] = CANDIDATES
    target: str = DEFAULT_TARGET

    def __post_init__(self) -> None:
        object.__setattr__(self, "candidates", tuple(self.candidates))   # a JSON list reads back equal
        if self.target not in TARGETS:
            raise ConfigError(f"target must be one of {list(TARGETS)}, got {self.target!r}")
        for name in ("test_share", "val_share"):
            value = getattr(self, name)
            if not 0.0 < value < 0.9:
                raise ConfigError(f"{name} must be between 0 and 0.9, got {value!r}")
        if self.epochs < 1:
            raise ConfigError(f"epochs must be positive, got {self.epochs!r}")
        unknown = sorted(set(self.candidates) - set(CANDIDATES))
        if unknown or not self.candidates:
            raise ConfigError(f"unknown predictor kind(s) {unknown or '(none given)'}; known: {list(CANDIDATES)}")

    def to_dict(self) -> dict[str, Any]:
        return {"test_share": self.test_share, "val_share": self.val_share, "epochs": self.epochs,
                "seed": self.seed, "candidates": list(self.candidates), "target": self.target}
