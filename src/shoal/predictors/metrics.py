"""How good a latency prediction is, and how good it could be (the noise floor).

A prediction is scored on held-out shapes against their measured median
latency: RMSE (ms), MAPE (mean |pred - true| / true) and the share within
±10%. The noise floor is the same comparison between two measurements of the
same shapes taken at different times (pass 1 and the re-measurement):
|a - b| / mean(a, b). A predictor's MAPE cannot be expected much below it,
since its targets carry that noise.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from shoal.errors import ConfigError
from shoal.utils.fields import FlatRecord


@dataclass(frozen=True)
class ErrorMetrics(FlatRecord):
    """Errors of predictions against measurements.

    Attributes:
        n: Number of shapes.
        rmse_ms: Root mean squared error in ms.
        mape: Mean absolute percentage error (0.05 = 5%).
        median_ape: Median absolute percentage error.
        within_10: Share of shapes predicted within ±10%.
        p95_ape: 95th percentile of the absolute percentage error.
    """

    n: int
    rmse_ms: float
    mape: float
    median_ape: float
    within_10: float
    p95_ape: float


def error_metrics(predicted: Sequence[float] | np.ndarray, measured: Sequence[float] | np.ndarray) -> ErrorMetrics:
    """Metrics of `predicted` against `measured` latencies (ms, same order)."""
    p, t = np.asarray(predicted, dtype=np.float64), np.asarray(measured, dtype=np.float64)
    if p.shape != t.shape or p.ndim != 1 or not len(p):
        raise ConfigError(f"need equal, non-empty 1-d arrays, got shapes {p.shape} and {t.shape}")
    ape = np.abs(p - t) / t
    return ErrorMetrics(n=len(p), rmse_ms=float(np.sqrt(np.mean((p - t) ** 2))), mape=float(ape.mean()),
                        median_ape=float(np.median(ape)), within_10=float(np.mean(ape <= 0.10 + 1e-9)),
                        p95_ape=float(np.quantile(ape, 0.95)))


def noise_floor(first: Sequence[float] | np.ndarray, second: Sequence[float] | np.ndarray) -> ErrorMetrics:
    """Pass-to-pass error of repeated measurements of the same shapes (relative to their mean)."""
    a, b = np.asarray(first, dtype=np.float64), np.asarray(second, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1 or not len(a):
        raise ConfigError(f"need two equal, non-empty 1-d arrays, got shapes {a.shape} and {b.shape}")
    mean = (a + b) / 2
    ape = np.abs(a - b) / mean
    return ErrorMetrics(n=len(a), rmse_ms=float(np.sqrt(np.mean((a - b) ** 2))), mape=float(ape.mean()),
                        median_ape=float(np.median(ape)), within_10=float(np.mean(ape <= 0.10 + 1e-9)),
                        p95_ape=float(np.quantile(ape, 0.95)))
