"""`SubBlock`: a timm ViT block whose heads and MLP width are its own.

timm's `Block` derives heads and MLP width from the model-wide `num_heads`
and `mlp_ratio`; a decomposed block keeps any number of the teacher's heads
(each `head_dim` wide) and neurons, and drops a branch that keeps none. It
reuses timm's `Attention` and `Mlp`, so the arithmetic is timm's.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
import torch.nn as nn
from timm.layers import LayerNorm, LayerScale, Mlp
from timm.layers.attention import Attention

from shoal.models.config import ViTConfig

_ACTIVATIONS: dict[str, Any] = {   # layer constructors (a class or a partial of one)
    "gelu": nn.GELU,
    "gelu_tanh": partial(nn.GELU, approximate="tanh"),
    "relu": nn.ReLU,
}


def norm_layer(config: ViTConfig) -> Any:
    """The LayerNorm constructor of the teacher family (same epsilon)."""
    return partial(LayerNorm, eps=config.norm_eps)


class SubBlock(nn.Module):
    """Pre-norm transformer block with `num_heads` heads and an MLP of `mlp_hidden` neurons.

    A branch with zero heads (or zero neurons) is absent: its norm, layer and
    LayerScale are `nn.Identity` and the residual add is skipped, so a dropped
    branch costs nothing at inference.
    """

    def __init__(self, dim: int, num_heads: int, mlp_hidden: int, config: ViTConfig) -> None:
        super().__init__()
        norm = norm_layer(config)
        self.has_attn = num_heads > 0
        self.has_mlp = mlp_hidden > 0
        self.attn: nn.Module
        self.mlp: nn.Module
        if self.has_attn:
            self.norm1 = norm(dim)
            self.attn = Attention(
                dim, num_heads=num_heads, attn_head_dim=config.head_dim, qkv_bias=config.qkv_bias,
                qk_norm=config.qk_norm, norm_layer=norm)
            self.ls1 = LayerScale(dim) if config.layer_scale else nn.Identity()
        else:
            self.norm1, self.attn, self.ls1 = nn.Identity(), nn.Identity(), nn.Identity()
        if self.has_mlp:
            self.norm2 = norm(dim)
            self.mlp = Mlp(dim, hidden_features=mlp_hidden, act_layer=_ACTIVATIONS[config.act])
            self.ls2 = LayerScale(dim) if config.layer_scale else nn.Identity()
        else:
            self.norm2, self.mlp, self.ls2 = nn.Identity(), nn.Identity(), nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, S, dim) -> (B, S, dim)."""
        if self.has_attn:
            x = x + self.ls1(self.attn(self.norm1(x)))
        if self.has_mlp:
            x = x + self.ls2(self.mlp(self.norm2(x)))
        return x
