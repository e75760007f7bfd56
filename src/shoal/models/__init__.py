"""The sub-model vocabulary and the surgery that builds sub-models from a teacher.

This package imports nothing else of shoal (but `errors` and `utils`), so
every other part can use it.
"""

from __future__ import annotations

from shoal.models.accounting import SpecCost, count_flops, count_params, shape_cost, spec_cost
from shoal.models.aggregator import Aggregator
from shoal.models.config import ViTConfig, config_from_timm
from shoal.models.importance import ImportanceScores, compute_importance
from shoal.models.partition import SubModelShape, choose_layers, deal, decompose
from shoal.models.spec import Policy, SubModelSpec, check_disjoint
from shoal.models.surgery import build_submodel, pooled_features, slice_state_dict
from shoal.models.teacher import DEFAULT_TEACHER, Teacher, load_teacher

__all__ = [
    "DEFAULT_TEACHER", "Aggregator", "ImportanceScores", "Policy", "SpecCost", "SubModelShape",
    "SubModelSpec", "Teacher", "ViTConfig", "build_submodel", "check_disjoint", "choose_layers",
    "compute_importance", "config_from_timm", "count_flops", "count_params", "deal", "decompose", "shape_cost",
    "load_teacher", "pooled_features", "slice_state_dict", "spec_cost",
]
