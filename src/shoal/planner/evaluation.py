"""Accuracy of a decomposition on held-out data: teacher, each sub-model, the ensemble.

Also the CoFormer Table III style ablation rows: decompose only (sliced
sub-models, scatter aggregator), decompose + aggregate (sliced sub-models,
trained aggregator), and the calibrated ensemble; and the accuracy with each
non-central device missing (what --degrade answers).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from shoal.data.digits import TensorDataset
from shoal.models.aggregator import Aggregator
from shoal.models.surgery import pooled_features


def _logits(model: nn.Module, images: torch.Tensor, batch: int = 256) -> torch.Tensor:
    with torch.inference_mode():
        return torch.cat([model(images[i:i + batch]) for i in range(0, len(images), batch)])


def _scores(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    return {"top1": (logits.argmax(1) == labels).float().mean().item(),
            "loss": F.cross_entropy(logits, labels).item()}


def ensemble_logits(submodels: Sequence[nn.Module], aggregator: Aggregator, images: torch.Tensor,
                    present: torch.Tensor | None = None, batch: int = 256) -> torch.Tensor:
    """(N_img, classes) logits of the aggregate-edge ensemble."""
    with torch.inference_mode():
        out = []
        for i in range(0, len(images), batch):
            x = images[i:i + batch]
            out.append(aggregator([pooled_features(m, x) for m in submodels], present))
        return torch.cat(out)


def evaluate_decomposition(
    teacher: nn.Module,
    names: Sequence[str],
    submodels: Sequence[nn.Module],
    aggregator: Aggregator,
    split: TensorDataset,
    *,
    with_missing: bool = False,
) -> dict[str, Any]:
    """Top-1 and loss of the teacher, every sub-model (own head) and the ensemble on `split`.

    Args:
        with_missing: Also score the ensemble with each non-central device missing.
    """
    teacher_logits = _logits(teacher, split.images)
    result: dict[str, Any] = {
        "n": len(split),
        "teacher": _scores(teacher_logits, split.labels),
        "submodels": {name: _scores(_logits(m, split.images), split.labels) for name, m in zip(names, submodels)},
        "ensemble": _scores(ensemble_logits(submodels, aggregator, split.images), split.labels),
    }
    agree = ensemble_logits(submodels, aggregator, split.images).argmax(1) == teacher_logits.argmax(1)
    result["ensemble"]["agreement_with_teacher"] = agree.float().mean().item()
    if with_missing and len(submodels) > 1:
        result["missing"] = {}
        for n, name in enumerate(names[1:], start=1):
            present = torch.ones(len(submodels))
            present[n] = 0.0
            logits = ensemble_logits(submodels, aggregator, split.images, present)
            result["missing"][name] = _scores(logits, split.labels)
    return result
