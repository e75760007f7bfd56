"""A Pareto front of policies (latency T against the accuracy proxy L) and the variants kept from it.

`shoal plan --pareto K`: the search spreads its evaluations along the front (expected
hypervolume improvement; `shoal.planner.search`), then `front` keeps the evaluated
policies no other one beats on both T and L, and `choose_variants` keeps up to K of
them: the policy of best Ψ at the base δ (the plan's primary), the fastest, the
central node alone when it was evaluated (whatever its accuracy: it is what answers
when every worker is gone), then the rest spread evenly over the front's latency.
`hypervolume` measures a front against a reference point (BoTorch's utility);
`hypervolume_improvement` is the search's acquisition core (its expected value over the GP).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from shoal.planner.journal import Record


@dataclass(frozen=True)
class Variant:
    """One policy kept as a variant of the plan.

    Attributes:
        name: "primary" (best Ψ at the base δ: the plan directory itself), "fastest",
            "central-only", or "front-<k>".
        record: Its evaluation in the search.
    """

    name: str
    record: Record

    @property
    def latency_ms(self) -> float:
        return self.record.evaluation.latency.total_ms

    @property
    def loss(self) -> float:
        return self.record.evaluation.loss


def nondominated(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both coordinates (both minimised), by the
    first coordinate then the second; equal points are all kept."""
    kept = [i for i, (t, loss) in enumerate(points)
            if not any(u <= t and v <= loss and (u < t or v < loss) for u, v in points)]
    return sorted(kept, key=lambda i: points[i])


def front(records: Sequence[Record]) -> list[Record]:
    """The non-dominated evaluations (lower T and lower L are better), one per policy, fastest first."""
    unique: dict[str, Record] = {}
    for r in records:
        unique.setdefault(r.key, r)
    points = list(unique.values())
    return [points[i] for i in nondominated([(r.evaluation.latency.total_ms, r.evaluation.loss) for r in points])]


def choose_variants(records: Sequence[Record], primary: Record, k: int) -> list[Variant]:
    """Up to `k` variants: the primary, the fastest, the central node alone, then the front spread by T."""
    chosen: dict[str, Variant] = {primary.key: Variant("primary", primary)}
    pareto = front(records)

    def add(name: str, record: Record) -> None:
        if len(chosen) < k and record.key not in chosen:
            chosen[record.key] = Variant(name, record)

    add("fastest", pareto[0])
    solo = [r for r in records if sum(s is not None for s in r.shapes) == 1]
    if solo:
        add("central-only", min(solo, key=lambda r: r.evaluation.loss))
    rest = [r for r in pareto if r.key not in chosen]
    slots = max(0, k - len(chosen))
    if rest and slots:
        picks = sorted({round(i * (len(rest) - 1) / max(1, slots - 1)) for i in range(slots)}) if slots > 1 \
            else [len(rest) // 2]
        for n, i in enumerate(picks, start=1):
            add(f"front-{n}", rest[i])
    return sorted(chosen.values(), key=lambda v: (v.name != "primary", v.latency_ms))


def hypervolume(points: Sequence[tuple[float, float]], reference: tuple[float, float]) -> float:
    """Hypervolume of (latency, loss) points (both minimised) against `reference` (BoTorch)."""
    from botorch.utils.multi_objective.hypervolume import Hypervolume

    inside = [(t, loss) for t, loss in points if t < reference[0] and loss < reference[1]]
    if not inside:
        return 0.0
    hv = Hypervolume(ref_point=-torch.tensor(reference, dtype=torch.float64))
    return float(hv.compute(-torch.tensor(inside, dtype=torch.float64)))


def hypervolume_improvement(t: torch.Tensor, loss: torch.Tensor, points: Sequence[tuple[float, float]],
                            reference: tuple[float, float]) -> torch.Tensor:
    """2-D hypervolume improvement (both minimised) of new points over the front of `points`.

    Shapes: t (N,) known latencies, loss (S, N) sampled losses -> (S, N). The front's attainment
    level is a step function of T; the new region is the integral of max(0, level(x) - loss) for
    x from t to the reference, computed interval by interval (vectorised)."""
    front = [points[i] for i in nondominated(points)]
    ref_t, ref_l = reference
    starts = [-math.inf] + [p[0] for p in front]
    ends = [p[0] for p in front] + [ref_t]
    levels = [ref_l] + [min(p[1], ref_l) for p in front]
    a = torch.tensor(starts, dtype=torch.float64).view(-1, 1, 1)
    b = torch.tensor(ends, dtype=torch.float64).view(-1, 1, 1)
    level = torch.tensor(levels, dtype=torch.float64).view(-1, 1, 1)
    width = (b.clamp(max=ref_t) - torch.maximum(a, t.view(1, 1, -1))).clamp(min=0)   # (K, 1, N)
    height = (level - loss.unsqueeze(0)).clamp(min=0)                                   # (K, S, N)
    return (width * height).sum(0)


def pareto_figure(path: Path, records: Sequence[Record], variants: Sequence[Variant]) -> None:
    """Every evaluated policy, the front and the chosen variants: predicted latency against the proxy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    ax.scatter([r.evaluation.latency.total_ms for r in records], [r.evaluation.loss for r in records],
               s=14, color="0.65", label="evaluated policies")
    pareto = front(records)
    ax.step([r.evaluation.latency.total_ms for r in pareto], [r.evaluation.loss for r in pareto], where="post",
            color="C0", label="Pareto front")
    for v in variants:
        ax.scatter([v.latency_ms], [v.loss], s=60, marker="D", color="C3", zorder=3)
        ax.annotate(v.name, (v.latency_ms, v.loss), textcoords="offset points", xytext=(5, 5), fontsize=8)
    ax.set_xlabel("predicted latency T (ms)")
    ax.set_ylabel("accuracy proxy L (validation loss, nats; lower is better)")
    ax.set_title("policies searched, their front and the variants kept")
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)
