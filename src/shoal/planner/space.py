"""The search space: a fixed-length encoding x in [0,1]^k of a decomposition policy.

Per device n (central node first), four numbers:
    depth ratio  -> l_n = 1 + round(x·(L-1)) blocks (which ones: `layer_rule`)
    width share  -> d_n ≈ x·d residual channels
    head share   -> h_n^k ≈ x·h·shape(k) heads in each kept block
    MLP share    -> D_n^k ≈ x·D·shape(k) neurons in each kept block
and `knots` shared numbers describing shape(k) over relative depth (linear
interpolation, multiplier 0.5..1.5). k = 4N + knots: small enough for a GP.

A worker whose depth ratio is below 0.1 is left out (no sub-model, no call):
when a device's compute does not pay for its round trip, the best policy
does not use it. Decoding meets C1-C4 by construction: where the requests of the devices
sharing a block (or the channels) exceed the teacher's units they are scaled
down proportionally, then rounded with largest remainders. Budgets C5-C6 are
met by repair: a device whose own request does not fit its memory/compute
budget is shrunk (bisection on one scale factor, then depth) before the
shares are reconciled; reconciling only ever lowers counts, and cost is
monotone in counts, so the repaired policy fits.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from shoal.devices.spec import DeviceSet, DeviceSpec
from shoal.errors import ConfigError, InfeasibleError
from shoal.models.accounting import SpecCost, shape_cost
from shoal.models.config import TeacherConfig
from shoal.models.importance import ImportanceScores
from shoal.models.partition import DealRule, LayerRule, SubModelShape, choose_layers, decompose
from shoal.models.spec import MIN_WIDTH, Policy

PER_DEVICE = 4
LEAVE_OUT = 0.1   # a worker whose depth ratio is below this is left out of the policy


@dataclass(frozen=True)
class _Request:
    """A device's continuous request before reconciliation with the other devices."""

    layers: tuple[int, ...]
    width: float
    heads: tuple[float, ...]
    mlp: tuple[float, ...]


