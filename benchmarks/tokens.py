"""Token reduction for Janus: ToMe merging against class-attention pruning, accuracy per α.

    .venv/bin/python benchmarks/tokens.py [--tasks digits fashion-mnist] [--images 2000]

For each task's shipped teacher and each α of the grid (step 0.05 here; the plan uses 0.01), the
top-1 on the validation split (n and 95% Wilson interval) with the tokens reduced by Janus's
declining schedule, both ways (`shoal.models.tokens`), no fine-tuning; and the tokens left after
each layer. Writes benchmarks/results/tokens.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch
from rich.table import Table

from shoal.commands._common import console
from shoal.data.datasets import default_teacher_for, load_task_data
from shoal.models.teacher import load_teacher
from shoal.models.tokens import REDUCTIONS, TokenRunner, alpha_max, counts
from shoal.utils.io import atomic_write_text
from shoal.utils.stats import wilson_interval


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=["digits", "fashion-mnist"])
    parser.add_argument("--images", type=int, default=2000, help="validation images per task (at most)")
    parser.add_argument("--step", type=float, default=0.05)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "tokens.json")
    args = parser.parse_args()
    torch.set_num_threads(2)
    results: dict[str, Any] = {"step": args.step, "tasks": {}}
    for task in args.tasks:
        data_name = None if task == "digits" else task
        teacher = load_teacher(default_teacher_for(data_name))
        data = load_task_data(teacher, data_name, max_per_split=args.images)
        images, labels = data.val.images, data.val.labels
        runners = {kind: TokenRunner(teacher.model, kind) for kind in REDUCTIONS}
        depth, tokens = runners["merge"].depth, runners["merge"].tokens
        top = alpha_max(depth, tokens)
        alphas = [round(k * args.step, 4) for k in range(int(top / args.step) + 1)]
        if alphas[-1] < top:
            alphas.append(top)
        rows = []
        for alpha in alphas:
            row: dict[str, Any] = {"alpha": alpha, "tokens": list(counts(alpha, depth, tokens))}
            for kind, runner in runners.items():
                with torch.inference_mode():
                    predicted = torch.cat([runner(images[i:i + 256], alpha).argmax(1)
                                           for i in range(0, len(images), 256)])
                correct = int((predicted == labels).sum())
                low, high = wilson_interval(correct, len(labels))
                row[kind] = {"top1": correct / len(labels), "ci95": [low, high]}
            rows.append(row)
        results["tasks"][task] = {"n": len(labels), "depth": depth, "tokens": tokens, "alpha_max": top, "rows": rows}
        table = Table(title=f"{task}: top-1 on {len(labels)} validation images, {tokens} tokens, {depth} layers")
        for col in ("α", "tokens left per layer", "merge (ToMe)", "prune (class attention)"):
            table.add_column(col, justify="left" if col.startswith("tokens") else "right")
        for r in rows:
            table.add_row(f"{r['alpha']:.2f}", " ".join(map(str, r["tokens"][1:])),
                          f"{r['merge']['top1']:.2%}", f"{r['prune']['top1']:.2%}")
        console.print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(results, indent=1) + "\n")
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
