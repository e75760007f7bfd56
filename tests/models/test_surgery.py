from __future__ import annotations

import random

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shoal.models import (
    SubModelSpec,
    build_submodel,
    config_from_timm,
    count_flops,
    count_params,
    pooled_features,
    spec_cost,
)
from tests.conftest import make_vit

SHAPES = {
    "token-pool": {},
    "avg-pool+fc_norm+layerscale+qknorm+registers": dict(
        global_pool="avg", init_values=0.1, qk_norm=True, reg_tokens=2, no_embed_class=True,
        embed_dim=40, num_heads=5, mlp_ratio=3.0),
    "pre_norm-no-qkv-bias": dict(pre_norm=True, qkv_bias=False, depth=2, in_chans=1, patch_size=8),
}


@pytest.mark.parametrize("overrides", SHAPES.values(), ids=SHAPES.keys())
def test_full_spec_reproduces_teacher(overrides):
    teacher = make_vit(**overrides)
    config = config_from_timm(teacher)
    student = build_submodel(config, SubModelSpec.full(config), teacher)
    x = torch.randn(3, *config.input_shape)
    with torch.no_grad():
        diff = (student(x) - teacher(x)).abs().max().item()
    assert diff < 1e-5
    assert count_params(student) == count_params(teacher)


def test_submodel_is_physically_smaller(tiny_vit, tiny_config):
    spec = SubModelSpec(layers=(0, 2), channels=tuple(range(0, 48, 3)), heads=((1, 3), (0,)),
                        neurons=((2, 5, 7), ()))
    model = build_submodel(tiny_config, spec, tiny_vit)
    assert model.embed_dim == 16
    assert len(model.blocks) == 2
    assert model.blocks[0].attn.qkv.weight.shape == (3 * 2 * tiny_config.head_dim, 16)
    assert model.blocks[0].attn.head_dim == tiny_config.head_dim
    assert model.blocks[0].mlp.fc1.weight.shape == (3, 16)
    assert not model.blocks[1].has_mlp and isinstance(model.blocks[1].mlp, torch.nn.Identity)
    assert model(torch.randn(2, *tiny_config.input_shape)).shape == (2, tiny_config.num_classes)


def test_sliced_weights_come_from_the_teacher(tiny_vit, tiny_config):
    spec = SubModelSpec(layers=(1,), channels=(3, 7, 11, 20), heads=((2,),), neurons=((4, 9),))
    model = build_submodel(tiny_config, spec, tiny_vit)
    hd, h = tiny_config.head_dim, tiny_config.num_heads
    qkv = tiny_vit.blocks[1].attn.qkv.weight
    ch = torch.tensor(spec.channels)
    k_rows = qkv[h * hd + 2 * hd: h * hd + 3 * hd][:, ch]
    assert torch.equal(model.blocks[0].attn.qkv.weight[hd:2 * hd], k_rows)
    assert torch.equal(model.blocks[0].mlp.fc2.weight, tiny_vit.blocks[1].mlp.fc2.weight[ch][:, [4, 9]])
    assert torch.equal(model.pos_embed, tiny_vit.pos_embed[..., ch])


def test_pooled_features_are_what_the_head_reads(tiny_vit, tiny_config):
    spec = SubModelSpec.full(tiny_config)
    model = build_submodel(tiny_config, spec, tiny_vit)
    x = torch.randn(2, *tiny_config.input_shape)
    with torch.no_grad():
        feats = pooled_features(model, x)
        assert feats.shape == (2, tiny_config.embed_dim)
        assert torch.allclose(model.head(feats), model(x), atol=1e-6)


def _random_spec(config, rnd: random.Random) -> SubModelSpec:
    layers = sorted(rnd.sample(range(config.depth), rnd.randint(0, config.depth)))
    channels = sorted(rnd.sample(range(config.embed_dim), rnd.randint(1, config.embed_dim)))
    heads, neurons = [], []
    for _ in layers:
        h = sorted(rnd.sample(range(config.num_heads), rnd.randint(0, config.num_heads)))
        n = sorted(rnd.sample(range(config.mlp_hidden), rnd.randint(0 if h else 1, config.mlp_hidden)))
        heads.append(h)
        neurons.append(n)
    return SubModelSpec(layers, channels, heads, neurons)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 10_000), shape=st.sampled_from(list(SHAPES)))
def test_random_specs_match_their_accounting(seed, shape):
    teacher = make_vit(**SHAPES[shape])
    config = config_from_timm(teacher)
    spec = _random_spec(config, random.Random(seed))
    model = build_submodel(config, spec, teacher)
    cost = spec_cost(config, spec)
    assert count_params(model) == cost.params
    assert count_flops(model, (1, *config.input_shape)) == cost.flops
    out = model(torch.randn(1, *config.input_shape))
    assert out.shape == (1, config.num_classes) and torch.isfinite(out).all()


def test_random_init_submodel_for_timing(tiny_config):
    spec = SubModelSpec(layers=(0,), channels=(0, 1, 2, 3), heads=((0,),), neurons=((0, 1),))
    model = build_submodel(tiny_config, spec)
    assert torch.isfinite(model(torch.randn(1, *tiny_config.input_shape))).all()
    meta = build_submodel(tiny_config, spec, device="meta")
    assert count_flops(meta, (1, *tiny_config.input_shape)) == spec_cost(tiny_config, spec).flops
