from __future__ import annotations

import pytest
import torch

from shoal.models import Aggregator, SubModelSpec, build_submodel, config_from_timm, pooled_features
from tests.conftest import make_vit


@pytest.mark.parametrize("pool", ["token", "avg"])
def test_pool_then_map_equals_map_then_pool(pool):
    torch.manual_seed(0)
    agg = Aggregator([8, 5, 3], out_dim=12, num_classes=4, pool=pool, num_prefix_tokens=1)
    tokens = [torch.randn(2, 17, w) for w in (8, 5, 3)]
    pooled = [t[:, 0] if pool == "token" else t[:, 1:].mean(1) for t in tokens]
    assert torch.allclose(agg(pooled), agg.forward_tokens(tokens), atol=1e-5)


def test_pool_then_map_through_real_submodels():
    teacher = make_vit()
    config = config_from_timm(teacher)
    specs = [SubModelSpec((0, 1, 2), tuple(range(0, 48, 2)), ((0, 1),) * 3, (tuple(range(48)),) * 3),
             SubModelSpec((1, 2), tuple(range(1, 48, 2)), ((2, 3),) * 2, (tuple(range(48, 96)),) * 2)]
    models = [build_submodel(config, s, teacher) for s in specs]
    agg = Aggregator([s.width for s in specs], config.embed_dim, config.num_classes)
    x = torch.randn(3, *config.input_shape)
    with torch.no_grad():
        sent = [pooled_features(m, x) for m in models]             # what devices send: (B, d_n)
        tokens = [m.forward_features(x) for m in models]           # full token maps: (B, S, d_n)
        assert torch.allclose(agg(sent), agg.forward_tokens(tokens), atol=1e-5)
    assert sum(t.numel() for t in sent) * config.seq_len == sum(t.numel() for t in tokens)


def test_scatter_init_rebuilds_the_teacher_head_on_a_full_split():
    teacher = make_vit()
    config_from_timm(teacher)   # the tiny ViT is one shoal can cut
    halves = [tuple(range(0, 48, 2)), tuple(range(1, 48, 2))]
    agg = Aggregator.from_teacher_channels(halves, teacher.head)
    feats = torch.randn(4, 48)
    parts = [feats[:, list(h)] for h in halves]
    assert torch.allclose(agg(parts), teacher.head(feats), atol=1e-5)


def test_missing_device_counts_as_zero():
    agg = Aggregator([2, 3], 4, 2)
    a, b = torch.randn(1, 2), torch.randn(1, 3)
    out = agg([a, b], present=torch.tensor([1.0, 0.0]))
    assert torch.allclose(out, agg([a, torch.zeros(1, 3)]))
    with pytest.raises(ValueError, match="expects 5"):
        agg([a])
