"""Surgery: a physically smaller model from a teacher and a `SubModelSpec`, any family.

A ViT sub-model is a real `timm.models.vision_transformer.VisionTransformer`
with `embed_dim = d_n`, `l_n` blocks and, per block, only the kept heads
(each of the teacher's `head_dim`) and MLP neurons. Its weights are sliced
from the teacher, so a spec that keeps everything reproduces the teacher.
A text family's sub-model is cut by `shoal.models.bert.text_submodel`;
`build_submodel` and `pooled_features` are the one entry for both.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn as nn
from timm.models.vision_transformer import VisionTransformer

from shoal.errors import ConfigError
from shoal.models.block import SubBlock, norm_layer
from shoal.models.config import TeacherConfig, TextConfig, ViTConfig
from shoal.models.spec import SubModelSpec
from shoal.utils.accel import device_of

StateDict = Mapping[str, torch.Tensor]


def build_submodel(
    config: TeacherConfig,
    spec: SubModelSpec,
    teacher: nn.Module | StateDict | None = None,
    *,
    device: torch.device | str | None = None,
) -> nn.Module:
    """Build the sub-model of `spec`, with weights sliced from `teacher`.

    Args:
        config: The teacher family.
        spec: Which units to keep; checked against `config`.
        teacher: The teacher module or its state dict. None gives timm's random
            initialisation (enough to time a shape).
        device: Where to build; "meta" builds without memory (for FLOP counting). None: on the
            teacher module's device (the CPU for a state dict or no teacher).

    Returns:
        A `VisionTransformer` in eval mode: (B, C, H, W) -> (B, num_classes); a text family's
        `TextClassifier`: (B, 2, L) ids and mask -> (B, num_classes).
    """
    spec.check_against(config)
    if isinstance(config, TextConfig):
        from shoal.models.bert import text_submodel

        if teacher is not None and not isinstance(teacher, nn.Module):
            raise ConfigError("a text sub-model is cut from the teacher module, not a state dict")
        return text_submodel(config, spec, teacher, device)
    if device is None:
        device = device_of(teacher) if isinstance(teacher, nn.Module) else torch.device("cpu")
    if teacher is None:
        with torch.device(device):
            model = _empty_submodel(config, spec, weight_init="")
        return model.eval()
    state = teacher.state_dict() if isinstance(teacher, nn.Module) else teacher
    sliced = slice_state_dict(config, spec, state)
    with torch.device("meta"):
        model = _empty_submodel(config, spec, weight_init="skip")
    model.load_state_dict({k: v.to(device) for k, v in sliced.items()}, strict=True, assign=True)
    return model.eval()


def _empty_submodel(config: ViTConfig, spec: SubModelSpec, weight_init: str) -> VisionTransformer:
    kwargs = config.timm_kwargs()
    kwargs.update(embed_dim=spec.width, depth=0, num_heads=1, mlp_ratio=1.0,
                  norm_layer=norm_layer(config), weight_init=weight_init)
    model = VisionTransformer(**kwargs)
    model.blocks = nn.Sequential(*[
        SubBlock(spec.width, len(heads), len(neurons), config)
        for heads, neurons in zip(spec.heads, spec.neurons)
    ])
    return model


def _head_rows(heads: tuple[int, ...], head_dim: int, num_heads: int, parts: int) -> torch.Tensor:
    """Row indices of the kept heads in a fused projection of `parts` (q, k, v) stacked blocks."""
    per_head = torch.arange(head_dim)
    rows = [p * num_heads * head_dim + h * head_dim + per_head for p in range(parts) for h in heads]
    return torch.cat(rows) if rows else torch.empty(0, dtype=torch.long)


def slice_state_dict(config: ViTConfig, spec: SubModelSpec, state: StateDict) -> dict[str, torch.Tensor]:
    """Slice a teacher state dict to the sub-model of `spec` (keys follow the sub-model).

    Args:
        config: The teacher family.
        spec: Units to keep.
        state: Teacher `state_dict()` (timm VisionTransformer keys).

    Returns:
        A state dict that loads strictly into `build_submodel(config, spec)`.
    """
    dev = next(iter(state.values())).device   # indices where the weights are (a teacher on CUDA slices there)
    ch = torch.tensor(spec.channels, dtype=torch.long, device=dev)
    out: dict[str, torch.Tensor] = {}

    def take(key: str, dim: int, index: torch.Tensor, new_key: str | None = None) -> None:
        out[new_key or key] = state[key].index_select(dim, index.to(state[key].device)).clone()

    def copy(key: str, new_key: str | None = None) -> None:
        out[new_key or key] = state[key].clone()

    take("patch_embed.proj.weight", 0, ch)  # (d, C, p, p)
    if "patch_embed.proj.bias" in state:
        take("patch_embed.proj.bias", 0, ch)
    for key in ("cls_token", "reg_token", "pos_embed"):
        if key in state:
            take(key, 2, ch)  # (1, T, d)
    for prefix in ("norm_pre", "norm", "fc_norm"):
        if f"{prefix}.weight" in state:
            take(f"{prefix}.weight", 0, ch)
            take(f"{prefix}.bias", 0, ch)
    take("head.weight", 1, ch)  # (classes, d)
    copy("head.bias")

    for k, (layer, heads, neurons) in enumerate(zip(spec.layers, spec.heads, spec.neurons)):
        src, dst = f"blocks.{layer}.", f"blocks.{k}."
        if heads:
            rows = _head_rows(heads, config.head_dim, config.num_heads, parts=3).to(dev)
            cols = _head_rows(heads, config.head_dim, config.num_heads, parts=1).to(dev)
            take(src + "norm1.weight", 0, ch, dst + "norm1.weight")
            take(src + "norm1.bias", 0, ch, dst + "norm1.bias")
            out[dst + "attn.qkv.weight"] = state[src + "attn.qkv.weight"][rows][:, ch].clone()
            if config.qkv_bias:
                take(src + "attn.qkv.bias", 0, rows, dst + "attn.qkv.bias")
            if config.qk_norm:
                for part in ("q_norm", "k_norm"):
                    for p in ("weight", "bias"):
                        copy(f"{src}attn.{part}.{p}", f"{dst}attn.{part}.{p}")
            out[dst + "attn.proj.weight"] = state[src + "attn.proj.weight"][ch][:, cols].clone()
            take(src + "attn.proj.bias", 0, ch, dst + "attn.proj.bias")
            if config.layer_scale:
                take(src + "ls1.gamma", 0, ch, dst + "ls1.gamma")
        if neurons:
            nn_idx = torch.tensor(neurons, dtype=torch.long, device=dev)
            take(src + "norm2.weight", 0, ch, dst + "norm2.weight")
            take(src + "norm2.bias", 0, ch, dst + "norm2.bias")
            out[dst + "mlp.fc1.weight"] = state[src + "mlp.fc1.weight"][nn_idx][:, ch].clone()
            take(src + "mlp.fc1.bias", 0, nn_idx, dst + "mlp.fc1.bias")
            out[dst + "mlp.fc2.weight"] = state[src + "mlp.fc2.weight"][ch][:, nn_idx].clone()
            take(src + "mlp.fc2.bias", 0, ch, dst + "mlp.fc2.bias")
            if config.layer_scale:
                take(src + "ls2.gamma", 0, ch, dst + "ls2.gamma")
    return out


def pooled_features(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """What a device sends: the pooled, normed features of its sub-model (or of the teacher).

    Args:
        model: A (sub-)model built by `build_submodel`, or a teacher.
        x: Its input: images (B, C, H, W), or a text model's (B, 2, L) ids and mask.

    Returns:
        (B, d_n) pooled features (timm `forward_head(..., pre_logits=True)`; a text model's mean
        over real tokens).
    """
    if isinstance(model, VisionTransformer):
        return model.forward_head(model.forward_features(x), pre_logits=True)
    text: Any = model   # shoal.models.bert.TextClassifier
    features: torch.Tensor = text.features(x)
    return features


def head_of(model: nn.Module) -> nn.Linear:
    """The task head of a (sub-)model or teacher of any family: one Linear on its pooled features."""
    head = getattr(model, "head", None)
    if not isinstance(head, nn.Linear):
        raise ConfigError(f"{type(model).__name__} has no linear task head (head is {type(head).__name__})")
    return head


def width_of(model: nn.Module) -> int:
    """Width d_n of the pooled features a (sub-)model sends."""
    return int(head_of(model).in_features)


def example_input(config: TeacherConfig, batch: int = 1, tokens: int = 0, *, seed: int = 0,
                  device: torch.device | str = "cpu") -> torch.Tensor:
    """A random input of the family: (B, C, H, W) normal images, or a text family's (B, 2, L) token
    ids (not the padding id) with a full mask, L = `tokens` (0: `config.seq_len`)."""
    gen = torch.Generator().manual_seed(seed)
    if isinstance(config, TextConfig):
        length = tokens or config.seq_len
        ids = torch.randint(1, config.vocab_size, (batch, length), generator=gen)
        ids[ids == config.pad_token_id] = (config.pad_token_id + 1) % config.vocab_size
        return torch.stack([ids, torch.ones_like(ids)], dim=1).to(device)
    return torch.randn((batch, *config.input_shape), generator=gen).to(device)


def batched(fn: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, batch: int = 256,
            device: torch.device | str | None = None) -> torch.Tensor:
    """`fn` over host `images` in batches of `batch`, each moved to `device` (default: `fn`'s own
    when it is a module, else the CPU), results concatenated on the host, without autograd (the
    outputs may still be used as inputs of a training step: no_grad, not inference_mode)."""
    if device is None:
        device = device_of(fn) if isinstance(fn, nn.Module) else torch.device("cpu")
    with torch.no_grad():
        return torch.cat([fn(images[i:i + batch].to(device)).cpu() for i in range(0, len(images), batch)])


def submodel_features(models: Sequence[nn.Module], images: torch.Tensor, batch: int = 256) -> list[torch.Tensor]:
    """Per sub-model its (N, d_n) pooled features of `images` (what each device would send)."""
    return [batched(lambda x, m=m: pooled_features(m, x), images, batch, device_of(m))  # type: ignore[misc]
            for m in models]
