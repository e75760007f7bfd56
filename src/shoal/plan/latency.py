"""The latency model T of a plan (CoFormer eq. 3-6), used alike by the planner's
evaluator, the network benchmark and the netns tests.

    T = max_n (t1_n + t2_n) + t3

t1_n is device n's compute (its predictor's answer, or a measurement), t2_n its
link time, zero on the central node, and t3 the aggregation on the central node
plus the central node's own call overhead. CoFormer's t2 is the feature upload
alone (eq. 5: every device already holds the input); shoal's central node first
sends each worker the input over the same link, so t2 here is two one-way link
latencies + (input bytes + feature bytes) / rate + the device's measured
runtime-call overhead (ADR 006). `include_input=False` gives the paper's t2.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from shoal.devices.spec import DeviceSpec
from shoal.utils.fields import Fields


def transfer_ms(device: DeviceSpec, input_bytes: int, feature_bytes: int, rpc_ms: float = 0.0, *,
                include_input: bool = True) -> float:
    """t2 of one device: 0 on the central node; else the input down and the features up its link,
    plus its measured runtime-call overhead."""
    if device.central:
        return 0.0
    down = device.transfer_ms(input_bytes) if include_input else 0.0
    return down + rpc_ms + device.transfer_ms(feature_bytes)


@dataclass(frozen=True)
class LatencyBreakdown:
    """Latency of a policy, per device and phase (ms), devices in policy order.

    Attributes:
        compute_ms: t1 per device.
        transfer_ms: t2 per device (0 on the central node): link time plus the device's measured
            runtime-call overhead.
        aggregate_ms: t3 on the central node: the aggregation.
        request_ms: The central node's own runtime-call overhead (receiving the request and
            answering it), part of t3.
    """

    compute_ms: tuple[float, ...]
    transfer_ms: tuple[float, ...]
    aggregate_ms: float
    request_ms: float = 0.0

    @property
    def total_ms(self) -> float:
        """T = max_n(t1 + t2) + t3, t3 = aggregation + the central node's request overhead."""
        return max(c + t for c, t in zip(self.compute_ms, self.transfer_ms)) + self.aggregate_ms + self.request_ms

    @property
    def straggler(self) -> int:
        """Index of the device that finishes last."""
        ends = [c + t for c, t in zip(self.compute_ms, self.transfer_ms)]
        return ends.index(max(ends))

    def to_dict(self) -> dict[str, Any]:
        return {"compute_ms": list(self.compute_ms), "transfer_ms": list(self.transfer_ms),
                "aggregate_ms": self.aggregate_ms, "request_ms": self.request_ms, "total_ms": self.total_ms}

    @classmethod
    def from_dict(cls, data: Any, where: str = "latency") -> LatencyBreakdown:
        f = Fields(data, where)
        out = cls(f.floats("compute_ms"), f.floats("transfer_ms"), f.number("aggregate_ms"),
                  f.number("request_ms", 0.0))
        f.raw("total_ms", None)  # derived; written for readers of the JSON
        f.done()
        return out


def link_breakdown(devices: Sequence[DeviceSpec], compute_ms: Sequence[float], aggregate_ms: float,
                   input_bytes: int, feature_bytes: Sequence[int], *, rpc_ms: Sequence[float] | None = None,
                   request_ms: float = 0.0, include_input: bool = True) -> LatencyBreakdown:
    """T of devices with known compute times, t2 from each device's link (`transfer_ms`).

    Args:
        devices: The devices of the policy, in its order (the central node among them).
        compute_ms: t1 per device.
        aggregate_ms: The aggregation on the central node.
        input_bytes: What the central node sends each worker.
        feature_bytes: What each device sends back.
        rpc_ms: Per device, its measured runtime-call overhead (None: 0).
        request_ms: The central node's own call overhead.
        include_input: False for CoFormer's t2 (features only).
    """
    rpc = list(rpc_ms) if rpc_ms is not None else [0.0] * len(devices)
    transfer = tuple(transfer_ms(d, input_bytes, f, r, include_input=include_input)
                     for d, f, r in zip(devices, feature_bytes, rpc))
    return LatencyBreakdown(tuple(float(c) for c in compute_ms), transfer, float(aggregate_ms), float(request_ms))
