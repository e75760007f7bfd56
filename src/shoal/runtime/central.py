"""The central node: fan the input out, run its own sub-model meanwhile, aggregate, answer.

`Predict` issues every worker's `Features` call asynchronously first (each
with the request's deadline), then computes the central device's own
features, then gathers the replies as they complete. A worker that is down,
dies mid-call or misses the deadline yields UNAVAILABLE / DEADLINE_EXCEEDED
naming the device, or, with `degrade`, an answer from the devices that
replied, marked degraded.
"""

from __future__ import annotations

import itertools
import logging
import math
import queue
import statistics
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import grpc
import torch

from shoal.errors import ConfigError
from shoal.models.aggregator import Aggregator
from shoal.plan.directory import Plan, load_plan
from shoal.runtime import shoal_pb2 as pb
from shoal.runtime import shoal_pb2_grpc as pb_grpc
from shoal.runtime.codec import CodecError, decode, encode, image_message_bytes
from shoal.runtime.defaults import DEFAULT_DEADLINE_MS
from shoal.runtime.device import DEFAULT_MAX_BATCH, SubModelRunner, device_process
from shoal.runtime.links import PendingCall, WorkerLink, describe_failure, parse_workers
from shoal.runtime.pki import check_signature
from shoal.runtime.security import Security
from shoal.runtime.server import RunningServer, announce, start_server, wait_for_shutdown
from shoal.runtime.status import CENTRAL_SERVICE, RemoteError, error_from_rpc
from shoal.runtime.variants import PRIMARY, ServedVariant, load_variants, served_devices
from shoal.runtime.worker import Identity
from shoal.utils.accel import compute_device, device_of

logger = logging.getLogger(__name__)

DEFAULT_TOP_K = 5
_REPLY_MARGIN_S = 0.02  # kept back from the client's deadline to send a named error in time
_ANSWER_MARGIN_S = 0.002  # kept back from the SLO to aggregate and send the answer


