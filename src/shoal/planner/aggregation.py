"""Training the aggregation module, and the optional joint fine-tune.

The aggregator (concat of pooled features -> Linear(d_agg, d) -> task head)
is trained with the sub-models frozen, on features computed once for the
training set and a few augmented copies of it. W, b start from the ridge
solution that maps the concatenated features to the teacher's own pooled
features, and the head starts as the teacher's, so training starts from the
decomposition's best linear reconstruction of the teacher. With
`device_dropout` each non-central device's features are zeroed at random, so
the aggregator learns to answer without them (the runtime's --degrade).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from shoal.data.datasets import TaskData
from shoal.models.aggregator import Aggregator
from shoal.models.config import TeacherConfig
from shoal.models.surgery import head_of, pooled_features, submodel_features, width_of
from shoal.planner.settings import CalibrationSettings
from shoal.utils.accel import device_of
from shoal.utils.threads import torch_threads

Progress = Callable[[str, int, int], None]


def _teacher_outputs(teacher: nn.Module, images: torch.Tensor, batch: int = 256
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher pooled pre-logit features (N, d) and hard decisions (N,)."""
    feats = submodel_features([teacher], images, batch)[0]
    with torch.no_grad():
        decisions: torch.Tensor = head_of(teacher)(feats.to(device_of(teacher))).argmax(1).cpu()
    return feats, decisions


def ridge_init(aggregator: Aggregator, features: torch.Tensor, targets: torch.Tensor, ridge: float = 1e-3) -> None:
    """Set W, b to the ridge solution of features (N, d_agg) -> targets (N, d)."""
    x, y = features.double(), targets.double()
    x_mean, y_mean = x.mean(0), y.mean(0)
    xc = x - x_mean
    gram = xc.T @ xc
    lam = ridge * gram.diagonal().mean().clamp_min(1e-12)
    weight = torch.linalg.solve(gram + lam * torch.eye(gram.shape[0], dtype=gram.dtype), xc.T @ (y - y_mean))
    with torch.no_grad():
        aggregator.fuse.weight.copy_(weight.T.float())
        aggregator.fuse.bias.copy_((y_mean - x_mean @ weight).float())


