"""Adaptive serving under faults: an SLO-driven central node against the static plan, phase by phase.

    .venv/bin/python benchmarks/adaptive.py --plan DIR [--slo-ms 20] [--requests 150]

DIR is a plan (ideally `shoal plan --pareto K`). Two local clusters of it run one after
the other under the same script of faults, each device under its CPU limit:

    normal     every device as planned
    stopped    one worker (the one with the largest sub-model in any variant) stopped
               with SIGSTOP
    resumed    SIGCONT: it is back

"static" is `shoal serve local` as before (no SLO: wait for every device up to the
fan-out deadline); "adaptive" is `--slo-ms` (variant choice from live estimates,
answers by the SLO from the devices back in time, demotion). Per phase: the share of
requests answered within the SLO (seen by the client, and by the central node from receipt
to reply: what `--slo-ms` budgets), p50/p99 of the client's latency, errors, top-1
on the test images through the runtime (n and 95% Wilson interval), and the variants
used; and the teacher alone on the central device's share (as `shoal bench` times it).
Writes benchmarks/results/adaptive.json. Not covered here (issue 13): links that
change during the run (netns + tc) and a device slowed by a lower quota.
"""

from __future__ import annotations

import argparse
import json
import signal
import statistics
import time
from collections import Counter
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from shoal.plan.directory import load_plan
from shoal.runtime.client import ShoalClient
from shoal.runtime.cluster import LocalCluster
from shoal.runtime.evaldata import resolve_test_data
from shoal.runtime.status import RemoteError
from shoal.runtime.timing import time_teacher
from shoal.runtime.variants import load_variants
from shoal.utils.stats import quantile, wilson_interval

PHASES = ("normal", "stopped", "resumed")


def run_phase(client: ShoalClient, images: Any, labels: Any, requests: int, slo_ms: float) -> dict[str, Any]:
    latencies, within, correct, answered, errors = [], 0, 0, 0, Counter()
    server_within = 0
    variants: Counter[str] = Counter()
    for i in range(requests):
        k = i % len(images)
        t0 = time.perf_counter()
        try:
            p = client.predict(images[k:k + 1], top_k=1, timeout_s=5.0)
        except RemoteError as exc:
            errors[exc.code.name] += 1
            latencies.append((time.perf_counter() - t0) * 1e3)
            continue
        ms = (time.perf_counter() - t0) * 1e3
        latencies.append(ms)
        answered += 1
        within += ms <= slo_ms
        server_within += p.server_ms <= slo_ms
        correct += int(p.labels[0] == labels[k])
        variants[p.variant] += 1
    ordered = sorted(latencies)
    low, high = wilson_interval(correct, answered) if answered else (0.0, 0.0)
    return {"requests": requests, "answered": answered, "within_slo": within / requests,
            "within_slo_server": server_within / requests,
            "p50_ms": statistics.median(ordered), "p99_ms": quantile(ordered, 0.99), "errors": dict(errors),
            "top1": correct / answered if answered else None, "top1_ci95": [low, high], "n": answered,
            "variants": dict(variants)}


def scenario(plan_dir: Path, slo_ms: float | None, victim: str, requests: int, images: Any, labels: Any,
             budget_slo: float) -> dict[str, Any]:
    out = {}
    with LocalCluster(plan_dir, slo_ms=slo_ms) as cluster:
        with ShoalClient(cluster.central_target, timeout_s=10.0) as client:
            for i in range(10):
                client.predict(images[i:i + 1])
            for phase in PHASES:
                if phase == "stopped":
                    cluster.kill(victim, signal.SIGSTOP)
                if phase == "resumed":
                    cluster.kill(victim, signal.SIGCONT)
                    time.sleep(1.0)
                out[phase] = run_phase(client, images, labels, requests, budget_slo)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--plan", type=Path, required=True)
    parser.add_argument("--slo-ms", type=float, default=20.0)
    parser.add_argument("--requests", type=int, default=150)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "adaptive.json")
    args = parser.parse_args()
    console = Console()
    plan = load_plan(args.plan)
    sizes = {n: v.plan.spec(n).width * max(1, len(v.plan.spec(n).layers))
             for v in load_variants(plan) for n in v.devices[1:]}
    if not sizes:
        raise SystemExit("no variant of this plan uses a worker: nothing to stop")
    victim = max(sizes, key=lambda n: sizes[n])
    test, note = resolve_test_data(plan.config, plan.teacher_source, None)
    if test is None:
        raise SystemExit(f"no test data: {note}")
    images, labels = test.images, test.labels
    results = {"plan": str(args.plan), "slo_ms": args.slo_ms, "victim": victim,
               "variants": [v.name for v in plan.document.variants] or ["primary"]}
    central = plan.devices.central
    teacher = time_teacher(plan.teacher_source, plan.config.input_shape, repeats=100, warmup=10,
                           threads=central.threads, limit=central)
    results["teacher_alone_p50_ms"] = teacher["latency"]["median_ms"]
    console.print(f"teacher alone on {central.name}: p50 {results['teacher_alone_p50_ms']:.2f} ms", highlight=False)
    for label, slo in (("static", None), ("adaptive", args.slo_ms)):
        console.print(f"{label}: {', '.join(PHASES)} ({args.requests} requests each; {victim} stopped in phase 2)")
        results[label] = scenario(args.plan, slo, victim, args.requests, images, labels, args.slo_ms)
    table = Table(title=f"SLO {args.slo_ms:g} ms; {victim} stopped then resumed ({args.requests} requests/phase)")
    for col in ("phase", "mode", "within SLO (client)", "(server)", "p50 ms", "p99 ms", "errors", "top-1 [95% CI] n",
                "variants"):
        table.add_column(col, justify="right" if col not in ("phase", "mode", "variants", "errors") else "left")
    for phase in PHASES:
        for label in ("static", "adaptive"):
            r = results[label][phase]
            top1 = (f"{r['top1']:.1%} [{r['top1_ci95'][0]:.1%}, {r['top1_ci95'][1]:.1%}] {r['n']}"
                    if r["top1"] is not None else "-")
            table.add_row(phase, label, f"{r['within_slo']:.1%}", f"{r['within_slo_server']:.1%}",
                          f"{r['p50_ms']:.1f}", f"{r['p99_ms']:.1f}",
                          str(r["errors"] or "-"), top1, ", ".join(f"{k} {v}" for k, v in r["variants"].items()))
    console.print(table)
    for label in ("static", "adaptive"):
        worst = max(results[label][phase]["p50_ms"] for phase in PHASES)
        console.print(f"{label}: worst phase p50 {worst:.2f} ms = {worst / results['teacher_alone_p50_ms']:.2f}× "
                      "the teacher alone on the central node", highlight=False)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