@dataclass(frozen=True)
class SearchSpace:
    """Encoding and decoding of policies for one teacher and one device set.

    Attributes:
        config: Teacher family.
        devices: The devices (central first); budgets are theirs.
        scores: Unit importance used to pick blocks and deal units.
        knots: Shared per-layer shape knots.
        layer_rule: How l_n blocks are chosen ("importance" or "uniform").
        deal_rule: How ranked units are dealt ("fair" or "ranked").
        min_width: Smallest residual width a sub-model may get.
        allow_leave_out: A worker (never the central node) whose depth ratio is below
            `LEAVE_OUT` gets no sub-model: it is left out of the policy and costs no call.
            False keeps CoFormer's rule that every device runs a sub-model.
    """

    config: TeacherConfig
    devices: DeviceSet
    scores: ImportanceScores
    knots: int = 2
    layer_rule: LayerRule = "uniform"
    deal_rule: DealRule = "fair"
    min_width: int = MIN_WIDTH
    allow_leave_out: bool = True

    def __post_init__(self) -> None:
        if self.knots < 0:
            raise ConfigError(f"SearchSpace.knots must be >= 0, got {self.knots}")
        if self.min_width * len(self.devices) > self.config.embed_dim:
            raise InfeasibleError(
                f"{len(self.devices)} devices need at least {self.min_width} channels each but the teacher "
                f"has {self.config.embed_dim}; use fewer devices")

    @property
    def dim(self) -> int:
        """k, the length of an encoding."""
        return PER_DEVICE * len(self.devices) + self.knots

    @property
    def names(self) -> tuple[str, ...]:
        return self.devices.names

    # -- decoding ---------------------------------------------------------------
    def decode(self, x: Sequence[float] | torch.Tensor) -> Policy:
        """A policy meeting C1-C6 for the point `x` in [0,1]^k (over the devices it uses)."""
        shapes = self.decode_shapes(x)
        used = [(name, shape) for name, shape in zip(self.names, shapes) if shape is not None]
        return decompose(self.config, [n for n, _ in used], [s for _, s in used], self.scores, self.deal_rule)

    def decode_shapes(self, x: Sequence[float] | torch.Tensor) -> list[SubModelShape | None]:
        """Unit counts per device for `x` (before indices are dealt); None for a device left out."""
        values = [float(v) for v in (x.tolist() if isinstance(x, torch.Tensor) else x)]
        if len(values) != self.dim:
            raise ConfigError(f"an encoding has {self.dim} numbers, got {len(values)}")
        if any(not (-1e-9 <= v <= 1 + 1e-9) or math.isnan(v) for v in values):
            raise ConfigError(f"an encoding must lie in [0,1]^{self.dim}, got {values}")
        values = [min(1.0, max(0.0, v)) for v in values]
        shape_knots = values[PER_DEVICE * len(self.devices):]
        requests: list[_Request | None] = []
        for n, device in enumerate(self.devices.devices):
            depth, width, heads, mlp = values[PER_DEVICE * n: PER_DEVICE * (n + 1)]
            if self.allow_leave_out and not device.central:
                if depth < LEAVE_OUT:
                    requests.append(None)
                    continue
                depth = (depth - LEAVE_OUT) / (1 - LEAVE_OUT)
            requests.append(self._repair(device, depth, width, heads, mlp, shape_knots))
        active = [r for r in requests if r is not None]
        reconciled = iter(self._reconcile(active))
        return [None if r is None else next(reconciled) for r in requests]

    def _request(self, depth: float, width: float, heads: float, mlp: float, knots: Sequence[float],
                 scale: float = 1.0, depth_cap: int | None = None) -> _Request:
        c = self.config
        n_layers = 1 + round(depth * (c.depth - 1))
        if depth_cap is not None:
            n_layers = min(n_layers, depth_cap)
        layers = choose_layers(n_layers, self.scores, c.depth, self.layer_rule)
        mults = [_shape_multiplier(knots, k, len(layers)) for k in range(len(layers))]
        return _Request(
            layers=layers,
            width=max(float(self.min_width), width * scale * c.embed_dim),
            heads=tuple(min(c.num_heads, heads * scale * c.num_heads * m) for m in mults),
            mlp=tuple(min(c.mlp_hidden, max(1.0, mlp * scale * c.mlp_hidden * m)) for m in mults),
        )

    def _repair(self, device: DeviceSpec, depth: float, width: float, heads: float, mlp: float,
                knots: Sequence[float]) -> _Request:
        request = self._request(depth, width, heads, mlp, knots)
        if self._fits(device, request):
            return request
        for depth_cap in range(len(request.layers), 0, -1):
            smallest = self._request(depth, width, heads, mlp, knots, scale=1e-6, depth_cap=depth_cap)
            if not self._fits(device, smallest):
                continue
            lo, hi = 1e-6, 1.0
            for _ in range(20):
                mid = (lo + hi) / 2
                if self._fits(device, self._request(depth, width, heads, mlp, knots, mid, depth_cap)):
                    lo = mid
                else:
                    hi = mid
            return self._request(depth, width, heads, mlp, knots, lo, depth_cap)
        raise InfeasibleError(self.infeasibility(device) or f"device {device.name!r}: no sub-model fits")

    def _fits(self, device: DeviceSpec, request: _Request) -> bool:
        cost = self._cost_upper_bound(request)
        return device.fits(cost.memory_bytes, cost.flops)

    def _cost_upper_bound(self, request: _Request) -> SpecCost:
        return shape_cost(self.config, math.ceil(request.width),
                          [math.ceil(h) for h in request.heads], [math.ceil(m) for m in request.mlp])

    def _reconcile(self, requests: list[_Request]) -> list[SubModelShape]:
        c = self.config
        widths = apportion([r.width for r in requests], c.embed_dim, minimum=self.min_width)
        heads: list[dict[int, int]] = [{} for _ in requests]
        mlp: list[dict[int, int]] = [{} for _ in requests]
        for block in range(c.depth):
            owners = [(n, r.layers.index(block)) for n, r in enumerate(requests) if block in r.layers]
            if not owners:
                continue
            h_counts = apportion([requests[n].heads[k] for n, k in owners], c.num_heads)
            m_counts = apportion([requests[n].mlp[k] for n, k in owners], c.mlp_hidden)
            for (n, _), h, m in zip(owners, h_counts, m_counts):
                heads[n][block], mlp[n][block] = h, m
        return [SubModelShape(r.layers, widths[n], tuple(heads[n][b] for b in r.layers),
                              tuple(mlp[n][b] for b in r.layers)) for n, r in enumerate(requests)]

    # -- feasibility ----------------------------------------------------------------
    def smallest_cost(self) -> SpecCost:
        """Cost of the smallest sub-model the space can produce (1 block, 1 neuron, no heads)."""
        return shape_cost(self.config, self.min_width, [0], [1])

    def infeasibility(self, device: DeviceSpec) -> str | None:
        """Why no sub-model fits `device` (with the shortfall), or None if one does."""
        cost = self.smallest_cost()
        if cost.memory_bytes > device.memory_bytes:
            short = (cost.memory_bytes - device.memory_bytes) / 2**20
            return (f"device {device.name!r}: memory budget {device.memory_bytes / 2**20:.2f} MiB is "
                    f"{short:.2f} MiB short of the smallest sub-model ({cost.memory_bytes / 2**20:.2f} MiB)")
        if device.compute_flops is not None and cost.flops > device.compute_flops:
            short = (cost.flops - device.compute_flops) / 1e6
            return (f"device {device.name!r}: compute budget {device.compute_flops / 1e6:.2f} MFLOPs is "
                    f"{short:.2f} MFLOPs short of the smallest sub-model ({cost.flops / 1e6:.2f} MFLOPs)")
        return None

    def check_feasible(self) -> None:
        """Raise `InfeasibleError` naming every device no sub-model can fit, before any search."""
        problems = [p for p in (self.infeasibility(d) for d in self.devices.devices) if p]
        if problems:
            raise InfeasibleError("; ".join(problems))

    # -- special points -------------------------------------------------------------
    def uniform_point(self, depth: float, scale: float) -> list[float]:
        """Every device the same request: width, heads and MLP shares `scale`/N, flat shape."""
        n = len(self.devices)
        share = scale / n
        point: list[float] = []
        for device in self.devices.devices:
            encoded = depth
            if self.allow_leave_out and not device.central:
                encoded = LEAVE_OUT + depth * (1 - LEAVE_OUT)
            point += [encoded, share, share, share]
        return point + [0.5] * self.knots

    def largest_uniform_scale(self, depth: float) -> float:
        """The largest `scale` for which the uniform request fits the weakest device unrepaired."""
        lo, hi = 0.0, 1.0
        for _ in range(20):
            mid = (lo + hi) / 2
            x = self.uniform_point(depth, mid)
            req = self._request(x[0], x[1], x[2], x[3], [0.5] * self.knots)
            if all(self._fits(d, req) for d in self.devices.devices):
                lo = mid
            else:
                hi = mid
        return lo


