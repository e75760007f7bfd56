"""The booster (CoFormer Algorithm 1, lines 12-15): progressive boosting distillation.

Sub-models are calibrated one after another by distillation from the teacher
with per-sample weights (eq. 14):

    L_n = Σ_i w_i · ½[CE(s_n(x_i), y_i) + CE(s_n(x_i), ŷ_t(x_i))] / Σ_i w_i

where ŷ_t is the teacher's hard decision. After sub-model n, the weights are
updated from its per-sample loss ℓ_i (eq. 13):

    "boost"    w_i ← w_i · exp((1 - 1/M) · ℓ_i)    harder samples count more for the next one
    "printed"  w_i ← w_i · exp((1/M - 1) · ℓ_i)    eq. 13 exactly as printed (the opposite)
    "uniform"  w_i unchanged                       plain per-model distillation

Weights are renormalised to mean 1 and clipped to [1/20, 20] so a few
unlearnable samples cannot take the whole budget. `benchmarks/accuracy.py`
compares the three. Training checkpoints after every epoch and resumes.

Sub-tasks (DeViT, ED-ViT): with `classes`, sub-model n is trained only on the
images of its classes, its head read on those classes' rows (a head over the
sub-task, initialised from the teacher's), the teacher's decision taken among
them. `loss="labels"` drops the teacher (ED-ViT retrains on labels alone);
`relation` adds DeViT's feature-matching term (eq. 12-13, in its authors' form):
for Q, K and V of the sub-model's middle block and the teacher block it was
sliced from, KL(R_t || R_s) of the token-relation rows R = softmax(X·Xᵀ/√d_h).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file

from shoal.data.datasets import TaskData
from shoal.errors import DataError
from shoal.models.surgery import batched
from shoal.planner.settings import CalibrationSettings, SubtaskLoss, Weighting
from shoal.utils.accel import device_of
from shoal.utils.io import atomic_save_safetensors, atomic_write_json, load_optimizer_tensors, optimizer_tensors

WEIGHT_CLIP = 20.0
VIEW_CACHE_BYTES = 512 * 2**20   # augmented training views kept in memory across sub-models
Progress = Callable[[str, int, int], None]   # (phase description, done, total)


def distillation_losses(logits: torch.Tensor, labels: torch.Tensor, teacher_labels: torch.Tensor) -> torch.Tensor:
    """Per-sample ½[CE(s, y) + CE(s, ŷ_t)] (eq. 14 without the weights). Shapes (B, C), (B,), (B,) -> (B,)."""
    return 0.5 * (F.cross_entropy(logits, labels, reduction="none")
                  + F.cross_entropy(logits, teacher_labels, reduction="none"))


def relation_loss(student: torch.Tensor, teacher: torch.Tensor, head_dim: int) -> torch.Tensor:
    """KL(R_t || R_s) per token row, averaged: R = softmax(X·Xᵀ / √head_dim) over tokens.
    Shapes (B, S, c_s), (B, S, c_t) -> scalar (the widths may differ: the relations do not)."""
    scale = head_dim ** -0.5
    log_s = F.log_softmax(student @ student.transpose(1, 2) * scale, dim=-1)
    log_t = F.log_softmax(teacher @ teacher.transpose(1, 2) * scale, dim=-1)
    return (log_t.exp() * (log_t - log_s)).sum(-1).mean()


class _QKV:
    """Captures the fused q|k|v projection output (B, S, 3·c) of one attention block."""

    def __init__(self, block: Any) -> None:
        self.out: torch.Tensor | None = None
        self.handle = block.attn.qkv.register_forward_hook(self._keep)

    def _keep(self, _m: nn.Module, _inp: object, out: torch.Tensor) -> None:
        self.out = out

    def parts(self) -> tuple[torch.Tensor, ...]:
        assert self.out is not None
        return tuple(self.out.chunk(3, dim=-1))


def _block(model: nn.Module, index: int) -> Any:
    """Block `index` of a timm ViT or a sub-model (typed loosely: its parts are reached by name)."""
    return list(model.blocks)[index]   # type: ignore[arg-type]


def update_weights(weights: torch.Tensor, losses: torch.Tensor, weighting: Weighting) -> torch.Tensor:
    """Eq. 13 after one sub-model: (M,) weights and per-sample losses -> new (M,) weights, mean 1."""
    m = weights.numel()
    if weighting == "uniform":
        return weights.clone()
    sign = 1.0 if weighting == "boost" else -1.0
    # subtract the max exponent first: exp of large losses must not overflow
    exponent = sign * (1.0 - 1.0 / m) * losses
    new = weights * torch.exp(exponent - exponent.max())
    new = new / new.mean()
    new = new.clamp(1.0 / WEIGHT_CLIP, WEIGHT_CLIP)
    return new / new.mean()


class Booster:
    """Calibrates the sub-models of a policy one after another (checkpointing every epoch).

    Args:
        teacher: The teacher (frozen, eval mode).
        submodels: Sub-models in policy order, initialised from the teacher (trained in place).
        names: Device names, same order.
        data: Task data (train split is used).
        settings: Training settings.
        workdir: Where checkpoints go (`<workdir>/<name>.safetensors`, `state.json`).
        classes: Per sub-model, the classes of its sub-task (None: every class, CoFormer).
        loss: "distill" (½ labels + ½ the teacher's decisions) or "labels" (ED-ViT).
        relation: DeViT's feature-matching weights for Q, K, V (0, 0, 0: none), with
            `relation_layers`, per sub-model, (its block index, the teacher block it mirrors).
    """

    def __init__(self, teacher: nn.Module, submodels: Sequence[nn.Module], names: Sequence[str], data: TaskData,
                 settings: CalibrationSettings, workdir: Path, *,
                 classes: Sequence[Sequence[int]] | None = None, loss: SubtaskLoss = "distill",
                 relation: tuple[float, float, float] = (0.0, 0.0, 0.0),
                 relation_layers: Sequence[tuple[int, int] | None] | None = None) -> None:
        self.teacher, self.submodels, self.names = teacher, list(submodels), list(names)
        self.data, self.settings, self.workdir = data, settings, Path(workdir)
        self.state_path = self.workdir / "state.json"
        self.classes = [list(c) for c in classes] if classes is not None else None
        if self.classes is not None and len(self.classes) != len(self.submodels):
            raise DataError(f"{len(self.classes)} class subsets for {len(self.submodels)} sub-models")
        self.loss, self.relation = loss, relation
        self.relation_layers = list(relation_layers or [None] * len(self.submodels))
        self._views: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self._train_logits: torch.Tensor | None = None   # on the plain training set: one per run

    def teacher_logits(self, images: torch.Tensor) -> torch.Tensor:
        """(N, classes) logits of the teacher on (N, C, H, W) images (its decisions: their argmax)."""
        return batched(self.teacher, images)

    def _task(self, n: int) -> tuple[torch.Tensor, list[int] | None]:
        """Training-set indices of sub-model n's sub-task, and its classes (None: all of them)."""
        labels = self.data.train.labels
        if self.classes is None:
            return torch.arange(len(labels)), None
        chosen = self.classes[n]
        idx = torch.nonzero(torch.isin(labels, torch.tensor(chosen))).squeeze(1)
        if idx.numel() == 0:
            raise DataError(f"the sub-task of {self.names[n]!r} (classes {chosen}) has no training images")
        return idx, chosen

    def _losses(self, logits: torch.Tensor, labels: torch.Tensor, teacher_logits: torch.Tensor,
                classes: list[int] | None) -> torch.Tensor:
        """Per-sample loss of a sub-model's logits (B, C): on its sub-task's classes when given."""
        if classes is not None:
            lookup = torch.full((logits.shape[1],), -1, dtype=torch.long, device=labels.device)
            lookup[torch.tensor(classes, device=labels.device)] = torch.arange(len(classes), device=labels.device)
            logits, teacher_logits, labels = logits[:, classes], teacher_logits[:, classes], lookup[labels]
        if self.loss == "labels":
            return F.cross_entropy(logits, labels, reduction="none")
        return distillation_losses(logits, labels, teacher_logits.argmax(1))

    def run(self, progress: Progress | None = None, resume: bool = True) -> dict[str, Any]:
        """Calibrate every sub-model; returns a summary (per-device final loss, weight statistics)."""
        s, train = self.settings, self.data.train
        state = self._load_state() if resume else self._fresh_state()
        weights = self._load_weights(len(train)) if resume else torch.ones(len(train))
        summary: dict[str, Any] = {"weighting": s.weighting, "devices": {}}
        for n, (name, model) in enumerate(zip(self.names, self.submodels)):
            if name in state["done"]:
                model.load_state_dict(load_file(str(self.workdir / f"{name}.safetensors")))
                continue
            start_epoch = int(state["epoch"].get(name, 0))
            optimizer = torch.optim.AdamW(model.parameters(), lr=s.lr, weight_decay=s.weight_decay)
            if start_epoch > 0:
                self._restore(name, model, optimizer)
            task = self._task(n)
            steps_per_epoch = math.ceil(len(task[0]) / s.batch_size)
            total_steps = max(1, s.epochs * steps_per_epoch)
            for epoch in range(start_epoch, s.epochs):
                self._epoch(model, optimizer, weights, epoch, n, steps_per_epoch, total_steps, task)
                self._checkpoint(name, model, optimizer)
                state["epoch"][name] = epoch + 1
                atomic_write_json(self.state_path, state)
                if progress:
                    progress(f"calibrating {name}", epoch + 1, s.epochs)
            losses = self._per_sample_losses(model, task)
            summary["devices"][name] = {"train_loss": losses.mean().item(),
                                        "weight_max": weights.max().item(), "weight_min": weights.min().item()}
            if task[1] is None:   # boosting re-weights the one training set every sub-model shares
                weights = update_weights(weights, losses, s.weighting)
            atomic_save_safetensors(self.workdir / "sample_weights.safetensors", {"weights": weights})
            atomic_save_safetensors(self.workdir / f"{name}.safetensors", model.state_dict())
            state["done"].append(name)
            atomic_write_json(self.state_path, state)
        for model in self.submodels:
            model.eval()
        return summary

    def _view(self, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The augmented training set of `epoch` and the teacher's decisions on it.

        Every sub-model sees the same augmented view in a given epoch, so the
        teacher runs once per view, not once per sub-model; views are cached when
        the training set is small enough (the digits task: 4 MB a view).
        """
        if epoch in self._views:
            return self._views[epoch]
        train = self.data.train
        images = train.images
        if self.data.augment is not None:
            gen = torch.Generator().manual_seed(self.settings.seed * 1_000_003 + 7 * epoch + 1)
            images = torch.cat([self.data.augment(images[i:i + 512], gen) for i in range(0, len(images), 512)])
        view = (images, self.teacher_logits(images))
        if images.numel() * images.element_size() * (len(self._views) + 1) <= VIEW_CACHE_BYTES:
            self._views[epoch] = view
        return view

    def _epoch(self, model: nn.Module, optimizer: torch.optim.Optimizer, weights: torch.Tensor, epoch: int,
               n: int, steps_per_epoch: int, total_steps: int, task: tuple[torch.Tensor, list[int] | None]) -> None:
        s, train = self.settings, self.data.train
        images, teacher_logits = self._view(epoch)
        dev = device_of(model)
        gen = torch.Generator().manual_seed(s.seed * 1_000_003 + n * 1009 + epoch)
        indices, classes = task
        order = indices[torch.randperm(len(indices), generator=gen)]
        pair = self.relation_layers[n] if any(self.relation) else None
        hooks = (_QKV(_block(model, pair[0])), _QKV(_block(self.teacher, pair[1]))) if pair is not None else None
        model.train()
        try:
            for step, i in enumerate(range(0, len(order), s.batch_size)):
                idx = order[i:i + s.batch_size]
                global_step = epoch * steps_per_epoch + step
                for group in optimizer.param_groups:
                    group["lr"] = s.lr * 0.5 * (1 + math.cos(math.pi * global_step / total_steps))
                x = images[idx].to(dev)
                per_sample = self._losses(model(x), train.labels[idx].to(dev), teacher_logits[idx].to(dev), classes)
                w = weights[idx].to(dev)
                loss = (w * per_sample).sum() / w.sum()
                if hooks is not None:
                    with torch.no_grad():
                        self.teacher(x)   # fills the teacher block's q|k|v (its logits are cached)
                    head_dim = int(_block(self.teacher, 0).attn.head_dim)
                    loss = loss + sum(a * relation_loss(st, te, head_dim) for a, st, te
                                      in zip(self.relation, hooks[0].parts(), hooks[1].parts()) if a > 0)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
        finally:
            for hook in hooks or ():
                hook.handle.remove()
        model.eval()

    def _per_sample_losses(self, model: nn.Module, task: tuple[torch.Tensor, list[int] | None]) -> torch.Tensor:
        train = self.data.train
        if self._train_logits is None:   # the same for every sub-model
            self._train_logits = self.teacher_logits(train.images)
        idx, classes = task
        return self._losses(batched(model, train.images[idx]), train.labels[idx], self._train_logits[idx], classes)

    # -- checkpoints ------------------------------------------------------------------
    def _checkpoint(self, name: str, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        atomic_save_safetensors(self.workdir / f"{name}.partial.safetensors", model.state_dict())
        atomic_save_safetensors(self.workdir / f"{name}.optim.safetensors", optimizer_tensors(optimizer))

    def _restore(self, name: str, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        try:
            model.load_state_dict(load_file(str(self.workdir / f"{name}.partial.safetensors")))
            load_optimizer_tensors(optimizer, load_file(str(self.workdir / f"{name}.optim.safetensors")))
        except (OSError, RuntimeError, KeyError) as exc:
            raise DataError(f"calibration checkpoint of {name!r} in {self.workdir} is unusable ({exc}); "
                            "start without --resume") from None

    def _fresh_state(self) -> dict[str, Any]:
        return {"names": self.names, "settings": self.settings.to_dict(), "done": [], "epoch": {}}

    def _load_state(self) -> dict[str, Any]:
        import json

        if not self.state_path.exists():
            return self._fresh_state()
        try:
            state = json.loads(self.state_path.read_text())
        except json.JSONDecodeError:
            raise DataError(f"{self.state_path} is corrupt; start without --resume") from None
        if state.get("names") not in (None, self.names) or state.get("settings") not in (None, self.settings.to_dict()):
            raise DataError(f"{self.state_path} belongs to another calibration; start without --resume")
        return state

    def _load_weights(self, m: int) -> torch.Tensor:
        path = self.workdir / "sample_weights.safetensors"
        if path.exists():
            weights = load_file(str(path))["weights"]
            if weights.numel() == m:
                return weights
        return torch.ones(m)
