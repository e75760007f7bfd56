"""Janus's split mode (seeds/000): the device runs the first blocks, merges tokens, the server finishes.

The server (`JanusServicer`, service `shoal.v1.Janus`) holds the whole teacher and answers `Finish`:
the tokens left after the device's `split` blocks at rate α (float16, class token first, with
their sizes), or the image itself at split 0. Everything a device sends is checked against the
plan before any compute: α on the plan's grid, the split one of its candidates (not N + 1: the
device answers that alone), the token count the schedule gives for that α and split, the width,
sizes that are positive, finite and account for every original token.

The device side (`JanusDevice`) picks α and the split for each request (`JanusModel.choose`, the
paper's Algorithm 1) from the uplink bandwidth the adaptive node's `LiveEstimates` measures on
its own calls (harmonic mean of recent throughputs, a prior until there is one), with each side's
per-layer fit scaled by the median of its measured/predicted time over its recent calls (the
same estimates again: the paper's model has no such correction, and a block timed alone
under-predicts a whole request by about 2× here), runs its part, and calls the server.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import torch

from shoal.errors import ConfigError, DataError
from shoal.models.tokens import TokenRunner
from shoal.plan.janus import Choice, JanusModel, JanusPlan
from shoal.runtime import shoal_pb2 as pb
from shoal.runtime import shoal_pb2_grpc as pb_grpc
from shoal.runtime.central import LiveEstimates, top_k_reply
from shoal.runtime.codec import CodecError, decode, encode, image_message_bytes
from shoal.runtime.device import device_process, plan_fingerprint
from shoal.runtime.pki import check_signature
from shoal.runtime.security import Security, name_override
from shoal.runtime.server import RunningServer, announce, start_server, wait_for_shutdown
from shoal.runtime.status import CENTRAL_SERVICE, JANUS_SERVICE, RemoteError, channel_options, error_from_rpc
from shoal.runtime.worker import Identity

logger = logging.getLogger(__name__)


class JanusServicer(pb_grpc.JanusServicer):
    """The `shoal.v1.Janus` service: the server's part of every split.

    Args:
        runner: The teacher, run with the plan's token reduction.
        model: The plan's α grid, token counts and split candidates.
        identity: Plan fingerprint, device name, input shape, batch limit.
    """

    def __init__(self, runner: TokenRunner, model: JanusModel, identity: Identity) -> None:
        if model.depth != runner.depth or model.configs[0].counts[0] != runner.tokens:
            raise ConfigError(f"the Janus model is for {model.depth} blocks and {model.configs[0].counts[0]} tokens, "
                              f"the teacher has {runner.depth} and {runner.tokens}")
        self.runner, self.model, self.identity = runner, model, identity
        self.width = int(runner.model.embed_dim)

    def Info(self, request: pb.InfoRequest, context: grpc.ServicerContext) -> pb.InfoReply:  # noqa: N802
        return self.identity.info("janus-server", True)

    def Finish(self, request: pb.FinishRequest, context: grpc.ServicerContext) -> pb.PredictReply:  # noqa: N802
        t_start = time.perf_counter()
        fingerprint = self.identity.plan_fingerprint
        if request.plan_fingerprint and request.plan_fingerprint != fingerprint:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                          f"tokens of plan {request.plan_fingerprint}; this server runs plan {fingerprint}")
        config = self.model.config(float(request.alpha))
        if config is None:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"α {request.alpha:g} is not on this plan's grid "
                          f"(0 to {self.model.configs[-1].alpha:g})")
            raise AssertionError("unreachable: abort raises")
        split = int(request.split)
        if split not in self.model.candidates or split > self.model.depth:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          f"split {split} is not one of this plan's split points "
                          f"{[s for s in self.model.candidates if s <= self.model.depth]}")
        with torch.inference_mode():
            if split == 0:
                x = self.identity.decode_input(request.image, context)
                tokens, sizes = self.runner.embed(x)
            else:
                tokens, sizes = self._tokens(request, config.counts[split], context)
            t_compute = time.perf_counter()
            tokens, _ = self.runner.blocks(tokens, sizes, split, self.model.depth, config.alpha)
            logits = self.runner.head(tokens)
        reply = top_k_reply(logits, request.top_k, request.request_id)
        now = time.perf_counter()
        reply.timings.append(pb.DeviceTiming(device=self.identity.device, compute_ms=(now - t_compute) * 1e3,
                                             round_trip_ms=(now - t_start) * 1e3, ok=True))
        reply.total_ms = (now - t_start) * 1e3
        return reply

    def _tokens(self, request: pb.FinishRequest, expected: int, context: grpc.ServicerContext
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """The (B, x, d) tokens and (B, x, 1) sizes of a request, checked, as float32."""
        limit = self.identity.max_batch * expected * self.width
        try:
            tokens = decode(request.tokens, what="tokens", dtypes=("float16",), ndim=3, max_elements=limit)
            sizes = decode(request.sizes, what="sizes", dtypes=("float16",), ndim=2,
                           max_elements=self.identity.max_batch * expected)
        except CodecError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            raise
        b = tokens.shape[0]
        if tuple(tokens.shape[1:]) != (expected, self.width) or tuple(sizes.shape) != (b, expected):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          f"after split {request.split} at α {request.alpha:g} the plan keeps {expected} tokens of "
                          f"width {self.width}: expected tokens ({b}, {expected}, {self.width}) and sizes "
                          f"({b}, {expected}), got {list(tokens.shape)} and {list(sizes.shape)}")
        tokens, sizes = tokens.float(), sizes.float()
        total = sizes.sum(dim=1)
        if not (bool(torch.isfinite(tokens).all()) and bool((sizes >= 1).all())
                and bool(torch.allclose(total, torch.full_like(total, float(self.runner.tokens)), atol=0.5))):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          f"tokens must be finite and their sizes at least 1 and sum to {self.runner.tokens} "
                          "(every original token, once)")
        return tokens, sizes[..., None]


def start_janus_server(runner: TokenRunner, model: JanusModel, identity: Identity, *, device: str,
                       host: str = "127.0.0.1", port: int = 0, security: Security = Security()
                       ) -> tuple[RunningServer, JanusServicer]:
    """Serve the server's part in this process. With `security.tls_dir`, mutual TLS: only the plan's
    `device` (its certificate's name) may call, as only the central node may call a worker."""
    servicer = JanusServicer(runner, model, identity)
    listener = security.for_peer(identity.device, host, device, [f"/{JANUS_SERVICE}/Finish", f"/{JANUS_SERVICE}/Info"])
    limit = max(image_message_bytes(identity.input_shape, identity.max_batch),
                identity.max_batch * runner.tokens * (runner.model.embed_dim * 2 + 2) + 4096)
    running = start_server(lambda s: pb_grpc.add_JanusServicer_to_server(servicer, s), JANUS_SERVICE,
                           host=host, port=port, max_message_bytes=limit, credentials=listener.credentials,
                           interceptors=listener.interceptors)
    running.set_serving(True)
    return running, servicer


def load_janus(plan_dir: str | Path, side: str = "server") -> tuple[JanusPlan, TokenRunner, Identity]:
    """A Janus plan, its teacher as a token runner (checked against the plan's family), and the identity
    `side` ("server" or "device") reports.

    Raises:
        DataError: no janus.json, or the teacher is not the plan's.
    """
    from shoal.models import DEFAULT_TEACHER, load_teacher

    plan = JanusPlan.read(plan_dir)
    teacher = load_teacher(None if plan.teacher == DEFAULT_TEACHER else plan.teacher)
    if teacher.config.fingerprint() != plan.family:
        raise DataError(f"the teacher {plan.teacher!r} is family {teacher.config.fingerprint()}, the Janus plan "
                        f"{plan_dir} was made for {plan.family}")
    spec = plan.server if side == "server" else plan.device
    identity = Identity(plan_fingerprint(plan_dir), spec.name, plan.family, teacher.config.input_shape,
                        normalisation=(plan.input.mean, plan.input.std))
    teacher.vit("a Janus plan")
    model: Any = teacher.model   # a timm ViT: checked above
    return plan, TokenRunner(model, "merge" if plan.reduction == "merge" else "prune"), identity


def serve_janus(plan_dir: str | Path, *, role: str = "server", server: str | None = None, host: str = "127.0.0.1",
                port: int = 0, emulate: bool = True, threads: int | None = None, grace: float = 5.0,
                watch_parent: bool = False, security: Security = Security(), sla_ms: float | None = None,
                prior_mbps: float = 10.0, connect_timeout: float = 60.0, fixed: tuple[float, int] | None = None
                ) -> None:
    """Process entry point of `shoal serve janus`: one side of a Janus plan, under that side's limit,
    until a signal. The server finishes what the device sends; the device answers `shoal.v1.Central`
    Predict calls of its clients (the same API as a central node), choosing α and the split for each.

    Raises:
        ConfigError: an unknown role, a device without `server` (host:port, "-": a line on stdin), a
            token of another plan, or a server that serves another plan.
    """
    if role not in ("server", "device"):
        raise ConfigError(f"--role must be server or device, got {role!r}")
    if role == "device" and not server:
        raise ConfigError("the device side needs --server host:port (the Janus server it sends its tokens to)")
    check_signature(security.tls_dir, plan_dir)
    plan, runner, identity = load_janus(plan_dir, role)
    spec = plan.server if role == "server" else plan.device
    with device_process(spec, emulate=emulate, threads=threads):
        if role == "server":
            running, _ = start_janus_server(runner, plan.model, identity, device=plan.device.name, host=host,
                                            port=port, security=security)
        else:
            target = sys.stdin.readline().strip() if server == "-" else str(server)
            running, front = start_janus_device(plan, runner, identity, target, host=host, port=port,
                                                security=security, sla_ms=sla_ms, prior_mbps=prior_mbps,
                                                connect_timeout=connect_timeout, fixed=fixed)
        announce(running)
        logger.info(f"janus {role} {spec.name} of plan {identity.plan_fingerprint} serving on {running.target}")
        wait_for_shutdown(running, grace=grace, watch_parent=watch_parent,
                          on_stop=None if role == "server" else front.device.close)


class JanusDevice:
    """The device's side: choose α and the split, run the first blocks, send what is left.

    Args:
        runner: The teacher on this device.
        model: The plan's Janus model.
        target: The server's address.
        sla_ms: The latency each request must meet.
        prior_mbps: Bandwidth assumed until a transfer has been measured.
        fingerprint: The plan's fingerprint (sent with every request).
        fixed: (α, split) for every request instead of the scheduler's choice (the baselines:
            device only, server only, a fixed split).
        credentials: TLS to the server with this device's certificate (None: plaintext).
        server_name: The name the server's certificate must carry (the plan's server).
        token: Bearer token sent with every call (None: none).
    """

    LINK = "server"
    STALE_S = 2.0

    def __init__(self, runner: TokenRunner, model: JanusModel, target: str, sla_ms: float, *,
                 prior_mbps: float = 10.0, fingerprint: str = "", fixed: tuple[float, int] | None = None,
                 credentials: grpc.ChannelCredentials | None = None, server_name: str = "") -> None:
        if not sla_ms > 0 or not prior_mbps > 0:   # an infinite SLA: never prune, the fastest split
            raise ConfigError(f"the SLA and the prior bandwidth must be positive, got {sla_ms!r} and {prior_mbps!r}")
        self.runner, self.model, self.sla_ms, self.fixed = runner, model, sla_ms, fixed
        self.prior_bps, self.fingerprint = prior_mbps * 1e6, fingerprint
        self.estimates = LiveEstimates(window=20)   # FESTIVE's 20 samples; keys "device", "device α<k>", ...
        options = channel_options(64 << 20)
        self.channel = (grpc.secure_channel(target, credentials, options=options + name_override(server_name))
                        if credentials is not None else grpc.insecure_channel(target, options=options))
        self.stub = pb_grpc.JanusStub(self.channel)

    def scales(self) -> tuple[np.ndarray, np.ndarray]:
        """Per α of the grid, the (device, server) corrections of its fits: the median measured/predicted
        time of that α's own recent calls on each side, else of the side's calls at any α. Per α,
        because one ratio for all made a pruned configuration that measured slow (what merging costs
        is in no block fit of a format-1 plan) inflate the unpruned one's prediction, and stay chosen.
        An α's own ratio counts for `STALE_S` seconds after its last call: one the scheduler stopped
        choosing after a throttled spell is judged again by the side's current ratio, not for good
        by that spell."""
        out = []
        for side in ("device", "server"):
            row = np.full(len(self.model.configs), self.estimates.compute_ratio(side))
            for k, ratio in self.estimates.ratios(f"{side} α", max_age_s=self.STALE_S).items():
                row[int(k)] = ratio
            out.append(row)
        return out[0], out[1]

    def bandwidth_bps(self) -> float:
        return self.estimates.bandwidth_bps(self.LINK, self.prior_bps)

    def predict(self, image: pb.PredictRequest, decode: Callable[[], torch.Tensor], timeout_s: float = 10.0
                ) -> tuple[pb.PredictReply, Choice, float]:
        """One request: `image` as the client has it (sent as it is at split 0), `decode` what turns it into
        the (B, C, H, W) input (called only when the device runs blocks: at split 0 the server decodes).
        Returns the server's reply (or the device's own at split N + 1), the choice, and the device's ms."""
        scales = self.scales()
        if self.fixed is None:
            choice = self.model.choose(self.bandwidth_bps(), self.sla_ms, scales)
        else:
            k = self.model.index(self.fixed[0])
            ms = self.model.latency_ms(self.model.configs[k], self.fixed[1], self.bandwidth_bps(), scales[0][k],
                                       scales[1][k])
            choice = Choice(self.model.configs[k].alpha, self.fixed[1], ms, ms <= self.sla_ms)
        k = self.model.index(choice.alpha)
        predicted_device, predicted_server = self.model.parts_ms(self.model.configs[k], choice.split)
        depth, alone = self.model.depth, choice.split > self.model.depth
        logits: torch.Tensor | None = None
        t0 = time.perf_counter()
        with torch.inference_mode():
            if choice.split > 0:   # the device's blocks (all of them, and the head, when it answers alone)
                tokens, sizes = self.runner.embed(decode())
                tokens, sizes = self.runner.blocks(tokens, sizes, 0, min(choice.split, depth), choice.alpha)
                logits = self.runner.head(tokens) if alone else None
        device_ms = (time.perf_counter() - t0) * 1e3
        if choice.split > 0:
            for key in ("device", f"device α{k}"):
                self.estimates.observe(key, device_ms, predicted_device, None)
        if logits is not None:
            return top_k_reply(logits, image.top_k, image.request_id), choice, device_ms
        if choice.split == 0:
            request = pb.FinishRequest(split=0, image=image)
        else:
            request = pb.FinishRequest(split=choice.split)
            encode(tokens.half(), request.tokens)
            encode(sizes[..., 0].half(), request.sizes)
        request.alpha, request.plan_fingerprint, request.top_k = choice.alpha, self.fingerprint, image.top_k
        sent = request.ByteSize()
        t_send = time.perf_counter()
        try:
            reply = self.stub.Finish(request, timeout=timeout_s)
        except grpc.RpcError as exc:
            raise error_from_rpc(exc, "janus server") from None
        rt_ms = (time.perf_counter() - t_send) * 1e3
        transfer_ms = max(0.05, rt_ms - reply.total_ms)
        self.estimates.observe_throughput(self.LINK, sent * 8 / (transfer_ms / 1e3))
        for key in ("server", f"server α{k}"):
            self.estimates.observe(key, reply.total_ms, predicted_server, None)
        return reply, choice, device_ms

    def close(self) -> None:
        self.channel.close()



class JanusFront(pb_grpc.CentralServicer):
    """The device's endpoint for its clients: `shoal.v1.Central` Predict and Info, so a client (and
    `shoal bench`) calls a Janus device as it calls a central node. `JanusDevice.predict` runs each
    call; the input is decoded (and checked) here only when the device runs blocks: sent as it is
    (split 0), the server decodes and checks it. The reply names the choice (`variant`:
    "α 0.40 split 3") and carries the device's and the server's timings.
    """

    def __init__(self, device: JanusDevice, identity: Identity, server: str) -> None:
        self.device, self.identity, self.server = device, identity, server

    def Info(self, request: pb.InfoRequest, context: grpc.ServicerContext) -> pb.InfoReply:  # noqa: N802
        return self.identity.info("janus-device", True, devices=(self.identity.device, self.server))

    def Predict(self, request: pb.PredictRequest, context: grpc.ServicerContext) -> pb.PredictReply:  # noqa: N802
        t0 = time.perf_counter()
        remaining = context.time_remaining()
        try:
            reply, choice, device_ms = self.device.predict(
                request, lambda: self.identity.decode_input(request, context), timeout_s=min(remaining or 10.0, 60.0))
        except RemoteError as exc:
            context.abort(exc.code, exc.details)
            raise
        server = list(reply.timings)   # the device's part first, then the server's
        del reply.timings[:]
        reply.timings.append(pb.DeviceTiming(device=self.identity.device, compute_ms=device_ms,
                                             round_trip_ms=device_ms, ok=True))
        reply.timings.extend(server)
        reply.variant = f"α {choice.alpha:.2f} split {choice.split}"
        reply.request_id = request.request_id
        reply.total_ms = (time.perf_counter() - t0) * 1e3
        return reply


def start_janus_device(plan: JanusPlan, runner: TokenRunner, identity: Identity, server: str, *,
                       host: str = "127.0.0.1", port: int = 0, security: Security = Security(),
                       sla_ms: float | None = None, prior_mbps: float = 10.0, connect_timeout: float = 60.0,
                       warmup: int = 5, fixed: tuple[float, int] | None = None) -> tuple[RunningServer, JanusFront]:
    """Serve the device's side in this process: check the server at `server` serves this plan, warm up,
    and answer clients (with `security`: TLS, the bearer token and the rate limit of a central node;
    the server is called with this device's certificate). `fixed` (α, split): every request at that
    configuration instead of the scheduler's choice (a baseline).

    Raises:
        ConfigError: the token is for another plan; `fixed` is not a configuration of the plan.
        RemoteError: the server does not answer within `connect_timeout`, or serves another plan.
    """
    listener = security.for_clients(identity.device, host, identity.plan_fingerprint, [f"/{CENTRAL_SERVICE}/Predict"])
    sla = sla_ms if sla_ms is not None else math.inf   # no SLA: α = 0 always, on the fastest split
    if fixed is not None and (plan.model.config(fixed[0]) is None or fixed[1] not in plan.model.candidates):
        raise ConfigError(f"--fixed {fixed[0]:g}:{fixed[1]} is not a configuration of this plan: α on its grid "
                          f"(0 to {plan.model.configs[-1].alpha:g} by 0.01), the split one of "
                          f"{list(plan.model.candidates)}")
    device = JanusDevice(runner, plan.model, server, sla, prior_mbps=prior_mbps,
                         fingerprint=identity.plan_fingerprint, fixed=fixed,
                         credentials=listener.channel_credentials(), server_name=plan.server.name)
    try:
        info = pb_grpc.JanusStub(device.channel).Info(pb.InfoRequest(), timeout=connect_timeout, wait_for_ready=True)
    except grpc.RpcError as exc:
        device.close()
        raise error_from_rpc(exc, "janus server") from None
    if info.plan_fingerprint != identity.plan_fingerprint:
        device.close()
        raise RemoteError(grpc.StatusCode.FAILED_PRECONDITION, f"the Janus server at {server} serves plan "
                          f"{info.plan_fingerprint}, this device plan {identity.plan_fingerprint}", plan.server.name)
    front = JanusFront(device, identity, plan.server.name)
    running = start_server(lambda s: pb_grpc.add_CentralServicer_to_server(front, s), CENTRAL_SERVICE,
                           host=host, port=port, max_message_bytes=image_message_bytes(identity.input_shape,
                                                                                       identity.max_batch),
                           credentials=listener.credentials, interceptors=listener.interceptors)
    with torch.inference_mode():   # both kinds of block (plain at α = 0, reducing above) run once before a client
        x = torch.zeros(1, *identity.input_shape)
        for _ in range(warmup):
            for alpha in (0.0, plan.model.configs[-1].alpha):
                tokens, sizes = runner.embed(x)
                runner.head(runner.blocks(tokens, sizes, 0, plan.model.depth, alpha)[0])
    running.set_serving(True)
    logger.info(f"janus device {identity.device}: SLA {sla:.2f} ms, server {plan.server.name} at {server}")
    return running, front
