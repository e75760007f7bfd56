"""DeViT (seeds/002): a homogeneous decomposition, one sub-task per device (`--method devit`).

Every device gets a sub-model of the same structure (DeViT §III-B): L_s of the
teacher's L blocks, evenly spaced; h_s heads per kept block, a residual width
D_s = head_dim · h_s; MLP neurons shrunk by the same factor, d_s = D · h_s / h
(σ = 1 - h_s / h is the share removed, eq. 5-7's "last σ% of heads and
neurons"). Which units each sub-model keeps, its sub-task decides: heads and
neurons by Taylor importance (eq. 6-7) of the teacher's loss on the sub-task's
classes and images, channels by the rule `--importance` names for channels
(the paper does not say; magnitude ranks channels best here, ADR 008).

The shape is the largest (by FLOPs) for which every device's sub-model fits its
memory and compute budget and, with a latency target, the planner's latency
model predicts the whole plan within it. Calibration is sub-task distillation
(eq. 8-13) and the ensemble (eq. 14-15): `pipeline.calibrate` with the options
DeViT sets (ADR 015).
"""

from __future__ import annotations

import itertools
import logging

import torch

from shoal.data.datasets import TaskData
from shoal.devices.spec import DeviceSet
from shoal.errors import ConfigError
from shoal.models.accounting import shape_cost
from shoal.models.config import ViTConfig
from shoal.models.importance import ImportanceRule, ImportanceScores
from shoal.models.spec import Policy
from shoal.models.teacher import Teacher
from shoal.planner.objective import Evaluator
from shoal.planner.subtasks import SubtaskPlan, misfits, pruned_spec, split_classes, subtask_importance

log = logging.getLogger(__name__)


def devit_plan(teacher: Teacher, data: TaskData, devices: DeviceSet, evaluator: Evaluator, *,
               target_ms: float | None, channel_rule: ImportanceRule, cal_images: int, seed: int) -> SubtaskPlan:
    """DeViT's policy for `devices` (every one of them, central first).

    Raises:
        ConfigError: more devices than classes, or no homogeneous shape fits every device (and
            the latency target), naming the devices that do not fit the smallest one.
    """
    config = teacher.vit("--method devit")
    names = list(devices.names)
    classes = split_classes(config.num_classes, len(names), seed, "devit")
    scores = []
    for name, group in zip(names, classes):
        taylor = subtask_importance(teacher, data, group, "taylor", cal_images, seed, "devit", name)
        channels = (taylor.channels if channel_rule == "taylor"
                    else subtask_importance(teacher, data, group, channel_rule, cal_images, seed, "devit",
                                            name).channels)
        scores.append(ImportanceScores(taylor.heads, taylor.neurons, channels, taylor.blocks, "taylor"))
    L, h = config.depth, config.num_heads
    def flops(heads: int, depth: int) -> int:
        width, neurons = _widths(config, heads)
        return shape_cost(config, width, (heads,) * depth, (neurons,) * depth).flops

    shapes = sorted(itertools.product(range(h, 0, -1), range(L, 0, -1)), key=lambda s: -flops(*s))
    smallest_misfit: list[str] = []
    for heads, depth in shapes:
        layers = tuple(sorted({int(round(v)) for v in torch.linspace(0, L - 1, depth).tolist()}))
        width, neurons = _widths(config, heads)
        specs = tuple(pruned_spec(config, s, layers, width, heads, neurons) for s in scores)
        policy = Policy(tuple(names), specs, shared_channels=True, shared_units=True)
        smallest_misfit = misfits(config, devices, policy)
        if smallest_misfit:
            continue
        total = evaluator.latency(policy).total_ms
        if target_ms is not None and total > target_ms:
            smallest_misfit = [f"predicted T {total:.2f} ms > target {target_ms:g} ms"]
            continue
        middle = len(layers) // 2   # the feature-matching pair: its middle block and the teacher's own
        sigma = 1 - heads / h
        choice = (f"σ = {sigma:.2f} (h_s = {heads} of {h} heads, D_s = {width}, d_s = {neurons}), "
                  f"{len(layers)} of {L} blocks {list(layers)}; predicted T {total:.2f} ms")
        log.info("devit: %s", choice)
        return SubtaskPlan(policy, classes, choice, tuple((middle, layers[middle]) for _ in names))
    raise ConfigError(f"--method devit: no homogeneous sub-model fits every device; the smallest (1 head, 1 block) "
                      f"misses: {'; '.join(smallest_misfit)}")


def _widths(config: ViTConfig, heads: int) -> tuple[int, int]:
    """DeViT's structure for h_s heads: D_s = head_dim · h_s residual channels, d_s = D · h_s / h neurons."""
    return min(config.embed_dim, config.head_dim * heads), max(1, round(config.mlp_hidden * heads / config.num_heads))
