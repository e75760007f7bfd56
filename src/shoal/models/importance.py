"""How much each teacher unit matters: heads, MLP neurons, residual channels, blocks.

Taylor first-order importance (DeViT eq. 6-7): for a unit with output O,
I = E_x |∂L/∂O · O|, the first-order change of the loss when O is zeroed.
It is computed with multiplicative gates fixed at 1 (one per sample and
unit), so a single backward pass yields every unit's per-sample term:
∂L/∂gate = Σ ∂L/∂O · O over the unit's elements.

`magnitude` (L2 norm of the unit's weights), `fisher` (mean squared Taylor
term) and `random` are the alternatives. `kl` is ED-ViT's criterion (§IV-C):
the KL divergence between the teacher's output distribution and the one with
the unit removed, exact (one pass per unit) for heads and blocks; for the
thousands of neurons and channels it is the divergence's second-order
expansion, ½·Fisher, with labels drawn from the teacher's own distribution
(ADR 016). `classes` restricts the loss to a subset of the classes (DeViT
eq. 6-7 on a sub-task: the teacher's logits of those classes only). `benchmarks/importance.py` compares
them by the validation loss of sub-models pruned by each rule, per unit type:
Taylor ranks heads best, but for residual channels it is no better than random
(zeroing a channel is not removing it from every LayerNorm's statistics) and
for MLP neurons at high pruning it loses to magnitude. The default, "mixed",
takes each unit type from the rule that ranks it best (`benchmarks/results/importance.json`).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer

from shoal.errors import ConfigError
from shoal.models.config import TeacherConfig
from shoal.utils.accel import device_of

ImportanceRule = Literal["mixed", "taylor", "fisher", "magnitude", "random", "kl"]


@dataclass(frozen=True)
class ImportanceScores:
    """Per-unit importance of a teacher (higher = more important).

    Attributes:
        heads: (L, h) per block and head.
        neurons: (L, D) per block and MLP neuron.
        channels: (d,) per residual channel.
        blocks: (L,) per block.
        rule: How the scores were computed.
    """

    heads: torch.Tensor
    neurons: torch.Tensor
    channels: torch.Tensor
    blocks: torch.Tensor
    rule: str

    def to_tensors(self) -> dict[str, torch.Tensor]:
        return {"heads": self.heads, "neurons": self.neurons, "channels": self.channels, "blocks": self.blocks}

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], rule: str) -> ImportanceScores:
        return cls(tensors["heads"], tensors["neurons"], tensors["channels"], tensors["blocks"], rule)


def compute_importance(
    teacher: nn.Module,
    config: TeacherConfig,
    images: torch.Tensor,
    labels: torch.Tensor,
    rule: ImportanceRule = "mixed",
    *,
    batch_size: int = 64,
    seed: int = 0,
    classes: Sequence[int] | None = None,
) -> ImportanceScores:
    """Score every head, neuron, channel and block of `teacher`.

    Args:
        teacher: The teacher model (left unchanged).
        config: Its family.
        images: (N, C, H, W) calibration images.
        labels: (N,) labels for the cross-entropy loss.
        rule: "mixed" (Taylor for heads and blocks, magnitude for neurons and channels: the
            best ranking measured by `benchmarks/importance.py`), "taylor" (DeViT eq. 6-7),
            "fisher" (squared Taylor terms), "magnitude" or "random".
        batch_size: Calibration batch size.
        seed: Seed of the "random" rule and of the labels the "kl" rule draws.
        classes: Score for this subset of the classes (a sub-task): the loss reads only their
            logits, and `labels` must all be among them. None: every class.
    """
    if classes is not None:
        classes = list(classes)
        lookup = torch.full((config.num_classes,), -1, dtype=torch.long)
        lookup[torch.tensor(classes)] = torch.arange(len(classes))
        labels = lookup[labels]
        if bool((labels < 0).any()):
            raise ConfigError("importance for a class subset was given images of other classes")
    if rule == "mixed":
        taylor = _taylor(teacher, config, images, labels, batch_size, classes=classes)
        magnitude = _magnitude(teacher, config)
        return ImportanceScores(taylor.heads, magnitude.neurons, magnitude.channels, taylor.blocks, "mixed")
    if rule in ("taylor", "fisher"):
        return _taylor(teacher, config, images, labels, batch_size, squared=rule == "fisher", classes=classes)
    if rule == "kl":
        return _kl(teacher, config, images, batch_size, seed, classes)
    if rule == "magnitude":
        return _magnitude(teacher, config)
    if rule == "random":
        gen = torch.Generator().manual_seed(seed)
        L, h, D, d = config.depth, config.num_heads, config.mlp_hidden, config.embed_dim
        return ImportanceScores(torch.rand(L, h, generator=gen), torch.rand(L, D, generator=gen),
                                torch.rand(d, generator=gen), torch.rand(L, generator=gen), "random")
    raise ConfigError(f"importance rule must be mixed, taylor, fisher, magnitude, random or kl, got {rule!r}")


def _taylor(teacher: nn.Module, config: TeacherConfig, images: torch.Tensor, labels: torch.Tensor,
            batch_size: int, squared: bool = False, classes: Sequence[int] | None = None) -> ImportanceScores:
    L, h, hd = config.depth, config.num_heads, config.head_dim
    dev = device_of(teacher)   # gates and batches on the teacher's device, totals on the host
    totals = {"heads": torch.zeros(L, h), "neurons": torch.zeros(L, config.mlp_hidden),
              "channels": torch.zeros(config.embed_dim), "blocks": torch.zeros(L)}
    was_training = teacher.training
    teacher.eval()
    params = [p.requires_grad for p in teacher.parameters()]
    for p in teacher.parameters():
        p.requires_grad_(False)
    try:
        for start in range(0, len(images), batch_size):
            x, y = images[start:start + batch_size].to(dev), labels[start:start + batch_size].to(dev)
            b = x.shape[0]
            gates = {
                "heads": torch.ones(L, b, 1, h, 1, device=dev, requires_grad=True),
                "neurons": torch.ones(L, b, 1, config.mlp_hidden, device=dev, requires_grad=True),
                "channels": torch.ones(b, 1, config.embed_dim, device=dev, requires_grad=True),
                "blocks": torch.ones(L, b, 1, 1, device=dev, requires_grad=True),
            }
            handles = _install_gates(teacher, gates, h, hd)
            try:
                logits = teacher(x)
                loss = F.cross_entropy(logits if classes is None else logits[:, classes], y, reduction="sum")
                grads = torch.autograd.grad(loss, list(gates.values()))
            finally:
                for handle in handles:
                    handle.remove()
            g = {k: (v.square() if squared else v.abs()).cpu() for k, v in zip(gates, grads)}
            totals["heads"] += g["heads"].sum(dim=(1, 2, 4))
            totals["neurons"] += g["neurons"].sum(dim=(1, 2))
            totals["channels"] += g["channels"].sum(dim=(0, 1))
            totals["blocks"] += g["blocks"].sum(dim=(1, 2, 3))
    finally:
        for p, flag in zip(teacher.parameters(), params):
            p.requires_grad_(flag)
        teacher.train(was_training)
    n = max(len(images), 1)
    return ImportanceScores(**{k: v / n for k, v in totals.items()}, rule="fisher" if squared else "taylor")


def _kl(teacher: nn.Module, config: TeacherConfig, images: torch.Tensor, batch_size: int, seed: int,
        classes: Sequence[int] | None) -> ImportanceScores:
    """ED-ViT's KL criterion: D_KL(P || Q_u), P the teacher's output distribution (over `classes`,
    renormalised, when given), Q_u the same with unit u removed. Heads and blocks: exact, one pass
    per unit with its gate at 0. Neurons and channels: ½·E[(∂ log Q_y/∂gate)²] with y ~ P, the
    second-order term of the same divergence (its first-order term is zero), from one backward."""
    L, h, hd = config.depth, config.num_heads, config.head_dim
    dev = device_of(teacher)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        full = torch.cat([_restrict(teacher(images[i:i + batch_size].to(dev)), classes).cpu()
                          for i in range(0, len(images), batch_size)])
    log_p = F.log_softmax(full, dim=-1)
    drawn = torch.multinomial(log_p.exp(), 1, generator=gen).squeeze(1)
    fisher = _taylor(teacher, config, images, drawn, batch_size, squared=True, classes=classes)
    heads, blocks = torch.zeros(L, h), torch.zeros(L)
    was_training = teacher.training
    teacher.eval()
    try:
        for kind, shape in (("heads", (L, h)), ("blocks", (L,))):
            for unit in itertools.product(*(range(n) for n in shape)):
                total = 0.0
                for start in range(0, len(images), batch_size):
                    x = images[start:start + batch_size].to(dev)
                    gates = _unit_gates(config, x.shape[0], dev)
                    if kind == "heads":
                        gates["heads"][unit[0], :, :, unit[1]] = 0.0
                    else:
                        gates["blocks"][unit[0]] = 0.0
                    handles = _install_gates(teacher, gates, h, hd)
                    try:
                        with torch.no_grad():
                            log_q = F.log_softmax(_restrict(teacher(x), classes), dim=-1).cpu()
                    finally:
                        for handle in handles:
                            handle.remove()
                    p = log_p[start:start + batch_size]
                    total += float((p.exp() * (p - log_q)).sum())
                (heads if kind == "heads" else blocks)[unit] = total / max(len(images), 1)
    finally:
        teacher.train(was_training)
    return ImportanceScores(heads, fisher.neurons / 2, fisher.channels / 2, blocks, "kl")


def _restrict(logits: torch.Tensor, classes: Sequence[int] | None) -> torch.Tensor:
    return logits if classes is None else logits[:, list(classes)]


def _unit_gates(config: TeacherConfig, b: int, dev: torch.device) -> dict[str, torch.Tensor]:
    """Gates at 1 (no gradient) for every unit, as `_install_gates` reads them."""
    L, h = config.depth, config.num_heads
    return {"heads": torch.ones(L, b, 1, h, 1, device=dev),
            "neurons": torch.ones(L, b, 1, config.mlp_hidden, device=dev),
            "channels": torch.ones(b, 1, config.embed_dim, device=dev), "blocks": torch.ones(L, b, 1, 1, device=dev)}


def _install_gates(teacher: nn.Module, gates: dict[str, torch.Tensor], h: int, hd: int) -> list[Any]:
    """Multiply every unit's output by its gate: channels after the embeddings and after every block,
    heads on the attention output before its projection, neurons after the MLP's activation, and a
    block's whole update (a timm ViT's blocks, or a BERT encoder's layers)."""
    handles: list[Any] = []

    def gate_channels(_m: nn.Module, _inp: object, out: torch.Tensor) -> torch.Tensor:
        return out * gates["channels"]

    if not isinstance(teacher, VisionTransformer):
        return _install_text_gates(teacher, gates, h, hd, gate_channels)
    handles.append(teacher.pos_drop.register_forward_hook(gate_channels))
    for j, block in enumerate(_blocks(teacher)):
        def gate_heads(_m: nn.Module, args: tuple[torch.Tensor], j: int = j) -> tuple[torch.Tensor]:
            (x,) = args  # (B, S, h*hd) attention output before proj
            B, S, _ = x.shape
            return ((x.view(B, S, h, hd) * gates["heads"][j]).view(B, S, h * hd),)

        def gate_neurons(_m: nn.Module, _inp: object, out: torch.Tensor, j: int = j) -> torch.Tensor:
            return out * gates["neurons"][j]  # (B, S, D) after the activation

        def gate_block(_m: nn.Module, args: tuple[torch.Tensor], out: torch.Tensor, j: int = j) -> torch.Tensor:
            (x,) = args[:1]
            return (x + gates["blocks"][j] * (out - x)) * gates["channels"]

        handles.append(block.attn.proj.register_forward_pre_hook(gate_heads))
        handles.append(block.mlp.act.register_forward_hook(gate_neurons))
        handles.append(block.register_forward_hook(gate_block))
    return handles


