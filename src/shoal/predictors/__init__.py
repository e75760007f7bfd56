"""Latency predictors: trained per device from measured (sub-model, latency) pairs (CoFormer §A).

Features of a shape, the predictor models, their training and metrics. The measurements
come from `shoal.profiling`, which also keeps the profile directory and resolves each
device's predictor for the planner (`shoal.profiling.resolve.load_device_costs`). The names
below load on first use (`shoal.utils.lazy`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from shoal.utils.lazy import lazy_exports

if TYPE_CHECKING:   # what type checkers see; at run time each name loads on first use
    from shoal.predictors.base import LatencyPredictor, load_predictor, save_predictor
    from shoal.predictors.metrics import ErrorMetrics, error_metrics, noise_floor
    from shoal.predictors.models import EnsemblePredictor, LinearPredictor, MLPPredictor
    from shoal.predictors.settings import CANDIDATES, TrainSettings
    from shoal.predictors.training import PredictorSuite, fit_predictors

_HOME = {
    "LatencyPredictor": "base", "load_predictor": "base", "save_predictor": "base", "ErrorMetrics": "metrics",
    "error_metrics": "metrics", "noise_floor": "metrics", "EnsemblePredictor": "models",
    "LinearPredictor": "models", "MLPPredictor": "models", "PredictorSuite": "training",
    "fit_predictors": "training", "CANDIDATES": "settings", "TrainSettings": "settings",
}
__all__ = [
    "CANDIDATES", "EnsemblePredictor", "ErrorMetrics", "LatencyPredictor", "LinearPredictor", "MLPPredictor",
    "PredictorSuite", "TrainSettings", "error_metrics", "fit_predictors", "load_predictor", "noise_floor",
    "save_predictor",
]
__getattr__, __dir__ = lazy_exports(__name__, _HOME)
