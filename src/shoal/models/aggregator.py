"""The aggregation module (CoFormer eq. 2): X_agg = Pool(W · concat(X_1..X_N) + b), then the task head.

Pool (class token or mean over tokens) and W are both linear, so
Pool(W·X + b) = W·Pool(X) + b: each device pools its own tokens and sends
d_n numbers instead of S·d_n, and the central node applies W to the
concatenated pooled vectors. `forward_tokens` computes the printed order;
a test holds the two equal.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn as nn

from shoal.errors import ConfigError, ModelError

Activation = Literal["none", "relu"]


class Aggregator(nn.Module):
    """Concat of pooled sub-model features -> Linear(d_agg, d) -> [activation] -> task head.

    Linear (CoFormer eq. 2, DeViT eq. 3 as its authors' code has it) by default; with
    `activation="relu"` the two layers are ED-ViT's fusion MLP (d_agg -> d_agg/2 -> classes).

    Args:
        widths: Feature width d_n of each device, in policy order.
        out_dim: Width the features are mapped to (the teacher's embed_dim, so its head applies;
            ED-ViT: half of d_agg).
        num_classes: Classes of the task head.
        pool: How sub-models pool tokens: "token" (class token) or "avg" (patch tokens).
        num_prefix_tokens: Prefix tokens (class + registers) before the patch tokens.
        activation: Between the two layers: "none" (linear) or "relu".
    """

    def __init__(self, widths: Sequence[int], out_dim: int, num_classes: int,
                 pool: Literal["token", "avg"] = "token", num_prefix_tokens: int = 1,
                 activation: Activation = "none") -> None:
        super().__init__()
        if activation not in ("none", "relu"):
            raise ConfigError(f"aggregator activation must be none or relu, got {activation!r}")
        self.widths = tuple(int(w) for w in widths)
        self.pool = pool
        self.num_prefix_tokens = num_prefix_tokens
        self.activation = activation
        self.fuse = nn.Linear(sum(self.widths), out_dim)       # W, b
        self.act = nn.ReLU() if activation == "relu" else nn.Identity()
        self.head = nn.Linear(out_dim, num_classes)            # the teacher's task head (linear)

    @property
    def in_dim(self) -> int:
        return sum(self.widths)

    def fused(self, features: Sequence[torch.Tensor] | torch.Tensor,
              present: torch.Tensor | None = None) -> torch.Tensor:
        """W · concat(pooled features) + b.

        Args:
            features: One (B, d_n) tensor per device, or their (B, d_agg) concatenation.
            present: Optional (B, N) or (N,) 0/1 mask of devices that answered; missing
                devices' features count as zeros (the aggregator may be trained for that).

        Returns:
            (B, out_dim) aggregated features.
        """
        x = torch.cat(list(features), dim=-1) if not isinstance(features, torch.Tensor) else features
        if x.shape[-1] != self.in_dim:
            raise ConfigError(f"aggregator expects {self.in_dim} concatenated features, got {x.shape[-1]}")
        if present is not None:
            mask = torch.repeat_interleave(present.to(device=x.device, dtype=x.dtype),
                                           torch.tensor(self.widths, device=x.device), dim=-1)
            x = x * mask
        fused: torch.Tensor = self.fuse(x)
        return fused

    def forward(self, features: Sequence[torch.Tensor] | torch.Tensor,
                present: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (B, num_classes) from pooled features (what devices send)."""
        return self.classify(self.fused(features, present))

    def classify(self, fused: torch.Tensor) -> torch.Tensor:
        """Logits (B, num_classes) of aggregated features (B, out_dim): [activation], then the head."""
        logits: torch.Tensor = self.head(self.act(fused))
        return logits

    def forward_tokens(self, token_maps: Sequence[torch.Tensor]) -> torch.Tensor:
        """The printed order of eq. 2: map every token, then pool. token_maps: (B, S, d_n) each."""
        mapped = self.fuse(torch.cat(list(token_maps), dim=-1))  # (B, S, out_dim)
        pooled = mapped[:, 0] if self.pool == "token" else mapped[:, self.num_prefix_tokens:].mean(1)
        return self.classify(pooled)

    @classmethod
    def from_teacher_channels(cls, channel_sets: Sequence[Sequence[int]], teacher_head: nn.Module,
                              pool: Literal["token", "avg"] = "token", num_prefix_tokens: int = 1
                              ) -> Aggregator:
        """An aggregator that puts each device's channels back where the teacher had them.

        W is the 0/1 scatter matrix of the (disjoint) channel sets, b = 0, and the head
        is the teacher's: before any training, the logits are the teacher head read on
        the union of the sub-models' features.
        """
        if not isinstance(teacher_head, nn.Linear):
            raise ModelError(f"the teacher's head is {type(teacher_head).__name__}, not a Linear layer: a model "
                             "without a classifier head cannot be decomposed")
        widths = [len(c) for c in channel_sets]
        out_dim = teacher_head.in_features
        agg = cls(widths, out_dim, teacher_head.out_features, pool, num_prefix_tokens)
        with torch.no_grad():
            agg.fuse.weight.zero_()
            agg.fuse.bias.zero_()
            col = 0
            for channels in channel_sets:
                for c in channels:
                    agg.fuse.weight[c, col] = 1.0
                    col += 1
            agg.head.weight.copy_(teacher_head.weight)
            agg.head.bias.copy_(teacher_head.bias)
        return agg
