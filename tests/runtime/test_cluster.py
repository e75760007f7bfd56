"""Every device as its own process: LocalCluster, `shoal serve local`, `shoal bench`, killed workers."""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest
import torch

from shoal.devices.emulation import quota_unavailable_reason
from shoal.plan.directory import load_plan
from shoal.runtime.client import ShoalClient
from shoal.runtime.cluster import LocalCluster
from shoal.runtime.demo_plan import device_set, write_even_plan
from shoal.runtime.status import RemoteError
from shoal.runtime.worker import FAULT_ENV
from tests.conftest import make_vit
from tests.runtime.conftest import reference_logits

pytestmark = pytest.mark.slow


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/status").read_text().find("State:\tZ") < 0


def _cgroup_of(pid: int) -> str:
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if "cpu" in controllers.split(","):
            return path
    return ""


@pytest.mark.slow
def test_local_cluster_runs_each_device_limited_and_a_killed_worker_is_named(plan, plan_dir):
    env = {"edge-b": {FAULT_ENV: "delay_ms=1500"}}
    with LocalCluster(plan_dir, deadline_ms=6000, worker_env=env) as cluster:
        pids = {name: cluster.pid(name) for name in ("hub", "edge-a", "edge-b")}
        groups = {name: _cgroup_of(pid) for name, pid in pids.items()}
        if quota_unavailable_reason() is None:
            # hub's quota (1.0) equals its one pinned core: the pin is its limit, no cgroup (ADR 002)
            assert "shoal-" not in groups["hub"]
            assert all("shoal-" in groups[n] for n in ("edge-a", "edge-b")) and groups["edge-a"] != groups["edge-b"]
        cpus = {name: os.sched_getaffinity(pid) for name, pid in pids.items()}
        assert cpus["edge-a"] == cpus["edge-b"] and len(cpus["edge-a"]) == 1
        x = torch.randn(2, *plan.config.input_shape)
        with ShoalClient(cluster.central_target) as client:
            p = client.predict(x)
            assert torch.allclose(p.logits, reference_logits(plan, x), atol=1e-5)

            outcome: list[BaseException] = []
            caller = threading.Thread(target=lambda: _capture(outcome, client.predict, x))
            caller.start()
            time.sleep(0.5)  # edge-b is inside its 1.5 s delay: kill it mid-call
            cluster.kill("edge-b")
            caller.join(10)
            assert not caller.is_alive()
            err = outcome[0]
            assert isinstance(err, RemoteError) and err.code == grpc.StatusCode.UNAVAILABLE
            assert "'edge-b'" in err.details
            with pytest.raises(RemoteError) as again:  # the central node stays up and keeps naming it
                client.predict(x)
            assert again.value.code == grpc.StatusCode.UNAVAILABLE and "'edge-b'" in again.value.details
    assert not any(_alive(pid) for pid in pids.values())
    for group in groups.values():
        if "shoal-" in group:
            assert not Path("/sys/fs/cgroup/cpu" + group).exists()


def _capture(out: list[BaseException], fn, *args) -> None:
    try:
        fn(*args)
    except BaseException as exc:  # noqa: BLE001 - the test inspects it
        out.append(exc)


def _read_until(proc: subprocess.Popen, marker: str, timeout: float) -> str:
    """Read proc.stderr until a line containing `marker` (bounded)."""
    text = ""
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stderr, selectors.EVENT_READ)
        until = time.monotonic() + timeout
        while marker not in text:
            assert time.monotonic() < until, f"no {marker!r} within {timeout}s:\n{text}"
            if sel.select(0.5):
                chunk = os.read(proc.stderr.fileno(), 4096).decode(errors="replace")
                assert chunk, f"process exited:\n{text}"
                text += chunk
    return text


def _children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(entry.name))
            except (OSError, IndexError, ValueError):
                pass
    return out


