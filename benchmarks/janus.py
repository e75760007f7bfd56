"""Janus under a changing link: the scheduler against fixed splits and shoal's aggregate-edge mode.

    sudo .venv/bin/python benchmarks/janus.py --plan JANUS_DIR --edge-plan COFORMER_DIR --data fashion-mnist \
        [--sla-ms 25] [--phase-s 8] [--interval-ms 40]

JANUS_DIR is a Janus plan (`shoal plan --method janus --devices benchmarks/janus-devices.yaml`): a camera
at a quarter of a core (the device) and a server with a whole core. COFORMER_DIR is shoal's
aggregate-edge plan for the same two machines with the camera as the central node
(`shoal plan --devices benchmarks/janus-edge-devices.yaml --pareto 4`). Both are served as
`shoal serve local` serves them (`LocalCluster`: each process under its device's CPU limit), the
server in its own network namespace behind a shaped link (`NetnsLink`: tbf and the delay proxy).
A client on the camera's side sends a request every `--interval-ms` (a camera's frame rate; a request
that takes longer delays the next) while this process changes the link at each phase boundary,
without warning:

    scenario   2 Mbit/s, 50 ms one way  ->  10 Mbit/s, 20 ms  ->  50 Mbit/s, 5 ms
    sweep      1, 3, 10, 30, 100 Mbit/s, 1 ms one way (janus and aggregate-edge only)

Modes: "janus" (α and the split per request, Algorithm 1, from the bandwidth it measures on its own
transfers); "fixed α:s" for every request (the baselines: 0:0 sends the image to the server,
0:<blocks + 1> runs everything on the camera, and splits between, with and without the largest α);
"aggregate-edge" (the CoFormer plan with `--slo-ms` = the SLA: variant choice, demotion, probes);
"aggregate-edge static" (its primary, no SLO). Per phase and mode: the SLA violation ratio at the
client (late or failed), top-1 on the same shuffled test images (n, 95% Wilson interval), answers per
second, p50/p99, the configurations used. Writes benchmarks/results/janus.json, janus.png (every
request's latency over the scenario) and janus-sweep.png (p50 and top-1 against bandwidth).
Needs root (`ip`, `tc`, cgroups).
"""

from __future__ import annotations

import argparse
import json
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

from shoal.models import DEFAULT_TEACHER, load_teacher
from shoal.plan.janus import JanusPlan
from shoal.runtime import shoal_pb2 as pb
from shoal.runtime.bench import prepare_requests, run_paced
from shoal.runtime.client import ShoalClient
from shoal.runtime.cluster import LocalCluster
from shoal.runtime.evaldata import resolve_test_data, shuffled
from shoal.runtime.netns import NetnsLink, netns_unavailable_reason
from shoal.utils.io import atomic_write_text
from shoal.utils.stats import wilson_interval


@dataclass(frozen=True)
class Phase:
    name: str
    rate_mbit: float
    delay_ms: float


SCENARIO = (Phase("2 Mbit/s, 50 ms", 2.0, 50.0), Phase("10 Mbit/s, 20 ms", 10.0, 20.0),
            Phase("50 Mbit/s, 5 ms", 50.0, 5.0))
SWEEP_DELAY_MS = 1.0
SWEEP = tuple(Phase(f"{r:g} Mbit/s", r, SWEEP_DELAY_MS) for r in (1.0, 3.0, 10.0, 30.0, 100.0))


@dataclass(frozen=True)
class Mode:
    """One way of serving: a plan directory, its server-side device, and what the front is told."""

    name: str
    plan: Path
    server: str
    slo_ms: float | None = None
    extra: tuple[str, ...] = ()


def play(mode: Mode, phases: tuple[Phase, ...], requests: list[pb.PredictRequest], labels: torch.Tensor,
         args: argparse.Namespace, front: str) -> dict[str, Any]:
    """The phases against one mode; the link to its server changes at each boundary."""
    out: dict[str, Any] = {}
    with ExitStack() as stack:
        link = stack.enter_context(NetnsLink(phases[0].rate_mbit, phases[0].delay_ms, "janus", force_proxy=True))
        cluster = stack.enter_context(LocalCluster(mode.plan, slo_ms=mode.slo_ms,
                                                   placements={mode.server: link.placement()},
                                                   extra_args={front: list(mode.extra)} if mode.extra else None))
        with ShoalClient(cluster.central_target, timeout_s=10.0) as client:
            for i in range(10):   # connect, warm up
                client.call(requests[i])
            for index, phase in enumerate(phases):
                if (link.rate_mbit, link.delay_ms) != (phase.rate_mbit, phase.delay_ms):
                    link.change(phase.rate_mbit, phase.delay_ms)
                out[phase.name] = run_paced(client, requests, labels, index * 1000, args.phase_s,
                                            args.interval_ms, args.sla_ms)
    return out


