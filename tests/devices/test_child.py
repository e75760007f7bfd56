"""LimitedChild: the one way shoal starts a child under a CPU limit and tears it down."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

from shoal.devices.child import LimitedChild
from shoal.devices.emulation import CpuLimit, quota_unavailable_reason
from shoal.errors import PlatformError

SERVE = "import sys, time; print('READY 127.0.0.1:5555', flush=True); time.sleep(60)"


def test_reads_the_ready_line_and_stops_the_whole_group():
    # the child starts a grandchild: stopping must reach it too (own session, signal to the group)
    code = ("import subprocess, sys, time; p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']);"
            "print('PID', p.pid, flush=True); print('READY 127.0.0.1:5555', flush=True); time.sleep(60)")
    with LimitedChild([sys.executable, "-c", code], who="test child") as child:
        grandchild = int(child.read_line("PID", time.monotonic() + 20))
        assert child.read_line("READY", time.monotonic() + 20) == "127.0.0.1:5555"
        assert child.running
    assert not child.running and child.proc.returncode == -signal.SIGTERM
    for _ in range(50):   # the grandchild got the SIGTERM too
        try:
            with open(f"/proc/{grandchild}/status") as fh:
                if "State:\tZ" in fh.read():
                    break
        except FileNotFoundError:
            break
        time.sleep(0.1)
    else:
        pytest.fail("the grandchild outlived its group")


def test_a_child_that_exits_or_stays_silent_is_one_line():
    with LimitedChild([sys.executable, "-c", "import sys; sys.exit(3)"], who="quitter") as child:
        with pytest.raises(PlatformError, match=r"quitter exited with status 3 before it was ready"):
            child.read_line("READY", time.monotonic() + 20)
    with LimitedChild([sys.executable, "-c", "import time; time.sleep(60)"], who="sleeper") as child:
        with pytest.raises(PlatformError, match=r"sleeper did not start in time"):
            child.read_line("READY", time.monotonic() + 0.5)


def test_a_child_that_ignores_sigterm_is_killed_after_the_grace():
    code = ("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('READY x', flush=True); "
            "time.sleep(60)")
    child = LimitedChild([sys.executable, "-c", code], who="stubborn")
    child.read_line("READY", time.monotonic() + 20)
    child.stop(grace=0.3)
    assert child.proc.returncode == -signal.SIGKILL
    child.stop()   # idempotent


@pytest.mark.skipif(quota_unavailable_reason() is not None, reason=f"no CPU quota here: {quota_unavailable_reason()}")
def test_the_quota_cgroup_holds_the_child_and_is_removed():
    child = LimitedChild([sys.executable, "-c", SERVE], CpuLimit(quota=0.5, cpus=(0,)), who="limited")
    try:
        group = child.cgroup
        assert group is not None and group.is_dir()
        procs = (group / "cgroup.procs").read_text().split()
        assert str(child.proc.pid) in procs
    finally:
        child.stop()
    assert not group.exists()


@pytest.mark.skipif(quota_unavailable_reason() is not None, reason=f"no CPU quota here: {quota_unavailable_reason()}")
def test_a_running_child_can_be_throttled_and_given_its_share_back():
    def share(group):   # the quota the kernel holds, as a share of one core
        if (group / "cpu.max").exists():
            quota, period = (group / "cpu.max").read_text().split()
        else:
            quota, period = ((group / f).read_text() for f in ("cpu.cfs_quota_us", "cpu.cfs_period_us"))
        return int(quota) / int(period)

    with LimitedChild([sys.executable, "-c", SERVE], CpuLimit(quota=0.5, cpus=(0,)), who="limited") as child:
        child.set_quota(0.1)   # 1000 us at least: the period stretches to keep the share
        assert child.cgroup is not None and share(child.cgroup) == pytest.approx(0.1)
        assert str(child.proc.pid) in (child.cgroup / "cgroup.procs").read_text().split()
        child.set_quota(0.5)
        assert share(child.cgroup) == pytest.approx(0.5) and child.limit.quota == 0.5
    with LimitedChild([sys.executable, "-c", SERVE], CpuLimit(quota=1.0, cpus=(0,)), who="whole core") as child:
        assert child.cgroup is None   # the pin is the whole share: no cgroup until it is throttled
        child.set_quota(0.25)
        assert child.cgroup is not None and share(child.cgroup) == pytest.approx(0.25)
        group = child.cgroup
    assert not group.exists()


def test_non_strict_pins_only_where_quotas_cannot_be_set(monkeypatch):
    import shoal.devices.child as child_module

    monkeypatch.setattr(child_module, "quota_unavailable_reason", lambda: "no cgroups in this test")
    with LimitedChild([sys.executable, "-c", SERVE], CpuLimit(quota=0.5, cpus=(0,)), who="device 'x'",
                      strict=False, stdout=subprocess.DEVNULL) as child:
        assert child.cgroup is None
        assert child.warning == ("device 'x': CPU quota 0.5 not applied (no cgroups in this test); "
                                 "timings are not emulated")
