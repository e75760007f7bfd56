"""Latency predictors: trained per device from measured (sub-model, latency) pairs (CoFormer §A).

Features of a shape, the predictor models, their training and metrics. The measurements
come from `shoal.profiling`, which also keeps the profile directory and resolves each
device's predictor for the planner (`shoal.profiling.resolve.load_device_costs`).
"""

from __future__ import annotations

from shoal.predictors.base import LatencyPredictor, load_predictor, save_predictor
from shoal.predictors.metrics import ErrorMetrics, error_metrics, noise_floor
from shoal.predictors.models import EnsemblePredictor, LinearPredictor, MLPPredictor
from shoal.predictors.training import CANDIDATES, PredictorSuite, TrainSettings, fit_predictors

__all__ = [
    "CANDIDATES", "EnsemblePredictor", "ErrorMetrics", "LatencyPredictor", "LinearPredictor", "MLPPredictor",
    "PredictorSuite", "TrainSettings", "error_metrics", "fit_predictors", "load_predictor", "noise_floor",
    "save_predictor",
]