def _install_text_gates(teacher: nn.Module, gates: dict[str, torch.Tensor], h: int, hd: int, gate_channels: Any
                        ) -> list[Any]:
    """`_install_gates` on a `TextClassifier`'s BERT encoder (post-LN: a layer's output is gated whole)."""
    encoder: Any = teacher.encoder
    handles = [encoder.embeddings.register_forward_hook(gate_channels)]
    for j, layer in enumerate(encoder.encoder.layer):
        def gate_heads(_m: nn.Module, args: tuple[torch.Tensor, ...], j: int = j) -> tuple[torch.Tensor, ...]:
            x = args[0]   # (B, S, h*hd) context before the attention output dense
            B, S, _ = x.shape
            return ((x.view(B, S, h, hd) * gates["heads"][j]).view(B, S, h * hd), *args[1:])

        def gate_neurons(_m: nn.Module, _inp: object, out: torch.Tensor, j: int = j) -> torch.Tensor:
            return out * gates["neurons"][j]   # (B, S, D) after the activation

        def gate_layer(_m: nn.Module, args: tuple[torch.Tensor, ...], out: torch.Tensor, j: int = j) -> torch.Tensor:
            x = args[0]
            return (x + gates["blocks"][j] * (out - x)) * gates["channels"]

        handles.append(layer.attention.output.dense.register_forward_pre_hook(gate_heads))
        handles.append(layer.intermediate.register_forward_hook(gate_neurons))
        handles.append(layer.register_forward_hook(gate_layer))
    return handles


