"""Front quality: the `--pareto` search against single-δ searches, by hypervolume of (T, L).

    .venv/bin/python benchmarks/pareto.py [--init 8] [--iterations 16] [--seeds 0 1]

On the default problem (digits teacher, default devices, profiles as `shoal plan` makes
them), per seed: one search with `--pareto` (each proposal its own δ) and three searches
at a single δ of 0.5, 1 and 2 × the default (1 / teacher latency on the central node),
each with the same budget and seed. Every search's evaluated policies give a front in
(predicted latency T, accuracy proxy L), both minimised; its hypervolume is measured
against one reference point for all of them (the largest T and L seen in any search of
that seed, plus 10%). The three single-δ searches are also pooled (3× the budget) for
a fair-to-them comparison. Writes benchmarks/results/pareto.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from shoal.planner.pareto import hypervolume, nondominated
from shoal.planner.pipeline import PlanHooks, build_problem
from shoal.planner.search import run_search
from shoal.planner.settings import PlanRequest, SearchSettings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--init", type=int, default=8)
    parser.add_argument("--iterations", type=int, default=16)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--proxy", default="logistic")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "pareto.json")
    args = parser.parse_args()
    console = Console()
    problem = build_problem(PlanRequest(proxy=args.proxy, out="/tmp/shoal-pareto-bench"), PlanHooks())
    base = problem.evaluator.delta
    rows = []
    for seed in args.seeds:
        runs = {}
        for label, factor, pareto in (("pareto", 1.0, 4), ("δ×0.5", 0.5, 0), ("δ×1", 1.0, 0), ("δ×2", 2.0, 0)):
            problem.evaluator.delta = base * factor
            settings = SearchSettings("bo", init=args.init, iterations=args.iterations, seed=seed, pareto=pareto,
                                      prune=False)
            started = time.perf_counter()
            result = run_search(problem.space, problem.evaluator, settings)
            runs[label] = {"points": [(r.evaluation.latency.total_ms, r.evaluation.loss) for r in result.records],
                           "seconds": time.perf_counter() - started}
            console.print(f"seed {seed} {label}: {len(result.records)} evaluations, "
                          f"{runs[label]['seconds']:.0f} s", highlight=False)
        problem.evaluator.delta = base
        every = [p for run in runs.values() for p in run["points"]]
        reference = (max(t for t, _ in every) * 1.1, max(loss for _, loss in every) * 1.1)
        pooled = [p for k in ("δ×0.5", "δ×1", "δ×2") for p in runs[k]["points"]]
        row = {"seed": seed, "reference": reference, "budget": args.init + args.iterations}
        for label, run in runs.items():
            pts = run["points"]
            row[label] = {"hypervolume": hypervolume(pts, reference), "front": len(nondominated(pts)),
                          "seconds": run["seconds"]}
        row["single-δ pooled (3× budget)"] = {"hypervolume": hypervolume(pooled, reference),
                                              "front": len(nondominated(pooled))}
        rows.append(row)
    table = Table(title=f"hypervolume of (T, L) fronts, {args.init}+{args.iterations} evaluations per search")
    for col in ("seed", "search", "hypervolume", "front size"):
        table.add_column(col, justify="right")
    for row in rows:
        for label in ("pareto", "δ×0.5", "δ×1", "δ×2", "single-δ pooled (3× budget)"):
            table.add_row(str(row["seed"]), label, f"{row[label]['hypervolume']:.4f}", str(row[label]["front"]))
    console.print(table)
    args.out.write_text(json.dumps({"base_delta": base, "proxy": args.proxy, "rows": rows}, indent=2) + "\n")
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
