"""BO vs a TPE sampler vs random vs uniform decomposition on the default problem, and which proxy
ranks policies.

    .venv/bin/python benchmarks/search.py [--seeds 5] [--init 10] [--iterations 50] [--policies 8]
        [--strategies bo,bo-whole,ei,random,uniform,tpe] [--ei-seeds 3] [--out benchmarks/results/search.json]

Same budget (r + I evaluations) for every strategy and seed, on the default
digits teacher and the default device set (profiled on this machine if
needed). Reports the best Ψ after every evaluation (mean over seeds), the
final best per seed, how often BO beats random search and a stock
multivariate TPE sampler (optuna's `TPESampler(multivariate=True, seed=seed)`,
its own 10 random start-up trials, over the same [0,1]^k encoding and the same
Ψ), whether BO beats the uniform decomposition, and BO's gap to the best Ψ a
5x larger random search finds. Per run it also reports the proposals wasted on
policies already evaluated (BO's "fallback" points and repeats; TPE's repeats)
and the seconds spent choosing points against the seconds spent evaluating them.
Then calibrates `--policies` policies spread over the random search's
Ψ range and reports the Spearman rank correlation between each accuracy
proxy (sliced / probe / ridge) and calibrated validation accuracy.
Ψ is computed from predicted latency, so the search numbers are
deterministic for a given profile; calibration is seeded. Seconds depend on
the machine and its load (the load average is recorded with them).

TPE needs optuna (`pip install -e '.[bench]'`); leave `tpe` out of `--strategies` without it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

from shoal.planner.evaluation import logits_of, score_decomposition
from shoal.planner.figures import convergence_figure
from shoal.planner.pipeline import PlanHooks, build_problem
from shoal.planner.search import decode_key, run_search
from shoal.planner.settings import CalibrationSettings, PlanRequest, SearchSettings

STRATEGIES = ("bo", "bo-whole", "ei", "random", "uniform", "tpe")


def _spearman(a: list[float], b: list[float]) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)


def _mean_curve(curves: list[list[float]]) -> list[float]:
    return [sum(c[i] for c in curves) / len(curves) for i in range(min(len(c) for c in curves))]


def _best_so_far(psi: list[float]) -> list[float]:
    out, best = [], math.inf
    for p in psi:
        best = min(best, p)
        out.append(best)
    return out


def _repeats(keys: list[str]) -> int:
    """Evaluations of a policy an earlier evaluation of the run already had."""
    return len(keys) - len(set(keys))


def _sign_test(wins: int, n: int) -> float:
    """One-sided p-value of `wins` or more wins out of n under a fair coin."""
    return sum(math.comb(n, k) for k in range(wins, n + 1)) / 2 ** n


def _require_optuna() -> None:
    try:
        import optuna  # noqa: F401
    except ImportError:
        raise SystemExit("benchmarks/search.py: the TPE comparison needs optuna, which is not installed; "
                         "install the bench extra (pip install -e '.[bench]', or .venv/bin/pip install optuna) "
                         "or leave tpe out of --strategies") from None


def _run_bo(problem: Any, settings: SearchSettings) -> dict[str, Any]:
    started = time.perf_counter()
    result = run_search(problem.space, problem.evaluator, settings)
    seconds = time.perf_counter() - started
    proposals = sum(r.phase in ("bo", "fallback") for r in result.records)
    return {"seed": settings.seed, "best_so_far": result.best_so_far(), "psi": [r.psi for r in result.records],
            "best": result.best.psi, "best_shapes": result.best.shapes, "best_x": list(result.best.x),
            "seconds": seconds, "optimiser_seconds": result.optimiser_seconds,
            "evaluation_seconds": result.evaluation_seconds,
            "max_propose_seconds": max(result.propose_seconds, default=0.0),
            "proposals": proposals, "wasted": result.wasted,
            "fallbacks": sum(r.phase == "fallback" for r in result.records),
            "repeats": _repeats([r.key for r in result.records]),
            "distinct_policies": len({r.key for r in result.records})}


def _run_tpe(problem: Any, budget: int, seed: int) -> dict[str, Any]:
    """optuna's multivariate TPE over the same encoding and Ψ, `budget` evaluations (its own start-up)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space, evaluator = problem.space, problem.evaluator
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        sampler = optuna.samplers.TPESampler(multivariate=True, seed=seed)
    study = optuna.create_study(direction="minimize", sampler=sampler)
    started = time.perf_counter()
    psi: list[float] = []
    keys: list[str] = []
    xs: list[list[float]] = []
    shapes: list[Any] = []
    optimiser = evaluation = 0.0
    for _ in range(budget):
        tick = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            trial = study.ask()
            x = [trial.suggest_float(f"x{i}", 0.0, 1.0) for i in range(space.dim)]
        optimiser += time.perf_counter() - tick
        ev = evaluator.evaluate(space.decode(x))
        evaluation += ev.seconds
        tick = time.perf_counter()
        study.tell(trial, ev.psi)
        optimiser += time.perf_counter() - tick
        key, shape = decode_key(space, x)
        psi.append(ev.psi)
        keys.append(key)
        xs.append(x)
        shapes.append(shape)
    best = min(range(budget), key=lambda i: psi[i])
    return {"seed": seed, "best_so_far": _best_so_far(psi), "psi": psi, "best": psi[best],
            "best_shapes": shapes[best], "best_x": xs[best], "seconds": time.perf_counter() - started,
            "optimiser_seconds": optimiser, "evaluation_seconds": evaluation,
            "repeats": _repeats(keys), "distinct_policies": len(set(keys))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--init", type=int, default=10)
    parser.add_argument("--iterations", type=int, default=50)
    parser.add_argument("--policies", type=int, default=8, help="policies calibrated for the proxy check (0: skip)")
    parser.add_argument("--calibration-epochs", type=int, default=4)
    parser.add_argument("--ei-seeds", type=int, default=3, help="seeds of BO with plain EI, to compare with LogEI")
    parser.add_argument("--strategies", default=",".join(STRATEGIES),
                        help="which to run, comma-separated: bo (LogEI), bo-whole (LogEI, the GP models Ψ whole "
                             "instead of its accuracy part), ei (BO with plain EI, --ei-seeds seeds), "
                             "random (also the 5x random reference), uniform, tpe (needs optuna)")
    parser.add_argument("--proxy", default=None, help="accuracy proxy of Ψ (default: the plan's default)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/search.json"))
    parser.add_argument("--resume", action="store_true",
                        help="keep the runs an interrupted benchmark already wrote to --out (same budget and proxy)")
    args = parser.parse_args()
    chosen = [s.strip() for s in args.strategies.split(",") if s.strip()]
    unknown = sorted(set(chosen) - set(STRATEGIES))
    if unknown:
        parser.error(f"--strategies: unknown {', '.join(unknown)} (choose from {', '.join(STRATEGIES)})")
    if "tpe" in chosen:
        _require_optuna()
    console = Console()
    torch.manual_seed(0)

    request = PlanRequest(out=str(args.out.parent / "search-work"),
                          **({"proxy": args.proxy} if args.proxy else {}))
    problem = build_problem(request, PlanHooks(phase=lambda s: console.log(s)))
    budget = args.init + args.iterations
    load_before = os.getloadavg()
    runs: dict[str, list[dict[str, Any]]] = {}
    same = {"budget": budget, "init": args.init, "proxy": request.proxy}
    if args.resume and args.out.exists():
        previous = json.loads(args.out.read_text())
        if {k: previous.get(k) for k in same} == same:
            runs = previous["runs"]
            console.log(f"resuming: {sum(len(v) for v in runs.values())} runs from {args.out}")

    def done(label: str, seed: int) -> bool:
        return any(r["seed"] == seed for r in runs.get(label, []))

    def save(run: dict[str, Any], label: str) -> None:
        """Keep every finished run on disk: a benchmark of hours survives an interruption (--resume)."""
        runs.setdefault(label, []).append(run)
        runs[label].sort(key=lambda r: r["seed"])
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({**same, "iterations": args.iterations, "strategies": chosen,
                                        "complete": False, "runs": runs}, indent=2) + "\n")

    strategies = [("bo-logei", "bo", "logei", args.seeds if "bo" in chosen else 0),
                  ("bo-whole", "bo", "logei", args.seeds if "bo-whole" in chosen else 0),
                  ("bo-ei", "bo", "ei", args.ei_seeds if "ei" in chosen else 0),
                  ("random", "random", "logei", args.seeds if "random" in chosen else 0),
                  ("uniform", "uniform", "logei", 1 if "uniform" in chosen else 0)]
    for seed in range(max(args.seeds, args.ei_seeds)):   # one seed's runs side by side: they see the same load
        for label, strategy, acq, seeds in strategies:
            if seed >= seeds or done(label, seed):
                continue
            settings = SearchSettings(strategy, init=args.init, iterations=args.iterations, seed=seed, prune=False,  # type: ignore[arg-type]
                                      acquisition=acq, known_latency=label != "bo-whole")  # type: ignore[arg-type]
            run = _run_bo(problem, settings)
            save(run, label)
            extra = (f", {run['wasted']}/{run['proposals']} proposals wasted, optimiser "
                     f"{run['optimiser_seconds']:.0f}s" if strategy == "bo" else "")
            console.log(f"{label} seed {seed}: best Ψ {run['best']:.4f} ({run['seconds']:.0f}s{extra})")
        if "tpe" in chosen and seed < args.seeds and not done("tpe", seed):
            run = _run_tpe(problem, budget, seed)
            save(run, "tpe")
            console.log(f"tpe seed {seed}: best Ψ {run['best']:.4f} ({run['seconds']:.0f}s, optimiser "
                        f"{run['optimiser_seconds']:.0f}s, {run['repeats']} repeated policies)")
    reference = None
    if "random" in chosen:
        big = run_search(problem.space, problem.evaluator,
                         SearchSettings("random", init=5 * budget, iterations=0, seed=1000, prune=False))
        reference = big.best.psi

    table = Table(title=f"best Ψ after {budget} evaluations (r={args.init}, I={args.iterations})")
    table.add_column("strategy")
    for seed in range(args.seeds):
        table.add_column(f"seed {seed}", justify="right")
    table.add_column("mean", justify="right")
    for label, items in runs.items():
        bests = [i["best"] for i in items]
        table.add_row(label, *[f"{b:.4f}" for b in bests], *[""] * (args.seeds - len(bests)),
                      f"{sum(bests) / len(bests):.4f}")
    if reference is not None:
        table.add_row(f"random ×5 ({5 * budget})", f"{reference:.4f}", *[""] * args.seeds)
    console.print(table)

    verdict: dict[str, Any] = {"seeds": args.seeds}
    bo = runs.get("bo-logei", [])
    if bo and "random" in runs:
        rnd = runs["random"]
        gaps = [(b["best"] - reference) / abs(reference) for b in bo]  # type: ignore[operator]
        verdict.update({"bo_beats_random_seeds": sum(b["best"] < r["best"] for b, r in zip(bo, rnd)),
                        "bo_gap_to_5x_random": gaps, "bo_within_2pct_of_5x_random": all(g <= 0.02 for g in gaps)})
    if bo and "uniform" in runs:
        verdict["bo_beats_uniform_always"] = all(b["best"] < runs["uniform"][0]["best"] for b in bo)
    if bo:
        proposals = sum(b["proposals"] for b in bo)
        shares = [b["optimiser_seconds"] / b["seconds"] for b in bo]
        verdict.update({"bo_wasted_proposals": sum(b["wasted"] for b in bo), "bo_proposals": proposals,
                        "bo_wasted_share": sum(b["wasted"] for b in bo) / max(proposals, 1),
                        "bo_optimiser_share_per_seed": shares, "bo_optimiser_share_max": max(shares),
                        "bo_seconds_per_run_mean": sum(b["seconds"] for b in bo) / len(bo)})
    comparison = _tpe_table(bo, runs["tpe"], console) if bo and "tpe" in runs else {}
    if "bo-whole" in runs and "tpe" in runs:
        verdict["bo_whole_vs_tpe"] = _tpe_table(runs["bo-whole"], runs["tpe"], console, "BO (GP over Ψ whole)")
    verdict.update(comparison)
    if bo and comparison:
        verdict["goals"] = {"bo_beats_tpe_on_4_of_5_seeds": comparison["bo_beats_tpe_seeds"] >= 0.8 * len(bo),
                            "wasted_below_10pct": verdict["bo_wasted_share"] < 0.10,
                            "optimiser_below_20pct_of_run": verdict["bo_optimiser_share_max"] < 0.20}
    console.print(verdict)

    figure = convergence_figure(
        args.out.parent / f"{args.out.stem}_convergence.png",
        {f"{k} (mean of {len(v)})": _mean_curve([i["best_so_far"] for i in v]) for k, v in runs.items()},
        init=args.init)

    proxy = _proxy_check(problem, args, console) if args.policies > 0 else {}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    bo_settings = SearchSettings("bo", init=args.init, iterations=args.iterations)
    args.out.write_text(json.dumps({"budget": budget, "init": args.init, "iterations": args.iterations,
                                    "strategies": chosen, "complete": True, "runs": runs,
                                    "random_5x_best": reference,
                                    "verdict": verdict, "delta_per_ms": problem.evaluator.delta,
                                    "proxy": request.proxy,
                                    "bo_settings": {"raw_samples": bo_settings.raw_samples,
                                                    "num_restarts": bo_settings.num_restarts,
                                                    "surrogate": bo_settings.surrogate},
                                    "machine": {"cpus": os.cpu_count(), "load_average_before": load_before,
                                                "load_average_after": os.getloadavg(),
                                                "torch_threads": torch.get_num_threads()},
                                    "proxy_check": proxy, "figure": str(figure)}, indent=2) + "\n")
    console.print(f"wrote {args.out} and {figure}")


