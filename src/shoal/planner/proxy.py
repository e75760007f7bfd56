"""Accuracy proxies (CoFormer eq. 7): how good a decomposition will be once calibrated.

The search scores each policy before any calibration; the proxy is the
validation loss of a read-out of the sub-models. Forms, cheapest first:

    "sliced"    the printed form: each sub-model read through the teacher's head sliced to
                its channels; mean of the per-sub-model losses.
    "probe"     each sub-model read through its own ridge probe (to the teacher's logits);
                mean of the losses.
    "ridge"     one ridge map from the concatenated pooled features to the teacher's logits
                (the aggregator in closed form); its loss. The default before ADR 008.
    "logistic"  one multinomial logistic read-out of the concatenated features, fitted to the
                teacher's soft labels (what the aggregator is trained on), its scale set on the
                validation split; never worse than the class prior.
    "distill"   the better of "logistic" and "logistic" after a short distillation of every
                sub-model (a few hundred images per sub-model, the booster's loss): the read-out
                sees what a sub-model becomes after a little training, not only what slicing
                left intact (and a few steps cannot make a large sub-model look worse).

Every loss is floored at the class prior's cross-entropy: a read-out that is worse
than predicting the prior is replaced by the prior, so no decomposition scores
worse than knowing nothing (ADR 008: why, and what each proxy measured).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from shoal.planner.settings import PROXY_KINDS, ProxyKind
from shoal.utils.accel import PRECISIONS, autocast, device_of

Augment = Callable[[torch.Tensor, torch.Generator | None], torch.Tensor]


@dataclass(frozen=True)
class ProxySettings:
    """How the accuracy proxy reads out a decomposition.

    Attributes:
        kind: Which proxy (module doc).
        ridge: Ridge strength relative to the mean feature variance ("ridge", "probe").
        l2: L2 penalty of the logistic read-out, per feature and sample.
        distill_steps: Optimiser steps of the "distill" proxy per sub-model.
        distill_batch: Their batch size.
        distill_lr: Their learning rate (AdamW, constant).
        precision: "fp32", or "bf16": the sub-models' forward (and short distillation) passes
            under bf16 autocast; read-outs are fitted in float64/float32 either way (ADR 012).
    """

    kind: ProxyKind = "distill"
    ridge: float = 1e-2
    l2: float = 1e-3
    distill_steps: int = 40
    distill_batch: int = 32
    distill_lr: float = 1e-3
    precision: str = "fp32"

    def __post_init__(self) -> None:
        from shoal.errors import ConfigError

        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.kind not in PROXY_KINDS:
            raise ConfigError(f"proxy must be one of {', '.join(PROXY_KINDS)}, got {self.kind!r}")
        if not (self.ridge > 0 and self.l2 >= 0 and self.distill_lr > 0):
            raise ConfigError(f"proxy ridge/l2/distill_lr must be positive, got {self.ridge}, {self.l2}, "
                              f"{self.distill_lr}")
        if self.distill_steps < 0 or self.distill_batch < 1:
            raise ConfigError(f"proxy distill_steps must be >= 0 and distill_batch >= 1, got "
                              f"{self.distill_steps}, {self.distill_batch}")


def prior_loss(train_labels: torch.Tensor, val_labels: torch.Tensor, classes: int) -> float:
    """Cross-entropy on `val_labels` of the constant predictor of the class prior of `train_labels`."""
    counts = torch.bincount(train_labels, minlength=classes).double() + 1.0   # add-one: no zero prior
    log_prior = (counts / counts.sum()).log()
    return float(-log_prior[val_labels].mean())


def standardise(x_cal: torch.Tensor, x_val: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Both sets scaled by the calibration set's statistics; constant or non-finite columns
    (a tiny sub-model can emit the same vector for every input) dropped. None: nothing left."""
    x_cal, x_val = x_cal.double(), x_val.double()
    mean, std = x_cal.mean(0), x_cal.std(0)
    keep = torch.isfinite(std) & (std > 1e-6) & torch.isfinite(x_val).all(0)
    if not keep.any():
        return None
    return (x_cal[:, keep] - mean[keep]) / std[keep], (x_val[:, keep] - mean[keep]) / std[keep]


