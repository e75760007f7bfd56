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
import functools
from typing import Any, TypeVar

import torch
import torch.nn as nn

from shoal.errors import ConfigError, ModelError
from shoal.models.config import TextConfig
from shoal.models.spec import SubModelSpec

SPLITTABLE = ("bert",)
_M = TypeVar("_M", bound=nn.Module)


def encoder_config(encoder: nn.Module, seq_len: int, num_classes: int) -> TextConfig:
    """The `TextConfig` of a Hugging Face BERT encoder (refused by name when it is not one)."""
    return TextConfig.of_hf(_hf_config(encoder), seq_len, num_classes)


def _hf_config(encoder: nn.Module) -> Any:
    """The Hugging Face config of a BERT encoder shoal can split; `ModelError` naming what it is otherwise."""
    config = getattr(encoder, "config", None)
    if config is None:
        raise ModelError(f"shoal splits BERT encoders; {type(encoder).__name__} is not a Hugging Face model")
    check_text_architecture(config, type(encoder).__name__)
    return config


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


def _uninitialised(cls: type[_M], *args: Any, **kwargs: Any) -> _M:
    """A module built without initialising its parameters (every value is copied in next)."""
    import warnings

    from torch.nn.utils import skip_init

    with warnings.catch_warnings():   # a branch with no units is a zero-element layer: nothing to initialise
        warnings.filterwarnings("ignore", message="Initializing zero-element tensors is a no-op")
        out: _M = skip_init(cls, *args, **kwargs)   # type: ignore[no-untyped-call]
    return out


def _linear(layer: nn.Linear, rows: torch.Tensor | None, cols: torch.Tensor | None) -> nn.Linear:
    """A new Linear with the kept output rows and input columns of `layer` (None: all)."""
    weight = layer.weight.detach()
    if rows is not None:
        weight = weight.index_select(0, rows)
    if cols is not None:
        weight = weight.index_select(1, cols)
    out = _uninitialised(nn.Linear, weight.shape[1], weight.shape[0], bias=layer.bias is not None,
                    device=weight.device, dtype=weight.dtype)   # every value is copied in: no initialisation
    with torch.no_grad():
        out.weight.copy_(weight)
        if layer.bias is not None:
            bias = layer.bias.detach()
            out.bias.copy_(bias.index_select(0, rows) if rows is not None else bias)
    return out


def _layer_norm(norm: nn.LayerNorm, channels: torch.Tensor) -> nn.LayerNorm:
    out = _uninitialised(nn.LayerNorm, len(channels), eps=norm.eps, device=norm.weight.device, dtype=norm.weight.dtype)
    with torch.no_grad():
        out.weight.copy_(norm.weight.detach().index_select(0, channels))
        out.bias.copy_(norm.bias.detach().index_select(0, channels))
    return out


