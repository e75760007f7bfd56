"""`shoal bench`: end-to-end latency, throughput and accuracy through the runtime, beside the teacher.

In one run on one machine: the plan served by its devices (a `LocalCluster`
unless a target is given), then the teacher alone on the central device's
share of the machine (a Janus plan: on its device's). Reported: end-to-end median and p95 and throughput, the
per-device compute / queue / transfer medians, aggregation, the runtime's
own overhead (end-to-end minus the slowest device's compute minus
aggregation, per request), accuracy on the test split through the runtime
(with n and its 95% Wilson interval), and the speedup over the teacher.
"""

from __future__ import annotations

import itertools
import logging
import statistics
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from shoal.data.text import TOKENS_FORMAT
from shoal.devices.spec import DeviceSpec
from shoal.errors import ConfigError, RuntimeServiceError, ShoalError
from shoal.models.config import TeacherConfig, TextConfig
from shoal.models.surgery import example_input
from shoal.plan.directory import Plan, is_janus_plan, load_plan
from shoal.plan.document import RANDOM_WEIGHTS_NOTE, InputSpec
from shoal.profiling.timing import LatencyStats
from shoal.runtime import shoal_pb2 as pb
from shoal.runtime.client import ShoalClient
from shoal.runtime.cluster import LocalCluster
from shoal.runtime.codec import encode_input
from shoal.runtime.device import plan_fingerprint
from shoal.runtime.evaldata import accuracy, resolve_test_data
from shoal.runtime.security import Security
from shoal.runtime.status import RemoteError
from shoal.runtime.timing import time_teacher

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DeviceBreakdown:
    """Medians over the measured requests, in ms.

    Attributes:
        device: Device name.
        compute_ms: Sub-model forward.
        queue_ms: Waiting for the device.
        transfer_ms: Network + serialisation (round trip minus compute, queue and decode).
        round_trip_ms: Seen from the central node.
    """

    device: str
    compute_ms: float
    queue_ms: float
    transfer_ms: float
    round_trip_ms: float


@dataclass(frozen=True)
class Summary:
    """What the timed requests say (medians over the answered ones, ms).

    Attributes:
        latency: End-to-end latency seen by the client.
        errors: Failed requests by status code name.
        devices: Per-device breakdown, plan order.
        aggregation_ms: Aggregation on the central node.
        critical_ms: Slowest device compute + aggregation, per request.
        overhead_ms: End-to-end minus the critical path, per request (never negative).
        server_ms: Central node time from receipt to reply (end-to-end minus it: the client's hop).
        answers: Answered requests by variant (a --pareto plan under --slo-ms), and how many of
            them were degraded ("degraded") and late ("late").
    """

    latency: LatencyStats
    errors: dict[str, int]
    devices: tuple[DeviceBreakdown, ...]
    aggregation_ms: float
    critical_ms: float
    overhead_ms: float
    server_ms: float
    answers: dict[str, int]


@dataclass(frozen=True)
class BenchResult(Summary):
    """Everything `shoal bench` reports (see the module docstring): the `Summary` of the timed
    requests and what was run, beside what it is compared with."""

    plan: str
    fingerprint: str
    target: str
    requests: int
    concurrency: int
    throughput_rps: float
    overhead_ratio: float
    accuracy: float | None
    accuracy_n: int
    data: str
    teacher: dict[str, Any] | None
    speedup: float | None
    predicted_ms: float | None = None
    predicted_speedup: float | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)
    accuracy_ci95: tuple[float, float] | None = None
    random_weights: bool = False   # the plan's teacher had random weights: its accuracy means nothing
    input_format: str = "float32"  # what the requests carried
    input_bytes: float = 0.0       # image bytes per request (mean), sent to every worker again
    phases: dict[str, float] = field(default_factory=dict)   # seconds per phase of the run

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def prepare_requests(images: torch.Tensor, top_k: int = 1, input_format: str = "float32",
                     normalisation: tuple[Sequence[float], Sequence[float]] | None = None) -> list[pb.PredictRequest]:
    """One encoded batch-1 request per image, as `input_format` (encoded once, sent many times)."""
    out = []
    for i in range(images.shape[0]):
        request = pb.PredictRequest(top_k=top_k)
        encode_input(images[i:i + 1].contiguous(), input_format, request, normalisation)
        out.append(request)
    return out


def payload_bytes(request: pb.PredictRequest) -> int:
    """The image bytes a request carries (what every worker is sent again)."""
    return len(request.input.data) + sum(len(b) for b in request.images.images)


