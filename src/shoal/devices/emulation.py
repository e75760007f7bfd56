"""Emulating a slower device on this machine: core pinning plus a CPU-quota cgroup.

A process limited to `cpu_quota` of one core (cgroup v1 `cpu.cfs_quota_us` /
`cpu.cfs_period_us`, or v2 `cpu.max`) and pinned to `cpus` runs compute-bound
code at that share of the core's *throughput*. The CFS period is 10 ms (ADR
002): with the default 100 ms a 35% device runs a 7 ms inference at full speed
and then stalls for 65 ms; below ~4 ms the kernel's tick-based accounting
(HZ=250 here) overcharges, so even a 100% quota runs 2x slow. At 10 ms the
median slowdown of a 7 ms inference is 1.8x at 0.6 of a core and 3.3x at 0.35
(ideal 1.67x and 2.86x); inferences of 1-3 ms stay bursty (p10 near full
speed). A quota equal to the pinned cores is not applied at all: the pin is
the whole share and a cgroup would only add jitter.

Whatever profiles an emulated device and whatever later serves as it must
run under the same `CpuLimit`; profiles and plans record it.
"""

from __future__ import annotations

import math
import os
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from shoal.errors import ConfigError, ShoalError

CGROUP_ROOT = Path("/sys/fs/cgroup")
DEFAULT_PERIOD_US = 10_000


class EmulationUnavailable(ShoalError):
    """CPU quotas cannot be set here (no writable cgroup cpu controller)."""


@dataclass(frozen=True)
class CpuLimit:
    """A CPU share and pinning for one emulated device.

    Attributes:
        quota: Share of one core, e.g. 0.35 (may exceed 1 with several cpus).
        cpus: Cores to pin to; None leaves the affinity alone.
        period_us: CFS period in microseconds.
    """

    quota: float | None = None
    cpus: tuple[int, ...] | None = None
    period_us: int = DEFAULT_PERIOD_US

    def __post_init__(self) -> None:
        if self.quota is not None and not (0.01 <= self.quota <= 1024):
            raise ConfigError(f"cpu quota must be between 0.01 and 1024 cores, got {self.quota!r}")
        if self.cpus is not None:
            object.__setattr__(self, "cpus", tuple(int(c) for c in self.cpus))
            if not self.cpus or min(self.cpus) < 0:
                raise ConfigError(f"cpus must be a non-empty list of core numbers, got {list(self.cpus)!r}")
        if not 1000 <= self.period_us <= 1_000_000:
            raise ConfigError(f"period_us must be between 1000 and 1000000, got {self.period_us}")

    @property
    def is_limited(self) -> bool:
        return self.quota is not None or self.cpus is not None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["cpus"] = list(self.cpus) if self.cpus is not None else None
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> CpuLimit:
        if not data:
            return cls()
        return cls(data.get("quota"), tuple(data["cpus"]) if data.get("cpus") is not None else None,
                   int(data.get("period_us", DEFAULT_PERIOD_US)))

    def describe(self) -> str:
        parts = []
        if self.quota is not None:
            parts.append(f"{self.quota:.0%} of a core")
        if self.cpus is not None:
            parts.append(f"pinned to cpu {','.join(map(str, self.cpus))}")
        return ", ".join(parts) or "unlimited"


def cgroup_flavour() -> Literal["v1", "v2"] | None:
    """Which writable cgroup cpu controller this machine has, if any."""
    if (CGROUP_ROOT / "cpu" / "cpu.cfs_quota_us").exists() and os.access(CGROUP_ROOT / "cpu", os.W_OK):
        return "v1"
    controllers = CGROUP_ROOT / "cgroup.controllers"
    if controllers.exists() and "cpu" in controllers.read_text().split() and os.access(CGROUP_ROOT, os.W_OK):
        return "v2"
    return None


def quota_unavailable_reason() -> str | None:
    """None if quotas can be set, else one line saying why not."""
    if os.geteuid() != 0:
        return "CPU quotas need root to write cgroups; run as root or drop --cpu-quota"
    if cgroup_flavour() is None:
        return f"no writable cgroup cpu controller under {CGROUP_ROOT} (v1 cpu.cfs_quota_us or v2 cpu.max)"
    return None


def resolve_cpus(cpus: tuple[int, ...] | None) -> tuple[int, ...] | None:
    """Map requested cores onto the cores this process may use (wrapping on small machines)."""
    if cpus is None:
        return None
    available = sorted(os.sched_getaffinity(0))
    return tuple(sorted({available[c % len(available)] for c in cpus}))