def _unit_weights(teacher: nn.Module) -> tuple[torch.Tensor, list[tuple[torch.Tensor, ...]]]:
    """On the host: the input embedding's squared weight per channel, and per block its fused q|k|v
    (3·h·hd, d), attention output projection (d, h·hd), MLP input (D, d) and output (d, D) weights
    (a timm ViT's blocks, or a BERT encoder's layers with query, key and value stacked alike)."""
    if isinstance(teacher, VisionTransformer):
        embed = teacher.patch_embed.proj.weight.detach().cpu().flatten(1).pow(2).sum(1)
        return embed, [tuple(w.detach().cpu() for w in (b.attn.qkv.weight, b.attn.proj.weight, b.mlp.fc1.weight,
                                                          b.mlp.fc2.weight)) for b in _blocks(teacher)]
    encoder: Any = teacher.encoder
    embed = encoder.embeddings.word_embeddings.weight.detach().cpu().pow(2).sum(0)
    layers = []
    for layer in encoder.encoder.layer:
        qkv = torch.cat([getattr(layer.attention.self, n).weight.detach() for n in ("query", "key", "value")])
        layers.append(tuple(w.detach().cpu() for w in (qkv, layer.attention.output.dense.weight,
                                                        layer.intermediate.dense.weight, layer.output.dense.weight)))
    return embed, layers


