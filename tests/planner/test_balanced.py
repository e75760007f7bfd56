from __future__ import annotations

import pytest
import torch

from shoal.data.digits import load_digits_split
from shoal.devices.spec import DeviceSet, DeviceSpec
from shoal.errors import ConfigError, InfeasibleError
from shoal.models import build_submodel, compute_importance, load_teacher
from shoal.models.accounting import spec_cost
from shoal.models.spec import Policy, SubModelSpec
from shoal.planner.balanced import balanced_policy, shapes_for_shares
from shoal.planner.objective import Evaluator
from tests.planner.conftest import FlopsPredictor

FAST_LINKS = DeviceSet((DeviceSpec("hub", 64 << 20, central=True), DeviceSpec("fast", 64 << 20, link_mbps=1e4),
                        DeviceSpec("slow", 64 << 20, link_mbps=1e4)))


@pytest.fixture(scope="module")
def problem(tiny_digits_teacher):
    teacher = load_teacher(tiny_digits_teacher)
    train, val = load_digits_split("train"), load_digits_split("val")
    scores = compute_importance(teacher.model, teacher.config, train.images[:64], train.labels[:64])
    # compute-bound devices (no fixed overhead), 4:2.5:1 in speed
    predictors = [FlopsPredictor(teacher.config, speed, overhead_ms=0.0) for speed in (40.0, 25.0, 10.0)]
    evaluator = Evaluator(teacher.model, teacher.config, FAST_LINKS, predictors,
                          train.images[:64], val.images[:48], val.labels[:48], delta=0.05, proxy="ridge")
    return teacher, scores, evaluator


def test_shares_are_met_over_the_blocks_and_every_unit_is_given_once(problem):
    teacher, _, _ = problem
    c = teacher.config
    shapes = shapes_for_shares(c, [0.6, 0.3, 0.1])
    for k in range(c.depth):   # C3/C4 with nothing left over: the whole block's work is spread
        assert sum(s.head_counts[k] for s in shapes) == c.num_heads
        assert sum(s.mlp_widths[k] for s in shapes) == c.mlp_hidden
    for shape, share in zip(shapes, (0.6, 0.3, 0.1)):
        assert shape.width == c.embed_dim and shape.layers == tuple(range(c.depth))
        # error diffusion: over the blocks a device gets its share of heads within one head
        assert abs(sum(shape.head_counts) - share * c.num_heads * c.depth) <= 1.0 + 1e-9


def test_balanced_policy_keeps_the_whole_work_and_equalises_predicted_compute(problem):
    teacher, scores, evaluator = problem
    c = teacher.config
    policy = balanced_policy(c, evaluator, scores)
    assert policy.shared_channels and policy.devices == evaluator.devices.names
    policy.check_against(c)   # heads and neurons stay disjoint
    full = spec_cost(c, SubModelSpec.full(c)).flops
    flops = [spec_cost(c, s).flops for s in policy.specs]
    assert sum(flops) >= full   # nothing pruned: the teacher's block work plus one embedding per device
    compute = evaluator.latency(policy).compute_ms
    even = evaluator.latency(balanced_even(c, evaluator, scores)).compute_ms
    # the three predictors run at 40, 25 and 10 MFLOPs/ms: equal shares leave the slow device far behind
    assert max(compute) < 0.75 * max(even)
    assert max(compute) / min(compute) < 1.5


def test_a_slow_link_takes_work_off_its_device(problem, three_devices):
    """Devices are balanced on when their features are back (t1 + t2), not on compute alone."""
    teacher, scores, fast = problem
    images = load_digits_split("val").images[:32]
    slow_link = Evaluator(teacher.model, teacher.config, three_devices, fast.predictors, images, images,
                          torch.zeros(32, dtype=torch.long), delta=0.0, proxy="ridge")
    assert three_devices["slow"].link_mbps < 10   # the conftest set: 2 Mbit/s
    share = [sum(s.mlp_widths) for s in balanced_policy(teacher.config, fast, scores).specs]
    starved = [sum(s.mlp_widths) for s in balanced_policy(teacher.config, slow_link, scores).specs]
    assert starved[2] < share[2] and starved[0] > share[0]


def balanced_even(config, evaluator, scores):
    from shoal.models.partition import decompose

    return decompose(config, list(evaluator.devices.names), shapes_for_shares(config, [1, 1, 1]), scores,
                     shared_channels=True)


def test_shared_channel_submodels_sum_to_the_teacher_block_work(problem):
    """With N = 1 the balanced split is the teacher itself (the surgery invariant)."""
    teacher, scores, _ = problem
    c = teacher.config
    (shape,) = shapes_for_shares(c, [1.0])
    from shoal.models.partition import decompose

    policy = decompose(c, ["only"], [shape], scores, shared_channels=True)
    model = build_submodel(c, policy.specs[0], teacher.model)
    x = load_digits_split("val").images[:8]
    torch.testing.assert_close(model(x), teacher.model(x), atol=1e-5, rtol=1e-5)


def test_shared_channels_round_trip_and_are_refused_without_the_flag(problem):
    teacher, scores, evaluator = problem
    policy = balanced_policy(teacher.config, evaluator, scores)
    again = Policy.from_dict(policy.to_dict())
    assert again == policy and again.to_dict()["shared_channels"] is True
    unshared = Policy(policy.devices, policy.specs)
    with pytest.raises(ConfigError, match="C2: channel 0 is given to both"):
        unshared.check_against(teacher.config)
    with pytest.raises(ConfigError, match="shared_channels must be true or false"):
        Policy.from_dict({**policy.to_dict(), "shared_channels": "yes"})
    assert "shared_channels" not in Policy(policy.devices[:1], policy.specs[:1]).to_dict()


def test_a_share_over_a_device_budget_is_refused_with_the_way_out(problem, three_predictors):
    teacher, scores, _ = problem
    tight = DeviceSet((DeviceSpec("hub", 64 << 20, central=True), DeviceSpec("fast", 64 << 20, link_mbps=1e4),
                       DeviceSpec("slow", 64 << 10, link_mbps=1e4)))
    images = load_digits_split("val").images[:32]
    evaluator = Evaluator(teacher.model, teacher.config, tight, three_predictors, images, images,
                          torch.zeros(32, dtype=torch.long), delta=0.0, proxy="ridge")
    with pytest.raises(InfeasibleError, match="balanced split gives device 'slow'.*--split search"):
        balanced_policy(teacher.config, evaluator, scores)
