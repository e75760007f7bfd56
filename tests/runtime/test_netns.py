"""Shaped links: workers in network namespaces behind tbf (+ netem or the delay proxy)."""

from __future__ import annotations

import socket
import statistics
import subprocess
import sys
import threading
import time
from contextlib import ExitStack
from dataclasses import replace

import pytest
import torch

from shoal.errors import ConfigError, RuntimeServiceError
from shoal.plan.latency import link_breakdown
from shoal.runtime.client import ShoalClient
from shoal.runtime.cluster import LocalCluster
from shoal.runtime.delayproxy import DelayProxy
from shoal.runtime.netns import (
    WORKER_PORT,
    NetnsLink,
    netns_unavailable_reason,
    sweep_stale_namespaces,
    wire_bytes,
)

REASON = netns_unavailable_reason()
needs_netns = pytest.mark.skipif(REASON is not None, reason=f"network namespaces unavailable: {REASON}")


def _namespaces() -> str:
    return subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout


def _echo_server() -> tuple[socket.socket, int]:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()

    def serve() -> None:
        conn, _ = server.accept()
        with conn:
            while data := conn.recv(4096):
                conn.sendall(data)

    threading.Thread(target=serve, daemon=True).start()
    return server, server.getsockname()[1]


def test_delay_proxy_holds_each_direction_and_keeps_order():
    server, port = _echo_server()
    proxy = DelayProxy(("127.0.0.1", port), delay_ms=40)
    try:
        with socket.create_connection(("127.0.0.1", proxy.start()), timeout=5) as conn:
            t0 = time.perf_counter()
            conn.sendall(b"abc")
            conn.sendall(b"def")
            got = b""
            while len(got) < 6:
                got += conn.recv(16)
            elapsed_ms = (time.perf_counter() - t0) * 1e3
        assert got == b"abcdef"
        assert elapsed_ms >= 2 * 40 * 0.95  # a floor the proxy must hold, whatever the machine's load
    finally:
        proxy.stop()
        server.close()


@pytest.mark.netns
@needs_netns
def test_failed_setup_removes_the_namespace(monkeypatch):
    link = NetnsLink(2.0, 0.0, "broken")
    monkeypatch.setattr(NetnsLink, "_tbf", lambda self: ["tbf", "rate", "nonsense"])
    with pytest.raises(RuntimeServiceError, match="tc"):
        with link:
            pass
    assert link.namespace not in _namespaces()


@pytest.mark.netns
@needs_netns
def test_namespaces_of_dead_runs_are_swept():
    dead = _dead_pid()
    name = f"shoal-stale-{dead}-abcdef"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        assert name in sweep_stale_namespaces() and name not in _namespaces()
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


@pytest.mark.netns
@needs_netns
def test_a_live_link_can_slow_down_and_recover():
    """`change` reshapes a link under an open connection: delay (proxy or netem) and rate (tbf)."""
    echo = ("import socket; s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1);"
            "s.bind(('{ip}', {port})); s.listen(); print('up', flush=True); c, _ = s.accept()\n"
            "while d := c.recv(65536): c.sendall(d)")
    with NetnsLink(100.0, 0.0, "change", force_proxy=True) as link:
        assert link.proxy is not None and link.delay_mode == "proxy"
        server = subprocess.Popen([*link.prefix, sys.executable, "-c", echo.format(ip=link.inner_ip, port=WORKER_PORT)],
                                  stdout=subprocess.PIPE, text=True)
        try:
            assert server.stdout is not None and server.stdout.readline().strip() == "up"
            target = link.placement().connect.rsplit(":", 1)

            def round_trip(n: int) -> float:
                t0 = time.perf_counter()
                conn.sendall(b"x" * n)
                got = 0
                while got < n:
                    got += len(conn.recv(65536))
                return (time.perf_counter() - t0) * 1e3

            with socket.create_connection((target[0], int(target[1])), timeout=10) as conn:
                fast = statistics.median(round_trip(100) for _ in range(5))
                link.change(delay_ms=30.0)
                assert round_trip(100) >= 2 * 30 * 0.95 and link.delay_ms == 30.0
                link.change(rate_mbit=1.0, delay_ms=0.0)
                assert "rate 1Mbit" in subprocess.run(["tc", "qdisc", "show", "dev", link.host_if],
                                                      capture_output=True, text=True).stdout
                assert round_trip(60_000) >= 60_000 * 8 / 1e6 * 1e3 * 0.8   # 480 ms of bytes at 1 Mbit/s
                link.change(rate_mbit=100.0)
                assert round_trip(100) < fast + 20
        finally:
            server.kill()
            server.wait()
    with NetnsLink(100.0, 0.0, "nodelay") as link, pytest.raises(ConfigError, match="force_proxy"):
        link.change(delay_ms=10.0)


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


@pytest.mark.netns
@pytest.mark.slow
@needs_netns
def test_measured_latency_tracks_the_link_model(plan, plan_dir):
    rates, delay = {"edge-a": 2.0, "edge-b": 100.0}, 15.0
    with ExitStack() as stack:
        links = {name: stack.enter_context(NetnsLink(rate, delay, name)) for name, rate in rates.items()}
        created = [link.namespace for link in links.values()]
        cluster = stack.enter_context(LocalCluster(plan_dir, emulate=False,
                                                   placements={n: link.placement() for n, link in links.items()}))
        x = torch.randn(1, *plan.config.input_shape)
        with ShoalClient(cluster.central_target) as client:
            for _ in range(3):
                client.predict(x)
            runs = []
            for _ in range(15):
                t0 = time.perf_counter()
                p = client.predict(x)
                runs.append(((time.perf_counter() - t0) * 1e3, p))
    assert not any(name in _namespaces() for name in created)  # removed on exit

    med = statistics.median
    names = plan.devices.names
    compute = [med(next(t for t in p.timings if t.device == n).compute_ms for _, p in runs) for n in names]
    round_trip = {n: med(next(t for t in p.timings if t.device == n).round_trip_ms for _, p in runs) for n in names}
    agg = med(p.aggregation_ms for _, p in runs)
    widths = [plan.spec(n).width for n in names]
    sent, received = zip(*(wire_bytes(plan.config.input_shape, w) for w in widths))
    devices = [replace(d, link_mbps=rates.get(d.name, 1000.0), link_latency_ms=delay) for d in plan.devices.devices]
    model = link_breakdown(devices, compute, agg, sent[0], received)
    for i, name in enumerate(names[1:], start=1):
        floor = 2 * delay + (sent[i] + received[i]) * 8 / (rates[name] * 1e3)
        predicted = compute[i] + model.transfer_ms[i]
        assert 0.9 * floor <= round_trip[name] <= 1.5 * predicted + 10, (name, round_trip[name], predicted)
    assert round_trip["edge-a"] > round_trip["edge-b"]  # the 2 Mbit/s link carries the input ~12 ms longer
    e2e = med(ms for ms, _ in runs)
    assert 0.8 * model.total_ms <= e2e <= 1.5 * model.total_ms + 15, (e2e, model.to_dict())
