"""The central node's connections to its workers: one reused channel per worker."""

from __future__ import annotations

import queue
import time
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from shoal.errors import ConfigError
from shoal.runtime import shoal_pb2 as pb
from shoal.runtime import shoal_pb2_grpc as pb_grpc
from shoal.runtime.status import WORKER_SERVICE, RemoteError, channel_options, error_from_rpc

if TYPE_CHECKING:
    from shoal.runtime.worker import Identity

SERVING = health_pb2.HealthCheckResponse.SERVING


def parse_workers(text: str) -> dict[str, str]:
    """`"edge-a=127.0.0.1:50052,edge-b=127.0.0.1:50053"` -> {"edge-a": "127.0.0.1:50052", ...}.

    Whether the names match the plan's workers (none missing, none unknown) is checked
    against the plan when the central node starts.
    """
    out: dict[str, str] = {}
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        name, sep, target = item.partition("=")
        host, colon, port = target.rpartition(":")
        if not sep or not name or not colon or not host or not port.isdigit():
            raise ConfigError(f"--workers entry {item!r} must look like name=host:port")
        if name in out:
            raise ConfigError(f"--workers names device {name!r} twice")
        out[name] = target
    return out  # may be empty: a plan whose only device is the central node has no workers


@dataclass
class PendingCall:
    """One in-flight `Features` call.

    Attributes:
        link: The worker called.
        future: The gRPC future.
        t0: `time.perf_counter()` when the call was issued.
    """

    link: WorkerLink
    future: grpc.Future
    t0: float


class WorkerLink:
    """A channel to one worker, opened once and reused by every request.

    Args:
        name: Device name.
        target: host:port.
        feature_width: d_n the plan gives this device.
        max_message_bytes: Message size limit (inputs of the largest batch).
    """

    def __init__(self, name: str, target: str, feature_width: int, max_message_bytes: int) -> None:
        self.name = name
        self.target = target
        self.feature_width = feature_width
        self.channel = grpc.insecure_channel(target, options=channel_options(max_message_bytes))
        self.stub = pb_grpc.WorkerStub(self.channel)

    def start(self, index: int, request_id: int, source: pb.PredictRequest, fingerprint: str, deadline: float,
              done: queue.SimpleQueue[tuple[int, float]]) -> PendingCall:
        """Issue `Features` with the client's input as sent (a tensor, or the PNG/JPEG bytes) without
        waiting; `(index, completion time)` goes to `done` when it ends."""
        request = pb.FeaturesRequest(request_id=request_id, plan_fingerprint=fingerprint, device=self.name)
        if len(source.images.images):
            request.images.CopyFrom(source.images)
        else:
            request.input.CopyFrom(source.input)
        t0 = time.perf_counter()
        future = self.stub.Features.future(request, timeout=max(0.001, deadline - t0))
        future.add_done_callback(partial(_completed, done, index))
        return PendingCall(self, future, t0)

    def verify(self, identity: Identity, give_up: float) -> pb.InfoReply:
        """Wait until the worker reports SERVING (until `time.monotonic() >= give_up`), then check who it is.

        Raises:
            RemoteError: UNAVAILABLE if it is not serving in time; FAILED_PRECONDITION if it serves
                another plan, another device, another family or another feature width.
        """
        wait_until_serving(self.channel, WORKER_SERVICE, give_up, f"device {self.name!r} at {self.target}", self.name)
        try:
            info = self.stub.Info(pb.InfoRequest(), timeout=max(0.5, give_up - time.monotonic()))
        except grpc.RpcError as exc:
            raise error_from_rpc(exc, self.name) from None
        mismatch = [f"{what} {got!r} (expected {want!r})" for what, got, want in (
            ("plan", info.plan_fingerprint, identity.plan_fingerprint), ("device", info.device, self.name),
            ("family", info.family, identity.family), ("feature width", info.feature_width, self.feature_width),
        ) if got != want]
        if mismatch:
            raise RemoteError(grpc.StatusCode.FAILED_PRECONDITION,
                              f"worker at {self.target} does not serve device {self.name!r} of this plan: "
                              + ", ".join(mismatch), self.name)
        return info

    def close(self) -> None:
        self.channel.close()


def wait_until_serving(channel: grpc.Channel, service: str, give_up: float, what: str,
                       device: str | None = None) -> None:
    """Poll the standard health service of `channel` until `service` is SERVING.

    Raises:
        RemoteError: UNAVAILABLE naming `what` when `time.monotonic()` passes `give_up` first.
    """
    stub = health_pb2_grpc.HealthStub(channel)
    request = health_pb2.HealthCheckRequest(service=service)
    last = "no answer"
    while True:
        left = give_up - time.monotonic()
        if left <= 0:
            raise RemoteError(grpc.StatusCode.UNAVAILABLE, f"{what} is not serving ({last})", device)
        try:
            if stub.Check(request, timeout=min(1.0, left), wait_for_ready=True).status == SERVING:
                return
            last = "health NOT_SERVING (warming up)"
        except grpc.RpcError as exc:
            last = error_from_rpc(exc).details
            if exc.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise error_from_rpc(exc, device) from None
        time.sleep(min(0.1, max(0.0, give_up - time.monotonic())))


def _completed(done: queue.SimpleQueue[tuple[int, float]], index: int, future: grpc.Future) -> None:
    done.put((index, time.perf_counter()))


def describe_failure(link: WorkerLink, error: RemoteError, budget_s: float) -> str:
    """One line naming the device and what went wrong."""
    where = f"device {link.name!r} ({link.target})"
    if error.code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return f"{where} missed the {budget_s * 1e3:.0f} ms deadline"
    if error.code == grpc.StatusCode.UNAVAILABLE:
        return f"{where} is unavailable: {error.details}"
    return f"{where} failed: {error.code.name}: {error.details}"
