"""The balanced split: the teacher's whole work spread over the devices in proportion to their speed.

What a user with a big model and no accuracy to spare asks for. Every device
keeps every block and every residual channel (channels are shared: C2 is
relaxed, `Policy.shared_channels`); the heads and MLP neurons of each block
are partitioned among the devices (C3-C4 hold), so the sub-models together
do the teacher's block work once, plus one patch embedding and final norm
per device. Nothing is pruned; what the split gives up are the sums across
devices inside each block, which calibration and the aggregator learn back.

Shares start in proportion to each device's speed (1 / its predicted teacher
latency) and are refined on the devices' own latency predictors until the
devices are predicted to finish together: compute plus link and call overhead
(t1 + t2) alike (each round scales a device's share by the compute time it may
take, the mean finish time less its t2, over the compute time it takes). Heads
are few (6 in a DeiT-S), so a block's heads are rounded with error diffusion across blocks: a device owed 2.6 heads per
block gets 3 in some blocks and 2 in others, 2.6 on average.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from shoal.errors import InfeasibleError
from shoal.models.accounting import shape_cost
from shoal.models.config import TeacherConfig
from shoal.models.importance import ImportanceScores
from shoal.models.partition import DealRule, SubModelShape, decompose
from shoal.models.spec import Policy
from shoal.plan.latency import LatencyBreakdown
from shoal.planner.objective import Evaluator
from shoal.planner.space import apportion

log = logging.getLogger(__name__)

ROUNDS = 8   # refinement rounds on the predictors (each is one batched predictor call per device)


def shapes_for_shares(config: TeacherConfig, shares: Sequence[float]) -> list[SubModelShape]:
    """Per device: every block, every channel, and its share of each block's heads and neurons.

    Heads and neurons are rounded per block with error diffusion (the remainder a device is
    owed in one block is carried to the next), so over the blocks each device gets its share.
    """
    total = sum(shares)
    share = [s / total for s in shares]
    carry_h, carry_m = [0.0] * len(share), [0.0] * len(share)
    heads: list[list[int]] = [[] for _ in share]
    mlp: list[list[int]] = [[] for _ in share]
    for _ in range(config.depth):
        for counts, carry, units, cap in ((heads, carry_h, config.num_heads, config.num_heads),
                                          (mlp, carry_m, config.mlp_hidden, config.mlp_hidden)):
            wanted = [max(0.0, s * units + c) for s, c in zip(share, carry)]
            got = apportion(wanted, cap)
            for n, (w, g) in enumerate(zip(wanted, got)):
                counts[n].append(g)
                carry[n] = w - g
    layers = tuple(range(config.depth))
    return [SubModelShape(layers, config.embed_dim, tuple(h), tuple(m)) for h, m in zip(heads, mlp)]


def balanced_policy(config: TeacherConfig, evaluator: Evaluator, scores: ImportanceScores,
                    deal_rule: DealRule = "fair", rounds: int = ROUNDS) -> Policy:
    """The balanced split over every device of the evaluator's set (module doc).

    Raises:
        InfeasibleError: a device's share does not fit its memory or compute budget (the
            search, which may prune, is then the way).
    """
    devices = evaluator.devices
    teacher_ms = evaluator.teacher_latency()
    shares = [1.0 / max(t, 1e-9) for t in teacher_ms]
    best: tuple[float, list[SubModelShape], LatencyBreakdown] | None = None
    for _ in range(rounds + 1):
        shapes = shapes_for_shares(config, shares)
        latency = evaluator.latencies([shapes])[0]
        # a device is done when its features are back: compute plus its link and call overhead
        ends = [c + t for c, t in zip(latency.compute_ms, latency.transfer_ms)]
        slowest = max(ends)
        if best is None or slowest < best[0]:
            best = (slowest, shapes, latency)
        target = sum(ends) / len(ends)
        shares = [s * max(target - t, 1e-3) / max(c, 1e-9)
                  for s, c, t in zip(shares, latency.compute_ms, latency.transfer_ms)]
    assert best is not None
    _, shapes, final = best
    for device, shape in zip(devices.devices, shapes):
        cost = shape_cost(config, shape.width, list(shape.head_counts), list(shape.mlp_widths))
        if not device.fits(cost.memory_bytes, cost.flops):
            raise InfeasibleError(
                f"the balanced split gives device {device.name!r} {cost.memory_bytes / 2**20:.1f} MiB and "
                f"{cost.flops / 1e6:.0f} MFLOPs, over its budget ({device.memory_bytes / 2**20:.1f} MiB"
                + (f", {device.compute_flops / 1e6:.0f} MFLOPs" if device.compute_flops is not None else "")
                + "); use --split search, which may prune")
    log.info("balanced split: predicted compute + transfer %s ms",
             ", ".join(f"{c:.1f} + {t:.1f}" for c, t in zip(final.compute_ms, final.transfer_ms)))
    return decompose(config, list(devices.names), shapes, scores, deal_rule, shared_channels=True)
