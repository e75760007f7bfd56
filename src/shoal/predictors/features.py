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

import numpy as np

from shoal.errors import ConfigError
from shoal.models.config import TeacherConfig, TextConfig
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


Shape = SubModelShape | SubModelSpec


def counts(shape: Shape) -> tuple[int, tuple[int, ...], tuple[int, ...]]:
    """(d_n, heads per block, MLP width per block) of a shape or a spec."""
    if isinstance(shape, SubModelSpec):
        return shape.width, shape.head_counts, shape.mlp_widths
    if isinstance(shape, SubModelShape):
        return shape.width, tuple(shape.head_counts), tuple(shape.mlp_widths)
    raise ConfigError(f"expected a SubModelSpec or SubModelShape, got {type(shape).__name__}")


def tokens_of(config: TeacherConfig, shape: Shape) -> int:
    """Tokens per input of a shape: its own (a text shape timed at a length), else the family's."""
    return (shape.tokens if isinstance(shape, SubModelShape) else 0) or config.seq_len


def feature_names(feature_set: str) -> tuple[str, ...]:
    if feature_set not in FEATURE_SETS:
        raise ConfigError(f"unknown feature set {feature_set!r}; known: {sorted(FEATURE_SETS)}")
    return FEATURE_SETS[feature_set]


def feature_matrix(config: TeacherConfig, shapes: Sequence[Shape], feature_set: str) -> np.ndarray:
    """Features of `shapes` as a float64 array (n, k), columns as `feature_names(feature_set)`.

    Vectorised over the batch (blocks padded with zero heads and neurons, which add nothing),
    so a planner's batch of 16 specs costs well under a millisecond.
    """
    names = feature_names(feature_set)
    columns = _all_features(config, [counts(s) for s in shapes], np.array([tokens_of(config, s) for s in shapes],
                                                                          dtype=np.float64))
    return np.stack([columns[name] for name in names], axis=1) if shapes else np.zeros((0, len(names)))


def _all_features(config: TeacherConfig, rows: Sequence[tuple[int, tuple[int, ...], tuple[int, ...]]],
                  S: np.ndarray) -> dict[str, np.ndarray]:
    """Every feature column, each of shape (n,); `S` (n,) the tokens per input of each row (a text
    family's sequence length varies, so every token term is a feature of it)."""
    n, depth_max = len(rows), max((len(h) for _, h, _ in rows), default=0)
    d = np.array([r[0] for r in rows], dtype=np.float64)
    depth = np.array([len(r[1]) for r in rows], dtype=np.float64)
    h = np.zeros((n, max(depth_max, 1)))
    D = np.zeros((n, max(depth_max, 1)))
    for i, (_, heads, mlp) in enumerate(rows):
        h[i, :len(heads)] = heads
        D[i, :len(mlp)] = mlp
    hd = config.head_dim
    a = h * hd
    n_attn, n_mlp = (h > 0).sum(axis=1).astype(np.float64), (D > 0).sum(axis=1).astype(np.float64)
    terms = {
        "n_attn": n_attn,
        "n_mlp": n_mlp,
        "n_heads": h.sum(axis=1),
        "f_proj": 8.0 * S * d * a.sum(axis=1),        # qkv 2·S·d·3a + output projection 2·S·a·d
        "f_attn": 4.0 * S * S * a.sum(axis=1),        # q·kᵀ and attn·v
        "f_mlp": 4.0 * S * d * D.sum(axis=1),
        "e_norm": (n_attn + n_mlp) * S * d,
        "e_act": S * D.sum(axis=1),
        "e_tokens": S * d,
    }
    safe_depth = np.maximum(depth, 1)
    h_mean, D_mean = h.sum(axis=1) / safe_depth, D.sum(axis=1) / safe_depth
    mask = np.arange(h.shape[1])[None, :] < depth[:, None]
    features = {
        "l": depth,
        "d": d,
        "h_mean": h_mean,
        "D_mean": D_mean,
        "h_std": np.sqrt((((h - h_mean[:, None]) ** 2) * mask).sum(axis=1) / safe_depth),
        "D_std": np.sqrt((((D - D_mean[:, None]) ** 2) * mask).sum(axis=1) / safe_depth),
        # flop_counter's count, as `shape_cost`: the embedding (a ViT's patch projection), head, blocks' matmuls
        "flops": _embedding_flops(config, d) + 2.0 * d * config.num_classes
        + terms["f_proj"] + terms["f_attn"] + terms["f_mlp"],
        **terms,
    }
    features.update({f"log_{k}": np.log1p(v) for k, v in terms.items()})
    return features


def _embedding_flops(config: TeacherConfig, d: np.ndarray) -> np.ndarray:
    """FLOPs of the input embedding: a ViT's patch projection; a text family's lookups count none."""
    if isinstance(config, TextConfig):
        return np.zeros_like(d)
    return 2.0 * config.num_patches * d * config.in_chans * config.patch_size ** 2
