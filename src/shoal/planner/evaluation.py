"""Accuracy of a decomposition on held-out data: teacher, each sub-model, the ensemble.

Also the CoFormer Table III style ablation rows: decompose only (sliced
sub-models, scatter aggregator), decompose + aggregate (sliced sub-models,
trained aggregator), and the calibrated ensemble; and the accuracy from every
subset of devices that keeps the central node (what a degraded answer is worth).

Every score carries `n` (images), `correct` and `ci95` (95% Wilson interval)
next to `top1` and `loss`; the ensemble also carries `vs_teacher`, the exact
McNemar test of the ensemble against the teacher on the same images
(`shoal.utils.stats`). The per-image correctness vectors behind the scores are
returned by `score_decomposition` (for paired tests between variants), not
written to plan.json.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
import torch.nn as nn
import torch.nn.functional as F

from shoal.data.digits import TensorDataset
from shoal.errors import ConfigError
from shoal.models.aggregator import Aggregator
from shoal.models.surgery import batched, head_of, submodel_features
from shoal.plan.document import PairedTest, PlanAccuracy, Score
from shoal.utils.accel import device_of
from shoal.utils.stats import mcnemar

STATS_NOTE = {"ci95": "95% Wilson score interval of top1",
              "vs_teacher": "exact McNemar test on the same images (a = teacher, b = ensemble; "
                            "b01: only the ensemble right, b10: only the teacher right)"}


def logits_of(model: nn.Module, images: torch.Tensor, batch: int = 256) -> torch.Tensor:
    """(N_img, classes) logits of one model (e.g. the teacher's, computed once per split)."""
    return batched(model, images, batch)


def _scores(logits: torch.Tensor, labels: torch.Tensor) -> tuple[Score, torch.Tensor]:
    """(its score, per-image correctness)."""
    correct = logits.argmax(1) == labels
    k, n = int(correct.sum()), correct.numel()
    return Score(k / n, F.cross_entropy(logits, labels).item(), n, k), correct


def ensemble_logits(submodels: Sequence[nn.Module], aggregator: Aggregator, images: torch.Tensor,
                    present: torch.Tensor | None = None, batch: int = 256) -> torch.Tensor:
    """(N_img, classes) logits of the aggregate-edge ensemble."""
    with torch.no_grad():
        return aggregator(submodel_features(submodels, images, batch), present)


@dataclass(frozen=True)
class Scored:
    """What `score_decomposition` measured.

    Attributes:
        accuracy: The scores (what plan.json records).
        correct: Per-image correctness (bool, split order) by row: "teacher", "ensemble",
            "submodels/<device>", "subset/<present devices>".
    """

    accuracy: PlanAccuracy
    correct: dict[str, torch.Tensor]


def score_decomposition(
    teacher_logits: torch.Tensor,
    names: Sequence[str],
    submodels: Sequence[nn.Module],
    aggregator: Aggregator,
    split: TensorDataset,
    *,
    with_subsets: bool = True,
) -> Scored:
    """Scores of the teacher, every sub-model (own head) and the ensemble on `split`, with the
    per-image correctness behind them.

    Each sub-model runs once over the split: its own head and the aggregator (with every device,
    and with each non-central one missing) read the same pooled features.

    Args:
        teacher_logits: (N, classes) the teacher's logits on `split` (`logits_of`), computed once
            by the caller for every decomposition it scores on that split.
        with_subsets: Also score the ensemble from every proper subset of the devices that keeps
            the central node (2^(N-1) - 1 of them; what a degraded answer is worth).
    """
    if len(teacher_logits) != len(split):
        raise ConfigError(f"teacher logits for {len(teacher_logits)} images, the split has {len(split)}")
    correct: dict[str, torch.Tensor] = {}
    teacher_scores, correct["teacher"] = _scores(teacher_logits, split.labels)
    features = submodel_features(submodels, split.images)
    sub_scores: dict[str, Score] = {}
    with torch.no_grad():
        for name, m, f in zip(names, submodels, features):
            sub_scores[name], correct[f"submodels/{name}"] = _scores(head_of(m)(f.to(device_of(m))).cpu(), split.labels)
        ens_logits = aggregator(features)
    ens_scores, correct["ensemble"] = _scores(ens_logits, split.labels)
    ens_scores = replace(ens_scores,
                         agreement_with_teacher=(ens_logits.argmax(1) == teacher_logits.argmax(1)).float().mean()
                         .item(),
                         vs_teacher=PairedTest("teacher", "ensemble", mcnemar(correct["teacher"], correct["ensemble"])))
    subsets: dict[str, Score] = {}
    workers = len(names) - 1
    for mask in range(2 ** workers - 1 if with_subsets else 0):   # which workers answer; never all of them
        present = torch.tensor([1.0] + [float(mask >> k & 1) for k in range(workers)])
        key = "+".join(n for n, p in zip(names, present.tolist()) if p)
        with torch.no_grad():
            logits = aggregator(features, present)
        subsets[key], correct[f"subset/{key}"] = _scores(logits, split.labels)
    return Scored(PlanAccuracy(len(split), teacher_scores, sub_scores, ens_scores, subsets, stats=dict(STATS_NOTE)),
                  correct)
