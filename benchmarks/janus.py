"""Janus under a changing link: the scheduler against device only, server only and a fixed split.

    sudo .venv/bin/python benchmarks/janus.py --plan DIR --data fashion-mnist [--sla-ms 60] [--phase-s 8]

DIR is a Janus plan (`shoal plan --method janus`). The server (`shoal serve janus`, pinned to core 0
under the plan's server quota, as it was profiled) runs in its own network namespace behind a shaped
link (`NetnsLink`: tbf and the delay proxy); the device is a child process under a CPU quota
(`--device-quota`, by default the plan's device's) on core 1 that sends one request after another
for the whole scenario while this process changes the link at each phase boundary:

    2 Mbit/s, 50 ms one way  →  10 Mbit/s, 20 ms  →  50 Mbit/s, 5 ms

Modes, each playing the same scenario: "janus" (α and the split per request, Algorithm 1, from the
bandwidth measured on its own transfers), "device-only" (α = 0, every block on the device),
"server-only" (α = 0, the image sent), "fixed split" (the α and split Janus picks at 10 Mbit/s,
for every request). Per phase: SLA violation ratio, top-1 on the test images (n, 95% Wilson
interval), throughput (answers per second), p50/p99, and the configurations used. Writes
benchmarks/results/janus.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

PHASES = ((2.0, 50.0), (10.0, 20.0), (50.0, 5.0))   # (Mbit/s, one-way ms)
MODES = ("janus", "device-only", "server-only", "fixed split")


def child(args: argparse.Namespace) -> None:
    """The device: run `args.mode` for len(PHASES) · phase_s seconds after "go"; print one JSON line."""
    from shoal.runtime import shoal_pb2 as pb
    from shoal.runtime.bench import prepare_requests
    from shoal.runtime.device import set_torch_threads
    from shoal.runtime.evaldata import resolve_test_data
    from shoal.runtime.janus import JanusDevice, load_janus
    from shoal.runtime.status import RemoteError

    set_torch_threads(1)
    plan, runner, identity = load_janus(args.plan)
    m = plan.model
    fixed = {"janus": None, "device-only": (0.0, m.depth + 1), "server-only": (0.0, 0),
             "fixed split": None}[args.mode]
    if args.mode == "fixed split":
        choice = m.choose(10e6, args.sla_ms)
        fixed = (choice.alpha, choice.split)
    device = JanusDevice(runner, m, args.target, args.sla_ms, prior_mbps=10.0, fingerprint=identity.plan_fingerprint,
                         fixed=fixed)
    test, why = resolve_test_data(runner_config(runner), plan.teacher, args.data)
    if test is None:
        sys.exit(f"no test data: {why}")
    images, labels = test.images[:1000], test.labels[:1000]
    requests = prepare_requests(images, 1, plan.input.format, (plan.input.mean, plan.input.std))
    for i in range(3):   # warm-up: compile, connect
        device.predict(requests[i], images[i:i + 1])
    print("READY device", flush=True)
    sys.stdin.readline()
    start, out = time.monotonic(), []
    k = 0
    for phase in range(len(PHASES)):
        end = start + (phase + 1) * args.phase_s
        rows: list[dict[str, Any]] = []
        while time.monotonic() < end:
            i = k % len(images)
            k += 1
            t0 = time.perf_counter()
            try:
                reply, choice, _ = device.predict(requests[i], images[i:i + 1], timeout_s=5.0)
                ok = True
            except RemoteError:
                ok, reply, choice = False, pb.PredictReply(), None
            ms = (time.perf_counter() - t0) * 1e3
            top = reply.top_indices[0] if ok and reply.top_indices else -1
            rows.append({"ms": ms, "ok": ok, "correct": int(top == int(labels[i])),
                         "config": f"α {choice.alpha:.2f} s {choice.split}" if choice else "error"})
        out.append(rows)
    device.close()
    print(json.dumps(out), flush=True)


def runner_config(runner: Any) -> Any:
    from shoal.models import config_from_timm

    return config_from_timm(runner.model)


def summarise(rows: list[dict[str, Any]], sla_ms: float, phase_s: float) -> dict[str, Any]:
    from shoal.utils.stats import quantile, wilson_interval

    answered = [r for r in rows if r["ok"]]
    correct = sum(r["correct"] for r in answered)
    low, high = wilson_interval(correct, len(answered)) if answered else (0.0, 0.0)
    ms = sorted(r["ms"] for r in rows)
    return {"requests": len(rows), "violation_ratio": sum(r["ms"] > sla_ms or not r["ok"] for r in rows) / len(rows),
            "top1": correct / len(answered) if answered else None, "top1_ci95": [low, high], "n": len(answered),
            "throughput_per_s": len(answered) / phase_s, "p50_ms": statistics.median(ms),
            "p99_ms": quantile(ms, 0.99), "configs": dict(Counter(r["config"] for r in rows).most_common(4))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--plan", type=Path, required=True)
    parser.add_argument("--data", default=None)
    parser.add_argument("--sla-ms", type=float, default=60.0)
    parser.add_argument("--phase-s", type=float, default=8.0)
    parser.add_argument("--device-quota", type=float, default=None,
                        help="the device's share of core 1 (default: the plan's device's, as it was profiled)")
    parser.add_argument("--modes", nargs="*", default=list(MODES))
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "janus.json")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--target", default="", help=argparse.SUPPRESS)
    parser.add_argument("--mode", default="janus", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    from rich.table import Table

    from shoal.commands._common import console
    from shoal.devices.child import LimitedChild
    from shoal.devices.emulation import CpuLimit
    from shoal.plan.janus import JanusPlan
    from shoal.runtime.netns import NetnsLink, netns_unavailable_reason
    from shoal.utils.io import atomic_write_text

    reason = netns_unavailable_reason()
    if reason:
        sys.exit(f"needs network namespaces: {reason}")
    plan = JanusPlan.read(args.plan)   # a clear line now if it is not a Janus plan
    if args.device_quota is None:
        args.device_quota = plan.device.cpu_quota or 1.0
    server_limit = CpuLimit(plan.server.cpu_quota, (0,))   # as profiled
    results: dict[str, Any] = {"plan": str(args.plan), "sla_ms": args.sla_ms, "phase_s": args.phase_s,
                               "device_quota": args.device_quota, "phases": [list(p) for p in PHASES], "modes": {}}
    for mode in args.modes:
        console.print(f"{mode}: {len(PHASES)} phases of {args.phase_s:g} s", highlight=False)
        with NetnsLink(PHASES[0][0], PHASES[0][1], "janus", force_proxy=True) as link:
            placement = link.placement()
            server = LimitedChild([*placement.prefix, sys.executable, "-m", "shoal.cli", "serve", "janus", "--plan",
                                   str(args.plan), "--host", placement.bind_host, "--port", str(placement.bind_port),
                                   "--no-emulate", "--insecure", "--watch-parent"], server_limit,
                                  who="the janus server", strict=False, stdout=subprocess.PIPE, text=True)
            device = None
            try:
                server.read_line("SHOAL_LISTENING", time.monotonic() + 120)
                device = LimitedChild([sys.executable, __file__, "--child", "--plan", str(args.plan), "--target",
                                       placement.connect, "--mode", mode, "--sla-ms", str(args.sla_ms),
                                       "--phase-s", str(args.phase_s)] + (["--data", args.data] if args.data else []),
                                      CpuLimit(args.device_quota, (1,)), who="the device", strict=False,
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
                device.read_line("READY", time.monotonic() + 300)
                assert device.proc.stdin is not None
                device.proc.stdin.write("go\n")
                device.proc.stdin.flush()
                start = time.monotonic()
                for k, (rate, delay) in enumerate(PHASES[1:], start=1):
                    time.sleep(max(0.0, start + k * args.phase_s - time.monotonic()))
                    link.change(rate, delay)
                out, _ = device.proc.communicate(timeout=len(PHASES) * args.phase_s + 120)
            finally:
                for proc in (device, server):
                    if proc is not None:
                        proc.stop()
        phases = json.loads(out.strip().splitlines()[-1])
        results["modes"][mode] = [summarise(rows, args.sla_ms, args.phase_s) for rows in phases]
    table = Table(title=f"Janus: SLA {args.sla_ms:g} ms; device {args.device_quota:g} of a core, server "
                        f"{plan.server.cpu_quota or 1:g}")
    for col in ("link", "mode", "SLA violations", "top-1 [95% CI] n", "answers/s", "p50 ms", "p99 ms",
                "configurations"):
        table.add_column(col, justify="left" if col in ("link", "mode", "configurations") else "right")
    for k, (rate, delay) in enumerate(PHASES):
        for mode, phases in results["modes"].items():
            r = phases[k]
            top1 = f"{r['top1']:.1%} [{r['top1_ci95'][0]:.1%}, {r['top1_ci95'][1]:.1%}] {r['n']}" if r["top1"] else "-"
            table.add_row(f"{rate:g} Mbit/s, {delay:g} ms", mode, f"{r['violation_ratio']:.1%}", top1,
                          f"{r['throughput_per_s']:.1f}", f"{r['p50_ms']:.1f}", f"{r['p99_ms']:.1f}",
                          ", ".join(f"{c} ×{n}" for c, n in r["configs"].items()))
        table.add_section()
    console.print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(results, indent=1) + "\n")
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
