"""The worker: one device's sub-model behind the `shoal.v1.Worker` service.

`Features(input (B, C, H, W) float32) -> pooled features (B, d_n) float32`.
Bad input is INVALID_ARGUMENT, a request for another plan or device is
FAILED_PRECONDITION, a request before warm-up is UNAVAILABLE; none of them
disturbs the server.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import grpc
import torch

import shoal
from shoal.errors import ConfigError
from shoal.models.config import TextConfig
from shoal.plan.directory import Plan, load_plan
from shoal.runtime import shoal_pb2 as pb
from shoal.runtime import shoal_pb2_grpc as pb_grpc
from shoal.runtime.codec import CodecError, decode_input, encode, image_message_bytes
from shoal.runtime.device import DEFAULT_MAX_BATCH, SubModelRunner, device_process, plan_fingerprint
from shoal.runtime.pki import check_signature
from shoal.runtime.security import Security
from shoal.runtime.server import RunningServer, announce, start_server, wait_for_shutdown
from shoal.runtime.status import WORKER_SERVICE
from shoal.runtime.variants import PRIMARY, ServedVariant, device_spec, load_variants
from shoal.utils.accel import compute_device

logger = logging.getLogger(__name__)

FAULT_ENV = "SHOAL_TEST_FAULT"


@dataclass(frozen=True)
class Fault:
    """Test-only fault injection (never a CLI flag): `SHOAL_TEST_FAULT="delay_ms=800"`.

    Attributes:
        delay_ms: Sleep this long in every Features call before computing.
    """

    delay_ms: float = 0.0

    def __post_init__(self) -> None:
        if not 0 <= self.delay_ms <= 600_000:
            raise ConfigError(f"fault delay_ms must be between 0 and 600000, got {self.delay_ms!r}")

    @classmethod
    def from_env(cls) -> Fault | None:
        text = os.environ.get(FAULT_ENV, "").strip()
        if not text:
            return None
        fields = dict(part.split("=", 1) for part in text.split(",") if "=" in part)
        unknown = sorted(set(fields) - {"delay_ms"})
        if unknown:
            raise ConfigError(f"{FAULT_ENV}={text!r}: unknown field(s) {unknown}")
        return cls(delay_ms=float(fields.get("delay_ms", 0)))


@dataclass(frozen=True)
class Identity:
    """Who a server is (the `Info` RPC).

    Attributes:
        plan_fingerprint: `plan_fingerprint(plan_dir)`.
        device: Device name.
        family: Teacher family fingerprint.
        input_shape: (C, H, W); a text plan's (2, L): ids and mask of at most L tokens.
        max_batch: Largest batch accepted.
        normalisation: The plan's (mean, std) for compact image inputs.
        vocab_size: A text plan's token ids are 0..vocab_size - 1 (0: an image plan).
    """

    plan_fingerprint: str
    device: str
    family: str
    input_shape: tuple[int, ...]
    max_batch: int = DEFAULT_MAX_BATCH
    normalisation: tuple[tuple[float, ...], tuple[float, ...]] | None = None
    vocab_size: int = 0

    def __post_init__(self) -> None:
        if self.max_batch < 1:
            raise ConfigError(f"max_batch must be at least 1, got {self.max_batch!r}")

    @classmethod
    def of(cls, plan: Plan, device: str, max_batch: int = DEFAULT_MAX_BATCH) -> Identity:
        spec, config = plan.document.input, plan.config
        return cls(plan_fingerprint(plan.root), device, config.fingerprint(), config.input_shape, max_batch,
                   (spec.mean, spec.std) if spec is not None else None,
                   config.vocab_size if isinstance(config, TextConfig) else 0)

    def info(self, role: str, ready: bool, feature_width: int = 0, devices: tuple[str, ...] = ()) -> pb.InfoReply:
        return pb.InfoReply(plan_fingerprint=self.plan_fingerprint, device=self.device, family=self.family,
                            input_shape=list(self.input_shape), feature_width=feature_width,
                            max_batch=self.max_batch, role=role, ready=ready, devices=list(devices),
                            shoal_version=shoal.__version__)

    def decode_input(self, request: pb.PredictRequest | pb.FeaturesRequest, context: grpc.ServicerContext
                     ) -> torch.Tensor:
        """The model input of a request: a (B, C, H, W) float32 batch (float32, uint8 pixels or PNG/JPEG
        bytes), or a text plan's (B, 2, L) int64 token ids and mask (`shoal.runtime.codec.decode_input`);
        or abort the call with INVALID_ARGUMENT."""
        try:
            return decode_input(request.input, request.images, self.input_shape, self.max_batch, self.normalisation,
                                vocab_size=self.vocab_size)
        except CodecError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"device {self.device!r}: {exc}")
            raise  # abort raises; this line only tells type checkers so


class WorkerServicer(pb_grpc.WorkerServicer):
    """The `shoal.v1.Worker` service of one device.

    Args:
        runner: The device's sub-model.
        identity: Plan fingerprint, device name, input shape, batch limit.
        fault: Test-only fault injection.
    """

    def __init__(self, runner: SubModelRunner | None, identity: Identity, fault: Fault | None = None,
                 variants: Mapping[str, SubModelRunner] | None = None) -> None:
        if runner is None and not variants:
            raise ConfigError(f"device {identity.device!r} has no sub-model in any variant of the plan")
        self.runner = runner
        self.identity = identity
        self.fault = fault
        self.ready = threading.Event()
        self.variants = dict(variants or {})   # other variants' sub-models of this device (a --pareto plan)

    def Info(self, request: pb.InfoRequest, context: grpc.ServicerContext) -> pb.InfoReply:  # noqa: N802
        first = self.runner if self.runner is not None else next(iter(self.variants.values()))
        return self.identity.info("worker", self.ready.is_set(), first.feature_width)

    def Features(self, request: pb.FeaturesRequest, context: grpc.ServicerContext) -> pb.FeaturesReply:  # noqa: N802
        ident = self.identity
        if not self.ready.is_set():
            context.abort(grpc.StatusCode.UNAVAILABLE, f"device {ident.device!r} is warming up; retry when "
                                                       "its health service reports SERVING")
        if request.plan_fingerprint and request.plan_fingerprint != ident.plan_fingerprint:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                          f"device {ident.device!r} serves plan {ident.plan_fingerprint}, "
                          f"the request is for plan {request.plan_fingerprint}")
        if request.device and request.device != ident.device:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                          f"this worker serves device {ident.device!r}, the request is for {request.device!r}")
        t0 = time.perf_counter()
        x = ident.decode_input(request, context)
        decode_ms = (time.perf_counter() - t0) * 1e3
        if self.fault is not None and self.fault.delay_ms:
            until = time.monotonic() + self.fault.delay_ms / 1e3
            while context.is_active() and (left := until - time.monotonic()) > 0:
                time.sleep(min(0.05, left))  # a cancelled call (deadline, server stop) ends the sleep
        runner = self.runner if request.variant in ("", PRIMARY) else self.variants.get(request.variant)
        if runner is None:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                          f"device {ident.device!r} serves no variant {request.variant!r}; it serves "
                          f"{', '.join([PRIMARY, *self.variants])}")
            raise  # abort raises; this line only tells type checkers so
        out = runner(x)
        reply = pb.FeaturesReply(request_id=request.request_id, compute_ms=out.compute_ms, queue_ms=out.queue_ms,
                                 decode_ms=decode_ms, device=ident.device)
        encode(out.features, reply.features)
        return reply


def start_worker(
    plan: Plan,
    device: str,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    max_batch: int = DEFAULT_MAX_BATCH,
    warmup: int = 10,
    fault: Fault | None = None,
    background_warmup: bool = False,
    accelerator: str | None = None,
    security: Security = Security(),
    variants: list[ServedVariant] | None = None,
) -> tuple[RunningServer, WorkerServicer]:
    """Build `device`'s sub-model from `plan` and serve it (in this process).

    The server listens before warm-up with health NOT_SERVING; it reports SERVING
    once warm. With `background_warmup` the warm-up runs in a thread and this
    returns at once (tests use it to call before warm-up).

    `accelerator` (cpu, cuda) overrides the device set's. With `security.tls_dir` the worker
    serves mutual TLS and answers only the plan's central node (its certificate's name);
    a plan signature in that folder must match.

    Raises:
        ConfigError: `device` is not a worker of the plan; it would listen beyond this machine
            without TLS; its TLS files are missing or readable by others; the plan's signature fails.
        PlatformError: its accelerator is cuda and no CUDA device is visible.
    """
    variants = variants if variants is not None else load_variants(plan)   # (each hash-checks its files)
    spec = device_spec(variants, device)
    if spec.central:
        raise ConfigError(f"device {device!r} is the plan's central node; serve it with `shoal serve central`")
    listener = security.for_peer(device, host, plan.devices.central.name,
                                 [f"/{WORKER_SERVICE}/Features", f"/{WORKER_SERVICE}/Info"])
    check_signature(security.tls_dir, plan.root)
    identity = Identity.of(plan, device, max_batch)
    compute = compute_device(accelerator or spec.accelerator)
    runners = {v.name: SubModelRunner(v.plan.build_submodel(device), plan.config, device, compute)
               for v in variants if device in v.devices}
    runner = runners.pop(PRIMARY, None)   # None: a worker only other variants use
    others = runners
    servicer = WorkerServicer(runner, identity, fault, others)
    running = start_server(lambda s: pb_grpc.add_WorkerServicer_to_server(servicer, s), WORKER_SERVICE,
                           host=host, port=port, max_message_bytes=image_message_bytes(identity.input_shape, max_batch),
                           threads=4, max_concurrent=64, credentials=listener.credentials,
                           interceptors=listener.interceptors)

    def warm() -> None:
        for each in ([runner] if runner is not None else []) + list(others.values()):
            each.warm_up(warmup)
        servicer.ready.set()
        running.set_serving(True)

    if background_warmup:
        threading.Thread(target=warm, name=f"warmup-{device}", daemon=True).start()
    else:
        warm()
    return running, servicer


def serve_worker(
    plan_dir: str | Path,
    device: str,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    threads: int | None = None,
    emulate: bool = True,
    max_batch: int = DEFAULT_MAX_BATCH,
    grace: float = 5.0,
    watch_parent: bool = False,
    accelerator: str | None = None,
    security: Security = Security(),
) -> None:
    """Process entry point of `shoal serve worker`: limit, load, listen, warm up, serve until a signal."""
    plan = load_plan(plan_dir)
    variants = load_variants(plan)
    spec = device_spec(variants, device)
    if spec.central:
        raise ConfigError(f"device {device!r} is the plan's central node; serve it with `shoal serve central`")
    with device_process(spec, emulate=emulate, threads=threads):
        running, servicer = start_worker(plan, device, host=host, port=port, max_batch=max_batch,
                                         fault=Fault.from_env(), background_warmup=True, accelerator=accelerator,
                                         security=security, variants=variants)
        announce(running)
        logger.info(f"worker {device} of plan {servicer.identity.plan_fingerprint} listening on {running.target} "
                    f"({threads or spec.threads} thread(s), {compute_device(accelerator or spec.accelerator).type}); "
                    "SERVING after warm-up")
        wait_for_shutdown(running, grace=grace, watch_parent=watch_parent)
