"""An even, uncalibrated plan: every device gets an equal share of every block.

For runtime tests and benchmarks that need a deployable plan without running
the planner (the split is not searched, the sub-models are not calibrated).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from timm.models.vision_transformer import VisionTransformer

from shoal.devices.spec import DeviceSet, DeviceSpec
from shoal.models import SubModelShape, compute_importance, config_from_timm, decompose
from shoal.plan.directory import write_uncalibrated_plan
from shoal.plan.document import InputSpec
from shoal.utils.io import atomic_save_safetensors, atomic_write_json, sha256_file

MIB = 1 << 20


def even_shares(total: int, parts: int) -> list[int]:
    """`total` units in `parts` near-equal counts, larger ones first: even_shares(4, 3) == [2, 1, 1]."""
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def write_even_plan(
    root: str | Path,
    teacher: VisionTransformer,
    devices: DeviceSet,
    teacher_source: str | None = None,
    normalisation: tuple[tuple[float, ...], tuple[float, ...]] | None = None,
) -> Path:
    """Decompose `teacher` evenly over `devices` (all blocks kept by all) and write the plan.

    Args:
        root: Plan directory to write.
        teacher: A timm ViT.
        devices: The device set (its order decides the policy order; the central node first).
        teacher_source: What `shoal.models.load_teacher` accepts to reload the teacher, if anything.
        normalisation: The (mean, std) of the teacher's input: recorded so the plan takes uint8
            pixels and PNG/JPEG bytes too (None: float32 only).

    Returns:
        The plan directory.
    """
    config = config_from_timm(teacher)
    scores = compute_importance(teacher, config, torch.empty(0), torch.empty(0, dtype=torch.long), "magnitude")
    n = len(devices)
    widths = even_shares(config.embed_dim, n)
    heads = even_shares(config.num_heads, n)
    mlp = even_shares(config.mlp_hidden, n)
    layers = tuple(range(config.depth))
    shapes = [SubModelShape(layers, widths[i], (heads[i],) * config.depth, (mlp[i],) * config.depth)
              for i in range(n)]
    policy = decompose(config, devices.names, shapes, scores)
    spec = None
    if normalisation is not None:
        c, h, w = config.input_shape
        spec = InputSpec(*normalisation, "float32", 4 * c * h * w)
    write_uncalibrated_plan(root, teacher, config, policy, devices, teacher_source or "?", "even", spec)
    return Path(root)


def save_teacher_checkpoint(path: str | Path, teacher: VisionTransformer, timm_model: str,
                            timm_kwargs: dict[str, Any]) -> Path:
    """Save weights + the `<stem>.json` description `load_teacher(path)` reads back."""
    path = Path(path)
    atomic_save_safetensors(path, teacher.state_dict())
    atomic_write_json(path.with_suffix(".json"), {
        "timm_model": timm_model, "timm_kwargs": timm_kwargs, "weights_sha256": sha256_file(path)})
    return path


def device_set(entries: Sequence[tuple[str, float | None, tuple[int, ...] | None]], *,
               link_mbps: float = 1000.0, link_latency_ms: float = 0.05, threads: int = 1) -> DeviceSet:
    """A device set from (name, cpu quota, cpus); the first entry is the central node."""
    return DeviceSet(tuple(
        DeviceSpec(name, memory_bytes=512 * MIB, link_mbps=link_mbps, link_latency_ms=link_latency_ms,
                   central=(i == 0), cpu_quota=quota, cpus=cpus, threads=threads)
        for i, (name, quota, cpus) in enumerate(entries)))

