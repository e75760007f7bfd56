"""The papers' edge ensembles side by side: CoFormer, DeViT, ED-ViT, the uniform split, one pruned model.

    sudo .venv/bin/python benchmarks/methods.py [--tasks digits fashion-mnist] [--rate 10] [--delay 1]

For each task (its shipped teacher) every method plans for the default emulated devices with every
worker's link at `--rate` Mbit/s and `--delay` ms one way, clients sending uint8 pixels:

    coformer   `shoal plan --pareto 4` (BO over decompositions, δ = 1 / teacher latency; the primary and
               every variant of its front are measured, to compare the others at equal latency)
    uniform    `shoal plan --strategy uniform` (CoFormer Fig. 11: every device the same shape)
    devit      `shoal plan --method devit --target-ms T`  (T: CoFormer's predicted latency, so the
    edvit      `shoal plan --method edvit --target-ms T`   three are compared at the same budget)
    single     `shoal plan` on the central device alone (the best pruned model a user could run there)

Then each plan is served (`LocalCluster`, every worker in its own network namespace behind that
link, each device under its CPU limit) and timed. Per plan: test top-1 with its n and 95% Wilson
interval (the calibrated ensemble, plan.json), the planner's predicted T and the measured
end-to-end p50, bytes on the wire per request (input to every worker + the features back), per
device FLOPs and memory, and planning time. DeViT, ED-ViT and the uniform split are then set
against the most accurate CoFormer plan (primary or variant) measured no more than 5% slower.
The teacher alone on the central device's share is timed once per task. Writes
benchmarks/results/methods.json; `--markdown` prints the README table.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from rich.table import Table

from shoal.commands._common import console
from shoal.data.datasets import default_teacher_for
from shoal.devices.spec import default_device_set, device_set_to_yaml
from shoal.errors import ConfigError
from shoal.models.accounting import spec_cost
from shoal.models.teacher import load_teacher
from shoal.plan.directory import load_plan
from shoal.planner.pipeline import run_plan
from shoal.planner.settings import CalibrationSettings, PlanRequest, SearchSettings
from shoal.runtime.evaldata import resolve_test_data
from shoal.runtime.netns import netns_unavailable_reason
from shoal.utils.io import atomic_write_text
from shoal.utils.stats import wilson_interval

sys.path.insert(0, str(Path(__file__).resolve().parent))
from network import measure, teacher_alone  # noqa: E402

METHODS = ("coformer", "uniform", "devit", "edvit", "single")


def device_file(where: Path, task: str | None, rate: float, delay: float, central_only: bool) -> str:
    """The default device set of `task`'s teacher (its profiles) with every worker's link at `rate` /
    `delay`, or its central device alone."""
    teacher = load_teacher(default_teacher_for(task))
    devices = default_device_set(family=None if teacher.is_default else teacher.config.fingerprint())
    kept = [d if d.central else replace(d, link_mbps=rate, link_latency_ms=delay) for d in devices.devices
            if d.central or not central_only]
    path = where / f"{task or 'digits'}-{'central' if central_only else 'devices'}.yaml"
    path.write_text(device_set_to_yaml(kept))
    return str(path)


def plan_one(method: str, task: str | None, out: Path, devices: str, single: str, args: argparse.Namespace,
             target_ms: float | None) -> float:
    """Plan with `method`; returns the wall seconds."""
    search = SearchSettings(init=args.init, iterations=args.iterations,
                            pareto=args.pareto if method == "coformer" else 0,
                            strategy="uniform" if method == "uniform" else "bo")  # type: ignore[arg-type]
    request = PlanRequest(
        data=task, devices=single if method == "single" else devices, out=str(out), search=search,
        calibration=CalibrationSettings(epochs=args.epochs, aggregator_epochs=args.aggregator_epochs),
        max_per_split=args.max_per_split, input_format="uint8",
        method=method if method in ("devit", "edvit") else "coformer",  # type: ignore[arg-type]
        target_ms=target_ms if method in ("devit", "edvit") else None)
    started = time.perf_counter()
    run_plan(request)
    return time.perf_counter() - started


def row_of(method: str, plan_dir: Path, seconds: float, args: argparse.Namespace, images: torch.Tensor,
           teacher_ms: float) -> dict[str, Any]:
    plan = load_plan(plan_dir)
    doc = plan.document
    acc = doc.accuracy
    assert acc is not None and doc.predicted is not None
    top1, n = acc.ensemble.top1, acc.n
    low, high = wilson_interval(round(top1 * n), n)
    measured = measure(plan_dir, plan, args.rate, args.delay, args.requests, True, images, "uint8")
    per_device = {}
    for name in plan.devices.names:
        cost = spec_cost(plan.config, plan.spec(name))
        per_device[name] = {"shape": plan.spec(name).describe(), "mflops": cost.flops / 1e6,
                            "memory_mib": cost.memory_bytes / 2**20}
    workers = len(plan.devices.names) - 1
    wire = measured["input_bytes"] * workers + sum(
        b for name, b in measured["feature_bytes"].items() if name != plan.devices.central.name)
    return {"method": method, "plan": str(plan_dir), "top1": top1, "top1_ci95": [low, high], "n": n,
            "teacher_top1": acc.teacher.top1 if acc.teacher else None,
            "predicted_ms": doc.predicted.total_ms, "predicted_at_link_ms": measured["predicted_ms"],
            "measured_p50_ms": measured["e2e_p50_ms"], "speedup_vs_teacher": teacher_ms / measured["e2e_p50_ms"],
            "wire_bytes": wire, "devices": per_device, "planning_s": seconds,
            "choice": doc.method.choice if doc.method else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=["digits", "fashion-mnist"])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--rate", type=float, default=10.0, help="Mbit/s of every worker's link")
    parser.add_argument("--delay", type=float, default=1.0, help="one-way ms")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--aggregator-epochs", type=int, default=30)
    parser.add_argument("--init", type=int, default=8)
    parser.add_argument("--iterations", type=int, default=16)
    parser.add_argument("--pareto", type=int, default=4, help="CoFormer's front: variants compared at equal latency")
    parser.add_argument("--max-per-split", type=int, default=3000)
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--work", type=Path, default=None, help="keep the plans here (default: a temporary dir)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "methods.json")
    parser.add_argument("--markdown", action="store_true", help="print the README table")
    args = parser.parse_args()
    reason = netns_unavailable_reason()
    if reason:
        sys.exit(f"needs network namespaces: {reason}")
    results: dict[str, Any] = {"rate_mbit": args.rate, "delay_ms": args.delay, "input": "uint8",
                               "settings": {k: v for k, v in vars(args).items() if k not in ("out", "work")},
                               "tasks": {}}
    with tempfile.TemporaryDirectory(prefix="shoal-methods-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        for task in args.tasks:
            data = None if task == "digits" else task
            devices = device_file(work, data, args.rate, args.delay, central_only=False)
            single = device_file(work, data, args.rate, args.delay, central_only=True)
            rows, target, teacher_t = [], None, None
            teacher_ms = None
            for method in args.methods:
                out = work / task / method
                console.print(f"{task}: planning {method} -> {out}", highlight=False)
                if method in ("devit", "edvit") and target is None:
                    console.print("  (no CoFormer plan to match: the devices' budgets alone size it)")
                # DeViT / ED-ViT: CoFormer's T; where they cannot reach it, the teacher alone's; else budgets only
                goals = [t for t in (target, teacher_t) if t is not None] if method in ("devit", "edvit") else []
                failures: list[str] = []
                for goal in [*goals, None]:
                    try:
                        seconds = plan_one(method, data, out, devices, single, args, goal)
                        break
                    except ConfigError:
                        if goal is None:
                            raise
                        failures.append(f"cannot meet {goal:.2f} ms")
                        console.print(f"  {failures[-1]}", highlight=False)
                note = "; ".join(failures + [f"sized for {goal:.2f} ms" if goal is not None
                                             else "sized by the budgets alone"]) if method in ("devit", "edvit") else ""
                plan = load_plan(out)
                if method == "coformer":
                    assert plan.document.predicted is not None
                    target = plan.document.predicted.total_ms
                    teacher_t = plan.document.predicted.teacher_ms[plan.devices.central.name]
                if teacher_ms is None:
                    teacher_ms = teacher_alone(plan, True)["latency"]["median_ms"]
                test, why = resolve_test_data(plan.config, plan.teacher_source, data)
                if test is None:
                    sys.exit(f"no test data: {why}")
                rows.append(row_of(method, out, seconds, args, test.images[:32], teacher_ms) | {"note": note})
                for variant in plan.document.variants:   # CoFormer's front: each variant measured too
                    if variant.dir != ".":
                        rows.append(row_of(f"coformer/{variant.name}", out / variant.dir, 0.0, args,
                                           test.images[:32], teacher_ms) | {"note": "a variant of the front"})
            results["tasks"][task] = {"teacher_alone_p50_ms": teacher_ms, "target_ms": target, "rows": rows,
                                      "at_equal_latency": compare(rows)}
    report(results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(results, indent=1) + "\n")
    console.print(f"wrote {args.out}")
    if args.markdown:
        print(markdown(results))


def compare(rows: list[dict[str, Any]], slack: float = 1.05) -> dict[str, Any]:
    """For DeViT, ED-ViT and the uniform split: the most accurate CoFormer plan (its primary or a
    variant of its front) measured at most 5% slower, and the difference in top-1 with whether the
    two 95% intervals overlap."""
    coformer = [r for r in rows if r["method"].startswith("coformer")]
    out = {}
    for r in rows:
        if r["method"] not in ("devit", "edvit", "uniform"):
            continue
        fast_enough = [c for c in coformer if c["measured_p50_ms"] <= r["measured_p50_ms"] * slack]
        if not fast_enough:
            out[r["method"]] = {"coformer": None, "why": "no CoFormer plan is as fast"}
            continue
        best = max(fast_enough, key=lambda c: c["top1"])
        overlap = best["top1_ci95"][0] <= r["top1_ci95"][1] and r["top1_ci95"][0] <= best["top1_ci95"][1]
        out[r["method"]] = {"coformer": best["method"], "coformer_p50_ms": best["measured_p50_ms"],
                            "its_p50_ms": r["measured_p50_ms"],
                            "coformer_minus_it_pt": (best["top1"] - r["top1"]) * 100,
                            "intervals_overlap": overlap}
    return out


def report(results: dict[str, Any]) -> None:
    for task, t in results["tasks"].items():
        table = Table(title=f"{task}: {results['rate_mbit']:g} Mbit/s, {results['delay_ms']:g} ms links; teacher "
                            f"alone {t['teacher_alone_p50_ms']:.2f} ms")
        for col in ("method", "top-1 [95% CI] n", "T pred ms", "p50 ms", "× teacher", "wire B", "MFLOPs per device",
                    "MiB per device", "plan s"):
            table.add_column(col, justify="left" if col == "method" else "right")
        for r in t["rows"]:
            table.add_row(r["method"], f"{r['top1']:.2%} [{r['top1_ci95'][0]:.1%}, {r['top1_ci95'][1]:.1%}] {r['n']}",
                          f"{r['predicted_ms']:.2f}", f"{r['measured_p50_ms']:.2f}",
                          f"{r['speedup_vs_teacher']:.2f}", str(r["wire_bytes"]),
                          " / ".join(f"{d['mflops']:.1f}" for d in r["devices"].values()),
                          " / ".join(f"{d['memory_mib']:.2f}" for d in r["devices"].values()),
                          f"{r['planning_s']:.0f}")
        console.print(table)
        for method, c in t["at_equal_latency"].items():
            if c["coformer"] is None:
                console.print(f"{method}: {c['why']}", highlight=False)
            else:
                console.print(f"{method} ({c['its_p50_ms']:.2f} ms) against {c['coformer']} "
                              f"({c['coformer_p50_ms']:.2f} ms): CoFormer {c['coformer_minus_it_pt']:+.2f} pt"
                              + (" (95% intervals overlap)" if c["intervals_overlap"] else ""), highlight=False)


def markdown(results: dict[str, Any]) -> str:
    lines = ["| task | method | test top-1 [95% CI] (n) | predicted ms | measured p50 ms | speed-up vs teacher | "
             "bytes/request | MFLOPs per device | MiB per device | planning |",
             "|---|---|---|---:|---:|---:|---:|---|---|---:|"]
    for task, t in results["tasks"].items():
        for r in t["rows"]:
            lines.append(
                f"| {task} | {r['method']} | {r['top1']:.2%} [{r['top1_ci95'][0]:.1%}, {r['top1_ci95'][1]:.1%}] "
                f"({r['n']}) | {r['predicted_ms']:.2f} | {r['measured_p50_ms']:.2f} | "
                f"{r['speedup_vs_teacher']:.2f}× | {r['wire_bytes']} | "
                + " / ".join(f"{d['mflops']:.1f}" for d in r["devices"].values()) + " | "
                + " / ".join(f"{d['memory_mib']:.2f}" for d in r["devices"].values())
                + f" | {r['planning_s'] / 60:.1f} min |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