def _magnitude(teacher: nn.Module, config: TeacherConfig) -> ImportanceScores:
    """L2 norm of each unit's weights (the pruning baseline a user would reach for): a head's q/k/v rows
    and output columns, a neuron's MLP row and column, every weight that reads or writes a channel."""
    L, h, hd = config.depth, config.num_heads, config.head_dim
    heads, neurons, blocks = torch.zeros(L, h), torch.zeros(L, config.mlp_hidden), torch.zeros(L)
    channels, layers = _unit_weights(teacher)
    for j, (qkv_weight, proj_weight, fc1, fc2) in enumerate(layers):
        qkv = qkv_weight.view(3, h, hd, -1)
        proj = proj_weight.view(-1, h, hd)
        heads[j] = qkv.pow(2).sum(dim=(0, 2, 3)) + proj.pow(2).sum(dim=(0, 2))
        neurons[j] = fc1.pow(2).sum(1) + fc2.pow(2).sum(0)
        channels = channels + qkv.pow(2).sum(dim=(0, 1, 2)) + proj.pow(2).sum(dim=(1, 2))
        channels = channels + fc1.pow(2).sum(0) + fc2.pow(2).sum(1)
        blocks[j] = heads[j].sum() + neurons[j].sum()
    return ImportanceScores(heads.sqrt(), neurons.sqrt(), channels.sqrt(), blocks.sqrt(), "magnitude")


def _blocks(teacher: VisionTransformer) -> list[Any]:
    """The teacher's transformer blocks (timm `Block`s; typed loosely: their submodules are reached by name)."""
    return list(teacher.blocks)
