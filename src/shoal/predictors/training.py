"""Train every candidate predictor on a latency dataset and choose one by validation error.

The measured shapes (pass 1) are split by a seeded permutation into train,
validation and test (held out). Each candidate is fitted on train; the one
with the lowest validation MAPE is chosen; every candidate's test metrics
are reported beside the noise floor. Candidates:

  flops-linear        ms = a·FLOPs + b, ordinary least squares (the usual baseline)
  mlp                 CoFormer's MLP on (l, d, mean h, mean D), log-latency target
  terms-linear        non-negative least squares on analytic cost terms, relative error
  mlp-terms-residual  the MLP on the "rich" features, learning log(t / terms-linear)
  ensemble            geometric mean of terms-linear and mlp-terms-residual
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from shoal.errors import ConfigError
from shoal.models.config import TeacherConfig
from shoal.predictors.base import LatencyPredictor
from shoal.predictors.features import Shape
from shoal.predictors.metrics import ErrorMetrics, error_metrics, noise_floor
from shoal.predictors.models import EnsemblePredictor, LinearPredictor, MLPPredictor
from shoal.predictors.settings import CANDIDATES, Target, TrainSettings
from shoal.utils.threads import torch_threads

MIN_SHAPES = 10


@dataclass(frozen=True)
class FitResult:
    """One trained candidate and its errors."""

    predictor: LatencyPredictor
    val: ErrorMetrics
    test: ErrorMetrics
    fit_s: float

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.predictor.kind, "val": self.val.to_dict(), "test": self.test.to_dict(),
                "fit_s": round(self.fit_s, 2)}


@dataclass(frozen=True)
class PredictorSuite:
    """All trained candidates, the chosen one and why.

    Attributes:
        results: Per kind, the fitted predictor and its validation / test metrics.
        chosen: Kind of the chosen predictor.
        reason: Why it was chosen (one line).
        noise: Noise floor of the dataset (None without re-measurements).
        split: Number of shapes in train / val / test.
        target: The per-shape statistic learnt ("median", "mean", "p10" or "min").
    """

    results: dict[str, FitResult]
    chosen: str
    reason: str
    noise: ErrorMetrics | None
    split: dict[str, int] = field(default_factory=dict)
    target: Target = "median"

    @property
    def predictor(self) -> LatencyPredictor:
        return self.results[self.chosen].predictor

    def metrics_dict(self) -> dict[str, Any]:
        return {"chosen": self.chosen, "reason": self.reason, "split": self.split, "target": self.target,
                "noise_floor": self.noise.to_dict() if self.noise else None,
                "predictors": {k: r.to_dict() for k, r in self.results.items()}}


def split_indices(n: int, test_share: float, val_share: float, seed: int) -> tuple[np.ndarray, ...]:
    """(train, val, test) index arrays of a seeded permutation of range(n)."""
    order = np.random.default_rng(seed).permutation(n)
    n_test = max(1, round(test_share * n))
    n_val = max(1, round(val_share * (n - n_test)))
    return order[n_test + n_val:], order[n_test:n_test + n_val], order[:n_test]


class TimingStats(Protocol):
    """The statistics of one timed shape that predictors can learn (`shoal.profiling.timing.LatencyStats`)."""

    @property
    def median_ms(self) -> float: ...
    @property
    def mean_ms(self) -> float: ...
    @property
    def p10_ms(self) -> float: ...
    @property
    def min_ms(self) -> float: ...


class Measurement(Protocol):
    """One timed shape (`shoal.profiling.dataset.Measurement`)."""

    @property
    def shape(self) -> Shape: ...
    @property
    def stats(self) -> TimingStats: ...


class LatencyDataset(Protocol):
    """What training reads of a latency dataset (`shoal.profiling.dataset.LatencyDataset`): profiling
    produces it, predictors learn from it, and neither package imports the other's module for it."""

    @property
    def header(self) -> dict[str, Any]: ...
    def first_pass(self) -> list[Any]: ...
    def pairs(self) -> list[tuple[Any, Any]]: ...


def resolve_target(target: str, dataset: LatencyDataset) -> Target:
    """The statistic "auto" stands for on this dataset: mean under a CPU quota, else p10."""
    if target != "auto":
        return target  # type: ignore[return-value]
    return "mean" if (dataset.header.get("cpu_limit") or {}).get("quota") is not None else "p10"