def overall(runs: dict[str, Any]) -> dict[str, Any]:
    """A mode over the whole scenario: violations, top-1 (n, 95% CI) and answers per second."""
    sent = sum(r["requests"] for r in runs.values())
    late = sum(r["requests"] - round(r["within_slo"] * r["requests"]) for r in runs.values())
    n = sum(r["n"] for r in runs.values())
    correct = sum(round((r["top1"] or 0.0) * r["n"]) for r in runs.values())
    low, high = wilson_interval(correct, n) if n else (0.0, 0.0)
    return {"requests": sent, "violation_ratio": late / sent if sent else 1.0, "top1": correct / n if n else None,
            "top1_ci95": [low, high], "n": n}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--plan", type=Path, required=True, help="the Janus plan")
    parser.add_argument("--edge-plan", type=Path, default=None, help="shoal's aggregate-edge plan, same machines")
    parser.add_argument("--data", default=None)
    parser.add_argument("--sla-ms", type=float, default=25.0)
    parser.add_argument("--phase-s", type=float, default=8.0)
    parser.add_argument("--interval-ms", type=float, default=40.0)
    parser.add_argument("--modes", nargs="*", default=None, help="only these modes (names as printed)")
    parser.add_argument("--no-sweep", action="store_true", help="skip the bandwidth sweep")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "janus.json")
    args = parser.parse_args()
    console = Console()
    reason = netns_unavailable_reason()
    if reason:
        raise SystemExit(f"needs network namespaces: {reason}")
    janus = JanusPlan.read(args.plan)   # a clear line now if it is not a Janus plan
    m = janus.model
    teacher = load_teacher(None if janus.teacher == DEFAULT_TEACHER else janus.teacher)
    test, note = resolve_test_data(teacher.config, janus.teacher, args.data)
    if test is None:
        raise SystemExit(f"no test data: {note}")
    images, labels = shuffled(test)   # the same images, in the same order, for every mode
    requests = prepare_requests(images, 1, janus.input.format, (janus.input.mean, janus.input.std))
    amax, mid, alone = m.configs[-1].alpha, m.candidates[len(m.candidates) // 2], m.depth + 1
    fixed = [(0.0, 0), (0.0, 1), (0.0, mid), (0.0, alone), (amax, mid), (amax, alone)]
    server, camera = janus.server.name, janus.device.name
    modes = [Mode("janus", args.plan, server, args.sla_ms)]
    modes += [Mode(f"fixed {a:g}:{s}", args.plan, server, None, ("--fixed", f"{a:g}:{s}")) for a, s in fixed]
    if args.edge_plan is not None:
        modes += [Mode("aggregate-edge", args.edge_plan, server, args.sla_ms),
                  Mode("aggregate-edge static", args.edge_plan, server)]
    if args.modes:
        modes = [md for md in modes if md.name in args.modes]
    results: dict[str, Any] = {
        "plan": str(args.plan), "edge_plan": str(args.edge_plan) if args.edge_plan else None, "sla_ms": args.sla_ms,
        "phase_s": args.phase_s, "interval_ms": args.interval_ms, "device": janus.device.to_dict(),
        "server": janus.server.to_dict(), "phases": [p.__dict__ for p in SCENARIO],
        "sweep_phases": [p.__dict__ for p in SWEEP],
        "plan_test_top1": {"alpha_0": janus.test_accuracy[0], "alpha_max": janus.test_accuracy[-1],
                           "n": janus.test_n, "alpha_max_value": amax},
        "modes": {}, "sweep": {}}
    for mode in modes:
        console.print(f"{mode.name}: {len(SCENARIO)} phases of {args.phase_s:g} s", highlight=False)
        results["modes"][mode.name] = play(mode, SCENARIO, requests, labels, args, camera)
    if not args.no_sweep:
        for mode in (md for md in modes if md.name in ("janus", "aggregate-edge")):
            console.print(f"sweep, {mode.name}: {len(SWEEP)} phases of {args.phase_s:g} s", highlight=False)
            results["sweep"][mode.name] = play(mode, SWEEP, requests, labels, args, camera)
    report(console, results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(results, indent=1) + "\n")
    figures(results, args.out)
    console.print(f"wrote {args.out} and its figures")


def report(console: Console, results: dict[str, Any]) -> None:
    sla = results["sla_ms"]
    for key, title in (("modes", "scenario"), ("sweep", f"bandwidth sweep, {SWEEP_DELAY_MS:g} ms one way")):
        if not results[key]:
            continue
        table = Table(title=f"Janus {title}: SLA {sla:g} ms, one request every {results['interval_ms']:g} ms")
        for col in ("link", "mode", "SLA violations", "top-1 [95% CI] n", "answers/s", "p50 ms", "p99 ms",
                    "configurations"):
            table.add_column(col, justify="left" if col in ("link", "mode", "configurations") else "right")
        phases = next(iter(results[key].values()))
        for phase in phases:
            for mode, runs in results[key].items():
                r = runs[phase]
                top1 = (f"{r['top1']:.1%} [{r['top1_ci95'][0]:.1%}, {r['top1_ci95'][1]:.1%}] {r['n']}"
                        if r["top1"] is not None else "-")
                table.add_row(phase, mode, f"{1 - r['within_slo']:.1%}", top1,
                              f"{r['answered'] / results['phase_s']:.1f}", f"{r['p50_ms']:.1f}", f"{r['p99_ms']:.1f}",
                              ", ".join(f"{c} ×{n}" for c, n in sorted(r["variants"].items(), key=lambda x: -x[1])[:3]))
            table.add_section()
        console.print(table)
    totals = {mode: overall(runs) for mode, runs in results["modes"].items()}
    results["overall"] = totals
    janus = totals.get("janus")
    fixed = {k: v for k, v in totals.items() if k.startswith("fixed")}
    if janus and fixed and janus["top1"] is not None:
        best = min(fixed, key=lambda k: (fixed[k]["violation_ratio"], -(fixed[k]["top1"] or 0.0)))
        b = fixed[best]
        ratio = b["violation_ratio"] / janus["violation_ratio"] if janus["violation_ratio"] else float("inf")
        results["goal"] = {"best_fixed": best, "best_fixed_violations": b["violation_ratio"],
                           "janus_violations": janus["violation_ratio"], "ratio": ratio,
                           "top1_gap_pt": (janus["top1"] - (b["top1"] or 0.0)) * 100,
                           "met": ratio >= 10 and janus["top1"] >= (b["top1"] or 0.0) - 0.01}
        g = results["goal"]
        console.print(f"whole scenario: janus {janus['violation_ratio']:.1%} violations, top-1 {janus['top1']:.1%}; "
                      f"best fixed split {best}: {b['violation_ratio']:.1%}, top-1 {(b['top1'] or 0):.1%} -> "
                      f"{ratio:.1f}x fewer violations, {g['top1_gap_pt']:+.1f} pt; goal (10x, within 1 pt) "
                      f"{'met' if g['met'] else 'not met'}", highlight=False)
    for mode, t in totals.items():
        console.print(f"  {mode}: {t['violation_ratio']:.1%} violations, top-1 "
                      f"{(t['top1'] or 0):.1%} [{t['top1_ci95'][0]:.1%}, {t['top1_ci95'][1]:.1%}] n={t['n']}",
                      highlight=False)


def figures(results: dict[str, Any], out: Path) -> None:
    """janus.png: every request's latency over the scenario; janus-sweep.png: p50 and top-1 by bandwidth."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    phase_s, sla = results["phase_s"], results["sla_ms"]
    fig, ax = plt.subplots(figsize=(11, 4.5))
    modes = list(results["modes"])
    colours = dict(zip(modes, plt.get_cmap("tab10").colors))
    for k, phase in enumerate(p["name"] for p in results["phases"]):
        start = k * phase_s
        if k % 2:
            ax.axvspan(start, start + phase_s, alpha=0.08, color="grey")
        ax.text(start + 0.1, 0.97, phase, transform=ax.get_xaxis_transform(), fontsize=8, va="top")
        for mode in modes:
            ys = results["modes"][mode][phase]["latencies_ms"]
            xs = [start + phase_s * i / max(len(ys), 1) for i in range(len(ys))]
            ax.plot(xs, ys, ".", ms=2.5 if mode == "janus" else 1.5, color=colours[mode],
                    label=mode if k == 0 else None, zorder=3 if mode == "janus" else 2)
    ax.axhline(sla, color="red", lw=1, label=f"SLA {sla:g} ms")
    ax.set_yscale("log")
    ax.set_xlabel("time in the scenario (s)")
    ax.set_ylabel("latency at the client (ms)")
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, markerscale=4)
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"), dpi=120)
    plt.close(fig)
    if not results["sweep"]:
        return
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    rates = [p["rate_mbit"] for p in results["sweep_phases"]]
    for mode, runs in results["sweep"].items():
        rows = [runs[p["name"]] for p in results["sweep_phases"]]
        left.plot(rates, [r["p50_ms"] for r in rows], "o-", label=f"{mode} p50")
        left.plot(rates, [r["p99_ms"] for r in rows], "x--", label=f"{mode} p99", alpha=0.6)
        right.errorbar(rates, [100 * (r["top1"] or 0) for r in rows],
                       yerr=[[100 * ((r["top1"] or 0) - r["top1_ci95"][0]) for r in rows],
                             [100 * (r["top1_ci95"][1] - (r["top1"] or 0)) for r in rows]], fmt="o-", capsize=3,
                       label=mode)
    left.axhline(sla, color="red", lw=1, label=f"SLA {sla:g} ms")
    for ax in (left, right):
        ax.set_xscale("log")
        ax.set_xlabel(f"link bandwidth (Mbit/s), {SWEEP_DELAY_MS:g} ms one way")
        ax.legend(fontsize=8)
    left.set_yscale("log")
    left.set_ylabel("latency at the client (ms)")
    right.set_ylabel("top-1 through the runtime (%)")
    fig.tight_layout()
    fig.savefig(out.with_name(out.stem + "-sweep.png"), dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
