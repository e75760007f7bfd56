"""What a sub-model costs: parameters, FLOPs, weight and activation memory at batch 1.

`spec_cost` is closed-form (microseconds, used inside the search); it counts
FLOPs exactly as `torch.utils.flop_counter` does (2·M·N·K per matmul, the
patch convolution, attention as two batched matmuls) and a test holds it to
`count_flops` on built models.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn

from shoal.errors import ConfigError
from shoal.models.config import TeacherConfig, TextConfig
from shoal.models.spec import SubModelSpec

BYTES_PER_VALUE = 4  # float32


@dataclass(frozen=True)
class SpecCost:
    """Size of one sub-model at batch 1.

    Attributes:
        params: Parameter count (including the task head).
        flops: Floating point operations of one forward pass (flop_counter's convention).
        weight_bytes: Float32 weights.
        activation_bytes: Estimated peak live activations of one inference (float32).
        feature_bytes: Size of the pooled feature vector a device sends (float32, d_n values).
    """

    params: int
    flops: int
    weight_bytes: int
    activation_bytes: int
    feature_bytes: int

    @property
    def memory_bytes(self) -> int:
        """Model memory needed on a device: weights plus peak activations."""
        return self.weight_bytes + self.activation_bytes

    def to_dict(self) -> dict[str, int]:
        return asdict(self) | {"memory_bytes": self.memory_bytes}


def spec_cost(config: TeacherConfig, spec: SubModelSpec) -> SpecCost:
    """Closed-form cost of the sub-model of `spec` (no model is built); a text family's at its `seq_len`."""
    return shape_cost(config, spec.width, spec.head_counts, spec.mlp_widths)


def shape_cost(config: TeacherConfig, width: int, head_counts: Sequence[int], mlp_widths: Sequence[int],
               tokens: int | None = None) -> SpecCost:
    """Closed-form cost from unit counts alone: d_n, and h_n^k, D_n^k per kept block (a text family
    at `tokens` tokens, default its `seq_len`)."""
    if isinstance(config, TextConfig):
        return text_shape_cost(config, width, head_counts, mlp_widths, tokens)
    d, hd, S, C = width, config.head_dim, config.seq_len, config.num_classes
    patch_in = config.in_chans * config.patch_size ** 2
    embed_len = config.num_patches + (0 if config.no_embed_class else config.num_prefix_tokens)

    params = d * patch_in + (0 if config.pre_norm else d)            # patch embedding
    params += d * (int(config.class_token) + config.reg_tokens)      # prefix tokens
    params += embed_len * d                                           # position embedding
    params += 2 * d * int(config.pre_norm) + 2 * d * int(config.final_norm)
    params += C * d + C                                               # task head
    flops = 2 * config.num_patches * d * patch_in + 2 * d * C

    for h, D in zip(head_counts, mlp_widths):
        a = h * hd
        if h:
            params += 2 * d + 3 * a * d + (3 * a if config.qkv_bias else 0) + a * d + d
            params += 4 * hd * int(config.qk_norm) + d * int(config.layer_scale)
        if D:
            params += 2 * d + D * d + D + D * d + d + d * int(config.layer_scale)
    block_flops, peak_block = blocks_cost(d, hd, S, head_counts, mlp_widths)
    flops += block_flops
    activations = 2 * S * d + peak_block
    return SpecCost(
        params=params,
        flops=flops,
        weight_bytes=params * BYTES_PER_VALUE,
        activation_bytes=activations * BYTES_PER_VALUE,
        feature_bytes=feature_bytes(d),
    )


def text_shape_cost(config: TextConfig, width: int, head_counts: Sequence[int], mlp_widths: Sequence[int],
                    seq_len: int | None = None) -> SpecCost:
    """Closed-form cost of a text sub-model of these unit counts on `seq_len` tokens (no model is built):
    parameters as `build_text_submodel` keeps them (a branch with no units keeps its output bias),
    with the task head when `config.num_classes`; FLOPs as `torch.utils.flop_counter` counts them
    (matrix products: the projections, QKᵀ and the weighted sum, the head)."""
    seq_len = config.seq_len if seq_len is None else seq_len
    if seq_len < 1 or seq_len > config.max_positions:
        raise ConfigError(f"sequence length must be 1..{config.max_positions}, got {seq_len}")
    d, hd, L, C = width, config.head_dim, seq_len, config.num_classes
    params = (config.vocab_size + config.max_positions + config.type_vocab_size) * d + 2 * d   # embeddings, LN
    params += C * d + C if C else 0
    for h, D in zip(head_counts, mlp_widths):
        a = h * hd
        params += 3 * (a * d + a) + a * d + d + 2 * d                      # q, k, v, output dense, LayerNorm
        params += D * d + D + D * d + d + 2 * d                            # intermediate, output, LayerNorm
    flops, peak = blocks_cost(d, hd, L, head_counts, mlp_widths)
    flops += 2 * d * C
    return SpecCost(params=params, flops=flops, weight_bytes=params * BYTES_PER_VALUE,
                    activation_bytes=(2 * L * d + peak) * BYTES_PER_VALUE, feature_bytes=feature_bytes(d))


def blocks_cost(width: int, head_dim: int, tokens: int, head_counts: Sequence[int], mlp_widths: Sequence[int]
                ) -> tuple[int, int]:
    """(FLOPs, peak live activation values) of transformer blocks of these unit counts on `tokens`
    tokens, any family: the q/k/v and output projections, QKᵀ and the weighted sum, the two MLP
    layers (matrix products, flop_counter's convention); the peak is the larger of one block's
    attention and MLP intermediates."""
    flops = peak = 0
    for h, D in zip(head_counts, mlp_widths):
        a = h * head_dim
        flops += 2 * tokens * width * 3 * a + 2 * 2 * tokens * tokens * a + 2 * tokens * a * width
        flops += 2 * 2 * tokens * width * D
        peak = max(peak, 3 * tokens * a + h * tokens * tokens + tokens * a, 2 * tokens * D)
    return flops, peak


def feature_bytes(width: int) -> int:
    """Size of the pooled feature vector a sub-model of residual width d_n sends (float32)."""
    return width * BYTES_PER_VALUE


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_flops(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """FLOPs of one forward pass measured by `torch.utils.flop_counter` on the meta device.

    On the meta device scaled-dot-product attention decomposes into batched
    matmuls that the counter sees (the CPU flash kernel would be missed).

    Args:
        model: Any module; it is copied to the meta device, the original is untouched.
        input_shape: Shape of one input including the batch dimension, e.g. (1, 3, 224, 224).
    """
    import copy

    from torch.utils.flop_counter import FlopCounterMode

    meta_model = copy.deepcopy(model).to("meta") if _on_real_device(model) else model
    x = torch.empty(input_shape, device="meta")
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        meta_model(x)
    return int(counter.get_total_flops())


def _on_real_device(model: nn.Module) -> bool:
    return any(p.device.type != "meta" for p in model.parameters())
