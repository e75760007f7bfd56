"""Token reduction (Janus §III-A): the declining schedule, ToMe merging, class-attention pruning, splits."""

from __future__ import annotations

import math

import pytest
import torch

from shoal.errors import ConfigError
from shoal.models.tokens import (
    TokenRunner,
    alpha_grid,
    alpha_max,
    check_schedule,
    counts,
    merge_tokens,
    prune_tokens,
    removals,
)
from tests.conftest import make_vit


def test_the_schedule_is_eq_1_declining_and_never_takes_the_class_token():
    # ViT-L@384 (577 tokens, 24 layers): the paper's α = 0.25 removes 53, 45, 38 ... 1 (90% in the front half)
    r = removals(0.25, 24, 577)
    assert r[:3] == (53, 45, 38) and r[-1] == 1 and list(r) == sorted(r, reverse=True)
    assert sum(r[:13]) / sum(r) > 0.89
    assert removals(0.0, 24, 577) == (0,) * 24
    assert counts(0.25, 24, 577)[-1] == 577 - sum(r)
    for alpha in alpha_grid(6, 65):   # every α of the grid leaves the class token and one more
        assert counts(alpha, 6, 65)[-1] >= 2
    assert alpha_max(6, 65) == 1.0 and alpha_grid(6, 65)[:3] == (0.0, 0.01, 0.02)
    assert removals(5.0, 6, 65)[0] == 32   # capped: at most half of what a layer can match
    with pytest.raises(ConfigError, match="α must be >= 0"):
        removals(-0.1, 6, 65)
    with pytest.raises(ConfigError, match=r"α must be within \[0, 1\]"):
        check_schedule([0.5, 1.2], 6, 65)


def test_merging_keeps_the_class_token_first_and_the_mass_of_every_token():
    torch.manual_seed(0)
    x, keys = torch.randn(2, 9, 4), torch.randn(2, 9, 3)
    size = torch.ones(2, 9, 1)
    merged, sizes = merge_tokens(x, size, keys, 3)
    assert merged.shape == (2, 6, 4) and sizes.shape == (2, 6, 1)
    assert torch.equal(merged[:, 0], x[:, 0]) and bool((sizes[:, 0] == 1).all())
    assert sizes.sum(dim=1).squeeze(-1).tolist() == [9.0, 9.0]     # no token lost, none counted twice
    assert torch.allclose((merged * sizes).sum(dim=1), x.sum(dim=1), atol=1e-5)   # size-weighted averages
    kept, kept_sizes = prune_tokens(x, size, torch.rand(2, 9), 3)
    assert kept.shape == (2, 6, 4) and torch.equal(kept[:, 0], x[:, 0]) and bool((kept_sizes == 1).all())


def test_pruning_drops_the_tokens_the_class_token_ignores():
    x = torch.arange(6, dtype=torch.float32).view(1, 6, 1)
    attention = torch.tensor([[0.0, 0.5, 0.01, 0.3, 0.02, 0.17]])
    kept, _ = prune_tokens(x, torch.ones(1, 6, 1), attention, 2)
    assert kept.flatten().tolist() == [0.0, 1.0, 3.0, 5.0]


@pytest.mark.parametrize("reduction", ["merge", "prune"])
def test_a_split_anywhere_gives_the_same_answer_as_the_whole_run(reduction):
    model = make_vit(img_size=16, patch_size=2, depth=4)   # 65 tokens
    runner = TokenRunner(model, reduction)
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        assert torch.allclose(runner(x, 0.0), model(x), atol=1e-5)   # α = 0: the model itself
        whole = runner(x, 0.8)
        for split in range(runner.depth + 1):
            tokens, sizes = runner.embed(x)
            tokens, sizes = runner.blocks(tokens, sizes, 0, split, 0.8)          # the device's part
            assert tokens.shape[1] == counts(0.8, runner.depth, runner.tokens)[split]
            tokens, _ = runner.blocks(tokens.half().float(), sizes, split, runner.depth, 0.8)   # over the link
            assert torch.allclose(runner.head(tokens), whole, atol=2e-2)
        assert not math.isclose(float((whole - model(x)).abs().max()), 0.0)   # α > 0 changes the answer a little
