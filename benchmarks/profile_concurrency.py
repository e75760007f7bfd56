"""Does profiling emulated devices at the same time change their measurements?

    .venv/bin/python benchmarks/profile_concurrency.py [--shapes 60] [--repeats 25] [--rounds 2]

Times the same shapes of the default teacher family on the default device
set's `hub` (cpu 0, quota 1.0) and `edge-a` (cpu 1, quota 0.6): each alone
(sequential) and both at once (concurrent, as `ensure_profiles(...,
concurrent=True)` would), alternating the order for `--rounds` rounds.
Reports, for the median, mean and p10 of each shape's timed calls, the median
per-shape ratio concurrent / sequential and the sequential-vs-sequential ratio
between rounds (the noise to compare it to).
Needs writable cgroups (root).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from shoal.commands.profile import teacher_family
from shoal.devices.emulation import CpuLimit, quota_unavailable_reason
from shoal.devices.spec import default_device_set
from shoal.profiling.dataset import read_dataset
from shoal.profiling.jobs import run_jobs
from shoal.profiling.runner import explicit_job
from shoal.profiling.sampling import sample_shapes
from shoal.profiling.settings import SamplerSettings, TimingSettings
from shoal.utils.io import atomic_write_json

console = Console(stderr=True, width=120)
STATS = ("median", "mean", "p10")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=25)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/profile_concurrency.json"))
    args = parser.parse_args()
    if reason := quota_unavailable_reason():
        raise SystemExit(f"needs CPU quotas: {reason}")
    config, _ = teacher_family(None, None)
    devices = default_device_set()
    chosen = [devices["hub"], devices["edge-a"]]
    shapes = sample_shapes(config, SamplerSettings(args.shapes, seed=7))
    timing = TimingSettings(repeats=args.repeats)
    values: dict[tuple[str, str, int, str], np.ndarray] = {}
    with tempfile.TemporaryDirectory(prefix="shoal-conc-") as tmp:
        for rnd in range(args.rounds):
            for mode in (("sequential", "concurrent") if rnd % 2 == 0 else ("concurrent", "sequential")):
                jobs = [explicit_job(d.name, config, Path(tmp) / f"{d.name}-{mode}-{rnd}.jsonl", shapes, timing,
                                     CpuLimit(d.cpu_quota, d.cpus)) for d in chosen]
                run_jobs(jobs, concurrent=mode == "concurrent")
                for d, job in zip(chosen, jobs):
                    ms = sorted(read_dataset(job.dataset).measurements, key=lambda m: m.index)
                    for stat in STATS:
                        values[(d.name, mode, rnd, stat)] = np.array([getattr(m.stats, f"{stat}_ms") for m in ms])
    table = Table(title="concurrent vs sequential profiling: median per-shape ratio, p10-p90 in brackets")
    for col in ("device", "statistic", "concurrent / sequential", "sequential round 2 / round 1"):
        table.add_column(col)
    result: dict[str, object] = {"shapes": args.shapes, "repeats": args.repeats, "rounds": args.rounds,
                                 "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "devices": {}}
    for d in chosen:
        result["devices"][d.name] = {}  # type: ignore[index]
        for stat in STATS:
            v = {key[1:3]: arr for key, arr in values.items() if key[0] == d.name and key[3] == stat}
            conc = np.concatenate([v[("concurrent", r)] / v[("sequential", r)] for r in range(args.rounds)])
            seq = v[("sequential", 1)] / v[("sequential", 0)] if args.rounds > 1 else None
            row = {"concurrent_over_sequential": _summary(conc), "sequential_round_ratio": _summary(seq)}
            result["devices"][d.name][stat] = row  # type: ignore[index]
            table.add_row(d.name, stat, _fmt(row["concurrent_over_sequential"]), _fmt(row["sequential_round_ratio"]))
    console.print(table)
    atomic_write_json(args.out, result)
    print(json.dumps(result["devices"]))


def _summary(ratio: np.ndarray | None) -> dict[str, float] | None:
    if ratio is None:
        return None
    return {"median": float(np.median(ratio)), "p10": float(np.quantile(ratio, 0.1)),
            "p90": float(np.quantile(ratio, 0.9))}


def _fmt(s: dict[str, float] | None) -> str:
    return "-" if s is None else f"{s['median']:.3f} [{s['p10']:.3f}, {s['p90']:.3f}]"


if __name__ == "__main__":
    main()
