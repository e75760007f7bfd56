"""ED-ViT (seeds/003): class-wise sub-models, KL-guided pruning, greedy assignment (`--method edvit`).

One sub-model per sub-task (Algorithm 1), pruned from the teacher with one factor
s_j = (h - hp_j) / h for all three of its stages (§IV-C): the s·d residual channels,
s·h heads per block and s·D MLP neurons per block whose removal changes the
teacher's output distribution least on the sub-task's images (KL, `importance`
rule "kl"); every block is kept. Algorithm 3 assigns the sub-models, largest
compute first, each to the remaining device with the most compute that fits its
memory and compute (a device that does not fit is dropped); when no assignment
exists, the largest sub-model loses one more head and everything is tried again
(Algorithm 1, line 18). shoal's runtime runs one sub-model per device, so a
device that received one is not offered another (the paper lets a device hold
several). With a latency target, the sub-model of the device predicted to finish
last is pruned further until the plan meets it (ours; the paper has budgets only).
Calibration: each sub-model retrained on its classes' labels, then the fusion MLP
on the frozen features (ADR 016).
"""

from __future__ import annotations

import logging
import math

from shoal.data.datasets import TaskData
from shoal.devices.spec import DeviceSet
from shoal.errors import ConfigError
from shoal.models.accounting import spec_cost
from shoal.models.config import ViTConfig
from shoal.models.importance import ImportanceScores
from shoal.models.spec import Policy, SubModelSpec
from shoal.models.teacher import Teacher
from shoal.planner.objective import Evaluator
from shoal.planner.subtasks import SubtaskPlan, pruned_spec, split_classes, subtask_importance

log = logging.getLogger(__name__)


def edvit_plan(teacher: Teacher, data: TaskData, devices: DeviceSet, evaluator: Evaluator, *,
               target_ms: float | None, cal_images: int, seed: int) -> SubtaskPlan:
    """ED-ViT's policy for `devices` (every one of them, central first).

    Raises:
        ConfigError: more devices than classes, or no pruning down to one head per block fits.
    """
    config = teacher.vit("--method edvit")
    names = list(devices.names)
    h = config.num_heads
    classes = split_classes(config.num_classes, len(names), seed, "edvit")
    scores = [subtask_importance(teacher, data, group, "kl", cal_images, seed, "edvit", f"sub-task {k}")
              for k, group in enumerate(classes)]
    speed = evaluator.teacher_latency()   # ties of compute budgets: the faster device first
    hp = [0] * len(names)
    while True:
        specs = [_spec(config, s, h - p) for s, p in zip(scores, hp)]
        assignment = assign(config, devices, specs, speed)
        why = "no assignment fits the devices' memory and compute" if assignment is None else ""
        if assignment is not None:
            order = [assignment.index(name) for name in names]   # sub-model of each device
            policy = Policy(tuple(names), tuple(specs[k] for k in order), shared_channels=True, shared_units=True)
            latency = evaluator.latency(policy)
            if target_ms is None or latency.total_ms <= target_ms:
                kept = ", ".join(f"{n} {h - hp[k]}/{h} heads" for n, k in zip(names, order))
                choice = f"s_j = (h - hp_j)/h: {kept}; predicted T {latency.total_ms:.2f} ms"
                log.info("edvit: %s", choice)
                return SubtaskPlan(policy, tuple(classes[k] for k in order), choice)
            why = f"predicted T {latency.total_ms:.2f} ms > target {target_ms:g} ms"
            j = order[latency.straggler]   # the sub-model of the device that finishes last
        else:
            j = max(range(len(specs)), key=lambda k: spec_cost(config, specs[k]).memory_bytes)
        if hp[j] + 1 >= h:
            raise ConfigError(f"--method edvit: {why}, even with sub-task {j}'s sub-model pruned to one head per "
                              "block (use fewer or bigger devices, or a looser --target-ms)")
        hp[j] += 1


def assign(config: ViTConfig, devices: DeviceSet, specs: list[SubModelSpec], speed: list[float]
           ) -> list[str] | None:
    """Algorithm 3: per sub-model (list order) the device it goes to, or None when one is left over.

    Sub-models go largest compute first to the remaining device with the most compute budget
    (none set: unlimited; ties: the faster device by its predicted teacher latency `speed`);
    a device whose remaining memory or compute does not fit the sub-model is dropped."""
    costs = [spec_cost(config, s) for s in specs]
    memory = {d.name: d.memory_bytes for d in devices.devices}
    compute = {d.name: float(d.compute_flops) if d.compute_flops is not None else math.inf for d in devices.devices}
    rank = {d.name: speed[i] for i, d in enumerate(devices.devices)}
    remaining = [d.name for d in devices.devices]
    out: dict[int, str] = {}
    for k in sorted(range(len(specs)), key=lambda k: -costs[k].flops):
        while k not in out:
            if not remaining:
                return None
            best = max(remaining, key=lambda n: (compute[n], -rank[n]))
            remaining.remove(best)   # fits: it is taken (one sub-model per device); else: dropped
            if memory[best] >= costs[k].memory_bytes and compute[best] >= costs[k].flops:
                out[k] = best
    return [out[k] for k in range(len(specs))]


def _spec(config: ViTConfig, scores: ImportanceScores, heads: int) -> SubModelSpec:
    s = heads / config.num_heads
    return pruned_spec(config, scores, tuple(range(config.depth)), max(1, round(s * config.embed_dim)), heads,
                       max(1, round(s * config.mlp_hidden)))
