"""The sub-model vocabulary and the surgery that builds sub-models from a teacher.

This package imports nothing else of shoal (but `errors` and `utils`), so every other part
can use it. The names below load on first use (PEP 562): `shoal.models.spec` and
`shoal.models.config` need no torch, and importing them does not pull in the rest.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from shoal.utils.lazy import lazy_exports

if TYPE_CHECKING:   # what type checkers see; at run time each name loads on first use
    from shoal.models.accounting import SpecCost, count_flops, count_params, shape_cost, spec_cost
    from shoal.models.aggregator import Aggregator
    from shoal.models.config import ViTConfig, config_from_timm
    from shoal.models.importance import ImportanceScores, compute_importance
    from shoal.models.partition import SubModelShape, choose_layers, deal, decompose
    from shoal.models.spec import Policy, SubModelSpec, check_disjoint
    from shoal.models.surgery import build_submodel, pooled_features, slice_state_dict
    from shoal.models.teacher import DEFAULT_TEACHER, Teacher, load_teacher

_HOME = {
    "SpecCost": "accounting", "count_flops": "accounting", "count_params": "accounting", "shape_cost": "accounting",
    "spec_cost": "accounting", "Aggregator": "aggregator", "ViTConfig": "config", "config_from_timm": "config",
    "ImportanceScores": "importance", "compute_importance": "importance", "SubModelShape": "partition",
    "choose_layers": "partition", "deal": "partition", "decompose": "partition", "Policy": "spec",
    "SubModelSpec": "spec", "check_disjoint": "spec", "build_submodel": "surgery", "pooled_features": "surgery",
    "slice_state_dict": "surgery", "DEFAULT_TEACHER": "teacher", "Teacher": "teacher", "load_teacher": "teacher",
}
__all__ = [
    "Aggregator", "DEFAULT_TEACHER", "ImportanceScores", "Policy", "SpecCost", "SubModelShape", "SubModelSpec",
    "Teacher", "ViTConfig", "build_submodel", "check_disjoint", "choose_layers", "compute_importance",
    "config_from_timm", "count_flops", "count_params", "deal", "decompose", "load_teacher", "pooled_features",
    "shape_cost", "slice_state_dict", "spec_cost",
]
__getattr__, __dir__ = lazy_exports(__name__, _HOME)