def _shape_multiplier(knots: Sequence[float], k: int, n_layers: int) -> float:
    """Per-layer multiplier in [0.5, 1.5] at relative depth k/(n_layers-1), from linear knots."""
    if not knots:
        return 1.0
    if len(knots) == 1 or n_layers == 1:
        return 0.5 + knots[0]
    t = k / (n_layers - 1) * (len(knots) - 1)
    i = min(int(t), len(knots) - 2)
    frac = t - i
    return 0.5 + knots[i] * (1 - frac) + knots[i + 1] * frac


def apportion(requests: Sequence[float], cap: int, minimum: int = 0) -> list[int]:
    """Integers close to `requests` (scaled down to fit `cap` in total), by largest remainders."""
    total_request = sum(requests)
    scale = min(1.0, cap / total_request) if total_request > 0 else 0.0
    wanted = [max(float(minimum), r * scale) for r in requests]
    target = min(cap, round(sum(wanted)))
    counts = [max(minimum, math.floor(w)) for w in wanted]
    remainders = sorted(range(len(wanted)), key=lambda i: (counts[i] - wanted[i], i))
    i = 0
    while sum(counts) < target and i < len(remainders):
        counts[remainders[i]] += 1
        i += 1
    while sum(counts) > cap:  # minimums pushed the total over: take from the largest
        j = max(range(len(counts)), key=lambda i: counts[i])
        counts[j] -= 1
    return counts