def train_aggregator(
    teacher: nn.Module,
    config: TeacherConfig,
    submodels: Sequence[nn.Module],
    data: TaskData,
    settings: CalibrationSettings,
    progress: Progress | None = None,
) -> Aggregator:
    """Train the aggregator on frozen sub-models; picks the epoch with the best validation accuracy."""
    gen = torch.Generator().manual_seed(settings.seed + 17)
    images = [data.train.images]
    for _ in range(settings.feature_copies if data.augment is not None else 0):
        images.append(data.augment(data.train.images, gen))  # type: ignore[misc]
    all_images = torch.cat(images)
    labels = data.train.labels.repeat(len(images))
    feats = torch.cat(submodel_features(submodels, all_images), dim=1)
    teacher_feats, teacher_labels = _teacher_outputs(teacher, all_images)
    val_feats = torch.cat(submodel_features(submodels, data.val.images), dim=1)

    widths = [width_of(m) for m in submodels]
    if settings.fusion == "none":   # linear: to the teacher's width, starting from its head
        agg = Aggregator(widths, config.embed_dim, config.num_classes, pool=config.global_pool,
                         num_prefix_tokens=config.num_prefix_tokens)
        head = head_of(teacher)
        with torch.no_grad():
            agg.head.weight.copy_(head.weight)
            agg.head.bias.copy_(head.bias)
        ridge_init(agg, feats, teacher_feats)
    else:   # ED-ViT's MLP: d_agg -> d_agg/2 -> classes, trained from scratch
        torch.manual_seed(settings.seed + 31)
        agg = Aggregator(widths, max(1, sum(widths) // 2), config.num_classes, pool=config.global_pool,
                         num_prefix_tokens=config.num_prefix_tokens, activation=settings.fusion)

    optimizer = torch.optim.AdamW(agg.parameters(), lr=settings.aggregator_lr, weight_decay=1e-4)
    n, bs = len(feats), max(settings.batch_size, 128)
    steps = max(1, settings.aggregator_epochs * math.ceil(n / bs))
    best = (_accuracy(agg, val_feats, data.val.labels), {k: v.clone() for k, v in agg.state_dict().items()})
    step = 0
    with torch_threads(1):   # many tiny steps: more threads only spin (ADR 009)
        for epoch in range(settings.aggregator_epochs):
            agg.train()
            order = torch.randperm(n, generator=gen)
            for i in range(0, n, bs):
                idx = order[i:i + bs]
                present = _dropout_mask(len(idx), len(widths), settings.device_dropout, gen)
                for group in optimizer.param_groups:
                    group["lr"] = settings.aggregator_lr * 0.5 * (1 + math.cos(math.pi * step / steps))
                loss = fusion_loss(agg, agg.fused(feats[idx], present), labels[idx], teacher_labels[idx],
                                   teacher_feats[idx], settings)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                step += 1
            acc = _accuracy(agg, val_feats, data.val.labels)
            if acc >= best[0]:
                best = (acc, {k: v.clone() for k, v in agg.state_dict().items()})
            if progress:
                progress("training aggregator", epoch + 1, settings.aggregator_epochs)
    agg.load_state_dict(best[1])
    return agg.eval()


def fusion_loss(aggregator: Aggregator, fused: torch.Tensor, labels: torch.Tensor, teacher_labels: torch.Tensor,
                teacher_features: torch.Tensor, settings: CalibrationSettings) -> torch.Tensor:
    """(1 - w)·CE(y) + w·CE(ŷ_t) + γ·MSE(fused, the teacher's pooled features) over a batch of fused
    features (w = teacher_weight, γ = token_weight: DeViT eq. 14-15)."""
    logits = aggregator.classify(fused)
    w = settings.teacher_weight
    loss = (1 - w) * F.cross_entropy(logits, labels) + w * F.cross_entropy(logits, teacher_labels)
    if settings.token_weight > 0:
        loss = loss + settings.token_weight * F.mse_loss(fused, teacher_features)
    return loss


def _dropout_mask(batch: int, devices: int, p: float, gen: torch.Generator) -> torch.Tensor | None:
    """(B, N) 0/1 mask; the central node (index 0) is never dropped."""
    if p <= 0 or devices == 1:
        return None
    mask = (torch.rand(batch, devices, generator=gen) >= p).float()
    mask[:, 0] = 1.0
    return mask


def _accuracy(agg: Aggregator, feats: torch.Tensor, labels: torch.Tensor) -> float:
    with torch.inference_mode():
        return (agg.eval()(feats).argmax(1) == labels).float().mean().item()


def joint_finetune(
    teacher: nn.Module,
    submodels: Sequence[nn.Module],
    aggregator: Aggregator,
    data: TaskData,
    settings: CalibrationSettings,
    progress: Progress | None = None,
) -> None:
    """Fine-tune sub-models and aggregator together on the aggregated output (in place)."""
    if settings.joint_epochs <= 0:
        return
    dev = device_of(teacher)
    aggregator.to(dev)   # trained end to end with the sub-models; back on the host afterwards
    params = [p for m in submodels for p in m.parameters()] + list(aggregator.parameters())
    optimizer = torch.optim.AdamW(params, lr=settings.lr * 0.2, weight_decay=settings.weight_decay)
    gen = torch.Generator().manual_seed(settings.seed + 29)
    train = data.train
    for epoch in range(settings.joint_epochs):
        for m in submodels:
            m.train()
        aggregator.train()
        order = torch.randperm(len(train), generator=gen)
        for i in range(0, len(order), settings.batch_size):
            idx = order[i:i + settings.batch_size]
            x = train.images[idx]
            if data.augment is not None:
                x = data.augment(x, gen)
            x = x.to(dev)
            with torch.no_grad():
                teacher_feats = pooled_features(teacher, x)
                teacher_labels = head_of(teacher)(teacher_feats).argmax(1)
            present = _dropout_mask(len(idx), len(submodels), settings.device_dropout, gen)
            loss = fusion_loss(aggregator, aggregator.fused([pooled_features(m, x) for m in submodels], present),
                               train.labels[idx].to(dev), teacher_labels, teacher_feats, settings)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
        if progress:
            progress("joint fine-tune", epoch + 1, settings.joint_epochs)
    for m in submodels:
        m.eval()
    aggregator.cpu().eval()