@pytest.mark.slow
def test_cli_serve_local_then_bench_then_sigterm_leaves_no_process(plan_dir):
    shoal = [sys.executable, "-m", "shoal.cli"]
    env = {**os.environ, "COLUMNS": "200"}
    server = subprocess.Popen([*shoal, "serve", "local", "--plan", str(plan_dir), "--base-port", "0"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    try:
        text = _read_until(server, "Ctrl-C stops", timeout=120)
        target = text.split("--target ")[1].split(";")[0].strip()
        children = _children(server.pid)
        assert len(children) == 3
        bench = subprocess.run([*shoal, "bench", "--plan", str(plan_dir), "--target", target, "--requests", "20",
                                "--warmup", "2", "--json"], capture_output=True, text=True, env=env, timeout=180)
        assert bench.returncode == 0, bench.stderr
        result = json.loads(bench.stdout)
        assert result["latency"]["n"] == 20 and result["errors"] == {}
        assert [d["device"] for d in result["devices"]] == ["hub", "edge-a", "edge-b"]
        assert result["overhead_ms"] >= 0 and result["overhead_ratio"] >= 1.0
        assert result["teacher"]["latency"]["n"] > 0 and result["speedup"] > 0
        assert result["accuracy"] is None and any("accuracy skipped" in n for n in result["notes"])
        assert result["input_format"] == "float32" and result["input_bytes"] == 4 * 3 * 16 * 16
        assert set(result["phases"]) == {"warm up", "timed requests", "the teacher alone"}
        png = subprocess.run([*shoal, "bench", "--plan", str(plan_dir), "--target", target, "--requests", "10",
                              "--warmup", "1", "--no-teacher", "--input", "png", "--json"],
                             capture_output=True, text=True, env=env, timeout=180)
        assert png.returncode == 0, png.stderr
        compact = json.loads(png.stdout)
        assert compact["input_format"] == "png" and 0 < compact["input_bytes"] and compact["errors"] == {}
        server.send_signal(signal.SIGTERM)
        assert server.wait(30) == 0
        assert not any(_alive(pid) for pid in children)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait(10)


@pytest.mark.parametrize("args, message", [
    (["serve", "worker", "--device", "nope"], "no device 'nope'"),
    (["serve", "worker", "--device", "hub"], "is the plan's central node"),
    (["serve", "central", "--workers", "edge-a=x"], "must look like name=host:port"),
    (["bench", "--requests", "0"], "need --requests >= 1"),
])
def test_cli_errors_are_one_red_line(plan_dir, args, message):
    from typer.testing import CliRunner

    from shoal.cli import app

    out = CliRunner().invoke(app, [*args, "--plan", str(plan_dir), "--no-emulate"])
    assert out.exit_code == 1 and "error:" in out.output and message in " ".join(out.output.split())
    assert "Traceback" not in out.output


def test_a_central_only_plan_serves_without_workers(tmp_path):
    """The planner may leave every worker out: the plan is then one device, and it still serves."""
    teacher = make_vit()
    plan_root = write_even_plan(tmp_path / "solo", teacher, device_set([("hub", 1.0, (0,))]), "tiny")
    solo = load_plan(plan_root)
    x = torch.randn(2, *solo.config.input_shape)
    with LocalCluster(plan_root) as cluster, ShoalClient(cluster.central_target) as client:
        p = client.predict(x)
    assert torch.allclose(p.logits, reference_logits(solo, x), atol=1e-5)


@pytest.mark.slow
def test_certs_then_a_tls_cluster_then_bench_with_the_token(plan_dir, tmp_path):
    """`shoal certs`, `shoal bench --tls-dir` on a local cluster it starts with TLS: every hop encrypted."""
    shoal = [sys.executable, "-m", "shoal.cli"]
    env = {**os.environ, "COLUMNS": "200"}
    keys = tmp_path / "keys"
    made = subprocess.run([*shoal, "certs", "--plan", str(plan_dir), "--out", str(keys), "--json"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert made.returncode == 0, made.stderr
    assert json.loads(made.stdout)["devices"] == ["hub", "edge-a", "edge-b"]
    assert oct((keys / "hub.key").stat().st_mode & 0o777) == "0o600" and oct(keys.stat().st_mode & 0o777) == "0o700"
    bench = subprocess.run([*shoal, "bench", "--plan", str(plan_dir), "--tls-dir", str(keys), "--requests", "10",
                            "--warmup", "1", "--no-teacher", "--no-emulate", "--json"],
                           capture_output=True, text=True, env=env, timeout=300)
    assert bench.returncode == 0, bench.stderr
    result = json.loads(bench.stdout)
    assert result["latency"]["n"] == 10 and result["errors"] == {}
    # the token is never printed, not even in the logs of a failing run
    token = (keys / "client.token").read_text().strip()
    assert token not in bench.stdout + bench.stderr + made.stdout + made.stderr


def test_log_folders_of_dead_clusters_are_removed_and_live_ones_kept(tmp_path):
    from shoal.runtime.cluster import remove_stale_log_dirs

    dead = tmp_path / "shoal-cluster-999999999-abcd"
    live = tmp_path / f"shoal-cluster-{os.getpid()}-efgh"
    other = tmp_path / "shoal-cluster-notapid-x"
    for folder in (dead, live, other):
        folder.mkdir()
        (folder / "worker-edge-a.log").write_text("log")
    assert remove_stale_log_dirs(tmp_path) == [dead]
    assert not dead.exists() and live.exists() and other.exists()


@pytest.mark.slow
def test_a_local_cluster_restarts_a_dead_worker_and_the_central_node_takes_it_back(plan_dir):
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from shoal.runtime.client import ShoalClient

    def serving(cluster) -> bool:
        with grpc.insecure_channel(cluster.central_target) as channel:
            status = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service="shoal.v1.Central"), timeout=2.0).status
        return status == health_pb2.HealthCheckResponse.SERVING

    with LocalCluster(plan_dir, emulate=False, restarts=1) as cluster:
        x = torch.randn(1, 3, 16, 16)
        first = cluster.pid("edge-a")
        cluster.kill("edge-a")
        until = time.monotonic() + 20
        while cluster.children["edge-a"].proc.poll() is None and time.monotonic() < until:
            time.sleep(0.05)
        events = cluster.revive()
        assert len(events) == 1 and "restarted on" in events[0] and cluster.pid("edge-a") != first
        until = time.monotonic() + 30
        while not serving(cluster) and time.monotonic() < until:
            time.sleep(0.1)
        with ShoalClient(cluster.central_target) as client:
            assert not client.predict(x).degraded        # answered by all three again
        cluster.kill("edge-a")
        time.sleep(0.5)
        events = cluster.revive(now=time.monotonic() + 10)
        assert len(events) == 1 and "not restarted again after 1 restart(s)" in events[0]
        assert cluster.revive(now=time.monotonic() + 20) == []   # said once