def run_load(client: ShoalClient, requests: Sequence[pb.PredictRequest], total: int, concurrency: int
             ) -> tuple[list[tuple[float, pb.PredictReply | RemoteError]], float]:
    """Send `total` requests (cycling through `requests`) from `concurrency` threads.

    Returns:
        ([(client latency ms, reply or error)] in issue order, wall seconds).
    """
    if total < 0 or concurrency < 1:
        raise ConfigError(f"need requests >= 0 and concurrency >= 1, got {total} and {concurrency}")
    results: list[tuple[float, pb.PredictReply | RemoteError] | None] = [None] * total
    counter = itertools.count()

    def loop() -> None:
        while (i := next(counter)) < total:
            t0 = time.perf_counter()
            try:
                out: pb.PredictReply | RemoteError = client.call(requests[i % len(requests)])
            except RemoteError as exc:
                out = exc
            results[i] = ((time.perf_counter() - t0) * 1e3, out)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="shoal-bench") as pool:
        for future in [pool.submit(loop) for _ in range(concurrency)]:
            future.result()
    return [r for r in results if r is not None], time.perf_counter() - t0


def run_paced(client: ShoalClient, requests: Sequence[pb.PredictRequest], labels: torch.Tensor, start: int,
              seconds: float, interval_ms: float, slo_ms: float) -> dict[str, Any]:
    """`seconds` of requests, one every `interval_ms` (a camera's frame rate: a request that takes
    longer delays the next, so a slow system answers fewer), from `requests[start]` on (`labels`:
    their classes). The scenario benchmarks play one such phase after another.

    Returns:
        requests sent, answered, the share within `slo_ms` at the client and at the server (receipt to
        reply), degraded answers, p50/p99 ms, errors by status, top-1 with n and its 95% Wilson
        interval, the variants that answered, and every request's latency (ms, in order).
    """
    from shoal.utils.stats import quantile, wilson_interval

    latencies: list[float] = []
    within = server_within = correct = answered = degraded = 0
    errors: dict[str, int] = {}
    variants: dict[str, int] = {}
    now = time.monotonic()
    give_up, slot = now + seconds, now
    for i in itertools.count():
        now = time.monotonic()
        if now >= give_up:
            break
        if slot > now:
            time.sleep(slot - now)
        slot = max(slot + interval_ms / 1e3, time.monotonic())
        k = (start + i) % len(requests)
        t0 = time.perf_counter()
        try:
            reply = client.call(requests[k], timeout_s=5.0)
        except RemoteError as exc:
            errors[exc.code.name] = errors.get(exc.code.name, 0) + 1
            latencies.append((time.perf_counter() - t0) * 1e3)
            continue
        ms = (time.perf_counter() - t0) * 1e3
        latencies.append(ms)
        answered += 1
        within += ms <= slo_ms
        server_within += reply.total_ms <= slo_ms
        degraded += reply.degraded
        correct += int(reply.top_indices[0] == int(labels[k]))
        variants[reply.variant or "primary"] = variants.get(reply.variant or "primary", 0) + 1
    sent = len(latencies)
    ordered = sorted(latencies)
    low, high = wilson_interval(correct, answered) if answered else (0.0, 0.0)
    return {"requests": sent, "answered": answered, "within_slo": within / sent,
            "within_slo_server": server_within / sent, "degraded": degraded,
            "p50_ms": statistics.median(ordered), "p99_ms": quantile(ordered, 0.99), "errors": errors,
            "top1": correct / answered if answered else None, "top1_ci95": [low, high], "n": answered,
            "variants": variants, "latencies_ms": [round(v, 3) for v in latencies]}


