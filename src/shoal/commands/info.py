"""`shoal info`: what the teacher is, how big it is and how accurate (on the default data)."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from shoal.commands._common import console, print_json


def main(
    model: Annotated[str | None, typer.Option(
        help="timm model name or checkpoint, or a text teacher (default: the shipped digits ViT)")] = None,
    checkpoint: Annotated[str | None, typer.Option(help="local weights for --model")] = None,
    pretrained: Annotated[bool, typer.Option(help="fetch timm's pretrained weights")] = True,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
) -> None:
    """Describe a teacher: family, size, FLOPs and (for the default) recorded accuracy."""
    from shoal.models import SubModelSpec, load_teacher, spec_cost

    teacher = load_teacher(model, checkpoint=checkpoint, pretrained=pretrained)
    cost = spec_cost(teacher.config, SubModelSpec.full(teacher.config))
    info = {"source": teacher.source, "family": teacher.config.fingerprint(), "config": teacher.config.to_dict(),
            "cost": cost.to_dict(), "metrics": teacher.meta.get("metrics", {})}
    if as_json:
        print_json(info)
        return
    table = Table(title=f"teacher {teacher.source}", show_header=False)
    c = teacher.config
    table.add_row("family", info["family"])
    table.add_row("shape", f"L={c.depth} d={c.embed_dim} h={c.num_heads}×{c.head_dim} D={c.mlp_hidden} "
                           f"S={c.seq_len} input={c.input_shape}")
    table.add_row("params", f"{cost.params / 1e6:.2f} M")
    table.add_row("FLOPs", f"{cost.flops / 1e6:.1f} M per " + ("text" if teacher.is_text else "image"))
    table.add_row("memory", f"{cost.memory_bytes / 2**20:.1f} MiB (weights + activations, batch 1)")
    for split, m in info["metrics"].items():
        table.add_row(f"{split} top-1", f"{m['top1']:.2%} (n={m['n']})")
    console.print(table)
