"""What DeViT and ED-ViT share: classes split into sub-tasks, a sub-model per sub-task, budgets.

Both papers give each device a sub-model of its own share of the classes
(DeViT eq. 4, ED-ViT Algorithm 1 lines 3-6): a balanced random partition,
group sizes ⌊C/N⌋ + 1 for the first C mod N groups and ⌊C/N⌋ for the rest,
drawn once from the seed. Each sub-model's units are ranked by importance on
its own sub-task (the teacher's loss restricted to its classes, on its
classes' images); two sub-models may keep the same unit
(`Policy.shared_units`). A policy must fit every device's memory and compute
budget (`DeviceSpec.fits`, the check CoFormer's search space applies), and,
with a latency target, be predicted (the planner's own latency model) to
answer within it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from shoal.data.datasets import TaskData
from shoal.devices.spec import DeviceSet
from shoal.errors import ConfigError, DataError
from shoal.models.accounting import spec_cost
from shoal.models.config import TeacherConfig
from shoal.models.importance import ImportanceRule, ImportanceScores, compute_importance
from shoal.models.spec import Policy, SubModelSpec
from shoal.models.teacher import Teacher


@dataclass(frozen=True)
class SubtaskPlan:
    """A method's policy, the classes of each device's sub-task, and what it chose (in words).

    Attributes:
        policy: One sub-model per device, in the device set's order (central first).
        classes: Per device (policy order), the classes of its sub-task.
        choice: The method's choice, e.g. "σ = 0.50, 3 of 6 blocks" (recorded in plan.json).
        relation_layers: Per device, (its block, the teacher block it was sliced from) for DeViT's
            feature-matching term, or None.
    """

    policy: Policy
    classes: tuple[tuple[int, ...], ...]
    choice: str
    relation_layers: tuple[tuple[int, int] | None, ...] = ()


def split_classes(num_classes: int, parts: int, seed: int, method: str) -> tuple[tuple[int, ...], ...]:
    """A balanced random partition of the classes into `parts` sub-tasks (DeViT eq. 4): the first
    C mod N groups get ⌊C/N⌋ + 1 classes, the others ⌊C/N⌋; which classes, the seed decides.

    Raises:
        ConfigError: more devices than classes (a sub-task needs at least one class).
    """
    if parts > num_classes:
        raise ConfigError(f"--method {method}: {parts} devices but the task has {num_classes} classes; each "
                          "device's sub-model needs a class of its own (use fewer devices or --method coformer)")
    order = torch.randperm(num_classes, generator=torch.Generator().manual_seed(seed)).tolist()
    base, extra = divmod(num_classes, parts)
    groups, start = [], 0
    for i in range(parts):
        size = base + (1 if i < extra else 0)
        groups.append(tuple(sorted(order[start:start + size])))
        start += size
    return tuple(groups)


def subtask_images(data: TaskData, classes: Sequence[int], limit: int, method: str, device: str
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Up to `limit` training images of `classes` and their labels.

    Raises:
        DataError: the sub-task has no training images.
    """
    labels = data.train.labels
    idx = torch.nonzero(torch.isin(labels, torch.tensor(list(classes)))).squeeze(1)[:limit]
    if idx.numel() == 0:
        raise DataError(f"--method {method}: the sub-task of device {device!r} (classes {list(classes)}) has no "
                        "training images; every class needs some")
    return data.train.images[idx], labels[idx]


def subtask_importance(teacher: Teacher, data: TaskData, classes: Sequence[int], rule: ImportanceRule, limit: int,
                       seed: int, method: str, device: str) -> ImportanceScores:
    """Unit importance of the teacher on one sub-task (its loss on those classes' logits and images)."""
    images, labels = subtask_images(data, classes, limit, method, device)
    return compute_importance(teacher.model, teacher.config, images, labels, rule, seed=seed, classes=classes)


def top(scores: torch.Tensor, k: int) -> tuple[int, ...]:
    """Indices of the k highest scores, increasing."""
    k = max(0, min(k, scores.numel()))
    return tuple(sorted(torch.topk(scores, k).indices.tolist())) if k else ()


def pruned_spec(config: TeacherConfig, scores: ImportanceScores, layers: Sequence[int], width: int, heads: int,
                neurons: int) -> SubModelSpec:
    """The sub-model that keeps `layers`, the `width` most important channels and, per kept layer,
    its `heads` most important heads and `neurons` most important neurons."""
    return SubModelSpec(tuple(layers), top(scores.channels, width),
                        tuple(top(scores.heads[j], heads) for j in layers),
                        tuple(top(scores.neurons[j], neurons) for j in layers), config.fingerprint())


def misfits(config: TeacherConfig, devices: DeviceSet, policy: Policy) -> list[str]:
    """Which devices the policy's sub-models do not fit, each with its numbers (empty: all fit)."""
    out = []
    for name, spec in zip(policy.devices, policy.specs):
        cost, device = spec_cost(config, spec), devices[name]
        if not device.fits(cost.memory_bytes, cost.flops):
            budget = f"{device.memory_bytes / 2**20:.1f} MiB" + (
                f", {device.compute_flops / 1e6:.0f} MFLOPs" if device.compute_flops is not None else "")
            out.append(f"{name} ({cost.memory_bytes / 2**20:.1f} MiB, {cost.flops / 1e6:.0f} MFLOPs; budget {budget})")
    return out
