"""BERT-family encoders as teachers: the same unit vocabulary as a ViT, physically smaller sub-models.

shoal's units fit a BERT encoder as they fit a ViT: kept layers, hidden (residual) channels, heads
per layer and MLP neurons per layer (`SubModelSpec`). `build_text_submodel` slices a Hugging Face
`BertModel` to a spec with `transformers`' own modules: the embeddings and every LayerNorm keep
the spec's channels, each kept layer's query/key/value keep its heads' rows (the head size is the
teacher's) and its output projection their columns, the intermediate and output dense layers keep
its neurons. A layer that keeps no heads or no neurons keeps that branch's output bias only (what
a zero-width branch computes), as a timm block drops its branch. The features a device sends are
the mean of the last hidden states over the non-padding tokens (`pooled_text_features`).

BERT is post-LN: a LayerNorm over fewer channels normalises with their own statistics, which is
what distillation calibrates, as for the pre-LN ViT. Architectures other than BERT's
(`model_type` "bert") are refused by name (`check_text_architecture`).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from shoal.errors import ConfigError, ModelError
from shoal.models.accounting import BYTES_PER_VALUE, SpecCost, blocks_cost, feature_bytes
from shoal.models.spec import SubModelSpec

SPLITTABLE = ("bert",)


@dataclass(frozen=True)
class TextConfig:
    """A BERT-family teacher's shape: what search, accounting and surgery need.

    Attributes:
        depth: Encoder layers.
        width: Hidden size (residual channels).
        num_heads: Attention heads per layer.
        mlp_hidden: Intermediate (MLP) size.
        vocab_size: Token ids accepted (0..vocab_size - 1).
        max_length: Longest input in tokens (position embeddings).
        num_classes: Classes of the task head (0: none).
    """

    depth: int
    width: int
    num_heads: int
    mlp_hidden: int
    vocab_size: int
    max_length: int
    num_classes: int = 0

    def __post_init__(self) -> None:
        if min(self.depth, self.width, self.num_heads, self.mlp_hidden, self.vocab_size, self.max_length) < 1:
            raise ConfigError(f"a text teacher needs positive sizes, got {self}")
        if self.width % self.num_heads:
            raise ConfigError(f"hidden size {self.width} is not a multiple of the {self.num_heads} heads")

    @property
    def head_dim(self) -> int:
        return self.width // self.num_heads

    @classmethod
    def of(cls, encoder: nn.Module, num_classes: int = 0) -> TextConfig:
        """The shape of a Hugging Face BERT encoder (refused by name when it is not one)."""
        config = getattr(encoder, "config", None)
        if config is None:
            raise ModelError(f"shoal splits BERT encoders; {type(encoder).__name__} is not a Hugging Face model")
        check_text_architecture(config, type(encoder).__name__)
        return cls(config.num_hidden_layers, config.hidden_size, config.num_attention_heads,
                   config.intermediate_size, config.vocab_size, config.max_position_embeddings, num_classes)


def check_text_architecture(config: Any, what: str) -> None:
    """`ModelError` naming an architecture shoal cannot split, from a Hugging Face config (before any
    weights are read); `what` names the model in the message."""
    kind = getattr(config, "model_type", None)
    if kind not in SPLITTABLE:
        raise ModelError(f"shoal splits BERT encoders ({', '.join(SPLITTABLE)}); {what} is {kind!r}")
    if getattr(config, "position_embedding_type", "absolute") != "absolute" or getattr(config, "is_decoder", False):
        raise ModelError(f"{what}: only encoders with absolute position embeddings are split")


class _ZeroWidth(nn.Module):
    """A branch with no units: (B, T, 0) from the attention, as `BertSelfAttention` returns (out, weights)."""

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, None]:
        return hidden_states.new_zeros(*hidden_states.shape[:-1], 0), None


def _linear(layer: nn.Linear, rows: torch.Tensor | None, cols: torch.Tensor | None) -> nn.Linear:
    """A new Linear with the kept output rows and input columns of `layer` (None: all)."""
    weight = layer.weight.detach()
    if rows is not None:
        weight = weight.index_select(0, rows)
    if cols is not None:
        weight = weight.index_select(1, cols)
    out = nn.Linear(weight.shape[1], weight.shape[0], bias=layer.bias is not None,
                    device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        out.weight.copy_(weight)
        if layer.bias is not None:
            bias = layer.bias.detach()
            out.bias.copy_(bias.index_select(0, rows) if rows is not None else bias)
    return out


def _layer_norm(norm: nn.LayerNorm, channels: torch.Tensor) -> nn.LayerNorm:
    out = nn.LayerNorm(len(channels), eps=norm.eps, device=norm.weight.device, dtype=norm.weight.dtype)
    with torch.no_grad():
        out.weight.copy_(norm.weight.detach().index_select(0, channels))
        out.bias.copy_(norm.bias.detach().index_select(0, channels))
    return out


def _embedding(embedding: nn.Embedding, channels: torch.Tensor) -> nn.Embedding:
    weight = embedding.weight.detach().index_select(1, channels)
    out = nn.Embedding(weight.shape[0], weight.shape[1], padding_idx=embedding.padding_idx,
                       device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        out.weight.copy_(weight)
    return out


def build_text_submodel(encoder: nn.Module, spec: SubModelSpec) -> nn.Module:
    """The physically smaller `BertModel` that keeps `spec`'s units of `encoder` (the teacher is unchanged).

    Raises:
        ModelError: `encoder` is not a BERT encoder.
        ConfigError: `spec` names units the teacher does not have.
    """
    config = TextConfig.of(encoder)
    spec.check_sizes(config.depth, config.width, config.num_heads, config.mlp_hidden)
    dev = next(encoder.parameters()).device
    ch = torch.tensor(spec.channels, dtype=torch.long, device=dev)
    sub: Any = copy.deepcopy(encoder)
    emb = sub.embeddings
    for name in ("word_embeddings", "position_embeddings", "token_type_embeddings"):
        setattr(emb, name, _embedding(getattr(emb, name), ch))
    emb.LayerNorm = _layer_norm(emb.LayerNorm, ch)
    layers = []
    hd = config.head_dim
    for layer_index, heads, neurons in zip(spec.layers, spec.heads, spec.neurons):
        layer = sub.encoder.layer[layer_index]
        attention = layer.attention
        if heads:
            rows = torch.cat([torch.arange(h * hd, (h + 1) * hd, device=dev) for h in heads])
            for name in ("query", "key", "value"):
                setattr(attention.self, name, _linear(getattr(attention.self, name), rows, ch))
            attention.self.num_attention_heads = len(heads)
            attention.self.all_head_size = len(heads) * hd
        else:
            rows = torch.zeros(0, dtype=torch.long, device=dev)
            attention.self = _ZeroWidth()
        attention.output.dense = _linear(attention.output.dense, ch, rows)
        attention.output.LayerNorm = _layer_norm(attention.output.LayerNorm, ch)
        kept = torch.tensor(neurons, dtype=torch.long, device=dev)
        layer.intermediate.dense = _linear(layer.intermediate.dense, kept, ch)
        layer.output.dense = _linear(layer.output.dense, ch, kept)
        layer.output.LayerNorm = _layer_norm(layer.output.LayerNorm, ch)
        layers.append(layer)
    sub.encoder.layer = nn.ModuleList(layers)
    sub.config = copy.deepcopy(encoder.config)
    sub.config.num_hidden_layers = len(layers)
    sub.config.hidden_size = len(spec.channels)
    if getattr(sub, "pooler", None) is not None:
        sub.pooler = None   # shoal's features are the mean of the last hidden states, not BERT's pooler
    out: nn.Module = sub
    return out


def pooled_text_features(encoder: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor
                         ) -> torch.Tensor:
    """(B, L) token ids and their 0/1 mask -> (B, width): the last hidden states' mean over real tokens."""
    hidden = encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state   # (B, L, d)
    mask = attention_mask.to(hidden.dtype)[..., None]                                      # (B, L, 1)
    features: torch.Tensor = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp_min(1.0)
    return features


