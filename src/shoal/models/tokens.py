"""Fewer tokens layer after layer (Janus §III-A): the schedule, two ways to remove tokens, a runner.

Janus's declining schedule (eq. 1): layer l = 1..N removes

    Δx_l = ⌊2^{α·(N - l)}⌋      (α > 0; nothing at α = 0)

tokens, many in the first layers and one in the last, so the tokens that cross
the link after a split at layer s are few while the server's layers still see
enough. α runs over a grid of step 0.01 from 0 to α_max, the largest α whose
schedule leaves the class token and at least one other (eq. 2; printed with the
exponent N - l + 1, one off eq. 1: we use eq. 1's, which reproduces the
paper's "90% of the reduction in the front half at α = 0.25"). A layer never
removes more than half of its tokens (the bipartite matching below pairs at
most that many).

Two ways to remove Δx_l tokens inside block l, between attention and MLP:

    "merge"  ToMe's bipartite soft matching: tokens split alternately into two
             sets, each token of the first joined to its most similar of the
             second (cosine of the attention keys, averaged over heads), the Δx_l
             most similar pairs merged by size-weighted average; attention then
             adds log(size) to its logits (proportional attention). The class
             token is never merged.
    "prune"  drop the Δx_l patch tokens the class token attends to least (the
             class-attention score of EViT); no sizes.

Janus does not say which it used (its baselines are ToMe's); ADR 017 records
which ranks better here. Token sizes travel with the tokens (what the server's
proportional attention needs); all ones with "prune".
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import torch
from timm.models.vision_transformer import VisionTransformer

from shoal.errors import ConfigError

Reduction = Literal["merge", "prune"]
REDUCTIONS: tuple[Reduction, ...] = ("merge", "prune")
ALPHA_STEP = 0.01


def removals(alpha: float, depth: int, tokens: int) -> tuple[int, ...]:
    """Δx_l for l = 1..N (eq. 1), each capped at half of the mergeable tokens left (the class token
    aside), and the total at `tokens` - 2 (the class token and one patch token remain).

    Raises:
        ConfigError: α negative or not finite, or fewer than 2 tokens.
    """
    if not (math.isfinite(alpha) and alpha >= 0):
        raise ConfigError(f"the declining rate α must be >= 0, got {alpha!r}")
    if tokens < 2 or depth < 1:
        raise ConfigError(f"token reduction needs at least 2 tokens and 1 layer, got {tokens} and {depth}")
    out, left = [], tokens
    for layer in range(1, depth + 1):
        want = 0 if alpha == 0 else math.floor(2 ** (alpha * (depth - layer)))
        r = min(want, (left - 1) // 2, left - 2)
        out.append(max(0, r))
        left -= out[-1]
    return tuple(out)


def counts(alpha: float, depth: int, tokens: int) -> tuple[int, ...]:
    """x_0..x_N: tokens entering layer 1, and leaving each layer."""
    out = [tokens]
    for r in removals(alpha, depth, tokens):
        out.append(out[-1] - r)
    return tuple(out)


def alpha_max(depth: int, tokens: int, step: float = ALPHA_STEP) -> float:
    """The largest α on the grid whose uncapped schedule removes at most `tokens` - 2 (eq. 2)."""
    best, k = 0.0, 1
    while k < 10_000:
        alpha = round(k * step, 6)
        total = sum(math.floor(2 ** (alpha * (depth - layer))) for layer in range(1, depth + 1))
        if total > tokens - 2:
            break
        best, k = alpha, k + 1
    return best


def alpha_grid(depth: int, tokens: int, step: float = ALPHA_STEP) -> tuple[float, ...]:
    """0, step, 2·step, ..., α_max."""
    top = alpha_max(depth, tokens, step)
    return tuple(round(k * step, 6) for k in range(int(round(top / step)) + 1))


def merge_tokens(x: torch.Tensor, size: torch.Tensor, keys: torch.Tensor, r: int
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """ToMe's bipartite soft matching: merge `r` tokens of (B, T, d) `x` (sizes (B, T, 1)) by the
    cosine similarity of `keys` (B, T, c); token 0 (the class token) is kept as it is, first."""
    if r <= 0:
        return x, size
    b, t, d = x.shape
    metric = keys / keys.norm(dim=-1, keepdim=True).clamp_min(1e-6)
    a_keys, b_keys = metric[:, ::2], metric[:, 1::2]
    scores = a_keys @ b_keys.transpose(-1, -2)              # (B, Ta, Tb)
    scores[:, 0, :] = -math.inf                              # the class token (set A, index 0) stays
    best, match = scores.max(dim=-1)                         # (B, Ta)
    order = best.argsort(dim=-1, descending=True)
    merged, kept = order[:, :r], order[:, r:].sort(dim=-1).values   # kept A tokens in their order
    weighted = x * size
    xa, xb, sa, sb = weighted[:, ::2], weighted[:, 1::2], size[:, ::2], size[:, 1::2]
    into = match.gather(1, merged)                           # (B, r): the B token each merges into
    xb = xb.scatter_add(1, into[..., None].expand(b, r, d), xa.gather(1, merged[..., None].expand(b, r, d)))
    sb = sb.scatter_add(1, into[..., None], sa.gather(1, merged[..., None]))
    xa, sa = xa.gather(1, kept[..., None].expand(b, kept.shape[1], d)), sa.gather(1, kept[..., None])
    sizes = torch.cat([sa, sb], dim=1)
    return torch.cat([xa, xb], dim=1) / sizes, sizes


def prune_tokens(x: torch.Tensor, size: torch.Tensor, cls_attention: torch.Tensor, r: int
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Drop the `r` patch tokens the class token attends to least (`cls_attention`: (B, T), the
    class token's row averaged over heads); the class token and the kept tokens keep their order."""
    if r <= 0:
        return x, size
    b, t, d = x.shape
    keep = t - 1 - r
    top = cls_attention[:, 1:].topk(keep, dim=-1).indices.sort(dim=-1).values + 1
    index = torch.cat([torch.zeros(b, 1, dtype=top.dtype, device=top.device), top], dim=1)
    return x.gather(1, index[..., None].expand(b, keep + 1, d)), size.gather(1, index[..., None])


