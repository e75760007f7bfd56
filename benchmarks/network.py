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
from shoal.runtime.client import ShoalClient
from shoal.runtime.cluster import LocalCluster
from shoal.runtime.netns import NetnsLink, netns_unavailable_reason, wire_bytes
from shoal.utils.stats import quantile

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _plans import default_plan  # noqa: E402


def measure(plan_dir: Path, plan: Plan, rate: float, delay: float, requests: int, emulate: bool) -> dict[str, Any]:
    """One condition: every worker behind its own link of `rate` Mbit/s and `delay` ms one way."""
    workers = [d.name for d in plan.devices.devices if not d.central]
    with ExitStack() as stack:
        links = {n: stack.enter_context(NetnsLink(rate, delay, n)) for n in workers}
        cluster = stack.enter_context(LocalCluster(plan_dir, emulate=emulate,
                                                   placements={n: link.placement() for n, link in links.items()}))
        x = torch.zeros(1, *plan.config.input_shape)
        runs = []
        with ShoalClient(cluster.central_target) as client:
            for _ in range(5):
                client.predict(x)
            for _ in range(requests):
                t0 = time.perf_counter()
                p = client.predict(x)
                runs.append(((time.perf_counter() - t0) * 1e3, {t.device: t for t in p.timings}, p.aggregation_ms))
        mode = links[workers[0]].delay_mode
    med = statistics.median
    names = plan.devices.names
    compute = [med(r[1][n].compute_ms for r in runs) for n in names]
    agg = med(r[2] for r in runs)
    sent, received = zip(*(wire_bytes(plan.config.input_shape, plan.spec(n).width) for n in names))
    devices = [d if d.central else replace(d, link_mbps=rate, link_latency_ms=delay) for d in plan.devices.devices]
    full = link_breakdown(devices, compute, agg, sent[0], received)
    paper = link_breakdown(devices, compute, agg, sent[0], received, include_input=False)
    e2e = sorted(r[0] for r in runs)
    return {
        "rate_mbit": rate, "delay_ms": delay, "delay_mode": mode if delay else "none", "requests": requests,
        "e2e_p50_ms": med(e2e), "e2e_p95_ms": quantile(sorted(e2e), 0.95),
        "round_trip_ms": {n: med(r[1][n].round_trip_ms for r in runs) for n in names},
        "compute_ms": dict(zip(names, compute)), "aggregation_ms": agg,
        "input_bytes": sent[0], "feature_bytes": dict(zip(names, received)),
        "predicted_ms": full.total_ms, "predicted_paper_ms": paper.total_ms,
        "measured_over_predicted": med(e2e) / full.total_ms,
        "measured_over_paper": med(e2e) / paper.total_ms,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layout", choices=["3dev", "2dev"], default="3dev", help="devices of the default plan")
    parser.add_argument("--plan", type=Path, default=None)
    parser.add_argument("--rates", type=float, nargs="+", default=[2.0, 100.0], help="Mbit/s")
    parser.add_argument("--delays", type=float, nargs="+", default=[0.0, 20.0], help="one-way ms")
    parser.add_argument("--requests", type=int, default=40)
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
        rows = [measure(plan_dir, plan, rate, delay, args.requests, not args.no_emulate)
                for rate in args.rates for delay in args.delays]
    table = Table(title="measured vs predicted latency over shaped links (ms, medians; T with the input, "
                        "T paper: features only)")
    for column in ("link", "delay by", "e2e p50", "T", "e2e/T", "T paper", "e2e/T paper",
                   *(f"rt {n}" for n in plan.devices.names[1:])):
        table.add_column(column, justify="right")
    for r in rows:
        table.add_row(f"{r['rate_mbit']:g}M {r['delay_ms']:g}ms", r["delay_mode"], f"{r['e2e_p50_ms']:.2f}",
                      f"{r['predicted_ms']:.2f}", f"{r['measured_over_predicted']:.2f}",
                      f"{r['predicted_paper_ms']:.2f}", f"{r['measured_over_paper']:.2f}",
                      *(f"{r['round_trip_ms'][n]:.2f}" for n in plan.devices.names[1:]))
    console.print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"plan": note, "rows": rows}, indent=2) + "\n")
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