class MissTracker:
    """Whether a worker keeps missing the SLO: demoted after `misses` misses in a row, tried again
    after `backoff_s` (doubling, at most 60 s, while it keeps failing its trials); one stall does
    not demote it, so one outlier call does not change what the central node waits for."""

    def __init__(self, misses: int = 3, backoff_s: float = 2.0) -> None:
        self.misses, self.base = misses, backoff_s
        self.streak = 0
        self.backoff = backoff_s
        self.until = 0.0
        self._lock = threading.Lock()

    def demoted(self, now: float | None = None) -> bool:
        """Not waited for now (after its back-off it is on trial: waited for once)."""
        return (time.monotonic() if now is None else now) < self.until

    def record(self, hit: bool, on_trial: bool = True, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        with self._lock:
            if hit:
                self.streak, self.backoff = 0, self.base
                self.until = 0.0
            elif on_trial:
                self.streak += 1
                if self.streak >= self.misses or self.until > 0:   # a failed trial demotes at once, for longer
                    self.backoff = min(60.0, self.backoff * 2) if self.until > 0 else self.backoff
                    self.until = now + self.backoff


@dataclass
class VariantServing:
    """What the central node needs of one variant: its own sub-model, its aggregator, which workers
    it calls (indices into the central node's links, plan order), their feature widths, and what
    the planner predicted (per device compute and transfer ms, and the aggregation + request ms)."""

    name: str
    runner: SubModelRunner
    aggregator: Aggregator
    link_index: tuple[int, ...]
    widths: tuple[int, ...]
    top1: float | None = None
    expected: Callable[[Sequence[str]], float | None] = field(default=lambda present: None)
    predicted: dict[str, tuple[float, float]] = field(default_factory=dict)
    fixed_ms: float = 0.0


class LiveEstimates:
    """Per device, what its last calls say against the plan: the median ratio of measured to
    predicted compute, and the median measured transfer (round trip - compute - queue - decode), over
    the last `window` calls. A median: one 2-second stall does not move it (it takes half the window).

    Per variant, its measured receipt-to-reply over that prediction, read at its tail: the
    second-largest of the window (about its 90th percentile over 9 calls), so a variant whose
    median fits the SLO but one call in three does not is not chosen, while one outlier (a single
    stall) is ignored."""

    def __init__(self, window: int = 9) -> None:
        self.window = window
        self.ratio: dict[str, deque[float]] = {}
        self.transfer: dict[str, deque[float]] = {}
        self.total: dict[str, deque[float]] = {}   # per variant: measured receipt-to-reply / its prediction
        self.throughput: dict[str, deque[float]] = {}   # per link: bits per second of its transfers
        self.last: dict[str, float] = {}                # per device: when its last compute was observed
        self._lock = threading.Lock()

    def compute_ratio(self, device: str, default: float = 1.0) -> float:
        """Median measured/predicted compute of `device` over its last calls (`default` before any)."""
        with self._lock:
            return _median(self.ratio.get(device), default)

    def ratios(self, prefix: str, max_age_s: float = math.inf) -> dict[str, float]:
        """The median measured/predicted compute of every key `prefix` + suffix observed within the last
        `max_age_s` seconds, by suffix (older windows say what was, not what is)."""
        oldest = time.monotonic() - max_age_s
        with self._lock:
            return {key[len(prefix):]: _median(values, 1.0) for key, values in self.ratio.items()
                    if key.startswith(prefix) and values and self.last.get(key, -math.inf) >= oldest}

    def observe_throughput(self, link: str, bits_per_s: float) -> None:
        """One transfer's throughput (bytes sent over the time they took), bits per second."""
        if bits_per_s > 0 and math.isfinite(bits_per_s):
            with self._lock:
                self.throughput.setdefault(link, deque(maxlen=self.window)).append(bits_per_s)

    def bandwidth_bps(self, link: str, prior_bps: float) -> float:
        """The link's bandwidth: the harmonic mean of its recent throughputs (FESTIVE, as Janus does:
        one fast outlier hardly moves it, slow ones pull it down), `prior_bps` before any."""
        with self._lock:
            samples = list(self.throughput.get(link, ()))
        return len(samples) / sum(1.0 / s for s in samples) if samples else prior_bps

    def observe_total(self, variant: str, total_ms: float, predicted_ms: float) -> None:
        """What the per-device terms miss (serialisation, fan-out, aggregation on a shared core): the
        variant's own end-to-end ratio, applied on top of them."""
        if predicted_ms > 0:
            with self._lock:
                self.total.setdefault(variant, deque(maxlen=self.window)).append(total_ms / predicted_ms)

    def observe(self, device: str, compute_ms: float, predicted_ms: float, transfer_ms: float | None) -> None:
        with self._lock:
            if predicted_ms > 0:
                self.ratio.setdefault(device, deque(maxlen=self.window)).append(compute_ms / predicted_ms)
                self.last[device] = time.monotonic()
            if transfer_ms is not None:
                self.transfer.setdefault(device, deque(maxlen=self.window)).append(transfer_ms)

    def predict_ms(self, variant: VariantServing, scaled: bool = True) -> float:
        """T of `variant` now: the plan's prediction with each device's live compute ratio and transfer
        (`scaled`: and the variant's own end-to-end ratio)."""
        with self._lock:
            ends = []
            for device, (compute, transfer) in variant.predicted.items():
                ends.append(compute * _median(self.ratio.get(device), 1.0)
                            + _median(self.transfer.get(device), transfer))
            scale = _tail(self.total[variant.name]) if scaled and self.total.get(variant.name) else 1.0
        return (max(ends, default=0.0) + variant.fixed_ms) * max(1.0, scale)


def _median(values: deque[float] | None, default: float) -> float:
    return statistics.median(values) if values else default


def _tail(values: deque[float]) -> float:
    """The second-largest value (the largest of one or two): a tail that ignores one outlier."""
    ordered = sorted(values)
    return ordered[-2] if len(ordered) >= 3 else ordered[-1]


class CentralServicer(pb_grpc.CentralServicer):
    """The `shoal.v1.Central` service.

    Args:
        identity: The central device's identity (plan fingerprint, input shape, batch limit).
        links: One link per worker any variant uses, in plan order (after the central device).
        variants: What it can answer with, primary first (`VariantServing`: the central device's own
            sub-model, the aggregator, which workers, what the plan predicted and measured). A plain
            plan is its one variant; with an SLO and a `--pareto` plan each request is served by the
            most accurate variant predicted, from live estimates, to meet it.
        deadline_ms: Budget of every fan-out (shortened to the client's own deadline).
        degrade: Answer from the devices that replied when some do not.
        slo_ms: Answer by this time after receipt with the features that arrived (a degraded answer
            rather than a late one); a worker that keeps missing it is demoted (not waited for) and
            tried again later. None: wait for every device until the deadline.
        min_accuracy: Refuse (UNAVAILABLE) a degraded answer whose expected accuracy (the variant's
            `expected`) is below this, or unknown.
    """

    def __init__(self, identity: Identity, links: list[WorkerLink], variants: Sequence[VariantServing], *,
                 deadline_ms: float = DEFAULT_DEADLINE_MS, degrade: bool = False, slo_ms: float | None = None,
                 min_accuracy: float | None = None) -> None:
        if deadline_ms <= 0:
            raise ConfigError(f"deadline_ms must be positive, got {deadline_ms!r}")
        if slo_ms is not None and not slo_ms > 0:
            raise ConfigError(f"--slo-ms must be positive, got {slo_ms!r}")
        if min_accuracy is not None and not 0 <= min_accuracy <= 1:
            raise ConfigError(f"--min-accuracy is a fraction between 0 and 1, got {min_accuracy!r}")
        if not variants or variants[0].name != PRIMARY:
            raise ConfigError("the central node needs the plan's primary variant first")
        self.slo_s = slo_ms / 1e3 if slo_ms is not None else None
        self.min_accuracy = min_accuracy
        self.trackers = {link.name: MissTracker() for link in links}
        self.identity = identity
        self.links = links
        self.variants = list(variants)
        self.deadline_s = deadline_ms / 1e3
        self.degrade = degrade
        self.ready = False
        self._ids = itertools.count(1)
        self.devices = (identity.device, *(link.name for link in links))
        self.estimates = LiveEstimates()
        self.last_seen: dict[str, float] = {}   # worker -> time.monotonic() of its last live estimate
        self._last_request: pb.PredictRequest | None = None   # what probes send (the input's real size)
        self._probing = threading.Event()

    def Info(self, request: pb.InfoRequest, context: grpc.ServicerContext) -> pb.InfoReply:  # noqa: N802
        return self.identity.info("central", self.ready, 0, self.devices)

    def Predict(self, request: pb.PredictRequest, context: grpc.ServicerContext) -> pb.PredictReply:  # noqa: N802
        t_start = time.perf_counter()
        if not self.ready:
            context.abort(grpc.StatusCode.UNAVAILABLE, "the central node is starting; retry when it reports SERVING")
        x = self.identity.decode_input(request, context)
        budget = self.deadline_s
        remaining = context.time_remaining()
        if remaining is not None:
            budget = min(budget, max(0.001, remaining - min(_REPLY_MARGIN_S, remaining / 10)))
        deadline = t_start + budget
        request_id = request.request_id or next(self._ids)

        self._last_request = request
        variant, on_time = self.choose()
        slo_s = self.slo_s if on_time else None   # cut at the SLO only when it can be met
        links = [self.links[i] for i in variant.link_index]
        done: queue.SimpleQueue[tuple[int, float]] = queue.SimpleQueue()
        errors: dict[str, RemoteError] = {}
        calls: dict[int, PendingCall] = {}
        for i, link in enumerate(links):
            if link.verified.is_set():   # never send the users' images to a worker not (re)verified
                calls[i] = link.start(i, request_id, request, self.identity.plan_fingerprint, deadline, done,
                                      "" if variant.name == PRIMARY else variant.name)
            else:
                errors[link.name] = link.rejected or RemoteError(
                    grpc.StatusCode.UNAVAILABLE, "reconnecting; not called until its identity is checked again",
                    link.name)
        may_degrade = self.degrade or slo_s is not None
        if errors and not may_degrade:
            for call in calls.values():
                call.future.cancel()
            context.abort(grpc.StatusCode.UNAVAILABLE,
                          "; ".join(describe_failure(self._link(n), e, budget) for n, e in errors.items()))
        local = variant.runner(x)  # the central device computes while the workers do
        features: list[torch.Tensor | None] = [local.features] + [None] * len(links)
        timings = [pb.DeviceTiming(device=self.identity.device, compute_ms=local.compute_ms,
                                   queue_ms=local.queue_ms, round_trip_ms=local.compute_ms + local.queue_ms, ok=True)]
        timings += [pb.DeviceTiming(device=link.name, ok=False) for link in links]
        timed_out = False
        # with an SLO: answer by then with what arrived; a demoted worker is not waited for at all
        stop_at = deadline if slo_s is None else min(deadline, t_start + slo_s - _ANSWER_MARGIN_S)
        waited = {i for i, c in calls.items() if slo_s is None or not self.trackers[c.link.name].demoted()}
        resolved: set[int] = set()
        while waited - resolved or not done.empty():
            try:  # gRPC ends every call at its deadline; the extra 0.25 s is only a safety net
                if waited - resolved:
                    slack = 0.25 if slo_s is None else 0.0
                    i, t_done = done.get(timeout=max(0.0, stop_at - time.perf_counter()) + slack)
                else:
                    i, t_done = done.get_nowait()   # demoted workers that happen to be back already
            except queue.Empty:
                timed_out = bool(waited - resolved)
                break
            resolved.add(i)
            call = calls[i]
            try:
                reply = call.future.result(timeout=0)
                features[i + 1] = self._check_features(reply, x.shape[0], call.link, variant.widths[i + 1])
            except grpc.RpcError as exc:
                errors[call.link.name] = error_from_rpc(exc, call.link.name)
            except grpc.FutureCancelledError:
                errors[call.link.name] = RemoteError(grpc.StatusCode.CANCELLED, "call cancelled", call.link.name)
            except RemoteError as exc:
                errors[call.link.name] = exc
            else:
                rt = (t_done - call.t0) * 1e3
                timings[i + 1] = pb.DeviceTiming(
                    device=call.link.name, compute_ms=reply.compute_ms, queue_ms=reply.queue_ms, round_trip_ms=rt,
                    transfer_ms=max(0.0, rt - reply.compute_ms - reply.queue_ms - reply.decode_ms), ok=True)
            if errors and not may_degrade:
                break
        for i, call in calls.items():
            if features[i + 1] is None and call.link.name not in errors:
                call.future.cancel()  # failing fast on another device, past the deadline or the SLO, or demoted
                if i not in waited:
                    errors[call.link.name] = RemoteError(grpc.StatusCode.DEADLINE_EXCEEDED,
                                                         "demoted (kept missing the SLO): not waited for",
                                                         call.link.name)
                elif slo_s is not None:
                    errors[call.link.name] = RemoteError(grpc.StatusCode.DEADLINE_EXCEEDED,
                                                         f"not back within the {slo_s * 1e3:.0f} ms SLO",
                                                         call.link.name)
                elif timed_out:
                    errors[call.link.name] = RemoteError(grpc.StatusCode.DEADLINE_EXCEEDED,
                                                         f"no reply within {budget * 1e3:.0f} ms", call.link.name)
        if slo_s is not None:
            for i, call in calls.items():
                self.trackers[call.link.name].record(features[i + 1] is not None, on_trial=i in waited)
        for i, link in enumerate(links):
            if link.name in errors:
                timings[i + 1].error = describe_failure(link, errors[link.name], budget)
        if errors and not may_degrade:
            first = errors[next(iter(errors))]
            context.abort(first.code if first.code in _PASS_THROUGH else grpc.StatusCode.UNAVAILABLE,
                          "; ".join(describe_failure(self._link(n), e, budget) for n, e in errors.items()))
        present = [self.identity.device] + [link.name for link, f in zip(links, features[1:]) if f is not None]
        worth = variant.expected(present)
        if errors and self.min_accuracy is not None and (worth is None or worth < self.min_accuracy):
            context.abort(grpc.StatusCode.UNAVAILABLE,
                          f"without {', '.join(errors)} the plan answers at "
                          + (f"{worth:.1%}" if worth is not None else "an unmeasured accuracy")
                          + f" top-1, below --min-accuracy {self.min_accuracy:.1%}: "
                          + "; ".join(describe_failure(self._link(n), e, budget) for n, e in errors.items()))
        reply = self._answer(request, request_id, features, timings, errors, t_start, variant)
        if self.slo_s is not None:   # the estimates only steer the choice under an SLO
            self._observe(variant, timings, reply.total_ms, not errors)
        if worth is not None:
            reply.expected_accuracy = worth
        reply.late = self.slo_s is not None and reply.total_ms > self.slo_s * 1e3
        if not all(math.isfinite(v) for v in reply.top_probs):
            # never OK with NaN/Inf: an input inside the codec's bounds that still overflows a sub-model
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the model's output is not finite for this input "
                          "(values out of the range the plan was made for?)")
        return reply

    def choose(self) -> tuple[VariantServing, bool]:
        """(the variant to answer with, whether it is predicted to meet the SLO): the primary without an
        SLO; with one, among the variants whose workers are all verified and not demoted (all of them if
        none is), the most accurate predicted (live estimates) to meet it, else the fastest predicted,
        which is then waited for in full and answers late rather than from half its devices."""
        if self.slo_s is None:
            return self.variants[0], True

        def usable(v: VariantServing) -> bool:   # every worker verified and not demoted right now
            return all(self.links[i].verified.is_set() and not self.trackers[self.links[i].name].demoted()
                       for i in v.link_index)

        candidates = [v for v in self.variants if usable(v)] or self.variants
        predicted = [(self.estimates.predict_ms(v), v) for v in candidates]
        meeting = [(v.top1 if v.top1 is not None else -1.0, -ms, v) for ms, v in predicted
                   if ms <= self.slo_s * 1e3]
        if meeting:
            return max(meeting, key=lambda m: (m[0], m[1]))[2], True
        fastest = min(predicted, key=lambda p: p[0])[1]
        # the central device alone may still answer by the SLO (degraded): then cut there, else wait
        own = self.estimates.predict_ms(replace(fastest, predicted={
            k: v for k, v in fastest.predicted.items() if k == self.identity.device}))
        return fastest, own <= self.slo_s * 1e3

    def _observe(self, variant: VariantServing, timings: Sequence[pb.DeviceTiming], total_ms: float,
                 complete: bool) -> None:
        predicted = self.estimates.predict_ms(variant, scaled=False)
        if complete and predicted > 0:
            self.estimates.observe_total(variant.name, total_ms, predicted)
        now = time.monotonic()
        for t in timings:
            if t.ok:
                compute = variant.predicted.get(t.device, (0.0, 0.0))[0]
                self.estimates.observe(t.device, t.compute_ms + t.queue_ms, compute,
                                       t.transfer_ms if t.device != self.identity.device else None)
                self.last_seen[t.device] = now

    def probe(self, stale_s: float = 1.0, timeout_s: float = 1.0) -> dict[str, bool]:
        """Refresh the estimates of the workers no request has used for `stale_s` (a variant not chosen
        gets no live traffic, so a link or a device that recovered would never be seen to): one
        `Features` call each with the last client input (its real size), of a variant that uses it.
        A demoted worker that answers within the SLO is taken back at once, without making a user's
        request its trial. Returns {worker: answered}."""
        request = self._last_request
        if request is None or self.slo_s is None:
            return {}
        answered = {}
        for j, link in enumerate(self.links):
            if not link.verified.is_set() or time.monotonic() - self.last_seen.get(link.name, 0.0) < stale_s:
                continue
            variant = next((v for v in self.variants if j in v.link_index), None)
            if variant is None:
                continue
            done: queue.SimpleQueue[tuple[int, float]] = queue.SimpleQueue()
            call = link.start(0, next(self._ids), request, self.identity.plan_fingerprint,
                              time.perf_counter() + timeout_s, done, "" if variant.name == PRIMARY else variant.name)
            try:
                reply = call.future.result(timeout=timeout_s + 0.25)
                _, t_done = done.get(timeout=1.0)
            except (grpc.RpcError, grpc.FutureTimeoutError, grpc.FutureCancelledError, queue.Empty):
                call.future.cancel()
                answered[link.name] = False
                continue
            rt = (t_done - call.t0) * 1e3
            transfer = max(0.0, rt - reply.compute_ms - reply.queue_ms - reply.decode_ms)
            predicted = variant.predicted.get(link.name, (0.0, 0.0))[0]
            self.estimates.observe(link.name, reply.compute_ms + reply.queue_ms, predicted, transfer)
            self.last_seen[link.name] = time.monotonic()
            tracker = self.trackers[link.name]
            if tracker.demoted() and rt <= self.slo_s * 1e3:
                tracker.record(True)
            answered[link.name] = True
        return answered

    def start_probing(self, every_s: float = 0.1, stale_s: float = 1.0) -> threading.Thread:
        """Probe stale workers (`probe`) every `every_s` until `close` (only with an SLO: without one
        the estimates steer nothing)."""
        def loop() -> None:
            while not self._probing.wait(every_s):
                try:
                    self.probe(stale_s)
                except Exception:   # never let the prober die silently mid-run
                    logger.exception("probing the workers failed")

        thread = threading.Thread(target=loop, name="shoal-probe", daemon=True)
        thread.start()
        return thread

    def _answer(self, request: pb.PredictRequest, request_id: int, features: list[torch.Tensor | None],
                timings: list[pb.DeviceTiming], errors: Mapping[str, RemoteError], t_start: float,
                variant: VariantServing) -> pb.PredictReply:
        t_agg = time.perf_counter()
        batch = next(f for f in features if f is not None).shape[0]
        present = torch.tensor([f is not None for f in features], dtype=torch.float32)
        full = [f if f is not None else torch.zeros(batch, w) for f, w in zip(features, variant.widths)]
        aggregator = variant.aggregator
        with torch.inference_mode():
            dev = device_of(aggregator)   # on the central node's compute device; features come to it
            logits = aggregator([f.to(dev) for f in full], present=present.to(dev) if errors else None).cpu()
        reply = top_k_reply(logits, request.top_k, request_id)
        reply.timings.extend(timings)
        reply.degraded, reply.variant = bool(errors), variant.name
        reply.missing.extend(errors)
        now = time.perf_counter()
        reply.aggregation_ms = (now - t_agg) * 1e3
        reply.total_ms = (now - t_start) * 1e3
        return reply

    def _check_features(self, reply: pb.FeaturesReply, batch: int, link: WorkerLink, width: int) -> torch.Tensor:
        try:
            f = decode(reply.features, what=f"features of {link.name!r}", dtypes=("float32",), ndim=2,
                       max_elements=batch * width)
        except CodecError as exc:
            raise RemoteError(grpc.StatusCode.INTERNAL, str(exc), link.name) from None
        if not bool(torch.isfinite(f).all()):
            raise RemoteError(grpc.StatusCode.INVALID_ARGUMENT, f"device {link.name!r} sent non-finite features "
                              "(the input overflows its sub-model)", link.name)
        if tuple(f.shape) != (batch, width):
            raise RemoteError(grpc.StatusCode.INTERNAL, f"device {link.name!r} sent features of shape "
                              f"{list(f.shape)}, expected {[batch, width]}", link.name)
        return f

    def _link(self, name: str) -> WorkerLink:
        return next(link for link in self.links if link.name == name)

    def serving(self) -> bool:
        """Whether Predict can answer now: every worker verified on its current connection (with
        --degrade or --slo-ms the central device alone suffices: answers are then marked degraded,
        and --min-accuracy may still refuse them)."""
        return self.ready and (self.degrade or self.slo_s is not None
                               or all(self.links[i].verified.is_set() for i in self.variants[0].link_index))

    def close(self) -> None:
        self._probing.set()
        for link in self.links:
            link.close()


