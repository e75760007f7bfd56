"""Adaptive serving when links and devices change: the SLO-driven central node against every static
variant of the plan and the teacher alone, phase by phase.

    sudo .venv/bin/python benchmarks/adaptive.py --plan DIR --data fashion-mnist [--slo-ms 8] [--phase-s 6]

DIR is a plan, ideally `shoal plan --pareto K ... --device-dropout 0.2`. Every worker runs in its own
network namespace behind a shaped link (`NetnsLink`, tbf + the delay proxy or netem); one scripted
scenario of six phases is played to each mode in turn, each device under its CPU limit:

    fast link    100 Mbit/s, no added delay
    10 Mbit/s    10 Mbit/s, 5 ms one way
    2 Mbit/s     2 Mbit/s, 50 ms one way
    slowed       links fast again; the victim's CPU quota cut to a quarter (a board that throttles,
                 or another process landing on it)
    stopped      the victim's quota back; the victim stopped (SIGSTOP)
    resumed      SIGCONT: it is back

The victim is the worker that carries the largest share of the plan's own (primary) policy. The
changes happen without warning, between two requests: whatever a mode needs to notice them counts.

Modes: "adaptive" serves the whole plan with `--slo-ms` (variant choice from live estimates, answers
by the SLO from the devices back in time, demotion, idle probes); "static <variant>" serves one
variant's plan directory as `shoal serve local` does without an SLO (wait for every device up to
the fan-out deadline; a missing device is an error). The teacher alone is timed on the central
device's share as `shoal bench` does (compute only: no gRPC, a demanding baseline).

Each phase lasts `--phase-s` seconds, a request every `--interval-ms` (a camera's frame rate; a
request that takes longer delays the next, so a slow mode answers fewer). Per phase and mode:
requests answered within the SLO at the client (and at the central node, receipt to reply, what
`--slo-ms` budgets), p50/p99 at the client, errors, top-1 through the runtime on the same test
images for every mode (n and 95% Wilson interval), the variants used. Writes
benchmarks/results/adaptive.json and benchmarks/results/adaptive.png (the latency of every request
of every mode over the scenario, the SLO drawn across). Needs root (`ip`, `tc`, cgroups).
"""

from __future__ import annotations

import argparse
import json
import signal
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

from shoal.plan.directory import load_plan
from shoal.runtime import shoal_pb2 as pb
from shoal.runtime.bench import prepare_requests, run_paced
from shoal.runtime.client import ShoalClient
from shoal.runtime.cluster import LocalCluster
from shoal.runtime.evaldata import resolve_test_data, shuffled
from shoal.runtime.netns import NetnsLink, netns_unavailable_reason
from shoal.runtime.timing import time_teacher
from shoal.runtime.variants import load_variants, served_devices
from shoal.utils.io import atomic_write_text


@dataclass(frozen=True)
class Phase:
    name: str
    rate_mbit: float
    delay_ms: float
    quota_factor: float = 1.0   # the victim's CPU quota, as a fraction of its planned one
    stopped: bool = False


PHASES = (
    Phase("fast link", 100.0, 0.0),
    Phase("10 Mbit/s", 10.0, 5.0),
    Phase("2 Mbit/s", 2.0, 50.0),
    Phase("slowed", 100.0, 0.0, quota_factor=0.25),
    Phase("stopped", 100.0, 0.0, stopped=True),
    Phase("resumed", 100.0, 0.0),
)