def summarise(results: Sequence[tuple[float, pb.PredictReply | RemoteError]], sequential: bool = False) -> Summary:
    """Summarise `run_load` results (`sequential`: the devices' compute adds up, as in a Janus split,
    instead of running in parallel).

    Raises:
        RuntimeServiceError: no request was answered.
    """
    answered = [(ms, r) for ms, r in results if isinstance(r, pb.PredictReply)]
    errors: dict[str, int] = {}
    for _, r in results:
        if isinstance(r, RemoteError):
            errors[r.code.name] = errors.get(r.code.name, 0) + 1
    if not answered:
        first = next(r for _, r in results if isinstance(r, RemoteError))
        raise RuntimeServiceError(f"no request was answered: {first}")
    per_device: dict[str, list[pb.DeviceTiming]] = {}
    critical, overhead = [], []
    for ms, reply in answered:
        for t in reply.timings:
            if t.ok:
                per_device.setdefault(t.device, []).append(t)
        computes = [t.compute_ms for t in reply.timings if t.ok]
        critical.append((sum(computes) if sequential else max(computes)) + reply.aggregation_ms)
        overhead.append(ms - critical[-1])
    med = statistics.median
    devices = tuple(DeviceBreakdown(name, med(t.compute_ms for t in ts), med(t.queue_ms for t in ts),
                                    med(t.transfer_ms for t in ts), med(t.round_trip_ms for t in ts))
                    for name, ts in per_device.items())
    answers: dict[str, int] = {}
    for _, r in answered:
        for key in (r.variant or "primary", *(["degraded"] if r.degraded else []), *(["late"] if r.late else [])):
            answers[key] = answers.get(key, 0) + 1
    return Summary(LatencyStats.from_times([ms for ms, _ in answered]), errors, devices,
                   med(r.aggregation_ms for _, r in answered),
                   med(critical), med(overhead), med(r.total_ms for _, r in answered), answers)


def run_bench(
    plan_dir: str | Path,
    *,
    target: str | None = None,
    requests: int = 200,
    concurrency: int = 1,
    warmup: int = 20,
    data: str | None = None,
    teacher: bool = True,
    teacher_repeats: int = 100,
    emulate: bool = True,
    input_format: str = "float32",
    security: Security = Security(),
    sla_ms: float | None = None,
) -> BenchResult:
    """Benchmark a plan through the runtime and the teacher alone, side by side (see module docstring).
    A Janus plan is served as its device and its server (the device under `sla_ms`), the teacher
    timed alone on the device.

    Raises:
        ConfigError: bad counts, or `target` serves another plan.
        RuntimeServiceError: the cluster cannot start or no request is answered.
    """
    if requests < 1 or warmup < 0:
        raise ConfigError(f"need --requests >= 1 and --warmup >= 0, got {requests} and {warmup}")
    served = _served(plan_dir)
    plan = served.plan
    fingerprint = plan_fingerprint(plan_dir)
    notes: list[str] = []
    random_weights = served.random_weights
    test, data_note = resolve_test_data(served.config, served.teacher_source, data, random_weights=random_weights)
    images = test.images if test is not None else example_input(served.config, 64)
    if test is None:
        notes.append(f"accuracy skipped: {data_note}")
    if random_weights:
        notes.append(RANDOM_WEIGHTS_NOTE)
    spec = served.input
    normalisation = (spec.mean, spec.std) if spec is not None else None
    if isinstance(served.config, TextConfig):   # a text plan's clients send token ids and mask
        if input_format not in ("float32", TOKENS_FORMAT):
            raise ConfigError(f"--input {input_format}: plan {plan_dir} is a text plan; its input is token ids")
        input_format = TOKENS_FORMAT
    elif input_format != "float32" and normalisation is None:
        raise ConfigError(f"--input {input_format}: plan {plan_dir} records no input normalisation (made before "
                          "compact inputs); plan it again, or send float32")
    image_bytes = 4 * int(torch.tensor(served.config.input_shape).prod())
    phases: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        phases[name] = round(now - clock, 3)
        clock = now

    with ExitStack() as stack:
        if target is None:
            logger.info("starting a local cluster (one process per device)...")
            cluster = stack.enter_context(LocalCluster(plan_dir, emulate=emulate, security=security,
                                                       slo_ms=sla_ms if plan is None else None))
            target = cluster.central_target
            notes.extend(cluster.warnings)
            lap("start the cluster")
        client = stack.enter_context(ShoalClient(target, image_bytes=image_bytes, timeout_s=30.0, ca=security.ca,
                                                 server_name=served.front.name, token=security.token()))
        serving = client.info().plan_fingerprint
        if serving != fingerprint:
            raise ConfigError(f"{target} serves plan {serving}, but --plan {plan_dir} is plan {fingerprint}")
        prepared = prepare_requests(images[:max(1, min(len(images), requests))], 1, input_format, normalisation)
        sent_bytes = sum(payload_bytes(r) for r in prepared) / len(prepared)
        logger.info(f"warm-up {warmup}, then {requests} requests at concurrency {concurrency} on {target}")
        run_load(client, prepared, warmup, concurrency)
        lap("warm up")
        results, wall = run_load(client, prepared, requests, concurrency)
        summary = summarise(results, sequential=plan is None)
        lap("timed requests")
        top1 = None
        if test is not None:
            # batches the plan answers well within any fan-out deadline (~0.5 s by its prediction)
            per_call = plan.document.predicted.total_ms if plan is not None and plan.document.predicted else 10.0
            batch = max(1, min(32, int(500.0 / max(per_call, 1e-3))))
            top1 = accuracy(lambda b: client.predict(b, top_k=1, input_format=input_format,
                                                     normalisation=normalisation).labels, test, batch=batch)
            lap("test accuracy")
    teacher_result = None
    if teacher:
        teacher_result = _teacher_row(served, data, teacher_repeats, emulate, notes)
        lap("the teacher alone")
    speedup = None
    if teacher_result is not None:
        speedup = teacher_result["latency"]["median_ms"] / summary.latency.median_ms
    predicted = plan.document.predicted if plan is not None else None
    predicted_ms: float | None = None
    if predicted is not None and plan is not None:   # T for the bytes this run sent, not the format planned
        planned = spec.bytes if spec is not None and spec.bytes else image_bytes
        predicted_ms = predicted.total_ms_for_input(plan.devices, planned, sent_bytes)
    return BenchResult(
        plan=str(plan_dir), fingerprint=fingerprint, target=target, requests=requests, concurrency=concurrency,
        **vars(summary), throughput_rps=len(results) / wall,
        overhead_ratio=summary.latency.median_ms / summary.critical_ms,
        accuracy=top1, accuracy_n=len(test) if test is not None else 0, data=data_note, teacher=teacher_result,
        speedup=speedup, predicted_ms=predicted_ms,
        predicted_speedup=(predicted.teacher_ms[served.front.name] / predicted_ms
                           if predicted is not None and predicted_ms else None), notes=tuple(notes),
        input_format=input_format, input_bytes=sent_bytes, phases=phases,
        accuracy_ci95=_ci95(top1, len(test) if test is not None else 0), random_weights=random_weights)