def target_ms(measurement: Measurement, target: Target = "median") -> float:
    """The statistic of one measurement that predictors learn."""
    return float(getattr(measurement.stats, f"{target}_ms"))


def dataset_noise(dataset: LatencyDataset, target: Target = "median") -> ErrorMetrics | None:
    """Noise floor of a dataset's re-measured shapes, or None if it has none."""
    pairs = dataset.pairs()
    if not pairs:
        return None
    return noise_floor([target_ms(a, target) for a, _ in pairs], [target_ms(b, target) for _, b in pairs])


def fit_predictors(config: TeacherConfig, dataset: LatencyDataset, settings: TrainSettings = TrainSettings()
                   ) -> PredictorSuite:
    """Fit every candidate on the dataset's first-pass measurements and choose by validation MAPE.

    Raises:
        ConfigError: fewer than `MIN_SHAPES` shapes were measured.
    """
    target = resolve_target(settings.target, dataset)
    measured: list[Measurement] = dataset.first_pass()
    if len(measured) < MIN_SHAPES:
        raise ConfigError(f"need at least {MIN_SHAPES} measured shapes to train a latency predictor, "
                          f"have {len(measured)}; profile with more --samples")
    shapes = [m.shape for m in measured]
    y = np.array([target_ms(m, target) for m in measured])
    tr, va, te = split_indices(len(y), settings.test_share, settings.val_share, settings.seed)

    def pick(idx: np.ndarray) -> list[Any]:
        return [shapes[i] for i in idx]

    train, val, test = (pick(tr), y[tr]), (pick(va), y[va]), (pick(te), y[te])
    results: dict[str, FitResult] = {}
    fitted: dict[str, LatencyPredictor] = {}
    with torch_threads(1):  # deterministic, and no oversubscription on a busy machine
        for kind in _with_dependencies(settings.candidates):
            start = time.perf_counter()
            fitted[kind] = _fit_one(kind, config, train, val, fitted, settings)
            if kind in settings.candidates:
                p = fitted[kind]
                results[kind] = FitResult(p, error_metrics(p.predict_array(val[0]), val[1]),
                                          error_metrics(p.predict_array(test[0]), test[1]),
                                          time.perf_counter() - start)
    ranked = sorted(results, key=lambda k: results[k].val.mape)
    chosen = ranked[0]
    reason = f"lowest validation MAPE ({results[chosen].val.mape:.1%} on {len(va)} shapes"
    reason += f"; next {ranked[1]} {results[ranked[1]].val.mape:.1%})" if len(ranked) > 1 else ")"
    return PredictorSuite(results, chosen, reason, dataset_noise(dataset, target),
                          {"train": len(tr), "val": len(va), "test": len(te)}, target)


def _with_dependencies(kinds: Sequence[str]) -> list[str]:
    """`kinds` in CANDIDATES order, with what they are built on."""
    needed = set(kinds)
    if needed & {"mlp-terms-residual", "ensemble"}:
        needed.add("terms-linear")
    if "ensemble" in needed:
        needed.add("mlp-terms-residual")
    return [k for k in CANDIDATES if k in needed]


def _fit_one(kind: str, config: TeacherConfig, train: tuple[list[Any], np.ndarray], val: tuple[list[Any], np.ndarray],
             fitted: dict[str, LatencyPredictor], settings: TrainSettings) -> LatencyPredictor:
    shapes, y = train
    if kind == "flops-linear":
        return LinearPredictor.fit(config, shapes, y, "flops", kind=kind)
    if kind == "terms-linear":
        return LinearPredictor.fit(config, shapes, y, "terms", kind=kind, relative=True, nonneg=True)
    if kind == "mlp":
        return MLPPredictor.fit(config, shapes, y, "paper", kind=kind, val=val, epochs=settings.epochs,
                                seed=settings.seed)
    if kind == "mlp-terms-residual":
        base = fitted["terms-linear"]
        assert isinstance(base, LinearPredictor)
        return MLPPredictor.fit(config, shapes, y, "rich", kind=kind, val=val, base=base, epochs=settings.epochs,
                                seed=settings.seed)
    if kind == "ensemble":
        return EnsemblePredictor(config, kind, [fitted["terms-linear"], fitted["mlp-terms-residual"]])
    raise ConfigError(f"unknown predictor kind {kind!r}")
