from __future__ import annotations

import torch

from shoal.models import compute_importance


def test_taylor_scores_shapes_and_teacher_untouched(tiny_vit, tiny_config):
    x, y = torch.randn(10, *tiny_config.input_shape), torch.randint(0, 5, (10,))
    before = {k: v.clone() for k, v in tiny_vit.state_dict().items()}
    scores = compute_importance(tiny_vit, tiny_config, x, y, "taylor", batch_size=4)
    assert scores.heads.shape == (3, 4) and scores.neurons.shape == (3, 96)
    assert scores.channels.shape == (48,) and scores.blocks.shape == (3,)
    assert all((t >= 0).all() and t.sum() > 0 for t in scores.to_tensors().values())
    assert all(torch.equal(before[k], v) for k, v in tiny_vit.state_dict().items())
    assert not any(p.grad is not None for p in tiny_vit.parameters())


def test_taylor_head_score_is_first_order_loss_change(tiny_vit, tiny_config):
    """|dL/dO_h . O_h| for one sample equals the directional derivative of zeroing head h."""
    x, y = torch.randn(1, *tiny_config.input_shape), torch.tensor([2])
    scores = compute_importance(tiny_vit, tiny_config, x, y, "taylor")
    block, head, hd = 1, 2, tiny_config.head_dim
    eps = 1e-3

    def loss_with_scale(scale):
        def hook(_m, args):
            (t,) = args
            t = t.clone()
            t[..., head * hd:(head + 1) * hd] *= scale
            return (t,)
        handle = tiny_vit.blocks[block].attn.proj.register_forward_pre_hook(hook)
        try:
            with torch.no_grad():
                return torch.nn.functional.cross_entropy(tiny_vit(x), y, reduction="sum").item()
        finally:
            handle.remove()

    numeric = (loss_with_scale(1 + eps) - loss_with_scale(1 - eps)) / (2 * eps)
    assert abs(abs(numeric) - scores.heads[block, head].item()) < 1e-3 * max(1.0, abs(numeric))


def test_magnitude_and_random_rules(tiny_vit, tiny_config):
    x, y = torch.randn(2, *tiny_config.input_shape), torch.randint(0, 5, (2,))
    mag = compute_importance(tiny_vit, tiny_config, x, y, "magnitude")
    rnd = compute_importance(tiny_vit, tiny_config, x, y, "random", seed=3)
    assert mag.rule == "magnitude" and rnd.rule == "random"
    assert torch.equal(rnd.heads, compute_importance(tiny_vit, tiny_config, x, y, "random", seed=3).heads)