def _tpe_table(bo: list[dict[str, Any]], tpe: list[dict[str, Any]], console: Console, name: str = "BO"
               ) -> dict[str, Any]:
    """BO against TPE seed by seed: best Ψ, wasted proposals, optimiser against evaluation seconds."""
    table = Table(title=f"{name} vs TPE at equal evaluations (optimiser / evaluation seconds)")
    for column in ("seed", "BO best Ψ", "TPE best Ψ", "BO wasted", "BO opt s", "BO eval s", "BO opt share",
                   "TPE repeats", "TPE opt s", "TPE eval s"):
        table.add_column(column, justify="right")
    by_seed = {t["seed"]: t for t in tpe}
    pairs = [(b, by_seed[b["seed"]]) for b in bo if b["seed"] in by_seed]
    for b, t in pairs:
        table.add_row(str(b["seed"]), f"{b['best']:.4f}", f"{t['best']:.4f}", f"{b['wasted']}/{b['proposals']}",
                      f"{b['optimiser_seconds']:.1f}", f"{b['evaluation_seconds']:.1f}",
                      f"{b['optimiser_seconds'] / b['seconds']:.1%}", str(t["repeats"]),
                      f"{t['optimiser_seconds']:.1f}", f"{t['evaluation_seconds']:.1f}")
    console.print(table)
    wins = sum(b["best"] < t["best"] for b, t in pairs)
    return {"bo_beats_tpe_seeds": wins, "bo_vs_tpe_seeds": len(pairs),
            "bo_mean_best": sum(b["best"] for b, _ in pairs) / len(pairs),
            "tpe_mean_best": sum(t["best"] for _, t in pairs) / len(pairs),
            "bo_minus_tpe_per_seed": [b["best"] - t["best"] for b, t in pairs],
            "bo_beats_tpe_sign_test_p": _sign_test(wins, len(pairs)),
            "tpe_repeated_policies": sum(t["repeats"] for _, t in pairs)}


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
    teacher_val = logits_of(problem.teacher.model, problem.data.val.images)
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
        scored = score_decomposition(teacher_val, list(policy.devices), models, agg, problem.data.val)
        acc = scored.accuracy.ensemble.to_dict()
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
