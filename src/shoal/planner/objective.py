"""The evaluator: Ψ(C) = L_val(C) + δ·T(C) (CoFormer eq. 8) for one policy.

Latency (eq. 3-6): the model T of `shoal.plan.latency`, with t1 from device n's
predictor and t3's aggregation = its FLOPs / the central node's throughput.

Accuracy proxy (eq. 7) on the validation split, of sub-models decomposed but
not calibrated (or only briefly): see `shoal.planner.proxy` for the forms and
ADR 008 for how they rank policies against calibrated accuracy.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import torch
import torch.nn.functional as F

from shoal.devices.spec import DeviceSet
from shoal.errors import ConfigError
from shoal.models.accounting import BYTES_PER_VALUE, feature_bytes, shape_cost, spec_cost
from shoal.models.config import TeacherConfig
from shoal.models.partition import SubModelShape
from shoal.models.spec import Policy, SubModelSpec
from shoal.models.surgery import batched, build_submodel, submodel_features
from shoal.plan.latency import LatencyBreakdown, transfer_ms
from shoal.planner.proxy import Augment, ProxySettings, prior_loss, readout_loss, short_distill
from shoal.planner.settings import ProxyKind
from shoal.predictors.features import Shape
from shoal.utils.accel import autocast, device_of


class LatencyPredictor(Protocol):
    """What the planner needs of a device's latency predictor (see `shoal.predictors`)."""

    family: str
    kind: str
    is_estimate: bool

    def predict_ms(self, specs: Sequence[Shape]) -> list[float]: ...


@dataclass(frozen=True)
class Evaluation:
    """Ψ of one policy and its parts.

    Attributes:
        psi: L_val + δ·T.
        loss: The accuracy proxy L_val (nats).
        latency: Predicted latency breakdown.
        delta: δ used (per ms).
        device_losses: Per-device proxy losses (empty for proxies that read all devices at once).
        flops: Per-device FLOPs.
        memory_bytes: Per-device memory (weights + activations).
        seconds: Wall time of the evaluation.
    """

    psi: float
    loss: float
    latency: LatencyBreakdown
    delta: float
    device_losses: tuple[float, ...]
    flops: tuple[int, ...]
    memory_bytes: tuple[int, ...]
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["latency"] = self.latency.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Evaluation:
        return cls(data["psi"], data["loss"], LatencyBreakdown.from_dict(data["latency"]),
                   data["delta"], tuple(data["device_losses"]), tuple(data["flops"]),
                   tuple(data["memory_bytes"]), data["seconds"])


