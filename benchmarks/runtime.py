"""Runtime benchmark: the plan through `shoal serve local` beside the teacher alone, in one run.

    python benchmarks/runtime.py                       # default plan (see _plans.py), concurrency 1 and 4
    python benchmarks/runtime.py --plan DIR --requests 500 --out runs/bench/runtime.json

Prints, per concurrency, the `shoal bench` tables (end-to-end p50/p95, throughput,
per-device compute / transfer, aggregation, runtime overhead, teacher alone on the
central device's share, speedup) and writes all of it as JSON. Goal on loopback:
p50 <= 1.15 x (slowest device compute + aggregation). Quote ratios measured in
one run, not absolute times across runs.

`--tls` runs every concurrency twice, plaintext then TLS on every hop (mutual TLS to
the workers) with the bearer token on Predict (keys from `shoal.runtime.pki.issue`),
and reports TLS p50 / plaintext p50 (issue 12's goal: at most 1.10).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from shoal.commands._common import console
from shoal.commands.bench import print_tables
from shoal.plan.directory import load_plan
from shoal.runtime.bench import run_bench
from shoal.runtime.device import plan_fingerprint
from shoal.runtime.pki import issue
from shoal.runtime.security import TOKEN_FILE, Security

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _plans import default_plan  # noqa: E402

GOAL = 1.15


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layout", choices=["3dev", "2dev"], default="3dev", help="devices of the default plan")
    parser.add_argument("--plan", type=Path, default=None, help="plan directory (default: see _plans.py)")
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--no-emulate", action="store_true", help="run devices without their CPU limits")
    parser.add_argument("--tls", action="store_true", help="also run each concurrency with TLS + token")
    parser.add_argument("--out", type=Path, default=Path("runs/bench/runtime.json"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="shoal-bench-") as tmp:
        plan, teacher_note = (args.plan, "given plan") if args.plan else default_plan(Path(tmp), args.layout)
        console.print(f"plan {plan}: {teacher_note}", highlight=False)
        securities = [("plaintext", Security())]
        if args.tls:
            keys = Path(tmp) / "keys"
            load = load_plan(plan)
            issue(plan, list(load.devices.names), keys, plan_fingerprint(plan))
            securities.append(("tls+token", Security(keys, keys / TOKEN_FILE)))
        runs = []
        tls_ratio = {}
        for i, concurrency in enumerate(args.concurrency):
            p50 = {}
            for label, security in securities:
                result = run_bench(plan, requests=args.requests, concurrency=concurrency, warmup=args.warmup,
                                   teacher=(i == 0 and label == "plaintext"), emulate=not args.no_emulate,
                                   security=security)
                print_tables(result)
                verdict = "meets" if result.overhead_ratio <= GOAL else "misses"
                console.print(f"concurrency {concurrency}, {label}: p50 / (slowest compute + aggregation) = "
                              f"{result.overhead_ratio:.3f} ({verdict} the {GOAL} goal)\n", highlight=False)
                runs.append({"security": label, **result.to_dict()})
                p50[label] = result.latency.median_ms
            if "tls+token" in p50:
                tls_ratio[concurrency] = p50["tls+token"] / p50["plaintext"]
                console.print(f"concurrency {concurrency}: TLS + token p50 {p50['tls+token']:.2f} ms vs plaintext "
                              f"{p50['plaintext']:.2f} ms = {tls_ratio[concurrency]:.3f}×", highlight=False)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"teacher": teacher_note, "goal_ratio": GOAL, "tls_over_plaintext": tls_ratio,
                                    "runs": runs}, indent=2) + "\n")
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
