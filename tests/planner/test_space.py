from __future__ import annotations

import random

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from shoal.devices.spec import DeviceSet, DeviceSpec
from shoal.errors import InfeasibleError
from shoal.models import ImportanceScores, check_disjoint, spec_cost
from shoal.models.config import ViTConfig
from shoal.planner.space import SearchSpace, apportion

CONFIG = ViTConfig(img_size=32, patch_size=4, in_chans=1, num_classes=10, embed_dim=192, depth=6,
                   num_heads=6, head_dim=32, mlp_hidden=768)


def _scores():
    g = torch.Generator().manual_seed(0)
    return ImportanceScores(torch.rand(6, 6, generator=g), torch.rand(6, 768, generator=g),
                            torch.rand(192, generator=g), torch.rand(6, generator=g), "random")


def _devices(memory_mb=(64, 64, 64), compute=(None, None, None)):
    return DeviceSet(tuple(
        DeviceSpec(name, int(m * 2**20), compute_flops=c, central=(i == 0))
        for i, (name, m, c) in enumerate(zip(("hub", "a", "b"), memory_mb, compute))))


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 100_000))
def test_every_point_decodes_to_a_feasible_disjoint_policy(seed):
    space = SearchSpace(CONFIG, _devices(memory_mb=(64, 2.5, 1.2), compute=(None, 60_000_000, None)), _scores())
    x = [random.Random(seed).random() for _ in range(space.dim)]
    policy = space.decode(x)
    check_disjoint(policy)
    policy.check_against(CONFIG)
    for device, spec in zip(space.devices.devices, policy.specs):
        cost = spec_cost(CONFIG, spec)
        assert cost.memory_bytes <= device.memory_bytes
        assert device.compute_flops is None or cost.flops <= device.compute_flops
    assert sum(s.width for s in policy.specs) <= CONFIG.embed_dim


def test_dimension_is_small_and_decode_is_deterministic():
    space = SearchSpace(CONFIG, _devices(), _scores())
    assert space.dim == 4 * 3 + 2
    x = [0.5] * space.dim
    assert space.decode(x) == space.decode(x)


def test_full_request_for_one_device_is_the_teacher():
    space = SearchSpace(CONFIG, DeviceSet((DeviceSpec("solo", 1 << 30, central=True),)), _scores())
    policy = space.decode([1.0, 1.0, 1.0, 1.0, 0.5, 0.5])
    spec = policy.specs[0]
    assert spec.depth == 6 and spec.width == 192
    assert spec.head_counts == (6,) * 6 and spec.mlp_widths == (768,) * 6


def test_infeasible_budget_names_device_and_shortfall():
    space = SearchSpace(CONFIG, _devices(memory_mb=(64, 64, 0.001)), _scores())
    with pytest.raises(InfeasibleError, match=r"device 'b': memory budget 0.00 MiB is [0-9.]+ MiB short"):
        space.check_feasible()


def test_uniform_point_gives_equal_shapes():
    space = SearchSpace(CONFIG, _devices(), _scores())
    scale = space.largest_uniform_scale(1.0)
    shapes = space.decode_shapes(space.uniform_point(1.0, scale))
    assert len({(s.width, s.head_counts, s.mlp_widths) for s in shapes}) == 1


def test_uniform_scale_is_sized_to_the_weakest_device():
    space = SearchSpace(CONFIG, _devices(memory_mb=(64, 64, 1.0)), _scores())
    scale = space.largest_uniform_scale(1.0)
    assert 0 < scale < 1
    policy = space.decode(space.uniform_point(1.0, scale))
    assert all(spec_cost(CONFIG, s).memory_bytes <= 1 << 20 for s in policy.specs)


@pytest.mark.parametrize("requests, cap, minimum", [
    ([1.2, 2.7, 0.1], 6, 0), ([5.0, 5.0, 5.0], 6, 0), ([0.0, 0.0], 4, 0), ([1.0, 100.0], 50, 8)])
def test_apportion_never_exceeds_cap(requests, cap, minimum):
    counts = apportion(requests, cap, minimum)
    assert sum(counts) <= cap and all(c >= 0 for c in counts)
    if sum(requests) <= cap and minimum == 0:
        assert all(abs(c - r) < 1 for c, r in zip(counts, requests))


def test_a_worker_below_the_leave_out_threshold_gets_no_submodel():
    space = SearchSpace(CONFIG, _devices(), _scores())
    x = [0.8, 0.5, 0.5, 0.5, 0.05, 0.5, 0.5, 0.5, 0.8, 0.3, 0.5, 0.5, 0.5, 0.5]
    shapes = space.decode_shapes(x)
    assert shapes[1] is None and shapes[0] is not None and shapes[2] is not None
    policy = space.decode(x)
    assert policy.devices == ("hub", "b")
    # the central node is never left out, and CoFormer's rule can be kept
    assert space.decode([0.0] + x[1:]).devices[0] == "hub"
    strict = SearchSpace(CONFIG, _devices(), _scores(), allow_leave_out=False)
    assert strict.decode(x).devices == ("hub", "a", "b")
