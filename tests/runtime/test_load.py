"""Bounded load on loopback: every request gets exactly one answer or one clear error; nothing leaks."""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import torch

from shoal.runtime import shoal_pb2 as pb
from shoal.runtime.bench import prepare_requests, run_load, summarise
from shoal.runtime.client import ShoalClient
from shoal.runtime.status import RemoteError

CLIENTS, PER_CLIENT = 4, 50


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _fdmap() -> dict[str, str]:
    out = {}
    for f in os.listdir("/proc/self/fd"):
        try:
            out[f] = os.readlink(f"/proc/self/fd/{f}")
        except OSError:
            pass
    return out


def _settle(count, baseline: int, timeout: float = 5.0) -> int:
    """`count()` once stopped servers' threads and sockets are gone (gRPC closes them asynchronously)."""
    until = time.monotonic() + timeout
    while count() > baseline and time.monotonic() < until:
        time.sleep(0.05)
    return count()


def _round(in_process, plan, load: bool) -> dict[str, int]:
    cluster = in_process()
    good = torch.randn(1, *plan.config.input_shape)
    bad = torch.randn(1, 1, 4, 4)
    outcomes: dict[tuple[int, int], str] = {}
    lock = threading.Lock()

    def client_loop(c: int) -> None:
        with ShoalClient(cluster.central.target, timeout_s=20.0) as client:
            for i in range(PER_CLIENT if load else 2):
                try:
                    result = "ok" if client.predict(bad if i % 10 == 9 else good).logits.shape == (1, 5) else "bad"
                except RemoteError as exc:
                    result = exc.code.name
                with lock:
                    assert (c, i) not in outcomes, "two outcomes for one request"
                    outcomes[(c, i)] = result

    with ThreadPoolExecutor(max_workers=CLIENTS) as pool:
        for future in [pool.submit(client_loop, c) for c in range(CLIENTS)]:
            future.result(timeout=120)
    cluster.stop()
    counts: dict[str, int] = {}
    for result in outcomes.values():
        counts[result] = counts.get(result, 0) + 1
    return counts


def test_concurrent_clients_each_request_one_outcome_and_no_leaks(plan, in_process):
    _round(in_process, plan, load=False)  # gRPC's process-wide machinery starts once; measure after it
    threads = _settle(threading.active_count, threading.active_count())
    fds = _settle(_open_fds, _open_fds())
    t0 = time.monotonic()
    counts = _round(in_process, plan, load=True)
    assert time.monotonic() - t0 < 120
    assert sum(counts.values()) == CLIENTS * PER_CLIENT
    assert counts == {"ok": CLIENTS * PER_CLIENT * 9 // 10, "INVALID_ARGUMENT": CLIENTS * PER_CLIENT // 10}
    assert _settle(threading.active_count, threads) <= threads, [t.name for t in threading.enumerate()]
    assert _settle(_open_fds, fds) <= fds, _fdmap()


def test_bench_load_and_summary_through_the_runtime(plan, in_process):
    cluster = in_process()
    images = torch.randn(8, *plan.config.input_shape)
    with ShoalClient(cluster.central.target) as client:
        results, wall = run_load(client, prepare_requests(images), total=24, concurrency=3)
    assert len(results) == 24 and wall > 0
    s = summarise(results)
    assert s.latency.n == 24 and s.errors == {} and [d.device for d in s.devices] == ["hub", "edge-a", "edge-b"]
    assert s.latency.p95_ms >= s.latency.median_ms and s.critical_ms > s.aggregation_ms > 0
    # every request's end-to-end time contains the central node's, which contains the critical path
    assert s.overhead_ms >= 0 and s.latency.median_ms >= s.server_ms >= s.critical_ms


def test_bench_summary_counts_errors(plan, in_process):
    cluster = in_process()
    cluster.workers["edge-a"][0].stop(0)
    with ShoalClient(cluster.central.target) as client:
        results, _ = run_load(client, prepare_requests(torch.randn(2, *plan.config.input_shape)), 4, 2)
    assert all(isinstance(r, RemoteError) and r.code == grpc.StatusCode.UNAVAILABLE for _, r in results)


def test_bench_counts_which_variant_answered_and_how(plan, in_process):
    cluster = in_process()
    with ShoalClient(cluster.central.target) as client:
        results, _ = run_load(client, prepare_requests(torch.randn(3, *plan.config.input_shape)), 6, 1)
    assert summarise(results).answers == {"primary": 6}


def test_a_split_adds_its_parts_where_a_decomposition_takes_the_slowest():
    reply = pb.PredictReply(aggregation_ms=1.0)
    reply.timings.add(device="edge", compute_ms=3.0, ok=True)
    reply.timings.add(device="hub", compute_ms=2.0, ok=True)
    results = [(10.0, reply)]
    assert summarise(results).critical_ms == 4.0                    # parallel devices: the slowest + aggregation
    assert summarise(results, sequential=True).critical_ms == 6.0   # a Janus split: one after the other
