"""Which importance rule ranks units best? Taylor vs magnitude vs random, at equal size.

    .venv/bin/python benchmarks/importance.py [--out benchmarks/results/importance.json]

For each rule and keep-fraction f, one sub-model keeps f of the channels and
f of the heads and MLP neurons of every block (the top-ranked ones), and is
scored, uncalibrated, on the validation split of the default digits task:
cross-entropy through the teacher's sliced head, and through a ridge probe
fitted to the teacher's logits on 512 training images. Lower is better.
Then, for a 3-way split, the two dealing rules (fair vs ranked) and the two
layer rules (importance vs uniform) are compared by the "ridge" proxy of the
whole decomposition. No timing is involved: the numbers are deterministic.
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
    rules = {"taylor": compute_importance(teacher.model, c, train.images[:256], train.labels[:256], "taylor"),
             "magnitude": compute_importance(teacher.model, c, train.images, train.labels, "magnitude")}
    for seed in range(3):
        rules[f"random-{seed}"] = compute_importance(teacher.model, c, train.images, train.labels, "random", seed=seed)

    results: dict[str, dict[str, dict[str, float]]] = {}
    for proxy in ("sliced", "probe"):
        evaluator = Evaluator(teacher.model, c, solo, [_NoLatency(c.fingerprint())], train.images[:512],
                              val.images, val.labels, delta=0.0, proxy=proxy)
        for name, scores in rules.items():
            for f in FRACTIONS:
                shape = SubModelShape(tuple(range(c.depth)), round(f * c.embed_dim),
                                      (round(f * c.num_heads),) * c.depth, (round(f * c.mlp_hidden),) * c.depth)
                policy = decompose(c, ["solo"], [shape], scores)
                loss = evaluator.loss(policy)[0]
                results.setdefault(proxy, {}).setdefault(name, {})[str(f)] = loss

    table = Table(title="validation loss of one pruned sub-model, uncalibrated (lower is better)")
    table.add_column("proxy")
    table.add_column("rule")
    for f in FRACTIONS:
        table.add_column(f"keep {f:.0%}", justify="right")
    for proxy, by_rule in results.items():
        for name, by_f in by_rule.items():
            table.add_row(proxy, name, *(f"{by_f[str(f)]:.3f}" for f in FRACTIONS))
    console.print(table)

    # 3-way split: dealing and layer rules, scored by the ridge proxy of the whole decomposition
    three = DeviceSet(tuple(DeviceSpec(n, 1 << 30, central=(n == "a")) for n in ("a", "b", "c")))
    evaluator = Evaluator(teacher.model, c, three, [_NoLatency(c.fingerprint())] * 3, train.images[:512],
                          val.images, val.labels, delta=0.0, proxy="ridge")
    split_rows = {}
    for deal in ("fair", "ranked"):
        for layer_rule in ("importance", "uniform"):
            for depth in (1.0, 0.6):
                space = SearchSpace(c, three, rules["taylor"], layer_rule=layer_rule, deal_rule=deal)  # type: ignore[arg-type]
                x = space.uniform_point(depth, 1.0)
                split_rows[f"{deal}/{layer_rule}/depth{depth}"] = evaluator.loss(space.decode(x))[0]
    split = Table(title="3-way split, ridge proxy of the decomposition (lower is better)")
    split.add_column("deal / layers / depth ratio")
    split.add_column("loss", justify="right")
    for k, v in split_rows.items():
        split.add_row(k, f"{v:.4f}")
    console.print(split)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"single_submodel": results, "three_way": split_rows,
                                    "fractions": FRACTIONS}, indent=2) + "\n")
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