class Evaluator:
    """Scores policies: the latency model and the accuracy proxy.

    Args:
        teacher: The teacher model (eval mode).
        config: Its family.
        devices: Device set (central first), in policy order.
        predictors: One latency predictor per device, same order.
        cal_images: (M, C, H, W) calibration images (read-out fits, short distillation).
        val_images: (V, C, H, W) validation images.
        val_labels: (V,) validation labels.
        delta: δ, the weight of one millisecond against one nat of loss.
        proxy: Which accuracy proxy and its settings (`shoal.planner.proxy`); a kind alone
            takes the default settings.
        batch_size: Forward batch size.
        rpc_ms: Per device, the measured overhead of one runtime call (None: unknown, counted as 0);
            a worker's is added to its t2, the central node's to t3 (it receives and answers).
        cal_labels: (M,) labels of the calibration images (the "distill" proxy's loss; without
            them the teacher's decisions stand in).
        augment: Train-time augmentation for the "distill" proxy.
        input_bytes: Bytes of one image as clients send it (None: float32), charged on every
            worker's link (`shoal.data.imagecodec.mean_encoded_bytes`; a text: its ids and mask).
        tokens: A text family: the tokens per input latency is predicted at (the task's mean
            length; 0: the family's `seq_len`).
    """

    def __init__(self, teacher: torch.nn.Module, config: TeacherConfig, devices: DeviceSet,
                 predictors: Sequence[LatencyPredictor], cal_images: torch.Tensor, val_images: torch.Tensor,
                 val_labels: torch.Tensor, delta: float, proxy: ProxySettings | ProxyKind = "distill",
                 batch_size: int = 256, rpc_ms: Sequence[float | None] | None = None,
                 cal_labels: torch.Tensor | None = None, augment: Augment | None = None,
                 input_bytes: int | None = None, tokens: int = 0) -> None:
        if len(predictors) != len(devices):
            raise ConfigError(f"{len(devices)} devices but {len(predictors)} predictors")
        self.teacher, self.config, self.devices = teacher, config, devices
        self.predictors = list(predictors)
        self.cal_images, self.val_images, self.val_labels = cal_images, val_images, val_labels
        self.delta, self.batch_size = float(delta), batch_size
        self.settings = proxy if isinstance(proxy, ProxySettings) else ProxySettings(kind=proxy)
        self.augment = augment
        self.input_bytes = input_bytes if input_bytes is not None else BYTES_PER_VALUE * math.prod(config.input_shape)
        self.rpc_ms = [float(r or 0.0) for r in (rpc_ms or [None] * len(devices))]
        self.tokens = int(tokens)
        self.cal_targets = batched(teacher, cal_images, batch_size)      # (M, classes) teacher logits
        self.teacher_val_logits = batched(teacher, val_images, batch_size)
        self.cal_teacher_labels = self.cal_targets.argmax(1)
        self.cal_labels = cal_labels if cal_labels is not None else self.cal_teacher_labels
        self.teacher_val_loss = F.cross_entropy(self.teacher_val_logits, val_labels).item()
        self.prior_loss = prior_loss(self.cal_labels, val_labels, config.num_classes)
        full = SubModelSpec.full(config)
        central_ms = self.predictors[0].predict_ms([self._at_length(full)])[0]
        cost = shape_cost(config, full.width, full.head_counts, full.mlp_widths, self.tokens or None)
        self.central_flops_per_ms = cost.flops / max(central_ms, 1e-6)

    def _at_length(self, shape: Shape) -> Shape:
        """`shape` at the planned tokens per input (a text family), else as it is."""
        return SubModelShape.of(shape, self.tokens) if self.tokens else shape

    @property
    def proxy(self) -> ProxyKind:
        """The proxy kind (settable: benchmarks score one policy with several)."""
        return self.settings.kind

    @proxy.setter
    def proxy(self, kind: ProxyKind) -> None:
        from dataclasses import replace

        self.settings = replace(self.settings, kind=kind)

    # -- latency (eq. 3-6) ----------------------------------------------------------
    def latency(self, policy: Policy) -> LatencyBreakdown:
        """Predicted latency of `policy` (which may use a subset of the devices), in policy order."""
        index = [self.devices.names.index(name) for name in policy.devices]
        shapes: list[SubModelSpec | None] = [None] * len(self.devices)
        for i, spec in zip(index, policy.specs):
            shapes[i] = spec
        breakdown = self.latencies([shapes])[0]      # in set order
        rank = {i: r for r, i in enumerate(sorted(index))}
        return LatencyBreakdown(tuple(breakdown.compute_ms[rank[i]] for i in index),
                                tuple(breakdown.transfer_ms[rank[i]] for i in index),
                                breakdown.aggregate_ms, breakdown.request_ms)

    def latencies(self, policies: Sequence[Sequence[Shape | None]]) -> list[LatencyBreakdown]:
        """Predicted latency of many policies given by unit counts alone (per device of the set, in
        its order, a shape or None where the device is left out): one predictor call per device for
        the whole batch, no sub-model built. Each breakdown lists the devices used, in set order."""
        if any(len(p) != len(self.devices) for p in policies):
            raise ConfigError(f"each policy needs one entry per device ({len(self.devices)})")
        predicted = [iter(predictor.predict_ms([self._at_length(s) for p in policies if (s := p[i]) is not None]))
                     for i, predictor in enumerate(self.predictors)]
        input_bytes = self.input_bytes
        out = []
        for p in policies:
            compute, transfer, d_agg = [], [], 0
            for i, (device, shape) in enumerate(zip(self.devices.devices, p)):
                if shape is None:
                    continue
                compute.append(float(next(predicted[i])))
                transfer.append(transfer_ms(device, input_bytes, feature_bytes(shape.width), self.rpc_ms[i]))
                d_agg += shape.width
            agg_flops = 2 * d_agg * self.config.embed_dim + 2 * self.config.embed_dim * self.config.num_classes
            out.append(LatencyBreakdown(tuple(compute), tuple(transfer), agg_flops / self.central_flops_per_ms,
                                        self.rpc_ms[0]))
        return out

    def teacher_latency(self) -> list[float]:
        """Predicted latency of the whole teacher on each device (ms)."""
        full = self._at_length(SubModelSpec.full(self.config))
        return [float(p.predict_ms([full])[0]) for p in self.predictors]

    # -- accuracy proxy (eq. 7) -----------------------------------------------------
    def loss(self, policy: Policy) -> tuple[float, tuple[float, ...]]:
        """(L_val, per-device losses) of the decomposition, before calibration (floored at the prior)."""
        kind, floor = self.settings.kind, self.prior_loss
        models = [build_submodel(self.config, s, self.teacher) for s in policy.specs]
        if kind == "sliced":
            with autocast(device_of(self.teacher), self.settings.precision):
                logits = [batched(m, self.val_images, self.batch_size).float() for m in models]
            losses = tuple(min(floor, F.cross_entropy(z, self.val_labels).item()) for z in logits)
            return sum(losses) / len(losses), losses
        if kind == "probe":
            cal, val = self._features(models)
            losses = tuple(readout_loss(kind, [c], [v], self.cal_targets, self.val_labels, floor, self.settings)
                           for c, v in zip(cal, val))
            return sum(losses) / len(losses), losses
        readout = "logistic" if kind == "distill" else kind
        loss = readout_loss(readout, *self._features(models), self.cal_targets, self.val_labels, floor, self.settings)
        if kind == "distill":
            # the better of the sliced and the briefly distilled read-out: a few steps at a
            # fixed rate can make an already good (large) sub-model worse, calibration would not
            for m in models:
                m.requires_grad_(True)
            short_distill(models, self.cal_images, self.cal_labels, self.cal_teacher_labels, self.settings,
                          self.augment, seed=0)
            loss = min(loss, readout_loss(readout, *self._features(models), self.cal_targets, self.val_labels,
                                          floor, self.settings))
        return loss, ()

    def _features(self, models: Sequence[torch.nn.Module]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Pooled features of every sub-model on the calibration and the validation images (float32)."""
        with autocast(device_of(self.teacher), self.settings.precision):
            cal = submodel_features(models, self.cal_images, self.batch_size)
            val = submodel_features(models, self.val_images, self.batch_size)
        return [f.float() for f in cal], [f.float() for f in val]

    # -- Ψ --------------------------------------------------------------------------
    def evaluate(self, policy: Policy) -> Evaluation:
        started = time.perf_counter()
        latency = self.latency(policy)
        loss, device_losses = self.loss(policy)
        costs = [spec_cost(self.config, s) for s in policy.specs]
        return Evaluation(
            psi=loss + self.delta * latency.total_ms, loss=loss, latency=latency, delta=self.delta,
            device_losses=device_losses, flops=tuple(c.flops for c in costs),
            memory_bytes=tuple(c.memory_bytes for c in costs), seconds=time.perf_counter() - started)
