"""Does bf16 autocast change what the search's accuracy proxy says, and how much faster is it?

    .venv/bin/python benchmarks/precision.py [--policies 12] [--proxy logistic]
                                             [--model deit_small_patch16_224 --data digits --cal 64 --val 64]

Default problem (the digits teacher and the default device set): `--policies`
policies spread over predicted latency (as benchmarks/proxy.py picks them) are
scored by the proxy in fp32 and in bf16, alternately, on the same images.
Reports per policy both losses, the largest absolute difference, Spearman ρ of
the two rankings, and the median seconds per evaluation of each (side by side,
one run). With `--model` (a real-scale teacher, random weights unless the hub
is reachable) it scores the balanced split and a few random policies and
reports the seconds per evaluation, the figure that decides whether the
search's proxy costs seconds or minutes. Writes benchmarks/results/precision[-<model>].json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

from shoal.planner.balanced import balanced_policy
from shoal.planner.pipeline import PlanHooks, build_problem
from shoal.planner.search import anchor_points
from shoal.planner.settings import PlanRequest


def _spearman(a: list[float], b: list[float]) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--policies", type=int, default=12)
    parser.add_argument("--proxy", default="logistic")
    parser.add_argument("--model", default=None)
    parser.add_argument("--data", default=None)
    parser.add_argument("--cal", type=int, default=512)
    parser.add_argument("--val", type=int, default=None)
    parser.add_argument("--max-per-split", type=int, default=None)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    console = Console()
    torch.set_num_threads(2)
    request = PlanRequest(model=args.model, pretrained=args.model is None, data=args.data, proxy=args.proxy,
                          cal_images=args.cal, val_images=args.val, max_per_split=args.max_per_split,
                          out="/tmp/shoal-precision")
    started = time.perf_counter()
    problem = build_problem(request, PlanHooks())
    setup_s = time.perf_counter() - started
    space, evaluator = problem.space, problem.evaluator
    policies = [balanced_policy(problem.teacher.config, evaluator, problem.scores)]
    gen = torch.Generator().manual_seed(0)
    points = anchor_points(space) + [torch.rand(space.dim, generator=gen).tolist() for _ in range(60)]
    seen: set[str] = set()
    for x in points:
        policy = space.decode(x)
        key = policy.to_json()
        if key not in seen:
            seen.add(key)
            policies.append(policy)
    policies = policies[:args.policies]
    rows: list[dict[str, Any]] = []
    for i, policy in enumerate(policies):
        row: dict[str, Any] = {"policy": i, "balanced": i == 0,
                               "devices": len(policy), "latency_ms": evaluator.latency(policy).total_ms}
        for precision in (("fp32", "bf16") if i % 2 == 0 else ("bf16", "fp32")):   # alternate the order
            evaluator.settings = replace(evaluator.settings, precision=precision)
            t = time.perf_counter()
            loss, _ = evaluator.loss(policy)
            row[precision] = {"loss": loss, "seconds": time.perf_counter() - t}
        rows.append(row)
        console.print(f"policy {i}: fp32 {row['fp32']['loss']:.4f} ({row['fp32']['seconds']:.2f} s), "
                      f"bf16 {row['bf16']['loss']:.4f} ({row['bf16']['seconds']:.2f} s)", highlight=False)
    fp32 = [r["fp32"]["loss"] for r in rows]
    bf16 = [r["bf16"]["loss"] for r in rows]
    summary = {
        "teacher": problem.teacher.source, "random_weights": problem.teacher.random_weights,
        "proxy": args.proxy, "cal_images": len(evaluator.cal_images), "val_images": len(evaluator.val_images),
        "policies": len(rows), "setup_seconds": setup_s,
        "spearman_fp32_bf16": _spearman(fp32, bf16) if len(rows) > 2 else None,
        "max_abs_loss_difference": max(abs(a - b) for a, b in zip(fp32, bf16)),
        "median_seconds": {p: statistics.median(r[p]["seconds"] for r in rows) for p in ("fp32", "bf16")},
        "cpu": torch.backends.cpu.get_cpu_capability(), "threads": torch.get_num_threads(), "rows": rows}
    summary["speedup"] = summary["median_seconds"]["fp32"] / summary["median_seconds"]["bf16"]
    table = Table(title=f"proxy {args.proxy}, fp32 vs bf16 autocast ({problem.teacher.source}"
                        f"{', random weights' if problem.teacher.random_weights else ''})")
    for col in ("policies", "Spearman ρ", "max |Δ loss|", "fp32 s/eval", "bf16 s/eval", "speed-up"):
        table.add_column(col, justify="right")
    rho = summary["spearman_fp32_bf16"]
    table.add_row(str(len(rows)), "-" if rho is None else f"{rho:.3f}", f"{summary['max_abs_loss_difference']:.4f}",
                  f"{summary['median_seconds']['fp32']:.2f}", f"{summary['median_seconds']['bf16']:.2f}",
                  f"{summary['speedup']:.2f}×")
    console.print(table)
    name = "precision" + (f"-{args.model}" if args.model else "")
    out = Path(args.out or Path(__file__).parent / "results" / f"{name}.json")
    out.write_text(json.dumps(summary, indent=2) + "\n")
    console.print(f"wrote {out}")


if __name__ == "__main__":
    main()