def _ci95(top1: float | None, n: int) -> tuple[float, float] | None:
    """95% Wilson interval of an accuracy measured on n images (None when none was measured)."""
    if top1 is None or n < 1:
        return None
    from shoal.utils.stats import wilson_interval

    return wilson_interval(round(top1 * n), n)


@dataclass(frozen=True)
class _Served:
    """What the bench needs of a plan of either kind.

    Attributes:
        plan: The decomposition (None for a Janus plan).
        config: The teacher's family.
        teacher_source: How to load the teacher.
        random_weights: The teacher had random weights.
        input: The clients' input format and normalisation (None: a plan made before compact inputs).
        front: The device clients call (the central node; a Janus plan's device), where the teacher
            alone is timed.
    """

    plan: Plan | None
    config: TeacherConfig
    teacher_source: str
    random_weights: bool
    input: InputSpec | None
    front: DeviceSpec


def _served(plan_dir: str | Path) -> _Served:
    if is_janus_plan(plan_dir):
        from shoal.models import DEFAULT_TEACHER, load_teacher
        from shoal.plan.janus import JanusPlan

        janus = JanusPlan.read(plan_dir)
        config = load_teacher(None if janus.teacher == DEFAULT_TEACHER else janus.teacher).config
        return _Served(None, config, janus.teacher, False, janus.input, janus.device)
    plan = load_plan(plan_dir)
    return _Served(plan, plan.config, plan.teacher_source, plan.document.random_weights, plan.document.input,
                   plan.devices.central)


def _teacher_row(served: _Served, data: str | None, repeats: int, emulate: bool, notes: list[str],
                 ) -> dict[str, Any] | None:
    central = served.front
    logger.info(f"timing the teacher alone on {central.name}'s share of the machine...")
    try:
        result = time_teacher(served.teacher_source, served.config.input_shape, repeats=repeats,  # text: test texts
                              warmup=max(5, repeats // 10), threads=central.threads,
                              limit=central if emulate else None, data=data,
                              random_classes=served.config.num_classes if served.random_weights else None)
    except ShoalError as exc:
        notes.append(f"teacher row skipped: {exc}")
        return None
    if result.pop("warning", None):
        notes.append("teacher timed without the CPU quota (cgroups unavailable)")
    result["device"] = central.name
    result["ci95"] = _ci95(result.get("top1"), int(result.get("n") or 0))
    return result

