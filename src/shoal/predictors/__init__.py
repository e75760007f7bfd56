"""Latency predictors: trained per device from measured (sub-model, latency) pairs (CoFormer §A).

The planner's entry points are `load_device_costs(device, config)` (predictor and call
overhead; `load_device_latency` for the predictor alone) and
`ensure_profiles(device_set, teacher)`; `load_profile(path)` reads what
`shoal profile` wrote.
"""

from __future__ import annotations

from shoal.predictors.base import LatencyPredictor, load_predictor, save_predictor
from shoal.predictors.metrics import ErrorMetrics, error_metrics, noise_floor
from shoal.predictors.models import EnsemblePredictor, LinearPredictor, MLPPredictor
from shoal.predictors.profile import DeviceProfile, ProfileRequest, load_profile, profile_devices
from shoal.predictors.resolve import CatalogPredictor, ensure_profiles, load_device_costs, load_device_latency
from shoal.predictors.training import CANDIDATES, PredictorSuite, TrainSettings, fit_predictors

__all__ = [
    "CANDIDATES", "CatalogPredictor", "DeviceProfile", "EnsemblePredictor", "ErrorMetrics", "LatencyPredictor",
    "LinearPredictor", "MLPPredictor", "PredictorSuite", "ProfileRequest", "TrainSettings", "ensure_profiles",
    "error_metrics", "fit_predictors", "load_device_costs", "load_device_latency", "load_predictor", "load_profile",
    "noise_floor", "profile_devices", "save_predictor",
]