class TokenRunner:
    """A timm `VisionTransformer` run block by block with token reduction (the teacher's own weights).

    `embed` -> `blocks(start, stop)` -> `head` is the whole model; a split runs `blocks(0, s)` on the
    device and `blocks(s, N)` plus `head` on the server, with the same α schedule on both sides.
    With α = 0 the output equals the model's own forward.
    """

    def __init__(self, model: VisionTransformer, reduction: Reduction = "merge") -> None:
        if reduction not in REDUCTIONS:
            raise ConfigError(f"token reduction must be merge or prune, got {reduction!r}")
        if model.cls_token is None or int(getattr(model, "num_reg_tokens", 0) or 0):
            raise ConfigError("token reduction needs a class-token ViT without register tokens")
        self.model, self.reduction = model, reduction
        self.depth = len(model.blocks)
        self.tokens = int(model.patch_embed.num_patches) + 1
        self._captured: dict[str, torch.Tensor] = {}

    def embed(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, C, H, W) -> tokens (B, T, d) with the class token first, sizes (B, T, 1) all ones."""
        m: Any = self.model
        x = m.norm_pre(m.patch_drop(m._pos_embed(m.patch_embed(images))))
        return x, torch.ones(x.shape[0], x.shape[1], 1, dtype=x.dtype, device=x.device)

    def blocks(self, x: torch.Tensor, size: torch.Tensor, start: int, stop: int, alpha: float
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Blocks start..stop-1 (0-based; layer l = index + 1 of eq. 1), reducing by α's schedule."""
        schedule = removals(alpha, self.depth, self.tokens)
        for j in range(start, stop):
            x, size = self.block(j, x, size, schedule[j])
        return x, size

    def head(self, x: torch.Tensor) -> torch.Tensor:
        """Final norm, the class token, the task head: logits (B, classes)."""
        m: Any = self.model
        out: torch.Tensor = m.forward_head(m.norm(x))
        return out

    def __call__(self, images: torch.Tensor, alpha: float) -> torch.Tensor:
        x, size = self.embed(images)
        x, _ = self.blocks(x, size, 0, self.depth, alpha)
        return self.head(x)

    def block(self, index: int, x: torch.Tensor, size: torch.Tensor, r: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Block `index` (0-based) on tokens (B, T, d) of sizes (B, T, 1), removing `r` of them."""
        block: Any = self.model.blocks[index]
        attn = block.attn
        # q|k|v are kept only for a block that reduces (a block at r = 0 runs as timm runs it)
        handle = attn.qkv.register_forward_hook(lambda _m, _i, out: self._captured.__setitem__("qkv", out)) \
            if r > 0 else None
        try:
            bias = None
            if self.reduction == "merge" and bool((size != 1).any()):   # proportional attention
                bias = size.log().transpose(1, 2)[:, None]               # (B, 1, 1, T)
            x = x + block.drop_path1(block.ls1(attn(block.norm1(x), attn_mask=bias)))
        finally:
            if handle is not None:
                handle.remove()
        if r > 0:
            qkv = self._captured.pop("qkv")
            b, t, _ = qkv.shape
            q, k, _v = qkv.reshape(b, t, 3, attn.num_heads, attn.head_dim).unbind(2)   # (B, T, H, hd) each
            if self.reduction == "merge":
                x, size = merge_tokens(x, size, k.mean(dim=2), r)
            else:
                logits = torch.einsum("bhd,bthd->bht", q[:, 0] * attn.scale, k)
                x, size = prune_tokens(x, size, logits.softmax(dim=-1).mean(dim=1), r)
        x = x + block.drop_path2(block.ls2(block.mlp(block.norm2(x))))
        return x, size


def token_bytes(width: int, precision_bytes: int = 2) -> int:
    """Bytes per token on the wire: its features (fp16 by default) and its size (fp16)."""
    return width * precision_bytes + 2


def check_schedule(alphas: Sequence[float], depth: int, tokens: int) -> None:
    """Raise `ConfigError` if an α is outside [0, α_max]."""
    top = alpha_max(depth, tokens)
    bad = [a for a in alphas if not 0 <= a <= top + 1e-9]
    if bad:
        raise ConfigError(f"α must be within [0, {top:g}] for {depth} layers and {tokens} tokens, got {bad}")
