"""The decomposer: per-device unit counts -> disjoint index sets (CoFormer C1-C4).

Heads and neurons of a teacher block are partitioned among the sub-models
that keep that block; residual channels are partitioned among all
sub-models. No unit is given twice. Units are ranked by importance and, by
default, dealt out "fairly": the k-th most important unit goes to the device
furthest behind its proportional share, so every sub-model gets a mix of
strong and weak units. "ranked" gives the most important units to the first
device in order (a baseline for the ablation).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch

from shoal.errors import ConfigError
from shoal.models.config import TeacherConfig
from shoal.models.importance import ImportanceScores
from shoal.models.spec import Policy, SubModelSpec

DealRule = Literal["fair", "ranked"]
LayerRule = Literal["importance", "uniform"]


@dataclass(frozen=True)
class SubModelShape:
    """How many units one device keeps (no indices yet): the counts of a `SubModelSpec`.

    Attributes:
        layers: Teacher block indices kept, increasing.
        width: Residual channels d_n.
        head_counts: Heads h_n^k per kept block.
        mlp_widths: MLP neurons D_n^k per kept block.
        tokens: Tokens per input it is timed or predicted at (a text family's sequence length);
            0: the family's own (`config.seq_len`).

    Its JSON form (`to_dict`; measurement files, search journals, shape ids) keeps the keys
    it has always had: {"layers", "width", "heads", "mlp"}, with counts (ADR 010), and
    "tokens" only when it is set.
    """

    layers: tuple[int, ...]
    width: int
    head_counts: tuple[int, ...]
    mlp_widths: tuple[int, ...]
    tokens: int = 0

    def __post_init__(self) -> None:
        if len(self.head_counts) != len(self.layers) or len(self.mlp_widths) != len(self.layers):
            raise ConfigError(
                f"SubModelShape needs one head and one MLP count per kept layer: layers={self.layers}, "
                f"head_counts={self.head_counts}, mlp_widths={self.mlp_widths}")
        if self.width < 1:
            raise ConfigError(f"SubModelShape.width must be at least 1, got {self.width}")
        if self.tokens < 0:
            raise ConfigError(f"SubModelShape.tokens must be non-negative, got {self.tokens}")
        if any(h < 0 for h in self.head_counts) or any(m < 0 for m in self.mlp_widths):
            raise ConfigError(f"SubModelShape counts must be non-negative: head_counts={self.head_counts}, "
                              f"mlp_widths={self.mlp_widths}")

    @classmethod
    def of(cls, spec: SubModelSpec | SubModelShape, tokens: int = 0) -> SubModelShape:
        """The counts of a spec (or a shape), at `tokens` tokens (0: the shape's own, else the family's)."""
        own = spec.tokens if isinstance(spec, SubModelShape) else 0
        return cls(spec.layers, spec.width, tuple(spec.head_counts), tuple(spec.mlp_widths), tokens or own)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"layers": list(self.layers), "width": self.width, "heads": list(self.head_counts),
                               "mlp": list(self.mlp_widths)}
        if self.tokens:
            out["tokens"] = self.tokens
        return out

    @classmethod
    def from_dict(cls, data: Any) -> SubModelShape:
        try:
            return cls(tuple(int(v) for v in data["layers"]), int(data["width"]),
                       tuple(int(v) for v in data["heads"]), tuple(int(v) for v in data["mlp"]),
                       int(data.get("tokens", 0)))
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"not a sub-model shape ({type(exc).__name__}: {exc}): {data!r}") from None

    @property
    def id(self) -> str:
        """Stable short id (the key of a measurement)."""
        return hashlib.sha1(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:12]


def choose_layers(depth: int, scores: ImportanceScores | None, total: int, rule: LayerRule = "importance"
                  ) -> tuple[int, ...]:
    """Which `depth` of `total` teacher blocks a sub-model keeps, in order.

    "importance" keeps the blocks with the highest block importance; "uniform"
    spreads the kept blocks evenly and always keeps the first and last.
    """
    if not 0 <= depth <= total:
        raise ConfigError(f"depth must be between 0 and {total}, got {depth}")
    if depth == 0:
        return ()
    if rule == "importance" and scores is not None:
        top = torch.argsort(scores.blocks, descending=True, stable=True)[:depth]
        return tuple(sorted(int(i) for i in top))
    if depth == 1:
        return (total - 1,)
    return tuple(sorted({round(i * (total - 1) / (depth - 1)) for i in range(depth)}))


def deal(ranking: torch.Tensor, quotas: Sequence[int], rule: DealRule = "fair") -> list[tuple[int, ...]]:
    """Deal units, best first, to owners with the given quotas; returns sorted index tuples.

    Args:
        ranking: Importance per unit (higher = more important), shape (U,).
        quotas: Units each owner receives; the sum must not exceed U.
        rule: "fair" (largest remaining proportional deficit first) or "ranked".
    """
    total = sum(quotas)
    if total > ranking.numel():
        raise ConfigError(f"quotas {list(quotas)} ask for {total} units but only {ranking.numel()} exist")
    order = torch.argsort(ranking, descending=True, stable=True).tolist()[:total]
    owned: list[list[int]] = [[] for _ in quotas]
    if rule == "ranked":
        start = 0
        for owner, q in enumerate(quotas):
            owned[owner] = order[start:start + q]
            start += q
    else:
        for t, unit in enumerate(order):
            deficit = [(q * (t + 1) / total - len(owned[i]), -i) if len(owned[i]) < q else (-1e18, -i)
                       for i, q in enumerate(quotas)]
            owned[max(range(len(quotas)), key=lambda i: deficit[i])].append(unit)
    return [tuple(sorted(units)) for units in owned]


def decompose(
    config: TeacherConfig,
    devices: Sequence[str],
    shapes: Sequence[SubModelShape],
    scores: ImportanceScores,
    rule: DealRule = "fair",
    *,
    shared_channels: bool = False,
) -> Policy:
    """Turn per-device shapes into a `Policy` of disjoint specs.

    `shared_channels`: every shape keeps all residual channels (its width must be the
    teacher's), only heads and neurons are dealt (`Policy.shared_channels`).

    Raises:
        ConfigError: the shapes break C1-C4 (too many channels, heads or neurons in a block).
    """
    if len(devices) != len(shapes):
        raise ConfigError(f"{len(devices)} devices but {len(shapes)} shapes")
    _check_budgets(config, devices, shapes, shared_channels)
    if shared_channels:
        channel_sets = [tuple(range(config.embed_dim))] * len(shapes)
    else:
        channel_sets = deal(scores.channels, [s.width for s in shapes], rule)
    head_sets: list[dict[int, tuple[int, ...]]] = [{} for _ in shapes]
    neuron_sets: list[dict[int, tuple[int, ...]]] = [{} for _ in shapes]
    for block in range(config.depth):
        owners = [(n, s.layers.index(block)) for n, s in enumerate(shapes) if block in s.layers]
        if not owners:
            continue
        heads = deal(scores.heads[block], [shapes[n].head_counts[k] for n, k in owners], rule)
        neurons = deal(scores.neurons[block], [shapes[n].mlp_widths[k] for n, k in owners], rule)
        for (n, _), hs, ns in zip(owners, heads, neurons):
            head_sets[n][block], neuron_sets[n][block] = hs, ns
    specs = []
    for n, shape in enumerate(shapes):
        kept = [b for b in shape.layers if head_sets[n][b] or neuron_sets[n][b]]
        specs.append(SubModelSpec(
            layers=tuple(kept), channels=channel_sets[n],
            heads=tuple(head_sets[n][b] for b in kept), neurons=tuple(neuron_sets[n][b] for b in kept),
            family=config.fingerprint()))
    return Policy(tuple(devices), tuple(specs), shared_channels)


def _check_budgets(config: TeacherConfig, devices: Sequence[str], shapes: Sequence[SubModelShape],
                   shared_channels: bool = False) -> None:
    widths = [s.width for s in shapes]
    if shared_channels:
        if any(w != config.embed_dim for w in widths):
            raise ConfigError(f"shared channels: every width must be embed_dim {config.embed_dim}, got {widths}")
    elif sum(widths) > config.embed_dim:
        raise ConfigError(f"C2: channel counts {widths} sum to {sum(widths)} > embed_dim {config.embed_dim}")
    for name, shape in zip(devices, shapes):
        if any(b < 0 or b >= config.depth for b in shape.layers) or list(shape.layers) != sorted(set(shape.layers)):
            raise ConfigError(f"C1: device {name!r} layers {shape.layers} are not increasing blocks of "
                              f"0..{config.depth - 1}")
    for block in range(config.depth):
        heads = sum(s.head_counts[s.layers.index(block)] for s in shapes if block in s.layers)
        mlp = sum(s.mlp_widths[s.layers.index(block)] for s in shapes if block in s.layers)
        if heads > config.num_heads:
            raise ConfigError(f"C3: block {block} is given {heads} heads > {config.num_heads}")
        if mlp > config.mlp_hidden:
            raise ConfigError(f"C4: block {block} is given {mlp} neurons > {config.mlp_hidden}")
