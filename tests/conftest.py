"""Shared fixtures: small timm ViTs so the suite stays fast."""

from __future__ import annotations

import os

import pytest
import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def make_vit(seed: int = 0, **overrides):
    """A small timm VisionTransformer with non-trivial (perturbed) weights."""
    from timm.models.vision_transformer import VisionTransformer

    kwargs = dict(img_size=16, patch_size=4, in_chans=3, num_classes=5, embed_dim=48, depth=3,
                  num_heads=4, mlp_ratio=2.0)
    kwargs.update(overrides)
    torch.manual_seed(seed)
    model = VisionTransformer(**kwargs).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


@pytest.fixture
def tiny_vit():
    return make_vit()


@pytest.fixture
def tiny_config(tiny_vit):
    from shoal.models import config_from_timm

    return config_from_timm(tiny_vit)
