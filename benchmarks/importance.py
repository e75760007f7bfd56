"""Which importance rule ranks units best? Taylor vs magnitude vs random, at equal size.

    .venv/bin/python benchmarks/importance.py [--out benchmarks/results/importance.json]

For each rule, unit type and keep-fraction f, one sub-model keeps the top f
of that unit type (heads, MLP neurons, residual channels, or all three) in
every block, and is scored, uncalibrated, on the validation split of the
default digits task: cross-entropy through a ridge probe fitted to the
teacher's logits on 512 training images (the teacher's sliced head alone is
near chance for any rule once channels are pruned). Lower is better. Then
3-way splits that drop units are compared by the "ridge" proxy of the whole
decomposition, for each rule, dealing rule (fair vs ranked) and layer rule
(importance vs uniform). No timing is involved: the numbers are deterministic.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from shoal.data.digits import load_digits_split
from shoal.devices.spec import DeviceSet, DeviceSpec
from shoal.models import SubModelShape, compute_importance, decompose, load_teacher
from shoal.planner.objective import Evaluator
from shoal.planner.space import SearchSpace

FRACTIONS = (0.75, 0.5, 0.33, 0.25)


class _NoLatency:
    kind, is_estimate = "none", True

    def __init__(self, family: str) -> None:
        self.family = family

    def predict_ms(self, specs):  # type: ignore[no-untyped-def]
        return [1.0 for _ in specs]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/importance.json"))
    args = parser.parse_args()
    console = Console()
    torch.manual_seed(0)
    teacher = load_teacher()
    c = teacher.config
    train, val = load_digits_split("train"), load_digits_split("val")
    solo = DeviceSet((DeviceSpec("solo", 1 << 30, central=True),))
    n_cal = 512
    rules = {rule: compute_importance(teacher.model, c, train.images[:n_cal], train.labels[:n_cal], rule)
             for rule in ("mixed", "taylor", "fisher", "magnitude")}
    for seed in range(3):
        rules[f"random-{seed}"] = compute_importance(teacher.model, c, train.images, train.labels, "random", seed=seed)

    evaluator = Evaluator(teacher.model, c, solo, [_NoLatency(c.fingerprint())], train.images[:512],
                          val.images, val.labels, delta=0.0, proxy="probe")
    L = c.depth
    results: dict[str, dict[str, dict[str, float]]] = {}
    for unit in ("heads", "neurons", "channels", "all"):
        for name, scores in rules.items():
            for f in FRACTIONS:
                keep = {k: (round(f * n) if unit in (k, "all") else n)
                        for k, n in (("heads", c.num_heads), ("neurons", c.mlp_hidden), ("channels", c.embed_dim))}
                shape = SubModelShape(tuple(range(L)), keep["channels"], (keep["heads"],) * L, (keep["neurons"],) * L)
                loss = evaluator.loss(decompose(c, ["solo"], [shape], scores))[0]
                results.setdefault(unit, {}).setdefault(name, {})[str(f)] = loss

    table = Table(title="probe loss of one sub-model pruned by each rule, uncalibrated (lower is better)")
    table.add_column("pruned")
    table.add_column("rule")
    for f in FRACTIONS:
        table.add_column(f"keep {f:.0%}", justify="right")
    for unit, by_rule in results.items():
        for name, by_f in by_rule.items():
            table.add_row(unit, name, *(f"{by_f[str(f)]:.3f}" for f in FRACTIONS))
    console.print(table)

    # 3-way splits that drop units (scale < 1): rules, dealing and layer rules, by the ridge proxy
    three = DeviceSet(tuple(DeviceSpec(n, 1 << 30, central=(n == "a")) for n in ("a", "b", "c")))
    evaluator = Evaluator(teacher.model, c, three, [_NoLatency(c.fingerprint())] * 3, train.images[:512],
                          val.images, val.labels, delta=0.0, proxy="ridge")
    split_rows: dict[str, float] = {}
    for name in ("mixed", "taylor", "magnitude", "random-0", "random-1", "random-2"):
        for deal in ("fair", "ranked"):
            for layer_rule in ("importance", "uniform"):
                for depth, scale in ((1.0, 0.6), (0.6, 0.6), (1.0, 0.3)):
                    space = SearchSpace(c, three, rules[name], layer_rule=layer_rule, deal_rule=deal)  # type: ignore[arg-type]
                    loss = evaluator.loss(space.decode(space.uniform_point(depth, scale)))[0]
                    split_rows[f"{name}/{deal}/{layer_rule}/depth{depth}/scale{scale}"] = loss
    split = Table(title="3-way split (equal shapes), ridge proxy of the decomposition (lower is better)")
    for col in ("rule", "deal", "layers", "depth 1.0 size 0.6", "depth 0.6 size 0.6", "depth 1.0 size 0.3"):
        split.add_column(col, justify="right" if "size" in col else "left")
    for name in ("mixed", "taylor", "magnitude", "random-0", "random-1", "random-2"):
        for deal in ("fair", "ranked"):
            for layer_rule in ("importance", "uniform"):
                key = f"{name}/{deal}/{layer_rule}"
                split.add_row(name, deal, layer_rule, *(f"{split_rows[f'{key}/depth{d}/scale{s}']:.4f}"
                                                      for d, s in ((1.0, 0.6), (0.6, 0.6), (1.0, 0.3))))
    console.print(split)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"single_submodel": results, "three_way": split_rows,
                                    "fractions": FRACTIONS}, indent=2) + "\n")
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
