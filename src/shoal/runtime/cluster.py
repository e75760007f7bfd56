"""`LocalCluster`: every device of a plan as its own OS process on this machine.

One worker process per non-central device plus the central node, each under
its device's CPU limit (cgroup quota + pinned cores, applied by this process
to the child's pid so the cgroup is removed even if the child is killed) and
its device's torch threads. Children run in their own process group, watch
this process and exit if it dies; `stop()` (or leaving the `with` block)
sends SIGTERM, then SIGKILL after a grace period.

    with LocalCluster(plan_dir) as cluster:
        ShoalClient(cluster.central_target).predict(images)
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc

from shoal.devices.child import LimitedChild
from shoal.devices.emulation import CpuLimit
from shoal.errors import ConfigError, PlatformError, RuntimeServiceError
from shoal.plan.directory import is_janus_plan, load_plan
from shoal.plan.janus import JanusPlan
from shoal.runtime.defaults import DEFAULT_DEADLINE_MS
from shoal.runtime.links import wait_until_serving
from shoal.runtime.security import Security, is_loopback, name_override
from shoal.runtime.server import LISTENING_PREFIX
from shoal.runtime.status import CENTRAL_SERVICE, JANUS_SERVICE, WORKER_SERVICE, RemoteError
from shoal.runtime.variants import load_variants, served_devices


@dataclass(frozen=True)
class Placement:
    """Where a worker runs and how the central node reaches it.

    Attributes:
        bind_host: Interface the worker listens on.
        bind_port: Port it listens on (0: the cluster's choice: base_port + offset, or a free one).
        connect: host:port the central node dials (None: bind_host and the bound port).
        prefix: Command prefix, e.g. ("ip", "netns", "exec", NAME) to run inside a namespace.
    """

    bind_host: str = "127.0.0.1"
    bind_port: int = 0
    connect: str | None = None
    prefix: tuple[str, ...] = ()


@dataclass
class _Child:
    name: str
    role: str
    process: LimitedChild
    log: Path
    target: str = ""

    @property
    def proc(self) -> subprocess.Popen[bytes]:
        return self.process.proc


class LocalCluster:
    """Start the workers and the central node of a plan as separate processes.

    Args:
        plan_dir: The plan directory.
        base_port: Central node's port; workers get the next ones in plan order. 0: free ports.
        emulate: Apply each device's CPU quota and pinning (skipped with a warning without cgroups).
        deadline_ms: The central node's fan-out deadline.
        degrade: Start the central node with --degrade.
        placements: Per worker device, where it runs (default: loopback in this namespace).
        worker_env: Per device, extra environment (tests: fault injection).
        extra_args: Per device, more `shoal serve` options (e.g. a Janus device's `--fixed`).
        start_timeout: Seconds to wait for everything to report SERVING.
        log_dir: Where each process's stderr goes (default: a temporary directory).
        grace: Seconds a stopping process gets to finish in-flight calls.
        security: TLS, token and limits of every process (`shoal serve local --tls-dir ...`). A
            worker placed in a network namespace of this host (placements) listens on that
            namespace's private address: without TLS it is started with --insecure, as nothing
            outside this host reaches it.
    """

    def __init__(
        self,
        plan_dir: str | Path,
        *,
        base_port: int = 0,
        emulate: bool = True,
        deadline_ms: float = DEFAULT_DEADLINE_MS,
        degrade: bool = False,
        placements: Mapping[str, Placement] | None = None,
        worker_env: Mapping[str, Mapping[str, str]] | None = None,
        start_timeout: float = 120.0,
        log_dir: str | Path | None = None,
        grace: float = 3.0,
        security: Security = Security(),
        slo_ms: float | None = None,
        min_accuracy: float | None = None,
        restarts: int = 0,
        extra_args: Mapping[str, Sequence[str]] | None = None,
    ) -> None:
        if not 0 <= base_port <= 65535:
            raise ConfigError(f"base_port must be between 0 and 65535, got {base_port!r}")
        # the process clients call ("central" role) and the ones it calls ("worker" role): a decomposition's
        # central node and workers, or a Janus plan's device and server
        self.janus = is_janus_plan(plan_dir)
        if self.janus:
            janus = JanusPlan.read(plan_dir)
            front, backs = janus.device, [janus.server]
        else:
            devices = served_devices(load_variants(load_plan(plan_dir)))   # every variant's (a --pareto plan)
            front, backs = devices.central, [d for d in devices.devices if not d.central]
        self.front = front.name
        self.specs = {d.name: d for d in (front, *backs)}
        self._backs = [d.name for d in backs]
        self.plan_dir = Path(plan_dir)
        self.base_port = base_port
        self.emulate = emulate
        self.deadline_ms = deadline_ms
        self.degrade = degrade
        self.placements = dict(placements or {})
        self.worker_env = {k: dict(v) for k, v in (worker_env or {}).items()}
        self.start_timeout = start_timeout
        self.grace = grace
        self.security = security
        self.slo_ms, self.min_accuracy = slo_ms, min_accuracy
        self.restarts = restarts
        self.extra_args = {k: list(v) for k, v in (extra_args or {}).items()}
        self._revivals: dict[str, tuple[int, float]] = {}   # worker -> (restarts made, next try time)
        self._worker_args: dict[str, tuple[list[str], Placement]] = {}
        if not log_dir:
            remove_stale_log_dirs()
        self._tmp = None if log_dir else tempfile.TemporaryDirectory(prefix=f"{LOG_PREFIX}{os.getpid()}-")
        self.log_dir = Path(log_dir or self._tmp.name)  # type: ignore[union-attr]
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.children: dict[str, _Child] = {}
        self.warnings: list[str] = []
        unknown = sorted(set(self.placements) - set(self._backs))
        if unknown:
            raise ConfigError(f"placements name devices that are not workers of the plan: {unknown}")

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> LocalCluster:
        """Start every worker, then the central node; return once all report SERVING."""
        give_up = time.monotonic() + self.start_timeout
        try:  # every process imports and loads in parallel; the central node reads worker addresses on stdin
            pending = []
            for offset, name in enumerate(self._backs, start=1):
                place = self.placements.get(name, Placement())
                port = place.bind_port or (self.base_port + offset if self.base_port else 0)
                args = (["janus", "--role", "server"] if self.janus else ["worker", "--device", name]) + [
                    "--host", place.bind_host, "--port", str(port)]
                if self.security.tls_dir is None and not is_loopback(place.bind_host):
                    args.append("--insecure")   # a namespace of this host: reachable from here only
                self._worker_args[name] = (args, place)
                pending.append((self._spawn(name, "worker", args, place.prefix, self.worker_env.get(name, {})), place))
            central_child = self._spawn(self.front, "central", self._front_args(), (), {}, stdin=True)
            for child, place in pending:
                bound = _read_listening(child, give_up).rpartition(":")[2]
                child.target = place.connect or f"{place.bind_host}:{bound}"
            assert central_child.proc.stdin is not None
            addresses = (pending[0][0].target if self.janus
                         else ",".join(f"{c.name}={c.target}" for c, _ in pending))
            central_child.proc.stdin.write(addresses.encode() + b"\n")
            central_child.proc.stdin.close()
            central_child.target = _read_listening(central_child, give_up)
            self._check_health(give_up)
        except BaseException:
            self.stop()
            raise
        return self

    def _front_args(self) -> list[str]:
        """`shoal serve` arguments of the process clients call (it reads its peers' addresses on stdin)."""
        if self.janus:
            return ["janus", "--role", "device", "--server", "-", "--port", str(self.base_port), "--connect-timeout",
                    str(self.start_timeout)] + (["--sla-ms", f"{self.slo_ms:g}"] if self.slo_ms is not None else [])
        args = ["central", "--workers", "-", "--port", str(self.base_port), "--deadline-ms",
                str(self.deadline_ms), "--connect-timeout", str(self.start_timeout)]
        if self.slo_ms is not None:
            args += ["--slo-ms", f"{self.slo_ms:g}"]
        if self.min_accuracy is not None:
            args += ["--min-accuracy", f"{self.min_accuracy:g}"]
        return args + (["--degrade"] if self.degrade else [])

    def _check_health(self, give_up: float) -> None:
        """Every process answers its health check with SERVING (the central node has checked its workers)."""
        for child in self.children.values():
            service = (CENTRAL_SERVICE if child.role == "central" else JANUS_SERVICE if self.janus
                       else WORKER_SERVICE)
            channel = self.channel(child.name)
            try:
                wait_until_serving(channel, service, give_up, f"{child.role} {child.name!r} at {child.target}")
            except RemoteError as exc:
                raise RuntimeServiceError(f"{exc.details}:\n{_tail(child.log)}") from None
            finally:
                channel.close()

    def _spawn(self, name: str, role: str, args: Sequence[str], prefix: Sequence[str],
               env: Mapping[str, str], stdin: bool = False) -> _Child:
        log = self.log_dir / f"{role}-{name}.log"
        command = [*prefix, sys.executable, "-m", "shoal.cli", "serve", *args, "--plan", str(self.plan_dir),
                   "--no-emulate", "--watch-parent", *self.security.args(central=role == "central"),
                   *self.extra_args.get(name, ())]
        limit = self.specs[name].cpu_limit if self.emulate else CpuLimit()
        with open(log, "wb") as stderr:
            process = LimitedChild(command, limit, who=f"device {name!r}", strict=False, stderr=stderr,
                                   stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
                                   env={"PYTHONUNBUFFERED": "1", **env})
        if process.warning and process.warning not in self.warnings:
            self.warnings.append(process.warning)
        child = _Child(name, role, process, log)
        self.children[name] = child
        return child

    def central_exited(self) -> bool:
        return self.children[self.front].proc.poll() is not None

    def revive(self, now: float | None = None) -> list[str]:
        """Restart every worker that exited, on its port, with back-off (1, 2, 4... s) and at most
        `restarts` times each; the central node takes it back once its identity checks out.
        Returns what happened, one line per event."""
        now = time.monotonic() if now is None else now
        events = []
        for name, child in list(self.children.items()):
            if child.role != "worker" or child.proc.poll() is None:
                continue
            made, next_try = self._revivals.get(name, (0, 0.0))
            if made >= self.restarts:
                if next_try != float("inf"):
                    events.append(f"worker {name} exited (status {child.proc.returncode}); not restarted again "
                                  f"after {made} restart(s)")
                    self._revivals[name] = (made, float("inf"))
                continue
            if now < next_try:
                continue
            args, place = self._worker_args[name]
            port = child.target.rpartition(":")[2]
            args = [*args[:args.index("--port") + 1], port, *args[args.index("--port") + 2:]]
            child.process.stop(grace=0.5)   # reap it and remove its cgroup
            try:
                fresh = self._spawn(name, "worker", args, place.prefix, self.worker_env.get(name, {}))
                _read_listening(fresh, time.monotonic() + self.start_timeout)
                fresh.target = child.target
                events.append(f"worker {name} exited (status {child.proc.returncode}); restarted on {child.target} "
                              f"({made + 1}/{self.restarts})")
            except RuntimeServiceError as exc:
                events.append(f"worker {name} could not be restarted: {str(exc).splitlines()[0]}")
            self._revivals[name] = (made + 1, now + 2.0 ** made)
        return events

    def stop(self) -> None:
        """SIGTERM every process (central first), SIGKILL what is left after the grace period, clean up."""
        order = sorted(self.children.values(), key=lambda c: c.role != "central")
        for child in order:
            child.process.signal(signal.SIGTERM)
        until = time.monotonic() + self.grace + 2.0
        for child in order:
            child.process.stop(grace=until - time.monotonic())
        self.children.clear()

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
        if self._tmp is not None:
            self._tmp.cleanup()

    # -- access ------------------------------------------------------------------------------

    def channel(self, device: str) -> grpc.Channel:
        """A channel to one process of the cluster, with the cluster's TLS (as the central node: workers
        answer nobody else)."""
        target = self.children[device].target
        tls = self.security.tls(self.front)
        if tls is None:
            return grpc.insecure_channel(target)
        return grpc.secure_channel(target, tls.channel_credentials(), options=name_override(device))

    @property
    def central_target(self) -> str:
        """host:port of the central node."""
        return self.children[self.front].target

    @property
    def worker_targets(self) -> dict[str, str]:
        return {n: c.target for n, c in self.children.items() if c.role == "worker"}

    def pid(self, device: str) -> int:
        return self.children[device].proc.pid

    def kill(self, device: str, sig: int = signal.SIGKILL) -> None:
        """Send `sig` to one device's process (tests: a worker that dies)."""
        self.children[device].process.signal(sig)

    def set_quota(self, device: str, quota: float) -> None:
        """Change one device's CPU share while it serves (a board that throttles, another process on it)."""
        self.children[device].process.set_quota(quota)

    def log_tail(self, device: str, lines: int = 20) -> str:
        return _tail(self.children[device].log, lines)


LOG_PREFIX = "shoal-cluster-"


def remove_stale_log_dirs(root: str | Path | None = None) -> list[Path]:
    """Remove the log folders of clusters whose process is gone (`shoal-cluster-<pid>-*`, left by a
    SIGKILL that skipped the clean-up). Returns them."""
    import shutil

    removed = []
    for folder in Path(root or tempfile.gettempdir()).glob(f"{LOG_PREFIX}*-*"):
        pid = folder.name[len(LOG_PREFIX):].split("-", 1)[0]
        if not pid.isdigit() or Path(f"/proc/{pid}").exists():
            continue
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(folder)
    return removed


def _read_listening(child: _Child, give_up: float) -> str:
    """Wait for the child's `SHOAL_LISTENING host:port` line; its address, or an error with its log."""
    try:
        return child.process.read_line(LISTENING_PREFIX, give_up)
    except PlatformError as exc:
        raise RuntimeServiceError(f"{child.role} {exc}:\n{_tail(child.log)}") from None


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
