"""Network benchmark: workers behind shaped links; measured latency vs the planner's link model.

    sudo python benchmarks/network.py                     # default plan, 2 and 100 Mbit/s, 0 and 20 ms
    python benchmarks/network.py --rates 2 10 100 --delays 0 10 --requests 40

Each worker device runs in its own network namespace, joined to the central
node's (this) namespace by a veth pair shaped with tc tbf at the rate, plus a
one-way delay (tc netem where the kernel has it, else a delay proxy). For
every condition it reports the measured end-to-end p50 and per-device round
trips beside the model T = max_n(t1_n + t2_n) + t3, with t1 and t3 as measured
in the same run and t2 = link latency + bytes / rate (`DeviceSpec.transfer_ms`),
both as CoFormer writes it (features only) and with the input the central node
sends each worker. Needs root, `ip` and `tc`.

`--inputs float32 uint8 png jpeg` repeats every condition for each input
format (compact inputs: the central node forwards the client's bytes, each
device normalises them); t2 then charges the bytes actually sent, taken from
the requests themselves. The images are the plan's test split (for a
real-scale teacher timed on digits: digits resized to 224², which compress far
better than photographs: PNG/JPEG sizes are the content's, uint8 is not). With
`--teacher` the teacher alone is timed once on the central device's share
(as `shoal bench` does) and each row gets its speed-up over it.

    shoal plan --model deit_small_patch16_224 --no-pretrained --split balanced --input uint8 ... --out runs/deit
    sudo python benchmarks/network.py --plan runs/deit --rates 10 100 --delays 5 20 --inputs float32 uint8 jpeg \
        --teacher --out benchmarks/results/network-deit.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from rich.table import Table

from shoal.commands._common import console
from shoal.plan.directory import Plan, load_plan
from shoal.plan.latency import link_breakdown
from shoal.runtime.bench import prepare_requests
from shoal.runtime.client import ShoalClient
from shoal.runtime.cluster import LocalCluster
from shoal.runtime.evaldata import resolve_test_data
from shoal.runtime.netns import NetnsLink, netns_unavailable_reason, wire_bytes
from shoal.runtime.timing import time_teacher
from shoal.utils.stats import quantile

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _plans import default_plan  # noqa: E402


def measure(plan_dir: Path, plan: Plan, rate: float, delay: float, requests: int, emulate: bool,
            images: torch.Tensor, input_format: str) -> dict[str, Any]:
    """One condition: every worker behind its own link of `rate` Mbit/s and `delay` ms one way,
    sent `images` as `input_format`."""
    spec = plan.document.input
    normalisation = (spec.mean, spec.std) if spec is not None else None
    prepared = prepare_requests(images, 1, input_format, normalisation)
    workers = [d.name for d in plan.devices.devices if not d.central]
    with ExitStack() as stack:
        links = {n: stack.enter_context(NetnsLink(rate, delay, n)) for n in workers}
        cluster = stack.enter_context(LocalCluster(plan_dir, emulate=emulate,
                                                   placements={n: link.placement() for n, link in links.items()}))
        runs = []
        with ShoalClient(cluster.central_target, timeout_s=120.0) as client:
            for i in range(3):
                client.call(prepared[i % len(prepared)])
            for i in range(requests):
                t0 = time.perf_counter()
                reply = client.call(prepared[i % len(prepared)])
                runs.append(((time.perf_counter() - t0) * 1e3, {t.device: t for t in reply.timings},
                             reply.aggregation_ms))
        mode = links[workers[0]].delay_mode if workers else "none"
    med = statistics.median
    names = plan.devices.names
    compute = [med(r[1][n].compute_ms for r in runs) for n in names]
    agg = med(r[2] for r in runs)
    sent = round(statistics.mean(wire_bytes(plan.config.input_shape, 1, source=r)[0] for r in prepared))
    received = [wire_bytes(plan.config.input_shape, plan.spec(n).width)[1] for n in names]
    devices = [d if d.central else replace(d, link_mbps=rate, link_latency_ms=delay) for d in plan.devices.devices]
    full = link_breakdown(devices, compute, agg, sent, received)
    paper = link_breakdown(devices, compute, agg, sent, received, include_input=False)
    e2e = sorted(r[0] for r in runs)
    return {
        "rate_mbit": rate, "delay_ms": delay, "delay_mode": mode if delay else "none", "requests": requests,
        "input": input_format, "e2e_p50_ms": med(e2e), "e2e_p95_ms": quantile(sorted(e2e), 0.95),
        "round_trip_ms": {n: med(r[1][n].round_trip_ms for r in runs) for n in names},
        "compute_ms": dict(zip(names, compute)), "aggregation_ms": agg,
        "input_bytes": sent, "feature_bytes": dict(zip(names, received)),
        "predicted_ms": full.total_ms, "predicted_paper_ms": paper.total_ms,
        "measured_over_predicted": med(e2e) / full.total_ms,
        "measured_over_paper": med(e2e) / paper.total_ms,
    }


def teacher_alone(plan: Plan, emulate: bool) -> dict[str, Any]:
    """The teacher on the central device's share of the machine (`shoal bench`'s baseline)."""
    central = plan.devices.central
    random = plan.document.random_weights
    return time_teacher(plan.teacher_source, plan.config.input_shape, repeats=40, warmup=5, threads=central.threads,
                        limit=central if emulate else None, random_classes=plan.config.num_classes if random else None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layout", choices=["3dev", "2dev"], default="3dev", help="devices of the default plan")
    parser.add_argument("--plan", type=Path, default=None)
    parser.add_argument("--rates", type=float, nargs="+", default=[2.0, 100.0], help="Mbit/s")
    parser.add_argument("--delays", type=float, nargs="+", default=[0.0, 20.0], help="one-way ms")
    parser.add_argument("--requests", type=int, default=40)
    parser.add_argument("--inputs", nargs="+", default=["float32"], choices=["float32", "uint8", "png", "jpeg"],
                        help="what the requests carry (compact formats need a plan that records its normalisation)")
    parser.add_argument("--teacher", action="store_true", help="time the teacher alone on the central device too")
    parser.add_argument("--no-emulate", action="store_true", help="run devices without their CPU limits")
    parser.add_argument("--out", type=Path, default=Path("runs/bench/network.json"))
    args = parser.parse_args()
    reason = netns_unavailable_reason()
    if reason:
        sys.exit(f"cannot emulate links here: {reason}")
    with tempfile.TemporaryDirectory(prefix="shoal-net-") as tmp:
        plan_dir, note = (args.plan, "given plan") if args.plan else default_plan(Path(tmp), args.layout)
        plan = load_plan(plan_dir)
        console.print(f"plan {plan_dir}: {note}", highlight=False)
        test, data_note = resolve_test_data(plan.config, plan.teacher_source, None,
                                            random_weights=plan.document.random_weights)
        images = (test.images if test is not None else torch.randn(16, *plan.config.input_shape))[:16]
        baseline = teacher_alone(plan, not args.no_emulate) if args.teacher else None
        rows = [measure(plan_dir, plan, rate, delay, args.requests, not args.no_emulate, images, fmt)
                for rate in args.rates for delay in args.delays for fmt in args.inputs]
    teacher_ms = baseline["latency"]["median_ms"] if baseline else None
    for r in rows:
        r["speedup_vs_teacher"] = teacher_ms / r["e2e_p50_ms"] if teacher_ms else None
    float_p50 = {(r["rate_mbit"], r["delay_ms"]): r["e2e_p50_ms"] for r in rows if r["input"] == "float32"}
    for r in rows:
        base = float_p50.get((r["rate_mbit"], r["delay_ms"]))
        r["float32_over_this"] = base / r["e2e_p50_ms"] if base else None
    table = Table(title="measured vs predicted latency over shaped links (ms, medians; T with the input, "
                        "T paper: features only)")
    for column in ("link", "delay by", "input", "KiB", "e2e p50", "T", "e2e/T", "T paper", "e2e/T paper",
                   "float32/this", "vs teacher", *(f"rt {n}" for n in plan.devices.names[1:])):
        table.add_column(column, justify="right")
    for r in rows:
        ratio = r["float32_over_this"]
        speedup = r["speedup_vs_teacher"]
        table.add_row(f"{r['rate_mbit']:g}M {r['delay_ms']:g}ms", r["delay_mode"], r["input"],
                      f"{r['input_bytes'] / 1024:.1f}", f"{r['e2e_p50_ms']:.2f}",
                      f"{r['predicted_ms']:.2f}", f"{r['measured_over_predicted']:.2f}",
                      f"{r['predicted_paper_ms']:.2f}", f"{r['measured_over_paper']:.2f}",
                      f"{ratio:.2f}×" if ratio else "-", f"{speedup:.2f}×" if speedup else "-",
                      *(f"{r['round_trip_ms'][n]:.2f}" for n in plan.devices.names[1:]))
    console.print(table)
    if baseline:
        console.print(f"teacher alone on {plan.devices.central.name}: median {teacher_ms:.2f} ms "
                      f"(n={baseline['latency']['n']})", highlight=False)
    if plan.document.random_weights:
        console.print("the plan's teacher has random weights: latency only", highlight=False)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"plan": note, "images": data_note, "teacher": baseline,
                                    "random_weights": plan.document.random_weights, "rows": rows}, indent=2) + "\n")
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