def text_spec_cost(config: TextConfig, spec: SubModelSpec, seq_len: int) -> SpecCost:
    """Closed-form cost of the text sub-model of `spec` on `seq_len` tokens (no model is built):
    parameters as `build_text_submodel` keeps them (a branch with no units keeps its output bias),
    with the task head when `config.num_classes`; FLOPs as `torch.utils.flop_counter` counts them
    (matrix products: the projections, QKᵀ and the weighted sum, the head)."""
    if seq_len < 1 or seq_len > config.max_length:
        raise ConfigError(f"sequence length must be 1..{config.max_length}, got {seq_len}")
    d, hd, L, C = spec.width, config.head_dim, seq_len, config.num_classes
    params = (config.vocab_size + config.max_length + 2) * d + 2 * d       # embeddings and their LayerNorm
    params += C * d + C if C else 0
    for h, D in zip(spec.head_counts, spec.mlp_widths):
        a = h * hd
        params += 3 * (a * d + a) + a * d + d + 2 * d                      # q, k, v, output dense, LayerNorm
        params += D * d + D + D * d + d + 2 * d                            # intermediate, output, LayerNorm
    flops, peak = blocks_cost(d, hd, L, spec.head_counts, spec.mlp_widths)
    flops += 2 * d * C
    return SpecCost(params=params, flops=flops, weight_bytes=params * BYTES_PER_VALUE,
                    activation_bytes=(2 * L * d + peak) * BYTES_PER_VALUE, feature_bytes=feature_bytes(d))
