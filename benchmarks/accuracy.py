"""Accuracy of the default plan: teacher vs decomposed vs calibrated (boost / uniform / printed) vs ensemble.

    .venv/bin/python benchmarks/accuracy.py [--plan .shoal/plan] [--epochs 8] [--seeds 1]

Takes the policy of an existing plan (searched or calibrated; run `shoal plan`
first) and calibrates it from scratch under each sample-weighting rule, with
the same seeds and budget, then reports test top-1 of the teacher, of each
sub-model and of the ensemble, the CoFormer Table III style ablation (decompose
only / decompose + aggregate / calibrated), what device dropout costs, and
the policy's predicted latency on the slowest device relative to the teacher.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

from shoal.models import SubModelShape, compute_importance, decompose
from shoal.planner.calibration import CalibrationSettings
from shoal.planner.pipeline import PlanHooks, PlanRequest, build_problem, calibrate, policy_from_plan


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--plan", type=Path, default=Path(".shoal/plan"))
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--dropout", type=float, default=0.3, help="device dropout rate for the robustness row")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/accuracy.json"))
    args = parser.parse_args()
    console = Console()
    torch.manual_seed(0)
    policy = policy_from_plan(args.plan)
    plan_doc = json.loads((args.plan / "plan.json").read_text())
    work = args.out.parent / "accuracy-work"
    base = PlanRequest(out=str(work), delta=plan_doc["objective"]["delta_per_ms"])
    problem = build_problem(base, PlanHooks(phase=lambda s: console.log(s)))
    variants: dict[str, CalibrationSettings] = {}
    for seed in range(args.seeds):
        common = CalibrationSettings(epochs=args.epochs, seed=seed)
        variants[f"boost/s{seed}"] = common
        variants[f"uniform/s{seed}"] = replace(common, weighting="uniform")
        variants[f"printed/s{seed}"] = replace(common, weighting="printed")
    variants["boost+joint/s0"] = CalibrationSettings(epochs=args.epochs, joint_epochs=2)
    variants[f"boost+dropout{args.dropout}/s0"] = CalibrationSettings(epochs=args.epochs, device_dropout=args.dropout)
    # the same shapes with units dealt by random importance: does the importance rule survive calibration?
    shapes = [SubModelShape.of(spec) for spec in policy.specs]
    random_scores = compute_importance(problem.teacher.model, problem.teacher.config, problem.data.train.images[:8],
                                       problem.data.train.labels[:8], "random", seed=0)
    random_policy = decompose(problem.teacher.config, list(policy.devices), shapes, random_scores)
    policies = {name: policy for name in variants}
    variants["boost+random-importance/s0"] = CalibrationSettings(epochs=args.epochs)
    policies["boost+random-importance/s0"] = random_policy
    results: dict[str, Any] = {}
    for name, settings in variants.items():
        console.log(f"calibrating: {name}")
        request = replace(base, out=str(work / name.replace("/", "-")), calibration=settings)
        results[name] = calibrate(problem, policies[name], request, PlanHooks()).accuracy

    first = next(iter(results.values()))
    table = Table(title=f"test top-1 (n={first['n']}), policy of {args.plan}")
    table.add_column("variant")
    table.add_column("teacher", justify="right")
    table.add_column("decompose only", justify="right")
    table.add_column("decompose + aggregate", justify="right")
    table.add_column("sub-models (mean)", justify="right")
    table.add_column("ensemble", justify="right")
    table.add_column("Δ vs teacher", justify="right")
    for name, acc in results.items():
        subs = [s["top1"] for s in acc["submodels"].values()]
        delta = acc["ensemble"]["top1"] - acc["teacher"]["top1"]
        table.add_row(name, f"{acc['teacher']['top1']:.2%}",
                      f"{acc['ablation']['decompose_only']['ensemble']['top1']:.2%}",
                      f"{acc['ablation']['decompose_aggregate']['ensemble']['top1']:.2%}",
                      f"{sum(subs) / len(subs):.2%}", f"{acc['ensemble']['top1']:.2%}", f"{delta * 100:+.2f} pt")
    console.print(table)
    missing = results[f"boost+dropout{args.dropout}/s0"].get("missing", {})
    for device, s in missing.items():
        console.print(f"with device dropout, answering without {device}: {s['top1']:.2%}")
    ratio = plan_doc["predicted"]["slowest_device_ratio"]
    console.print(f"predicted latency on the slowest device ({ratio['device']}): sub-model "
                  f"{ratio['submodel_ms']:.2f} ms vs teacher {ratio['teacher_ms']:.2f} ms = {ratio['ratio']:.0%}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"plan": str(args.plan), "policy": policy.to_dict(), "results": results,
                                    "slowest_device_ratio": ratio, "epochs": args.epochs}, indent=2) + "\n")
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
