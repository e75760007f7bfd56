"""BO vs random vs uniform decomposition on the default problem, and which proxy ranks policies.

    .venv/bin/python benchmarks/search.py [--seeds 5] [--init 10] [--iterations 50] [--policies 8]

Same budget (r + I evaluations) for every strategy and seed, on the default
digits teacher and the default device set (profiled on this machine if
needed). Reports the best Ψ after every evaluation (mean over seeds), the
final best per seed, how often BO beats random search, whether BO beats the
uniform decomposition, and BO's gap to the best Ψ a 5x larger random search
finds. Then calibrates `--policies` policies spread over the random search's
Ψ range and reports the Spearman rank correlation between each accuracy
proxy (sliced / probe / ridge) and calibrated validation accuracy.
Ψ is computed from predicted latency, so the search numbers are
deterministic for a given profile; calibration is seeded.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

from shoal.planner.calibration import CalibrationSettings
from shoal.planner.evaluation import evaluate_decomposition
from shoal.planner.figures import convergence_figure
from shoal.planner.pipeline import PlanHooks, PlanRequest, build_problem
from shoal.planner.search import SearchSettings, run_search


def _spearman(a: list[float], b: list[float]) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)


def _mean_curve(curves: list[list[float]]) -> list[float]:
    return [sum(c[i] for c in curves) / len(curves) for i in range(min(len(c) for c in curves))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--init", type=int, default=10)
    parser.add_argument("--iterations", type=int, default=50)
    parser.add_argument("--policies", type=int, default=8, help="policies calibrated for the proxy check (0: skip)")
    parser.add_argument("--calibration-epochs", type=int, default=4)
    parser.add_argument("--ei-seeds", type=int, default=3, help="seeds of BO with plain EI, to compare with LogEI")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/search.json"))
    args = parser.parse_args()
    console = Console()
    torch.manual_seed(0)

    request = PlanRequest(out=str(args.out.parent / "search-work"))
    problem = build_problem(request, PlanHooks(phase=lambda s: console.log(s)))
    budget = args.init + args.iterations
    runs: dict[str, list[dict[str, Any]]] = {}
    strategies = [("bo-logei", "bo", "logei", args.seeds), ("bo-ei", "bo", "ei", args.ei_seeds),
                  ("random", "random", "logei", args.seeds), ("uniform", "uniform", "logei", 1)]
    for label, strategy, acq, seeds in strategies:
        for seed in range(seeds):
            started = time.perf_counter()
            settings = SearchSettings(strategy, init=args.init, iterations=args.iterations, seed=seed, prune=False,  # type: ignore[arg-type]
                                      acquisition=acq)  # type: ignore[arg-type]
            result = run_search(problem.space, problem.evaluator, settings)
            runs.setdefault(label, []).append({
                "seed": seed, "best_so_far": result.best_so_far(), "psi": [r.psi for r in result.records],
                "best": result.best.psi, "best_shapes": result.best.shapes, "best_x": list(result.best.x),
                "seconds": time.perf_counter() - started})
            console.log(f"{label} seed {seed}: best Ψ {result.best.psi:.4f} ({time.perf_counter() - started:.0f}s)")
    big = run_search(problem.space, problem.evaluator,
                     SearchSettings("random", init=5 * budget, iterations=0, seed=1000, prune=False))
    reference = big.best.psi

    bo, rnd = runs["bo-logei"], runs["random"]
    uniform_best = runs["uniform"][0]["best"]
    wins = sum(b["best"] < r["best"] for b, r in zip(bo, rnd))
    table = Table(title=f"best Ψ after {budget} evaluations (r={args.init}, I={args.iterations})")
    table.add_column("strategy")
    for seed in range(args.seeds):
        table.add_column(f"seed {seed}", justify="right")
    table.add_column("mean", justify="right")
    for label, items in runs.items():
        bests = [i["best"] for i in items]
        table.add_row(label, *[f"{b:.4f}" for b in bests], *[""] * (args.seeds - len(bests)),
                      f"{sum(bests) / len(bests):.4f}")
    table.add_row(f"random ×5 ({5 * budget})", f"{reference:.4f}", *[""] * args.seeds)
    console.print(table)
    gaps = [(b["best"] - reference) / abs(reference) for b in bo]
    verdict = {"bo_beats_random_seeds": wins, "seeds": args.seeds,
               "bo_beats_uniform_always": all(b["best"] < uniform_best for b in bo),
               "bo_gap_to_5x_random": gaps, "bo_within_2pct_of_5x_random": all(g <= 0.02 for g in gaps)}
    console.print(verdict)

    figure = convergence_figure(
        args.out.parent / "search_convergence.png",
        {f"{k} (mean of {len(v)})": _mean_curve([i["best_so_far"] for i in v]) for k, v in runs.items()},
        init=args.init)

    proxy = _proxy_check(problem, args, console) if args.policies > 0 else {}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"budget": budget, "init": args.init, "iterations": args.iterations,
                                    "runs": runs, "random_5x_best": reference, "verdict": verdict,
                                    "delta_per_ms": problem.evaluator.delta, "proxy_check": proxy,
                                    "figure": str(figure)}, indent=2) + "\n")
    console.print(f"wrote {args.out} and {figure}")


def _proxy_check(problem: Any, args: argparse.Namespace, console: Console) -> dict[str, Any]:
    """Calibrate policies spread over Ψ; Spearman of each proxy's loss against calibrated accuracy."""
    from shoal.models.surgery import build_submodel
    from shoal.planner.aggregation import train_aggregator
    from shoal.planner.calibration import Booster

    settings = SearchSettings("random", init=max(args.policies * 4, 40), iterations=0, seed=4242, prune=False)
    pool = run_search(problem.space, problem.evaluator, settings).records
    ranked = sorted(pool, key=lambda r: r.psi)
    step = max(1, len(ranked) // args.policies)
    chosen = ranked[::step][:args.policies]
    cal = CalibrationSettings(epochs=args.calibration_epochs, aggregator_epochs=30)
    rows = []
    evaluator = problem.evaluator
    for k, record in enumerate(chosen):
        policy = problem.space.decode(record.x)
        losses = {}
        for proxy in ("sliced", "probe", "ridge"):
            evaluator.proxy = proxy
            losses[proxy] = evaluator.loss(policy)[0]
        evaluator.proxy = "ridge"
        config, teacher = problem.teacher.config, problem.teacher.model
        models = [build_submodel(config, s, teacher) for s in policy.specs]
        workdir = args.out.parent / "search-work" / f"proxy-{k}"
        Booster(teacher, models, list(policy.devices), problem.data, cal, workdir).run(resume=False)
        agg = train_aggregator(teacher, config, models, problem.data, cal)
        acc = evaluate_decomposition(teacher, list(policy.devices), models, agg, problem.data.val)["ensemble"]
        rows.append({"shapes": record.shapes, "latency_ms": record.evaluation.latency.total_ms, **losses,
                     "calibrated_val_top1": acc["top1"], "calibrated_val_loss": acc["loss"]})
        console.log(f"policy {k}: proxies {losses} -> calibrated val top-1 {acc['top1']:.4f}")
    result = {"policies": rows}
    for proxy in ("sliced", "probe", "ridge"):
        result[f"spearman_{proxy}_vs_accuracy"] = _spearman([-r[proxy] for r in rows],
                                                            [r["calibrated_val_top1"] for r in rows])
        result[f"spearman_{proxy}_vs_calibrated_loss"] = _spearman([r[proxy] for r in rows],
                                                                   [r["calibrated_val_loss"] for r in rows])
    table = Table(title="does the proxy rank policies like calibrated accuracy? (Spearman ρ, higher is better)")
    table.add_column("proxy")
    table.add_column("ρ(-proxy, top-1)", justify="right")
    table.add_column("ρ(proxy, calibrated loss)", justify="right")
    for proxy in ("sliced", "probe", "ridge"):
        table.add_row(proxy, f"{result[f'spearman_{proxy}_vs_accuracy']:.3f}",
                      f"{result[f'spearman_{proxy}_vs_calibrated_loss']:.3f}")
    console.print(table)
    return result


if __name__ == "__main__":
    main()