def apply_cpu_limit(limit: CpuLimit, pid: int | None = None) -> Path | None:
    """Pin `pid` (default: this process, all its threads) and put it under a quota cgroup.

    Returns:
        The cgroup directory created (remove it with `remove_cgroup` when done), or None.

    Raises:
        EmulationUnavailable: a quota was asked for but cgroups cannot be written here.
    """
    pid = pid or os.getpid()
    cpus = resolve_cpus(limit.cpus)
    if cpus is not None:
        for tid in _threads(pid):
            try:
                os.sched_setaffinity(tid, cpus)
            except (ProcessLookupError, PermissionError):
                pass
    if limit.quota is None or (cpus is not None and limit.quota >= len(cpus)):
        return None  # no quota, or the pinned cores are the whole share: a cgroup would only add jitter
    reason = quota_unavailable_reason()
    if reason:
        raise EmulationUnavailable(reason)
    v1 = cgroup_flavour() == "v1"
    remove_stale_cgroups()
    group = (CGROUP_ROOT / "cpu" if v1 else CGROUP_ROOT) / f"shoal-{uuid.uuid4().hex[:8]}"
    group.mkdir()
    try:
        write_quota(group, limit)
        (group / "cgroup.procs").write_text(str(pid))
    except OSError as exc:
        remove_cgroup(group)
        raise EmulationUnavailable(f"cannot set a CPU quota in {group}: {exc}") from None
    return group


def write_quota(group: Path, limit: CpuLimit) -> None:
    """Set `limit.quota` on a cgroup made by `apply_cpu_limit`: at creation, or later on a running
    process (a device that throttles, or another process landing on it: `LimitedChild.set_quota`).

    Raises:
        OSError: the cgroup is gone or not writable.
    """
    quota_us, period_us = quota_and_period(limit)
    if (group / "cpu.max").exists():
        (group / "cpu.max").write_text(f"{quota_us} {period_us}")
        return
    # v1 refuses a period under the current quota's: lower the quota first when shrinking the period
    (group / "cpu.cfs_quota_us").write_text("-1")
    (group / "cpu.cfs_period_us").write_text(str(period_us))
    (group / "cpu.cfs_quota_us").write_text(str(quota_us))


def quota_and_period(limit: CpuLimit) -> tuple[int, int]:
    """(quota_us, period_us) written to the cgroup for `limit.quota`.

    The kernel refuses quotas under 1000 us, so a small share stretches the
    period instead of rounding the share up (0.35 of a 2000 us period would
    otherwise become 1000/2000 = 0.5 of a core).
    """
    if limit.quota is None:
        raise ConfigError("CpuLimit has no quota")
    period_us = max(limit.period_us, math.ceil(1000 / limit.quota))
    if period_us > 1_000_000:
        raise ConfigError(f"cpu quota {limit.quota!r} is too small for a CFS period of at most 1 s")
    return max(1000, round(limit.quota * period_us)), period_us


def remove_cgroup(group: Path | None) -> None:
    """Move any remaining tasks back to the root group and remove `group` (best effort)."""
    if group is None or not group.exists():
        return
    parent = group.parent
    try:
        for line in (group / "cgroup.procs").read_text().split():
            try:
                (parent / "cgroup.procs").write_text(line)
            except OSError:
                pass
        group.rmdir()
    except OSError:
        pass


STALE_AFTER_S = 60.0   # an empty shoal cgroup older than this was left by a killed run


def remove_stale_cgroups(now: float | None = None) -> list[Path]:
    """Remove the `shoal-*` cgroups that dead runs left behind (a SIGKILLed `shoal serve local`
    or worker cannot remove its own): empty ones older than `STALE_AFTER_S`. Returns them."""
    import time

    now = time.time() if now is None else now
    removed = []
    for base in (CGROUP_ROOT / "cpu", CGROUP_ROOT):
        try:
            groups = list(base.glob("shoal-*"))
        except OSError:
            continue
        for group in groups:
            try:
                empty = not (group / "cgroup.procs").read_text().split()
                old = now - group.stat().st_mtime > STALE_AFTER_S
                if empty and old:
                    group.rmdir()
                    removed.append(group)
            except OSError:
                continue
    return removed


def _threads(pid: int) -> list[int]:
    try:
        return [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        return [pid]
