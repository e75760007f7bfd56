"""A child process under a device's CPU limit: the one way shoal starts one and tears it down.

The profiling runner, the call-overhead probe, the teacher-alone baseline of `shoal bench`
and every process of a local cluster run this way:

    with LimitedChild([sys.executable, "-m", ...], limit, who="worker 'edge-a'") as child:
        target = child.read_line("SHOAL_LISTENING", give_up)    # optional: wait for a line on stdout
        ...
    # stopped (SIGTERM to its process group, SIGKILL after the grace period), cgroup removed

The child starts in its own session (signals reach it and everything it spawned, and not
the terminal's Ctrl-C), and is put under the limit right after `Popen`, before it has
imported torch, so every thread it makes inherits the limit. With `strict=False` a quota this
machine cannot set is skipped (the cores are still pinned) and `warning` says so.
"""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import IO, Any

from shoal.devices.emulation import (
    CpuLimit,
    EmulationUnavailable,
    apply_cpu_limit,
    quota_unavailable_reason,
    remove_cgroup,
    write_quota,
)
from shoal.errors import PlatformError

Stream = int | IO[Any] | None


def apply_limit(limit: CpuLimit, pid: int | None = None, *, who: str = "this process", strict: bool = True
                ) -> tuple[Path | None, str | None]:
    """Put `pid` (default: this process) under `limit`: (the cgroup made or None, a warning or None).

    Raises:
        EmulationUnavailable: `strict` and the quota cannot be set on this machine.
    """
    if limit.quota is not None and not strict and (reason := quota_unavailable_reason()):
        return (apply_cpu_limit(CpuLimit(quota=None, cpus=limit.cpus), pid),
                f"{who}: CPU quota {limit.quota:g} not applied ({reason}); timings are not emulated")
    try:
        return apply_cpu_limit(limit, pid), None
    except EmulationUnavailable as exc:
        if strict:
            raise
        return apply_cpu_limit(CpuLimit(quota=None, cpus=limit.cpus), pid), f"{who}: {exc}"


class LimitedChild:
    """One child process under a CPU limit (see the module docstring).

    Args:
        command: The child's argv.
        limit: Its CPU limit (`CpuLimit()`: none).
        who: How messages name it ("worker 'edge-a'").
        strict: Raise `EmulationUnavailable` where the quota cannot be set (else pin only and warn).
        stdin, stdout, stderr: As for `subprocess.Popen` (a pipe, a file, DEVNULL or None).
        env: Extra environment variables.
        text: Text-mode pipes.

    Attributes:
        proc: The `Popen`.
        cgroup: The cgroup made for it, or None.
        warning: Why the quota was not applied (`strict=False`), or None.
    """

    def __init__(self, command: Sequence[str], limit: CpuLimit = CpuLimit(), *, who: str, strict: bool = True,
                 stdin: Stream = subprocess.DEVNULL, stdout: Stream = subprocess.PIPE,
                 stderr: Stream = subprocess.PIPE, env: Mapping[str, str] | None = None, text: bool = False) -> None:
        self.who = who
        self.limit = limit
        self.cgroup: Path | None = None
        self.warning: str | None = None
        self._pending = b""   # stdout read but not yet consumed by `read_line`
        self.proc: subprocess.Popen[Any] = subprocess.Popen(
            list(command), stdin=stdin, stdout=stdout, stderr=stderr, text=text, start_new_session=True,
            env={**os.environ, **env} if env is not None else None)
        try:
            self.cgroup, self.warning = apply_limit(limit, self.proc.pid, who=who, strict=strict)
        except BaseException:
            self.stop(grace=0.0)
            raise

    def __enter__(self) -> LimitedChild:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self.proc.poll() is None

    def signal(self, sig: int) -> None:
        """Send `sig` to the child's process group (nothing if it has exited)."""
        if self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def set_quota(self, quota: float) -> None:
        """Change the child's CPU share while it runs (an emulated device that throttles, or another
        process landing on it); its pinning stays.

        Raises:
            EmulationUnavailable: cgroups cannot be written here.
        """
        limit = replace(self.limit, quota=quota)
        if self.cgroup is None:
            self.cgroup = apply_cpu_limit(limit, self.proc.pid)
        else:
            try:
                write_quota(self.cgroup, limit)
            except OSError as exc:
                raise EmulationUnavailable(f"cannot change the CPU quota of {self.who} in {self.cgroup}: {exc}") \
                    from None
        self.limit = limit

    def read_line(self, prefix: str, give_up: float) -> str:
        """The rest of the first stdout line that starts with `prefix` (whitespace-split, first word).

        Raises:
            PlatformError: the child exited first, or `give_up` (time.monotonic()) passed.
        """
        stream = self.proc.stdout
        if stream is None:
            raise PlatformError(f"{self.who}: its stdout is not a pipe")
        with selectors.DefaultSelector() as sel:
            sel.register(stream, selectors.EVENT_READ)
            while True:
                while b"\n" in self._pending:   # lines already read, in order, each looked at once
                    raw, _, self._pending = self._pending.partition(b"\n")
                    line = raw.decode(errors="replace")
                    if line.startswith(prefix):
                        return line[len(prefix):].split()[0]
                left = give_up - time.monotonic()
                if left <= 0:
                    raise PlatformError(f"{self.who} did not start in time")
                if sel.select(timeout=min(left, 0.5)):
                    chunk = os.read(stream.fileno(), 4096)
                    if not chunk:
                        self.proc.wait(timeout=5.0)
                        raise PlatformError(f"{self.who} exited with status {self.proc.returncode} before it "
                                            "was ready")
                    self._pending += chunk

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after `grace` seconds; close its pipes and remove its cgroup. Idempotent."""
        if self.proc.poll() is None:
            self.signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=max(grace, 0.05))
            except subprocess.TimeoutExpired:
                self.signal(signal.SIGKILL)
                self.proc.wait(timeout=5.0)
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if stream is not None and not stream.closed:
                stream.close()
        remove_cgroup(self.cgroup)
        self.cgroup = None


def child_main(main: Callable[[], None]) -> None:
    """Run a `LimitedChild`'s entry point: any failure ends the process with status 1 and one line on
    stderr, the line the parent quotes in its error."""
    try:
        main()
    except Exception as exc:
        print(f"{type(exc).__name__}: {exc}".splitlines()[0], file=sys.stderr)
        sys.exit(1)
