"""Does the search's accuracy proxy rank policies like their calibrated accuracy?

    .venv/bin/python benchmarks/proxy.py [--data digits|fashion-mnist] [--policies 12] [--epochs 4]
                                         [--max-train N] [--max-test N] [--use-all-devices]

Draws a pool of feasible policies of the default problem (the two anchors, the
uniform split and seeded random points), picks `--policies` of them spread
evenly over predicted latency, scores each with every proxy (with its wall
time), then calibrates each (booster + aggregator, `--epochs` per sub-model on
`--max-train` training images) and measures test top-1 with its 95% Wilson
interval. Reports Spearman ρ between −proxy and calibrated test top-1 for each
proxy, and whether any decomposed policy scored worse than the class prior.
Rows are appended to the JSON as they finish; a re-run resumes.
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

from shoal.data.datasets import TaskData
from shoal.planner.aggregation import train_aggregator
from shoal.planner.calibration import Booster
from shoal.planner.evaluation import ensemble_logits
from shoal.planner.pipeline import PlanHooks, build_problem
from shoal.planner.search import anchor_points
from shoal.planner.settings import PROXY_KINDS, CalibrationSettings, PlanRequest
from shoal.utils.stats import wilson_interval


def _spearman(a: list[float], b: list[float]) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)


def _pick(space: Any, pool: list[tuple[list[float], float]], n: int) -> list[tuple[list[float], float]]:
    """n points spread evenly over predicted latency, distinct policies."""
    unique: dict[str, tuple[list[float], float]] = {}
    for x, ms in pool:
        unique.setdefault(repr(space.decode_shapes(x)), (x, ms))
    ranked = sorted(unique.values(), key=lambda p: p[1])
    if len(ranked) <= n:
        return ranked
    idx = sorted({round(i * (len(ranked) - 1) / (n - 1)) for i in range(n)})
    return [ranked[i] for i in idx]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="digits")
    parser.add_argument("--policies", type=int, default=12)
    parser.add_argument("--pool", type=int, default=60, help="random policies drawn before picking")
    parser.add_argument("--epochs", type=int, default=4, help="calibration epochs per sub-model")
    parser.add_argument("--max-train", type=int, default=None, help="calibration training images")
    parser.add_argument("--max-test", type=int, default=None, help="test images scored")
    parser.add_argument("--use-all-devices", action="store_true")
    parser.add_argument("--proxies", default=",".join(PROXY_KINDS))
    parser.add_argument("--seed", type=int, default=4242)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    console = Console()
    torch.manual_seed(0)
    out = args.out or Path(f"benchmarks/results/proxy_{args.data}.json")
    work = out.parent / f"proxy-work-{args.data}"
    request = PlanRequest(data=args.data, out=str(work), allow_leave_out=not args.use_all_devices)
    problem = build_problem(request, PlanHooks(phase=lambda s: console.log(s)))
    evaluator = problem.evaluator
    space = problem.space
    points = [*anchor_points(space), *torch.rand(args.pool, space.dim, dtype=torch.float64,
                                                 generator=torch.Generator().manual_seed(args.seed)).tolist()]
    pool = [(x, evaluator.latency(space.decode(x)).total_ms) for x in points]
    chosen = _pick(space, pool, args.policies)
    data = problem.data
    cal_data = TaskData(data.name, data.train.subset(args.max_train), data.val, data.test.subset(args.max_test),
                        data.augment)
    settings = CalibrationSettings(epochs=args.epochs, aggregator_epochs=30)
    config = {"data": args.data, "policies": len(chosen), "epochs": args.epochs, "max_train": len(cal_data.train),
              "max_test": len(cal_data.test), "seed": args.seed, "use_all_devices": args.use_all_devices,
              "cal_images": request.cal_images, "val_images": len(evaluator.val_labels)}
    previous = json.loads(out.read_text()) if out.exists() else {}
    rows: list[dict[str, Any]] = previous.get("rows", []) if previous.get("config") == config else []
    proxies = args.proxies.split(",")
    teacher, tconfig = problem.teacher.model, problem.teacher.config
    for k, (x, latency_ms) in enumerate(chosen):
        if k < len(rows):
            continue
        policy = space.decode(x)
        row: dict[str, Any] = {"x": x, "devices": list(policy.devices), "shapes": [s.describe() for s in policy.specs],
                               "latency_ms": latency_ms}
        for proxy in proxies:
            evaluator.proxy = proxy  # type: ignore[assignment]
            started = time.perf_counter()
            row[proxy] = evaluator.loss(policy)[0]
            row[f"{proxy}_seconds"] = time.perf_counter() - started
        from shoal.models.surgery import build_submodel

        started = time.perf_counter()
        models = [build_submodel(tconfig, s, teacher) for s in policy.specs]
        Booster(teacher, models, list(policy.devices), cal_data, settings, work / f"policy-{k}").run(resume=False)
        agg = train_aggregator(teacher, tconfig, models, cal_data, settings)
        logits = ensemble_logits(models, agg, cal_data.test.images)
        correct = int((logits.argmax(1) == cal_data.test.labels).sum())
        n = len(cal_data.test)
        row.update(test_correct=correct, test_n=n, test_top1=correct / n, test_ci95=list(wilson_interval(correct, n)),
                   calibration_seconds=time.perf_counter() - started)
        rows.append(row)
        console.log(f"policy {k} ({row['latency_ms']:.2f} ms, {len(policy.devices)} devices): "
                    + ", ".join(f"{p} {row[p]:.3f}" for p in proxies)
                    + f" -> calibrated top-1 {row['test_top1']:.4f}")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"config": config, "rows": rows}, indent=2) + "\n")

    result: dict[str, Any] = {"config": config, "rows": rows, "prior_loss": evaluator.prior_loss,
                              "teacher_val_loss": evaluator.teacher_val_loss}
    table = Table(title=f"{args.data}: proxy vs calibrated test top-1 over {len(rows)} policies "
                        f"(n = {config['max_test']} test images each)")
    for col in ("proxy", "Spearman ρ", "mean s / policy", "worse than prior"):
        table.add_column(col, justify="left" if col == "proxy" else "right")
    for proxy in proxies:
        rho = _spearman([-r[proxy] for r in rows], [r["test_top1"] for r in rows])
        secs = sum(r[f"{proxy}_seconds"] for r in rows) / len(rows)
        worse = sum(r[proxy] > evaluator.prior_loss + 1e-9 for r in rows)
        result[proxy] = {"spearman": rho, "seconds": secs, "worse_than_prior": worse}
        table.add_row(proxy, f"{rho:.3f}", f"{secs:.2f}", str(worse))
    console.print(table)
    out.write_text(json.dumps(result, indent=2) + "\n")
    console.print(f"wrote {out}")


if __name__ == "__main__":
    main()
