from __future__ import annotations

import random

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from shoal.errors import ConfigError
from shoal.models import ImportanceScores, SubModelShape, check_disjoint, choose_layers, deal, decompose
from shoal.models.config import ViTConfig

CONFIG = ViTConfig(img_size=16, patch_size=4, in_chans=3, num_classes=5, embed_dim=48, depth=4,
                   num_heads=6, head_dim=8, mlp_hidden=64)


def _scores(seed=0):
    g = torch.Generator().manual_seed(seed)
    return ImportanceScores(torch.rand(4, 6, generator=g), torch.rand(4, 64, generator=g),
                            torch.rand(48, generator=g), torch.rand(4, generator=g), "random")


def test_deal_fair_mixes_important_units():
    ranking = torch.arange(12, 0, -1).float()  # unit 0 most important
    a, b = deal(ranking, [6, 6], "fair")
    assert a == (0, 2, 4, 6, 8, 10) and b == (1, 3, 5, 7, 9, 11)
    a, b = deal(ranking, [6, 6], "ranked")
    assert a == (0, 1, 2, 3, 4, 5)


def test_deal_respects_quotas_and_drops_least_important():
    ranking = torch.tensor([5.0, 1.0, 4.0, 0.5, 3.0])
    sets = deal(ranking, [2, 1], "fair")
    assert sorted(len(s) for s in sets) == [1, 2]
    assert set(sets[0]) | set(sets[1]) == {0, 2, 4}
    with pytest.raises(ConfigError, match="ask for 6"):
        deal(ranking, [3, 3])


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(1, 4), rule=st.sampled_from(["fair", "ranked"]))
def test_decompose_is_disjoint_and_within_budgets(seed, n, rule):
    rnd = random.Random(seed)
    widths = [max(1, w) for w in _split(CONFIG.embed_dim, n, rnd)]
    while sum(widths) > CONFIG.embed_dim:
        widths[widths.index(max(widths))] -= 1
    layer_sets = [tuple(sorted(rnd.sample(range(4), rnd.randint(1, 4)))) for _ in range(n)]
    heads = {b: _split(6, n, rnd) for b in range(4)}
    mlp = {b: _split(64, n, rnd) for b in range(4)}
    shapes = [SubModelShape(ls, widths[i], tuple(heads[b][i] for b in ls), tuple(mlp[b][i] for b in ls))
              for i, ls in enumerate(layer_sets)]
    policy = decompose(CONFIG, [f"d{i}" for i in range(n)], shapes, _scores(seed), rule)
    check_disjoint(policy)
    policy.check_against(CONFIG)
    for shape, spec in zip(shapes, policy.specs):
        assert spec.width == shape.width
        for block, h, m in zip(spec.layers, spec.head_counts, spec.mlp_widths):
            k = shape.layers.index(block)
            assert (h, m) == (shape.head_counts[k], shape.mlp_widths[k])
        assert set(spec.layers) <= set(shape.layers)


def _split(total, n, rnd):
    """Random non-negative counts over n owners summing to at most total."""
    cuts = sorted(rnd.randint(0, total) for _ in range(n))
    return [b - a for a, b in zip([0] + cuts, cuts)]


def test_decompose_refuses_overcommitted_budgets():
    s = SubModelShape((0,), 30, (4,), (10,))
    with pytest.raises(ConfigError, match="C2"):
        decompose(CONFIG, ["a", "b"], [s, s], _scores())
    s1, s2 = SubModelShape((0,), 10, (4,), (10,)), SubModelShape((0, 1), 10, (3, 1), (1, 1))
    with pytest.raises(ConfigError, match="C3: block 0 is given 7 heads"):
        decompose(CONFIG, ["a", "b"], [s1, s2], _scores())


def test_decompose_drops_empty_layers():
    s = SubModelShape((0, 1), 8, (2, 0), (4, 0))
    policy = decompose(CONFIG, ["a"], [s], _scores())
    assert policy.specs[0].layers == (0,)


def test_choose_layers():
    scores = _scores()
    assert choose_layers(4, scores, 4) == (0, 1, 2, 3)
    assert choose_layers(2, None, 4, "uniform") == (0, 3)
    top = choose_layers(2, scores, 4, "importance")
    assert set(top) == set(torch.argsort(scores.blocks, descending=True)[:2].tolist())
    with pytest.raises(ConfigError):
        choose_layers(5, scores, 4)


def test_shape_json_and_id_keep_the_keys_files_were_written_with():
    """Measurement files and journals written before the fields were renamed still resume:
    the JSON keys and therefore the ids of shapes are unchanged (ADR 010)."""
    shape = SubModelShape((0, 1), 8, (1, 2), (3, 4))
    assert shape.to_dict() == {"layers": [0, 1], "width": 8, "heads": [1, 2], "mlp": [3, 4]}
    assert SubModelShape.from_dict(shape.to_dict()) == shape
    assert shape.id == "c8a3157fcff0"   # sha1 of the sorted JSON, as every earlier dataset recorded it
