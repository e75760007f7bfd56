"""Does latency fall with sub-model size? Surgery on the default teacher, timed on this machine.

    .venv/bin/python benchmarks/surgery_latency.py [--repeats 200] [--rounds 3]

Sub-models keep a fraction f of the residual channels, of the heads and of
the MLP neurons of every block (and optionally fewer blocks), cut with the
real surgery from the shipped digits teacher. Each is timed at batch 1 on one
thread (median of `--repeats` calls), interleaved over `--rounds` rounds so
drift hits every size alike; the table shows the median over rounds and the
ratio to the full teacher measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from shoal.models import SubModelShape, build_submodel, compute_importance, decompose, load_teacher, spec_cost
from shoal.profiling.timing import measure_latency

SIZES = [(6, 1.0), (6, 0.75), (6, 0.5), (6, 0.33), (6, 0.25), (4, 0.5), (2, 0.5), (2, 0.25)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/surgery_latency.json"))
    args = parser.parse_args()
    console = Console()
    teacher = load_teacher()
    c = teacher.config
    scores = compute_importance(teacher.model, c, torch.zeros(1, *c.input_shape), torch.zeros(1, dtype=torch.long),
                                "magnitude")
    models = {}
    for depth, f in SIZES:
        layers = tuple(round(i * (c.depth - 1) / max(depth - 1, 1)) for i in range(depth))
        shape = SubModelShape(layers, round(f * c.embed_dim), (max(1, round(f * c.num_heads)),) * depth,
                              (round(f * c.mlp_hidden),) * depth)
        spec = decompose(c, ["one"], [shape], scores).specs[0]
        models[(depth, f)] = (spec, build_submodel(c, spec, teacher.model))
    times: dict[tuple[int, float], list[float]] = {k: [] for k in models}
    for _ in range(args.rounds):
        for key, (_, model) in models.items():
            times[key].append(measure_latency(model, c.input_shape, repeats=args.repeats, warmup=20,
                                              threads=1).median_ms)
    full = statistics.median(times[(6, 1.0)])
    table = Table(title="sub-model size vs latency (batch 1, one thread, median ms)")
    for col in ("blocks", "kept share", "params", "MFLOPs", "median ms", "vs teacher"):
        table.add_column(col, justify="right")
    rows = []
    for (depth, f), (spec, _) in models.items():
        cost = spec_cost(c, spec)
        ms = statistics.median(times[(depth, f)])
        rows.append({"blocks": depth, "share": f, "params": cost.params, "flops": cost.flops, "median_ms": ms,
                     "ratio": ms / full, "rounds": times[(depth, f)]})
        table.add_row(str(depth), f"{f:.2f}", f"{cost.params / 1e6:.2f} M", f"{cost.flops / 1e6:.1f}",
                      f"{ms:.2f}", f"{ms / full:.2f}")
    console.print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"rows": rows, "repeats": args.repeats, "rounds": args.rounds,
                                    "torch": torch.__version__}, indent=2) + "\n")
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
