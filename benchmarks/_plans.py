"""The plan the runtime benchmarks use when none is given.

The default digits teacher (`shoal.models.load_teacher()`) when it is shipped,
else a random-weight timm ViT of the same shape (random weights time the same);
decomposed evenly over the devices of a layout (see LAYOUTS).
"""

from __future__ import annotations

from pathlib import Path

import torch

from shoal.errors import ShoalError
from shoal.runtime.demo_plan import device_set, save_teacher_checkpoint, write_even_plan

LAYOUTS = {
    # the heterogeneous default: hub (1.0 core, cpu 0), edge-a (0.6 core, cpu 1), edge-b (0.35 core, cpu 1)
    "3dev": [("hub", 1.0, (0,)), ("edge-a", 0.6, (1,)), ("edge-b", 0.35, (1,))],
    # one whole core each, pinned, no quota: isolates the runtime's own overhead on a 2-core machine
    "2dev": [("hub", None, (0,)), ("edge", None, (1,))],
}
STAND_IN = ("vit_tiny_patch16_224", dict(img_size=32, patch_size=4, in_chans=1, num_classes=10, embed_dim=192,
                                         depth=6, num_heads=6))


def default_plan(out: Path, layout: str = "3dev") -> tuple[Path, str]:
    """Write the benchmark plan for `layout` under `out`; returns (plan dir, a line saying which teacher)."""
    from shoal.models import DEFAULT_TEACHER, load_teacher

    try:
        teacher = load_teacher()
        model, source, what = teacher.model, DEFAULT_TEACHER, "the default digits teacher"
    except ShoalError as exc:
        import timm

        torch.manual_seed(0)
        model = timm.create_model(STAND_IN[0], pretrained=False, **STAND_IN[1]).eval()
        source = str(save_teacher_checkpoint(out / "stand-in-teacher.safetensors", model, *STAND_IN))
        what = f"a random-weight stand-in of the digits teacher's shape ({exc})"
    return write_even_plan(out / "plan", model, device_set(LAYOUTS[layout]), source), f"{what}; layout {layout}"
