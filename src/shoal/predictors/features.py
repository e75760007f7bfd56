"""Feature vectors of sub-model shapes, for latency predictors.

Feature sets (the columns of `feature_matrix`):
  "paper"  CoFormer supplement §A: l, d, mean heads, mean MLP width.
  "flops"  the FLOPs of one inference (`shoal.models.shape_cost`).
  "terms"  analytic cost terms, summed over the kept blocks (S tokens, a = h·head_dim),
           chosen not to be collinear: blocks with attention, blocks with an MLP (per-op
           dispatch), heads (per-head work in attention), qkv + output projection FLOPs
           8·S·a·d, attention matmul FLOPs 4·S²·a (softmax work is proportional),
           MLP FLOPs 4·S·d·D, norm + residual elements S·d per branch, activation
           elements S·D, and S·d (embedding, head, final norm: proportional to d).
           Latency is close to linear in these.
  "rich"   "paper" plus the per-block spread (std of heads and MLP widths), the
           branch counts, and the log of every non-constant "terms" column.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Union

import numpy as np

from shoal.errors import ConfigError
from shoal.models.accounting import shape_cost
from shoal.models.config import ViTConfig
from shoal.models.partition import SubModelShape
from shoal.models.spec import SubModelSpec

TERMS = ("n_attn", "n_mlp", "n_heads", "f_proj", "f_attn", "f_mlp", "e_norm", "e_act", "e_tokens")
FEATURE_SETS: dict[str, tuple[str, ...]] = {
    "paper": ("l", "d", "h_mean", "D_mean"),
    "flops": ("flops",),
    "terms": TERMS,
    "rich": ("l", "d", "h_mean", "D_mean", "h_std", "D_std", "n_attn", "n_mlp",
             *(f"log_{t}" for t in TERMS if not t.startswith("n_"))),
}


Shape = Union[SubModelShape, SubModelSpec]


def counts(shape: Shape) -> tuple[int, tuple[int, ...], tuple[int, ...]]:
    """(d_n, heads per block, MLP width per block) of a shape or a spec."""
    if isinstance(shape, SubModelSpec):
        return shape.width, shape.head_counts, shape.mlp_widths
    if isinstance(shape, SubModelShape):
        return shape.width, tuple(shape.heads), tuple(shape.mlp)
    raise ConfigError(f"expected a SubModelSpec or SubModelShape, got {type(shape).__name__}")


def feature_names(feature_set: str) -> tuple[str, ...]:
    if feature_set not in FEATURE_SETS:
        raise ConfigError(f"unknown feature set {feature_set!r}; known: {sorted(FEATURE_SETS)}")
    return FEATURE_SETS[feature_set]


def feature_matrix(config: ViTConfig, shapes: Sequence[Shape], feature_set: str) -> np.ndarray:
    """Features of `shapes` as a float64 array (n, k), columns as `feature_names(feature_set)`."""
    names = feature_names(feature_set)
    rows = [_all_features(config, *counts(s)) for s in shapes]
    return np.array([[row[name] for name in names] for row in rows], dtype=np.float64).reshape(len(rows), len(names))


def _all_features(config: ViTConfig, d: int, heads: Sequence[int], mlp: Sequence[int]) -> dict[str, float]:
    S, hd = config.seq_len, config.head_dim
    h = np.asarray(heads, dtype=np.float64)
    D = np.asarray(mlp, dtype=np.float64)
    a = h * hd
    n_attn, n_mlp = float((h > 0).sum()), float((D > 0).sum())
    terms = {
        "n_attn": n_attn,
        "n_mlp": n_mlp,
        "n_heads": float(h.sum()),
        "f_proj": float((8 * S * a * d).sum()),
        "f_attn": float((4 * S * S * a).sum()),
        "f_mlp": float((4 * S * d * D).sum()),
        "e_norm": (n_attn + n_mlp) * S * d,
        "e_act": float((S * D).sum()),
        "e_tokens": float(S * d),
    }
    depth = len(h)
    features = {
        "l": float(depth),
        "d": float(d),
        "h_mean": float(h.mean()) if depth else 0.0,
        "D_mean": float(D.mean()) if depth else 0.0,
        "h_std": float(h.std()) if depth else 0.0,
        "D_std": float(D.std()) if depth else 0.0,
        "flops": float(shape_cost(config, d, heads, mlp).flops),
        **terms,
    }
    features.update({f"log_{k}": float(np.log1p(v)) for k, v in terms.items()})
    return features
