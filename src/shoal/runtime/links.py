"""The central node's connections to its workers: one reused channel per worker."""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from shoal.errors import ConfigError
from shoal.runtime import shoal_pb2 as pb
from shoal.runtime import shoal_pb2_grpc as pb_grpc
from shoal.runtime.security import name_override
from shoal.runtime.status import WORKER_SERVICE, RemoteError, channel_options, error_from_rpc

if TYPE_CHECKING:
    from shoal.runtime.worker import Identity

SERVING = health_pb2.HealthCheckResponse.SERVING
logger = logging.getLogger(__name__)


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
        credentials: Mutual TLS as the central node (None: plaintext); the worker's certificate
            must name this device, whatever its address.
    """

    def __init__(self, name: str, target: str, feature_width: int, max_message_bytes: int,
                 credentials: grpc.ChannelCredentials | None = None) -> None:
        self.name = name
        self.target = target
        self.feature_width = feature_width
        options = channel_options(max_message_bytes)
        if credentials is not None:
            self.channel = grpc.secure_channel(target, credentials, options=options + name_override(name))
        else:
            self.channel = grpc.insecure_channel(target, options=options)
        self.stub = pb_grpc.WorkerStub(self.channel)
        self.verified = threading.Event()   # its identity was checked on the current connection
        self.rejected: RemoteError | None = None   # the last identity check failed: who answered instead
        self._closed = threading.Event()
        self._checking = threading.Lock()
        self._identity: Identity | None = None
        self._on_change: Callable[[], None] | None = None

    # -- identity on every (re)connection ---------------------------------------------------------

    def watch(self, identity: Identity, on_change: Callable[[], None]) -> None:
        """Re-check who answers whenever the channel (re)connects (issue 12: a process that takes a
        dead worker's port must not receive the users' images). Until the check passes the link is
        not `verified` and the central node does not call it; `on_change` runs on every change."""
        self._identity, self._on_change = identity, on_change
        self.channel.subscribe(self._state_changed, try_to_connect=True)

    def _state_changed(self, state: grpc.ChannelConnectivity) -> None:
        if state == grpc.ChannelConnectivity.READY and self.verified.is_set():
            return
        if state != grpc.ChannelConnectivity.READY or not self.verified.is_set():
            was = self.verified.is_set()
            if state != grpc.ChannelConnectivity.READY:
                self.verified.clear()
            if was and self._on_change is not None:
                self._on_change()
            if not self._closed.is_set():
                threading.Thread(target=self._recheck, name=f"verify-{self.name}", daemon=True).start()

    def _recheck(self) -> None:
        if not self._checking.acquire(blocking=False):
            return   # a check is already running
        try:
            while not self._closed.is_set() and not self.verified.is_set() and self._identity is not None:
                try:
                    self.verify(self._identity, time.monotonic() + 2.0)
                except RemoteError as exc:
                    if exc.code == grpc.StatusCode.FAILED_PRECONDITION and exc.details != getattr(
                            self.rejected, "details", None):
                        logger.error("%s; not calling it until the right worker answers", exc.details)
                    self.rejected = exc if exc.code == grpc.StatusCode.FAILED_PRECONDITION else self.rejected
                    self._closed.wait(0.5)
                    continue
                self.rejected = None
                self.verified.set()
                logger.info("device %r at %s verified", self.name, self.target)
                if self._on_change is not None:
                    self._on_change()
        finally:
            self._checking.release()

    def start(self, index: int, request_id: int, source: pb.PredictRequest, fingerprint: str, deadline: float,
              done: queue.SimpleQueue[tuple[int, float]], variant: str = "") -> PendingCall:
        """Issue `Features` (of `variant`'s sub-model) with the client's input as sent (a tensor, or the
        PNG/JPEG bytes) without waiting; `(index, completion time)` goes to `done` when it ends."""
        request = features_request(source, request_id, fingerprint, self.name, variant)
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
        self.verified.set()
        return info

    def close(self) -> None:
        self._closed.set()
        if self._identity is not None:
            self.channel.unsubscribe(self._state_changed)
        self.channel.close()


def features_request(source: pb.PredictRequest, request_id: int, fingerprint: str, device: str,
                     variant: str = "") -> pb.FeaturesRequest:
    """The Features call the central node sends a worker for a client's request: its input as the
    client sent it (a tensor, or the PNG/JPEG bytes)."""
    request = pb.FeaturesRequest(request_id=request_id, plan_fingerprint=fingerprint, device=device, variant=variant)
    if len(source.images.images):
        request.images.CopyFrom(source.images)
    else:
        request.input.CopyFrom(source.input)
    return request


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
        if error.details.startswith(("not back within", "demoted")):   # the SLO's own reasons
            return f"{where}: {error.details}"
        return f"{where} missed the {budget_s * 1e3:.0f} ms deadline"
    if error.code == grpc.StatusCode.UNAVAILABLE:
        return f"{where} is unavailable: {error.details}"
    return f"{where} failed: {error.code.name}: {error.details}"
