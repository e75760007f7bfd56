"""Which sub-model shapes to time: a stratified sample of a teacher family.

Latency depends on how many units a sub-model keeps, not on which ones, so
the profiler samples `SubModelShape`s (unit counts) and builds each with the
first units of every kind. The sample is a Latin hypercube over depth, width,
mean head share and mean MLP share (every quarter of every axis gets its
share of the specs), with per-layer variation like the planner's (a shape
multiplier over depth, jitter, dropped branches), plus the corners of the
space: the teacher itself, the smallest sub-model and, for larger samples,
all 16 min/max corners. The same seed and count give the same list.
"""

from __future__ import annotations

import numpy as np

from shoal.models.config import TeacherConfig, TextConfig
from shoal.models.partition import SubModelShape
from shoal.models.spec import SubModelSpec
from shoal.profiling.settings import SamplerSettings

CORNER_THRESHOLD = 64  # from this many samples on, all 16 corners are included
MIN_TOKENS = 8         # the shortest text length a text family is timed at


def shape_to_spec(config: TeacherConfig, shape: SubModelShape) -> SubModelSpec:
    """The spec keeping the first units of every kind, bound to `config`."""
    return SubModelSpec(
        layers=shape.layers, channels=tuple(range(shape.width)),
        heads=tuple(tuple(range(h)) for h in shape.head_counts),
        neurons=tuple(tuple(range(m)) for m in shape.mlp_widths),
    ).bound_to(config)


def sample_shapes(config: TeacherConfig, settings: SamplerSettings) -> list[SubModelShape]:
    """A stratified, deterministic sample of sub-model shapes of `config` (no repeats)."""
    rng = np.random.default_rng(settings.seed)
    n = settings.samples
    min_width = min(settings.min_width, config.embed_dim)
    corners = _corners(config, min_width, all_of_them=n >= CORNER_THRESHOLD)[:n]
    rest = n - len(corners)
    # Latin hypercube: each axis cut into `rest` strata, one point per stratum, strata shuffled per axis
    u = (np.stack([rng.permutation(rest) for _ in range(4)], axis=1) + rng.random((rest, 4))) / max(rest, 1)
    shapes, seen = list(corners), {s.id for s in corners}
    lengths = _token_strata(config, rest, rng)
    for row, tokens in zip(u, lengths):
        for _ in range(50):  # resample the variation on the rare duplicate
            shape = _shape_at(config, row, min_width, rng, tokens)
            if shape.id not in seen:
                break
        seen.add(shape.id)
        shapes.append(shape)
    return shapes


def _token_strata(config: TeacherConfig, n: int, rng: np.random.Generator) -> list[int]:
    """Per sampled shape, the tokens it is timed at: a text family's lengths, stratified on a log scale
    from `MIN_TOKENS` to its `seq_len` (latency is learnt as a function of length); a ViT's own (0)."""
    if not isinstance(config, TextConfig) or n == 0:
        return [0] * n
    low, high = np.log(min(MIN_TOKENS, config.seq_len)), np.log(config.seq_len)
    u = (rng.permutation(n) + rng.random(n)) / n
    return [int(round(float(np.exp(low + v * (high - low))))) for v in u]


def _shape_at(config: TeacherConfig, u: np.ndarray, min_width: int, rng: np.random.Generator, tokens: int = 0
              ) -> SubModelShape:
    """The shape at point `u` in [0,1)^4 (depth, width, head share, MLP share), with per-layer variation."""
    L, h, D = config.depth, config.num_heads, config.mlp_hidden
    depth = 1 + min(int(u[0] * L), L - 1)
    width = min_width + int(round(u[1] * (config.embed_dim - min_width)))
    layers = tuple(sorted(rng.choice(L, size=depth, replace=False).tolist()))
    mode = rng.choice(["uniform", "ramp", "jitter"], p=[0.3, 0.35, 0.35])
    if mode == "uniform":
        mult = np.ones(depth)
    elif mode == "ramp":  # a linear shape over depth, like the planner's knots
        a, b = rng.uniform(0.5, 1.5, size=2)
        mult = np.linspace(a, b, depth)
    else:
        mult = rng.uniform(0.5, 1.5, size=depth)
    heads = np.clip(np.round(u[2] * h * mult), 0, h).astype(int)
    mlp = np.clip(np.round(u[3] * D * mult), 0, D).astype(int)
    if depth > 1 and rng.random() < 0.15:  # a dropped branch in one block
        k = int(rng.integers(depth))
        if rng.random() < 0.5:
            heads[k] = 0
        else:
            mlp[k] = 0
    for k in range(depth):  # a kept block keeps at least one unit
        if heads[k] == 0 and mlp[k] == 0:
            if rng.random() < 0.5:
                heads[k] = 1
            else:
                mlp[k] = max(1, int(round(u[3] * D)))
    return SubModelShape(layers, width, tuple(int(x) for x in heads), tuple(int(x) for x in mlp), tokens)


def _corners(config: TeacherConfig, min_width: int, all_of_them: bool) -> list[SubModelShape]:
    """The teacher, the smallest sub-model and (optionally) the other min/max corners."""
    L, d, h, D = config.depth, config.embed_dim, config.num_heads, config.mlp_hidden
    full = SubModelShape(tuple(range(L)), d, (h,) * L, (D,) * L)
    smallest = SubModelShape((L - 1,), min_width, (1,), (0,))
    corners = [full, smallest]
    if all_of_them:
        for depth in (1, L):
            for width in (min_width, d):
                for heads in (1, h):
                    for mlp in (0, D):
                        corners.append(SubModelShape(tuple(range(L - depth, L)), width, (heads,) * depth,
                                                     (mlp,) * depth))
        corners.append(SubModelShape(tuple(range(L)), d, (0,) * L, (D,) * L))  # MLP-only blocks
    if isinstance(config, TextConfig):   # the teacher and the smallest at the shortest length too
        short = min(MIN_TOKENS, config.seq_len)
        corners[2:2] = [SubModelShape.of(full, short), SubModelShape.of(smallest, short)]
    unique: dict[str, SubModelShape] = {}
    for shape in corners:
        unique.setdefault(shape.id, shape)
    return list(unique.values())