def play(plan_dir: Path, slo_ms: float | None, victim: str, args: argparse.Namespace,
         requests: list[pb.PredictRequest], labels: torch.Tensor) -> dict[str, Any]:
    """The whole scenario against one mode: a cluster of `plan_dir` (with `slo_ms`: adaptive)."""
    workers = [d.name for d in served_devices(load_variants(load_plan(plan_dir))).devices if not d.central]
    out: dict[str, Any] = {}
    first = PHASES[0]
    with ExitStack() as stack:
        links = {n: stack.enter_context(NetnsLink(first.rate_mbit, first.delay_ms, n, force_proxy=True))
                 for n in workers}
        cluster = stack.enter_context(LocalCluster(plan_dir, slo_ms=slo_ms,
                                                   placements={n: link.placement() for n, link in links.items()}))
        planned = cluster.specs[victim].cpu_quota if victim in workers else None
        with ShoalClient(cluster.central_target, timeout_s=10.0) as client:
            for i in range(10):
                client.call(requests[i])
            for index, phase in enumerate(PHASES):
                for link in links.values():
                    if (link.rate_mbit, link.delay_ms) != (phase.rate_mbit, phase.delay_ms):
                        link.change(phase.rate_mbit, phase.delay_ms)
                if victim in workers:
                    if planned is not None:
                        cluster.set_quota(victim, planned * phase.quota_factor)
                    cluster.kill(victim, signal.SIGSTOP if phase.stopped else signal.SIGCONT)
                out[phase.name] = run_paced(client, requests, labels, index * 1000, args.phase_s, args.interval_ms,
                                            args.slo_ms)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--plan", type=Path, required=True)
    parser.add_argument("--data", default=None, help="the plan's task, for the teacher's own top-1")
    parser.add_argument("--slo-ms", type=float, default=8.0)
    parser.add_argument("--phase-s", type=float, default=6.0, help="seconds per phase")
    parser.add_argument("--interval-ms", type=float, default=20.0, help="one request every ... ms (50/s)")
    parser.add_argument("--modes", nargs="*", default=None, help="adaptive and/or variant names (default: all)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "adaptive.json")
    args = parser.parse_args()
    console = Console()
    reason = netns_unavailable_reason()
    if reason:
        raise SystemExit(f"needs network namespaces: {reason}")
    plan = load_plan(args.plan)
    shares = {n: plan.spec(n).width * max(1, len(plan.spec(n).layers)) for n in plan.policy.devices[1:]}
    if not shares:
        shares = {n: v.plan.spec(n).width * max(1, len(v.plan.spec(n).layers))
                  for v in load_variants(plan) for n in v.devices[1:]}
    if not shares:
        raise SystemExit("no variant of this plan uses a worker: nothing to slow or stop")
    victim = max(shares, key=lambda n: shares[n])
    test, note = resolve_test_data(plan.config, plan.teacher_source, args.data)
    if test is None:
        raise SystemExit(f"no test data: {note}")
    images, labels = shuffled(test)   # the same images, in the same order, for every mode
    requests = prepare_requests(images, top_k=1)   # float32, as the scenario was first measured
    variants = {v.name: v for v in plan.document.variants} or {}
    modes = {"adaptive": (args.plan, args.slo_ms)}
    modes |= {f"static {name}": (args.plan / v.dir, None) for name, v in variants.items()}
    if not variants:
        modes["static primary"] = (args.plan, None)
    if args.modes:
        modes = {k: m for k, m in modes.items() if k.removeprefix("static ") in args.modes}
    central = plan.devices.central
    teacher = time_teacher(plan.teacher_source, plan.config.input_shape, repeats=200, warmup=20,
                           threads=central.threads, limit=central, data=args.data)
    results: dict[str, Any] = {
        "plan": str(args.plan), "slo_ms": args.slo_ms, "victim": victim, "phase_s": args.phase_s,
        "interval_ms": args.interval_ms,
        "phases": [p.__dict__ for p in PHASES],
        "variants": [{"name": v.name, "devices": v.devices, "predicted_ms": v.latency_ms, "top1": v.top1}
                     for v in variants.values()],
        "teacher_alone": {"p50_ms": teacher["latency"]["median_ms"], "top1": teacher.get("top1"),
                          "n": teacher.get("n")},
        "modes": {}}
    console.print(f"teacher alone on {central.name}: p50 {teacher['latency']['median_ms']:.2f} ms; "
                  f"victim {victim}; SLO {args.slo_ms:g} ms", highlight=False)
    for label, (plan_dir, slo) in modes.items():
        console.print(f"{label}: {len(PHASES)} phases of {args.phase_s:g} s, a request every {args.interval_ms:g} ms")
        results["modes"][label] = play(plan_dir, slo, victim, args, requests, labels)
    report(console, results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(results, indent=1) + "\n")
    figure(results, args.out.with_suffix(".png"))
    console.print(f"wrote {args.out} and {args.out.with_suffix('.png')}")


def meets(r: dict[str, Any]) -> bool:
    """A mode meets the SLO in a phase: at least 99% of its requests within it at the client."""
    return r["within_slo"] >= 0.99 and r["answered"] == r["requests"]


def report(console: Console, results: dict[str, Any]) -> None:
    slo, teacher = results["slo_ms"], results["teacher_alone"]["p50_ms"]
    table = Table(title=f"SLO {slo:g} ms; victim {results['victim']}; teacher alone p50 {teacher:.2f} ms")
    for col in ("phase", "mode", "within SLO", "(central)", "p50 ms", "p99 ms", "errors", "top-1 [95% CI] n",
                "variants"):
        table.add_column(col, justify="left" if col in ("phase", "mode", "errors", "variants") else "right")
    summary = {}
    for phase in (p["name"] for p in results["phases"]):
        rows = {label: runs[phase] for label, runs in results["modes"].items()}
        for label, r in rows.items():
            top1 = (f"{r['top1']:.1%} [{r['top1_ci95'][0]:.1%}, {r['top1_ci95'][1]:.1%}] {r['n']}"
                    if r["top1"] is not None else "-")
            table.add_row(phase, label, f"{r['within_slo']:.1%}", f"{r['within_slo_server']:.1%}",
                          f"{r['p50_ms']:.1f}", f"{r['p99_ms']:.1f}", str(r["errors"] or "-"), top1,
                          ", ".join(f"{k} {v}" for k, v in r["variants"].items()))
        static = {k: r for k, r in rows.items() if k.startswith("static") and meets(r) and r["top1"] is not None}
        best = max(static, key=lambda k: static[k]["top1"]) if static else None
        adaptive = rows.get("adaptive")
        summary[phase] = {
            "best_static_meeting_slo": best,
            "best_static_top1": static[best]["top1"] if best else None,
            "adaptive_within_slo": adaptive["within_slo"] if adaptive else None,
            "adaptive_top1_minus_best_static": (adaptive["top1"] - static[best]["top1"]
                                                if adaptive and best and adaptive["top1"] is not None else None),
            "adaptive_p50_over_teacher": adaptive["p50_ms"] / teacher if adaptive else None,
            "static_primary_within_slo": rows["static primary"]["within_slo"] if "static primary" in rows else None,
        }
        table.add_section()
    results["summary"] = summary
    console.print(table)
    for phase, s in summary.items():
        gap = s["adaptive_top1_minus_best_static"]
        console.print(f"{phase}: adaptive {s['adaptive_within_slo'] or 0:.1%} within SLO, "
                      f"p50 {s['adaptive_p50_over_teacher'] or 0:.2f}x the teacher alone; best static meeting "
                      f"the SLO: {s['best_static_meeting_slo']} "
                      + (f"(adaptive {gap * 100:+.1f} pt)" if gap is not None else "")
                      + (f"; static primary {s['static_primary_within_slo']:.1%} within SLO"
                         if s["static_primary_within_slo"] is not None else ""), highlight=False)


def figure(results: dict[str, Any], path: Path) -> None:
    """Latency of every request at the client, phase after phase, one colour per mode."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(11, 4.5))
    modes = list(results["modes"])
    colours = dict(zip(modes, plt.get_cmap("tab10").colors))
    for k, phase in enumerate(results["phases"]):
        start, end = k * results["phase_s"], (k + 1) * results["phase_s"]
        if k % 2:
            ax.axvspan(start, end, alpha=0.08, color="grey")
        ax.text(start + 0.1, 0.97, phase["name"], transform=ax.get_xaxis_transform(), fontsize=8, va="top")
        for m in modes:
            ys = results["modes"][m][phase["name"]]["latencies_ms"]
            xs = [start + results["phase_s"] * i / max(len(ys), 1) for i in range(len(ys))]
            ax.plot(xs, ys, ".", ms=2 if m == "adaptive" else 1.5, color=colours[m],
                    label=m if k == 0 else None, zorder=3 if m == "adaptive" else 2)
    ax.axhline(results["slo_ms"], color="red", lw=1, label=f"SLO {results['slo_ms']:g} ms")
    ax.axhline(results["teacher_alone"]["p50_ms"], color="grey", lw=1, ls="--", label="teacher alone p50")
    ax.set_yscale("log")
    ax.set_xlabel("time in the scenario (s)")
    ax.set_ylabel("latency at the client (ms)")
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, markerscale=4)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
