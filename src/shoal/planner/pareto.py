"""A Pareto front of policies (latency T against the accuracy proxy L) and the variants kept from it.

`shoal plan --pareto K`: the search spreads its evaluations along the front (expected
hypervolume improvement; `shoal.planner.search`), then `front` keeps the evaluated
policies no other one beats on both T and L, and `choose_variants` keeps up to K of
them: the policy of best Ψ at the base δ (the plan's primary), the fastest, the
central node alone when it was evaluated (whatever its accuracy: it is what answers
when every worker is gone), then the rest spread evenly over the front's latency.
`hypervolume` measures a front against a reference point (BoTorch's utility).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

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


def front(records: Sequence[Record]) -> list[Record]:
    """The non-dominated evaluations (lower T and lower L are better), one per policy, fastest first."""
    unique: dict[str, Record] = {}
    for r in records:
        unique.setdefault(r.key, r)
    points = list(unique.values())
    kept = []
    for r in points:
        t, loss = r.evaluation.latency.total_ms, r.evaluation.loss
        dominated = any(o.evaluation.latency.total_ms <= t and o.evaluation.loss <= loss
                        and (o.evaluation.latency.total_ms < t or o.evaluation.loss < loss) for o in points)
        if not dominated:
            kept.append(r)
    return sorted(kept, key=lambda r: (r.evaluation.latency.total_ms, r.evaluation.loss))


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
    import torch
    from botorch.utils.multi_objective.hypervolume import Hypervolume

    inside = [(t, loss) for t, loss in points if t < reference[0] and loss < reference[1]]
    if not inside:
        return 0.0
    hv = Hypervolume(ref_point=-torch.tensor(reference, dtype=torch.float64))
    return float(hv.compute(-torch.tensor(inside, dtype=torch.float64)))


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