def top_k_reply(logits: torch.Tensor, top_k: int, request_id: int) -> pb.PredictReply:
    """The reply to a client: (B, classes) logits, their top-k (k = `top_k`, 0: 5, at most the classes)."""
    logits = logits.float().cpu()
    with torch.inference_mode():
        k = min(top_k or DEFAULT_TOP_K, logits.shape[-1])
        probs, indices = torch.softmax(logits, dim=-1).topk(k, dim=-1)
    reply = pb.PredictReply(request_id=request_id, top_indices=indices.reshape(-1).tolist(),
                            top_probs=probs.reshape(-1).tolist(), top_k=k)
    encode(logits, reply.logits)
    return reply


_PASS_THROUGH = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
                 grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.RESOURCE_EXHAUSTED)


def start_central(
    plan: Plan,
    workers: Mapping[str, str],
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    deadline_ms: float = DEFAULT_DEADLINE_MS,
    degrade: bool = False,
    connect_timeout: float = 60.0,
    max_batch: int = DEFAULT_MAX_BATCH,
    warmup: int = 10,
    accelerator: str | None = None,
    security: Security = Security(),
    slo_ms: float | None = None,
    min_accuracy: float | None = None,
    probe_every_s: float | None = 0.1,
) -> tuple[RunningServer, CentralServicer]:
    """Load the central device's part of `plan`, check every worker, and serve (in this process).

    With `slo_ms`, workers that no request has used for a second are probed every `probe_every_s`
    (`CentralServicer.probe`; None: never).

    Raises:
        ConfigError: `workers` does not name exactly the plan's worker devices.
        RemoteError: a worker is not serving within `connect_timeout` (UNAVAILABLE), or serves
            another plan, device or width (FAILED_PRECONDITION).
    """
    central = plan.devices.central
    variants = load_variants(plan)
    expected = [d.name for d in served_devices(variants).devices if not d.central]
    missing, unknown = sorted(set(expected) - set(workers)), sorted(set(workers) - set(expected))
    if missing or unknown:
        raise ConfigError(f"--workers must name every worker device of the plan {expected} once; "
                          f"missing {missing}, unknown {unknown}")
    identity = Identity.of(plan, central.name, max_batch)
    listener = security.for_clients(central.name, host, identity.plan_fingerprint, [f"/{CENTRAL_SERVICE}/Predict"])
    check_signature(security.tls_dir, plan.root)
    message_bytes = image_message_bytes(identity.input_shape, max_batch)
    widths: dict[str, int] = {}
    for v in variants:   # a worker reports the width of the first variant it serves (primary first)
        for name in v.devices:
            widths.setdefault(name, v.plan.spec(name).width)
    links = [WorkerLink(name, workers[name], widths[name], message_bytes, listener.channel_credentials())
             for name in expected]
    compute = compute_device(accelerator or central.accelerator)
    servicer = CentralServicer(identity, links, [_serving(v, central.name, expected, compute) for v in variants],
                               deadline_ms=deadline_ms, degrade=degrade, slo_ms=slo_ms, min_accuracy=min_accuracy)
    if degrade and not (plan.document.aggregator and plan.document.aggregator.device_dropout):
        logger.warning("--degrade: this plan's aggregator was not trained with device dropout; "
            "degraded answers will be less accurate")
    running = start_server(lambda s: pb_grpc.add_CentralServicer_to_server(servicer, s), CENTRAL_SERVICE,
                           host=host, port=port, max_message_bytes=message_bytes, threads=16, max_concurrent=128,
                           credentials=listener.credentials, interceptors=listener.interceptors)
    try:
        give_up = time.monotonic() + connect_timeout
        for link in links:
            try:
                link.verify(identity, give_up)
            except RemoteError as exc:
                if not degrade or exc.code == grpc.StatusCode.FAILED_PRECONDITION:
                    raise
                logger.warning(f"{exc.details}; answering degraded until it serves")
        with torch.inference_mode():
            for serving in servicer.variants:
                serving.runner.warm_up(warmup)
                serving.aggregator([torch.zeros(1, w, device=compute) for w in serving.widths])
    except BaseException:
        running.stop(0)
        servicer.close()
        raise
    servicer.ready = True
    # health tells the truth: NOT_SERVING while a worker is down or unverified (unless --degrade)
    for link in links:
        link.watch(identity, lambda: running.set_serving(servicer.serving()))
    running.set_serving(servicer.serving())
    if slo_ms is not None and links and probe_every_s is not None:
        servicer.start_probing(probe_every_s)
    return running, servicer