def ridge_logits(x_cal: torch.Tensor, targets: torch.Tensor, x_val: torch.Tensor, ridge: float) -> torch.Tensor:
    """Validation logits of the ridge map from standardised features to the teacher's logits."""
    y = targets.double()
    y_mean = y.mean(0)
    gram = x_cal.T @ x_cal
    lam = ridge * gram.diagonal().mean().clamp_min(1.0)
    weight = torch.linalg.solve(gram + lam * torch.eye(gram.shape[0], dtype=gram.dtype), x_cal.T @ (y - y_mean))
    return (x_val @ weight + y_mean).float()


def logistic_logits(x_cal: torch.Tensor, soft_targets: torch.Tensor, x_val: torch.Tensor, l2: float,
                    max_iter: int = 60) -> torch.Tensor:
    """Validation logits of a multinomial logistic read-out fitted to soft targets (L-BFGS, convex).

    Shapes: (M, d) standardised, (M, C) probabilities, (V, d) -> (V, C).
    """
    x, p = x_cal.float(), soft_targets.float()
    weight = torch.zeros(x.shape[1], p.shape[1], requires_grad=True)
    bias = torch.zeros(p.shape[1], requires_grad=True)
    opt = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=max_iter, history_size=10,
                            line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = -(p * F.log_softmax(x @ weight + bias, dim=1)).sum(1).mean() + l2 * weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    with torch.no_grad():
        return x_val.float() @ weight + bias


def scaled_loss(logits: torch.Tensor, labels: torch.Tensor, floor: float) -> float:
    """Cross-entropy of `a·logits` at the best scale a ≥ 0 (convex in a), floored at the prior's.

    A scale set on the scored split itself is one parameter: it removes a read-out's
    over- or under-confidence, which calibration removes anyway, and keeps its ranking.
    """
    logits = logits.double()
    if not torch.isfinite(logits).all():
        return floor

    def ce(a: float) -> float:
        return float(F.cross_entropy(a * logits, labels))

    lo, hi = 0.0, 4.0
    while ce(hi) < ce(hi / 2) and hi < 1e3:   # the optimum may lie beyond the bracket
        hi *= 2
    for _ in range(40):   # golden-section search
        m1, m2 = lo + (hi - lo) * 0.382, lo + (hi - lo) * 0.618
        if ce(m1) <= ce(m2):
            hi = m2
        else:
            lo = m1
    return min(ce((lo + hi) / 2), floor)


def short_distill(models: Sequence[nn.Module], images: torch.Tensor, labels: torch.Tensor,
                  teacher_labels: torch.Tensor, settings: ProxySettings, augment: Augment | None,
                  seed: int = 0) -> None:
    """A few steps of the booster's loss (½[CE(y) + CE(ŷ_t)]) on every sub-model, in place."""
    from shoal.planner.calibration import distillation_losses

    if settings.distill_steps == 0:
        return
    for n, model in enumerate(models):
        dev = device_of(model)
        gen = torch.Generator().manual_seed(seed * 1009 + n)
        opt = torch.optim.AdamW(model.parameters(), lr=settings.distill_lr, weight_decay=0.0)
        model.train()
        with torch.enable_grad(), autocast(dev, settings.precision):
            for _ in range(settings.distill_steps):
                idx = torch.randint(0, len(images), (settings.distill_batch,), generator=gen)
                x = images[idx] if augment is None else augment(images[idx], gen)   # drawn on the host
                loss = distillation_losses(model(x.to(dev)), labels[idx].to(dev), teacher_labels[idx].to(dev)).mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        model.eval()


def readout_loss(kind: ProxyKind, cal: list[torch.Tensor], val: list[torch.Tensor], teacher_cal_logits: torch.Tensor,
                 val_labels: torch.Tensor, floor: float, settings: ProxySettings) -> float:
    """The loss of the read-out of one or more sub-models' (M, d_n) / (V, d_n) features."""
    scaled = standardise(torch.cat(cal, dim=1), torch.cat(val, dim=1))
    if scaled is None:
        return floor
    x_cal, x_val = scaled
    if kind in ("ridge", "probe"):
        logits = ridge_logits(x_cal, teacher_cal_logits, x_val, settings.ridge)
        loss = F.cross_entropy(logits, val_labels).item()
        return min(loss, floor) if math.isfinite(loss) else floor
    logits = logistic_logits(x_cal, teacher_cal_logits.softmax(1), x_val, settings.l2)
    return scaled_loss(logits, val_labels, floor)
