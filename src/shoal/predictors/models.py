"""Measured latency predictors: linear models on cost features, CoFormer's MLP, an ensemble.

  LinearPredictor  latency = features · w + b, least squares; "flops-linear" is
                   the baseline a user would reach for (ms ~ FLOPs), "terms-linear"
                   a non-negative fit on analytic cost terms weighted for relative error.
  MLPPredictor     CoFormer supplement §A: three Linear layers, 600 hidden units,
                   ReLU, standardised features, standardised log-latency target;
                   optionally on top of a linear `base` (it then learns log(t / base)).
  EnsemblePredictor  weighted geometric mean of members.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import Any, cast

import numpy as np
import torch
import torch.nn as nn

from shoal.errors import ConfigError
from shoal.models.config import TeacherConfig
from shoal.predictors.base import LatencyPredictor, Tensors
from shoal.predictors.features import Shape, feature_matrix, feature_names

FLOOR_MS = 1e-3  # a linear fit may extrapolate below zero; no inference is faster than this


def _check_targets(shapes: Sequence[Shape], y_ms: np.ndarray) -> np.ndarray:
    y = np.asarray(y_ms, dtype=np.float64)
    if len(shapes) != len(y) or len(y) < 2:
        raise ConfigError(f"need at least 2 shapes with one latency each, got {len(shapes)} shapes, {len(y)} latencies")
    if not np.all(np.isfinite(y)) or y.min() <= 0:
        raise ConfigError(f"latencies must be positive and finite, got min {y.min()!r}")
    return y


class LinearPredictor(LatencyPredictor):
    """latency (ms) = X · coef + intercept on a feature set."""

    def __init__(self, config: TeacherConfig, kind: str, feature_set: str, coef: np.ndarray, intercept: float) -> None:
        super().__init__(config, kind)
        self.feature_set = feature_set
        self.coef = np.asarray(coef, dtype=np.float64)
        self.intercept = float(intercept)
        if self.coef.shape != (len(feature_names(feature_set)),):
            raise ConfigError(f"{kind}: {self.coef.shape[0]} coefficients for feature set {feature_set!r} "
                              f"of {len(feature_names(feature_set))} features")

    @classmethod
    def fit(cls, config: TeacherConfig, shapes: Sequence[Shape], y_ms: np.ndarray, feature_set: str, *, kind: str,
            relative: bool = False, nonneg: bool = False) -> LinearPredictor:
        """Least squares fit.

        Args:
            relative: Minimise squared *relative* error (rows weighted by 1/y) instead of squared ms.
            nonneg: Constrain coefficients and intercept to be >= 0 (each term costs time).
        """
        y = _check_targets(shapes, y_ms)
        A = np.c_[feature_matrix(config, shapes, feature_set), np.ones(len(y))]
        scale = np.abs(A).max(axis=0)
        scale[scale == 0] = 1.0
        weight = 1.0 / y if relative else np.ones_like(y)
        lhs, rhs = A / scale * weight[:, None], y * weight
        if nonneg:
            from scipy.optimize import nnls

            w, _ = nnls(lhs, rhs, maxiter=50 * A.shape[1])
        else:
            w = np.linalg.lstsq(lhs, rhs, rcond=None)[0]
        w = w / scale
        return cls(config, kind, feature_set, w[:-1], float(w[-1]))

    def predict_array(self, shapes: Sequence[Shape]) -> np.ndarray:
        X = feature_matrix(self.config, shapes, self.feature_set)
        return np.maximum(X @ self.coef + self.intercept, FLOOR_MS)

    def describe_terms(self) -> dict[str, float]:
        """Coefficient of every feature (ms per unit), and the intercept (ms)."""
        return dict(zip(feature_names(self.feature_set), self.coef.tolist())) | {"intercept": self.intercept}

    def state(self) -> tuple[Tensors, dict[str, Any]]:
        return {"coef": torch.from_numpy(self.coef.copy())}, {"feature_set": self.feature_set,
                                                             "intercept": self.intercept}

    @classmethod
    def from_state(cls, config: TeacherConfig, kind: str, tensors: Tensors, meta: dict[str, Any]) -> LinearPredictor:
        return cls(config, kind, meta["feature_set"], tensors["coef"].double().numpy(), meta["intercept"])


def mlp_net(inputs: int, hidden: int = 600) -> nn.Sequential:
    """CoFormer's predictor network: Linear-ReLU-Linear-ReLU-Linear, (n, inputs) -> (n, 1)."""
    return nn.Sequential(nn.Linear(inputs, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                         nn.Linear(hidden, 1))


class MLPPredictor(LatencyPredictor):
    """exp(MLP(standardised features)) ms, optionally times a linear `base` prediction."""

    def __init__(self, config: TeacherConfig, kind: str, feature_set: str, net: nn.Sequential, x_mean: np.ndarray,
                 x_std: np.ndarray, y_mean: float, y_std: float, base: LinearPredictor | None = None) -> None:
        super().__init__(config, kind)
        self.feature_set = feature_set
        self.net = net.eval()
        self.x_mean = np.asarray(x_mean, dtype=np.float64)
        self.x_std = np.asarray(x_std, dtype=np.float64)
        self.y_mean, self.y_std = float(y_mean), float(y_std)
        self.base = base

    def _log_output(self, X: np.ndarray) -> np.ndarray:
        z = torch.from_numpy(((X - self.x_mean) / self.x_std).astype(np.float32))
        with torch.inference_mode():
            out = self.net(z).squeeze(1).double().numpy()
        return out * self.y_std + self.y_mean

    def predict_array(self, shapes: Sequence[Shape]) -> np.ndarray:
        pred = np.exp(self._log_output(feature_matrix(self.config, shapes, self.feature_set)))
        return pred * self.base.predict_array(shapes) if self.base is not None else pred

    @classmethod
    def fit(cls, config: TeacherConfig, shapes: Sequence[Shape], y_ms: np.ndarray, feature_set: str, *, kind: str,
            val: tuple[Sequence[Shape], np.ndarray] | None = None, base: LinearPredictor | None = None,
            epochs: int = 300, hidden: int = 600, lr: float = 1e-3, batch_size: int = 128, seed: int = 0
            ) -> MLPPredictor:
        """Train with Adam and a cosine schedule on the squared error of standardised log-latency.

        Args:
            val: Validation shapes and latencies; the weights with the lowest validation MAPE
                (checked every 10 epochs) are kept.
            base: Learn the log-ratio to this linear predictor's output instead of log-latency.
        """
        y = _check_targets(shapes, y_ms)
        X = feature_matrix(config, shapes, feature_set)
        target = np.log(y) - (np.log(base.predict_array(shapes)) if base is not None else 0.0)
        x_mean, x_std = X.mean(axis=0), X.std(axis=0)
        x_std[x_std < 1e-12] = 1.0
        y_mean, y_std = float(target.mean()), float(target.std()) or 1.0
        gen = torch.Generator().manual_seed(seed)
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            net = mlp_net(X.shape[1], hidden)
        Xt = torch.from_numpy(((X - x_mean) / x_std).astype(np.float32))
        Yt = torch.from_numpy(((target - y_mean) / y_std).astype(np.float32))
        opt = torch.optim.Adam(net.parameters(), lr=lr)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
        model = cls(config, kind, feature_set, net, x_mean, x_std, y_mean, y_std, base)
        best: tuple[float, dict[str, torch.Tensor]] = (math.inf, {})
        for epoch in range(epochs):
            net.train()
            order = torch.randperm(len(Yt), generator=gen)
            for start in range(0, len(order), batch_size):
                rows = order[start:start + batch_size]
                opt.zero_grad()
                loss = ((net(Xt[rows]).squeeze(1) - Yt[rows]) ** 2).mean()
                loss.backward()
                opt.step()
            sched.step()
            if val is not None and (epoch % 10 == 9 or epoch == epochs - 1):
                net.eval()
                pred = model.predict_array(val[0])
                score = float(np.mean(np.abs(pred - val[1]) / val[1]))
                if score < best[0]:
                    best = (score, copy.deepcopy(net.state_dict()))
        if best[1]:
            net.load_state_dict(best[1])
        net.eval()
        return model

    def state(self) -> tuple[Tensors, dict[str, Any]]:
        tensors = {f"net.{k}": v.detach().clone() for k, v in self.net.state_dict().items()}
        tensors |= {"x_mean": torch.from_numpy(self.x_mean.copy()), "x_std": torch.from_numpy(self.x_std.copy())}
        meta: dict[str, Any] = {"feature_set": self.feature_set, "y_mean": self.y_mean, "y_std": self.y_std,
                                "hidden": int(cast(nn.Linear, self.net[0]).out_features)}
        if self.base is not None:
            base_tensors, base_meta = self.base.state()
            tensors |= {f"base.{k}": v for k, v in base_tensors.items()}
            meta["base"] = {"kind": self.base.kind, **base_meta}
        return tensors, meta

    @classmethod
    def from_state(cls, config: TeacherConfig, kind: str, tensors: Tensors, meta: dict[str, Any]) -> MLPPredictor:
        x_mean = tensors["x_mean"].double().numpy()
        net = mlp_net(len(x_mean), int(meta["hidden"]))
        net.load_state_dict({k.removeprefix("net."): v.float() for k, v in tensors.items() if k.startswith("net.")})
        base = None
        if "base" in meta:
            base = LinearPredictor.from_state(config, meta["base"]["kind"], {
                k.removeprefix("base."): v for k, v in tensors.items() if k.startswith("base.")}, meta["base"])
        return cls(config, kind, meta["feature_set"], net, x_mean, tensors["x_std"].double().numpy(),
                   meta["y_mean"], meta["y_std"], base)


class EnsemblePredictor(LatencyPredictor):
    """Weighted geometric mean of member predictions (errors in log space average out)."""

    def __init__(self, config: TeacherConfig, kind: str, members: Sequence[LatencyPredictor],
                 weights: Sequence[float] | None = None) -> None:
        super().__init__(config, kind)
        if not members or any(m.family != self.family for m in members):
            raise ConfigError(f"{kind}: an ensemble needs members of family {self.family!r}")
        w = np.ones(len(members)) if weights is None else np.asarray(weights, dtype=np.float64)
        if w.shape != (len(members),) or w.min() < 0 or w.sum() <= 0:
            raise ConfigError(f"{kind}: need one non-negative weight per member, got {list(w)!r}")
        self.members = list(members)
        self.weights = w / w.sum()

    def predict_array(self, shapes: Sequence[Shape]) -> np.ndarray:
        logs = np.stack([np.log(m.predict_array(shapes)) for m in self.members])
        return np.exp(self.weights @ logs)

    def state(self) -> tuple[Tensors, dict[str, Any]]:
        tensors: Tensors = {}
        members = []
        for i, member in enumerate(self.members):
            member_tensors, member_meta = member.state()
            tensors |= {f"m{i}.{k}": v for k, v in member_tensors.items()}
            members.append({"class": type(member).__name__, "kind": member.kind, "meta": member_meta})
        return tensors, {"members": members, "weights": self.weights.tolist()}

    @classmethod
    def from_state(cls, config: TeacherConfig, kind: str, tensors: Tensors, meta: dict[str, Any]) -> EnsemblePredictor:
        members = []
        for i, info in enumerate(meta["members"]):
            prefix = f"m{i}."
            sub = {k.removeprefix(prefix): v for k, v in tensors.items() if k.startswith(prefix)}
            members.append(LatencyPredictor.registry[info["class"]].from_state(config, info["kind"], sub, info["meta"]))
        return cls(config, kind, members, meta["weights"])
