"""PNG figures of a plan: BO convergence and the per-device latency breakdown (CoFormer Fig. 3)."""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from shoal.plan.latency import LatencyBreakdown
from shoal.utils.io import atomic_write_bytes


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    atomic_write_bytes(path, buf.getvalue())
    _pyplot().close(fig)


def convergence_figure(path: str | Path, curves: Mapping[str, Sequence[float]],
                       observed: Mapping[str, Sequence[float]] | None = None, init: int | None = None) -> Path:
    """Best Ψ against the number of evaluations, one line per strategy.

    Args:
        path: PNG to write.
        curves: Strategy name -> best Ψ after each evaluation.
        observed: Strategy name -> Ψ of each evaluation (drawn as dots).
        init: r, marked with a vertical line (end of the random initial design).
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for i, (name, curve) in enumerate(curves.items()):
        color = f"C{i}"
        xs = list(range(1, len(curve) + 1))
        ax.step(xs, curve, where="post", color=color, label=f"{name} (best {min(curve):.4f})")
        if observed and name in observed:
            ax.scatter(xs, observed[name], s=8, color=color, alpha=0.35)
    if init:
        ax.axvline(init + 0.5, color="grey", linestyle=":", linewidth=1)
        ax.text(init + 0.7, ax.get_ylim()[1], "BO starts", va="top", fontsize=8, color="grey")
    ax.set_xlabel("evaluations")
    ax.set_ylabel("Ψ = L_val + δ·T")
    ax.set_title("decomposition search")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    path = Path(path)
    _save(fig, path)
    return path


def latency_figure(path: str | Path, devices: Sequence[str], breakdown: LatencyBreakdown,
                   teacher_ms: Sequence[float] | None = None, measured_ms: Sequence[float | None] | None = None,
                   ) -> Path:
    """Per-device stacked bars: compute (t1), transfer (t2), aggregation (t3, central node).

    Args:
        path: PNG to write.
        devices: Device names (central first).
        breakdown: Predicted latency of the plan.
        teacher_ms: Predicted latency of the whole teacher on each device (drawn as markers).
        measured_ms: Measured sub-model compute per device on this machine (markers), if any.
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 0.9 + 0.7 * len(devices)))
    ys = list(range(len(devices)))[::-1]
    agg = [breakdown.aggregate_ms + breakdown.request_ms if i == 0 else 0.0 for i in range(len(devices))]
    ax.barh(ys, breakdown.compute_ms, color="C0", label="compute t1")
    ax.barh(ys, breakdown.transfer_ms, left=breakdown.compute_ms, color="C1", label="transfer t2")
    lefts = [c + t for c, t in zip(breakdown.compute_ms, breakdown.transfer_ms)]
    ax.barh(ys, agg, left=lefts, color="C2", label="aggregation + request t3")
    if teacher_ms is not None:
        ax.scatter(teacher_ms, ys, marker="|", s=300, color="black", label="teacher alone")
    if measured_ms is not None:
        pts = [(m, y) for m, y in zip(measured_ms, ys) if m is not None]
        if pts:
            ax.scatter([p[0] for p in pts], [p[1] for p in pts], marker="x", color="C3", label="measured compute")
    ax.axvline(breakdown.total_ms, color="grey", linestyle="--", linewidth=1)
    ax.text(breakdown.total_ms, len(devices) - 0.5, f" T = {breakdown.total_ms:.2f} ms", fontsize=8, va="top")
    ax.set_yticks(ys, devices)
    ax.set_xlabel("predicted latency (ms)")
    ax.set_title("latency per device and phase")
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(axis="x", alpha=0.3)
    path = Path(path)
    _save(fig, path)
    return path