def _embedding(embedding: nn.Embedding, channels: torch.Tensor) -> nn.Embedding:
    weight = embedding.weight.detach().index_select(1, channels)
    out = _uninitialised(nn.Embedding, weight.shape[0], weight.shape[1], padding_idx=embedding.padding_idx,
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
    hf = _hf_config(encoder)
    spec.check_sizes(hf.num_hidden_layers, hf.hidden_size, hf.num_attention_heads, hf.intermediate_size)
    dev = next(encoder.parameters()).device
    ch = torch.tensor(spec.channels, dtype=torch.long, device=dev)
    # the module tree is copied, the teacher's weights are not: every parameter of a kept module is
    # replaced by its slice below (checked at the end), the dropped layers' never leave the teacher
    teacher_params = {id(p): p for p in encoder.parameters()}
    sub: Any = copy.deepcopy(encoder, memo=dict(teacher_params))
    emb = sub.embeddings
    for name in ("word_embeddings", "position_embeddings", "token_type_embeddings"):
        setattr(emb, name, _embedding(getattr(emb, name), ch))
    emb.LayerNorm = _layer_norm(emb.LayerNorm, ch)
    layers = []
    hd = hf.hidden_size // hf.num_attention_heads
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
    shared = [name for name, p in sub.named_parameters() if id(p) in teacher_params]
    if shared:   # a module this function does not slice: training the sub-model would change the teacher
        raise ModelError(f"{type(encoder).__name__} has parameters shoal does not slice: {shared[:3]}")
    out: nn.Module = sub
    return out


def pooled_text_features(encoder: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor
                         ) -> torch.Tensor:
    """(B, L) token ids and their 0/1 mask -> (B, width): the last hidden states' mean over real tokens."""
    hidden = encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state   # (B, L, d)
    mask = attention_mask.to(hidden.dtype)[..., None]                                      # (B, L, 1)
    features: torch.Tensor = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp_min(1.0)
    return features


def cut_to_longest(x: torch.Tensor) -> torch.Tensor:
    """A right-padded (B, 2, L) batch of token ids and mask without the columns past its longest text."""
    if x.dim() != 3 or x.shape[1] != 2:
        raise ConfigError(f"a text model takes (B, 2, L) token ids and mask, got {list(x.shape)}")
    return x[..., :max(int(x[:, 1].sum(1).max()), 1)]


class TextClassifier(nn.Module):
    """A BERT encoder and a linear head on its pooled features (the mean over real tokens).

    Its input is one tensor, as an image is a ViT's: (B, 2, L) int64, the token ids stacked on
    their 0/1 attention mask, right-padded. Columns past the longest real text are cut before
    the encoder runs, so a batch costs what its longest text costs, and one text what it is long.

    Args:
        encoder: A BERT encoder (`transformers.BertModel`, or a sub-model of one).
        classes: Number of classes.
    """

    def __init__(self, encoder: nn.Module, classes: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(int(_hf_config(encoder).hidden_size), classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 2, L) ids and mask -> (B, width)."""
        x = cut_to_longest(x)
        return pooled_text_features(self.encoder, x[:, 0], x[:, 1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 2, L) ids and mask -> (B, classes) logits."""
        out: torch.Tensor = self.head(self.features(x))
        return out


@functools.lru_cache(maxsize=2)
def _random_encoder(config: TextConfig) -> nn.Module:
    """A randomly initialised encoder of `config`'s shape (the template random sub-models are cut from)."""
    import transformers

    torch.manual_seed(0)
    with torch.device("cpu"):   # real tensors even when called under a meta device context
        model: nn.Module = transformers.BertModel(config.hf_config(), add_pooling_layer=False)
    return model.eval()


def text_submodel(config: TextConfig, spec: SubModelSpec, teacher: nn.Module | None = None,
                  device: torch.device | str | None = None) -> TextClassifier:
    """The sub-model of `spec` with its encoder cut from the teacher's and its head the teacher's read
    on the kept channels; without a teacher, cut from a random encoder of the family (to time a
    shape, or to load a plan's weights into). Eval mode, on `device` (None: the teacher's, or the CPU;
    "meta" builds on the CPU: the encoder's position buffers must be real)."""
    if teacher is not None and not isinstance(teacher, TextClassifier):
        raise ModelError(f"a text sub-model is cut from a TextClassifier, got {type(teacher).__name__}")
    source = teacher.encoder if teacher is not None else _random_encoder(config)
    model = TextClassifier(build_text_submodel(source, spec), config.num_classes)
    if teacher is not None:
        ch = torch.tensor(spec.channels, dtype=torch.long, device=teacher.head.weight.device)
        with torch.no_grad():
            model.head.weight.copy_(teacher.head.weight.detach().index_select(1, ch))
            model.head.bias.copy_(teacher.head.bias.detach())
    target = device if device is not None and str(device) != "meta" else (
        next(teacher.parameters()).device if teacher is not None else "cpu")
    return model.to(target).eval()