def _serving(variant: ServedVariant, central: str, workers: Sequence[str], compute: torch.device) -> VariantServing:
    """A variant as the central node serves it: its own sub-model and aggregator on `compute`."""
    plan = variant.plan
    runner = SubModelRunner(plan.build_submodel(central), plan.config, central, compute)
    aggregator = plan.build_aggregator().to(compute)
    names = [n for n in workers if n in variant.devices]
    widths = (runner.feature_width, *(plan.spec(n).width for n in names))
    doc = plan.document
    predicted = doc.predicted
    per_device = ({n: (d.compute_ms, d.transfer_ms) for n, d in predicted.devices.items()} if predicted else {})
    fixed = predicted.aggregate_ms + predicted.request_ms if predicted else 0.0
    accuracy = doc.accuracy
    return VariantServing(variant.name, runner, aggregator.eval(), tuple(workers.index(n) for n in names), widths,
                          variant.top1, accuracy.expected if accuracy is not None else (lambda present: None),
                          per_device, fixed)


def serve_central(
    plan_dir: str | Path,
    workers: str | Mapping[str, str],
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    threads: int | None = None,
    emulate: bool = True,
    deadline_ms: float = DEFAULT_DEADLINE_MS,
    degrade: bool = False,
    connect_timeout: float = 60.0,
    grace: float = 5.0,
    watch_parent: bool = False,
    accelerator: str | None = None,
    security: Security = Security(),
    slo_ms: float | None = None,
    min_accuracy: float | None = None,
) -> None:
    """Process entry point of `shoal serve central`: limit, load, check workers, serve until a signal."""
    plan = load_plan(plan_dir)
    addresses: dict[str, str] | None = None  # "-": a supervisor (LocalCluster) sends them on stdin later
    if workers != "-":
        addresses = parse_workers(workers) if isinstance(workers, str) else dict(workers)
    with device_process(plan.devices.central, emulate=emulate, threads=threads):
        if addresses is None:
            addresses = parse_workers(sys.stdin.readline())
        running, servicer = start_central(plan, addresses, host=host, port=port, deadline_ms=deadline_ms,
                                          degrade=degrade, connect_timeout=connect_timeout, accelerator=accelerator,
                                          security=security, slo_ms=slo_ms, min_accuracy=min_accuracy)
        announce(running)
        logger.info(f"central {plan.devices.central.name} of plan {servicer.identity.plan_fingerprint} "
                f"serving on {running.target}; workers {addresses}")
        wait_for_shutdown(running, grace=grace, watch_parent=watch_parent)
        servicer.close()
