from __future__ import annotations

import os
import subprocess
import sys

import pytest

from shoal.devices.emulation import (
    CpuLimit,
    apply_cpu_limit,
    cgroup_flavour,
    quota_and_period,
    quota_unavailable_reason,
    remove_cgroup,
)
from shoal.errors import ConfigError
from shoal.profiling.dataset import read_dataset
from shoal.profiling.jobs import run_jobs
from shoal.profiling.runner import prepare_job
from shoal.profiling.settings import SamplerSettings, TimingSettings

NO_QUOTA = quota_unavailable_reason()


@pytest.mark.parametrize("quota, expected", [
    (1.0, (2000, 2000)), (0.6, (1200, 2000)), (2.0, (4000, 2000)),
    (0.35, (1000, 2858)),  # not 1000/2000 = 0.5: the period stretches instead
    (0.1, (1000, 10000)),
])
def test_small_quotas_keep_their_share(quota, expected):
    q, period = quota_and_period(CpuLimit(quota, period_us=2000))
    assert (q, period) == expected
    assert q / period == pytest.approx(quota, rel=0.01)


def test_cpu_limit_validation_and_round_trip():
    limit = CpuLimit(0.35, (1,))
    assert CpuLimit.from_dict(limit.to_dict()) == limit and limit.is_limited
    assert "35%" in limit.describe() and "cpu 1" in limit.describe()
    assert not CpuLimit().is_limited and CpuLimit.from_dict(None) == CpuLimit()
    with pytest.raises(ConfigError, match="0.001"):
        CpuLimit(0.001)
    with pytest.raises(ConfigError, match=r"\[\]"):
        CpuLimit(None, ())


@pytest.mark.skipif(NO_QUOTA is not None, reason=f"CPU quotas unavailable here: {NO_QUOTA}")
def test_quota_cgroup_is_written_and_removed():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        group = apply_cpu_limit(CpuLimit(0.35, (0,)), pid=child.pid)
        assert group is not None and group.is_dir()
        assert str(child.pid) in (group / "cgroup.procs").read_text().split()
        if cgroup_flavour() == "v1":
            assert (group / "cpu.cfs_quota_us").read_text().strip() == "3500"
            assert (group / "cpu.cfs_period_us").read_text().strip() == "10000"
        assert os.sched_getaffinity(child.pid) == {sorted(os.sched_getaffinity(0))[0]}
    finally:
        child.kill()
        child.wait()
        remove_cgroup(group)
    assert not group.exists()


def test_pinned_job_runs_in_a_child_process(tiny_config, tmp_path):
    """Pinning alone needs no cgroup: the child times real tiny models and appends them."""
    path = tmp_path / "m.jsonl"
    limit = CpuLimit(None, (0,))
    job = prepare_job("pinned", tiny_config, path, SamplerSettings(4, seed=0), TimingSettings(repeats=3, warmup=1),
                      limit, remeasure=0.5)
    seen: list[int] = []
    run_jobs([job], progress=lambda d, done, total: seen.append(done))
    data = read_dataset(path)
    assert len(data.first_pass()) == 4 and len(data.pairs()) == 2 and not data.failures
    assert data.header["cpu_limit"] == limit.to_dict()
    assert seen[-1] == job.total
    assert not list(tmp_path.glob(".*.job.json"))


@pytest.mark.slow
@pytest.mark.skipif(NO_QUOTA is not None, reason=f"CPU quotas unavailable here: {NO_QUOTA}")
def test_quota_job_runs_under_its_cgroup_and_cleans_up(tiny_config, tmp_path, monkeypatch):
    import shoal.devices.child as child_module

    created = []

    def recording(limit, pid=None):
        group = apply_cpu_limit(limit, pid)
        created.append((group, (group / "cgroup.procs").read_text().split()))
        return group

    monkeypatch.setattr(child_module, "apply_cpu_limit", recording)
    job = prepare_job("slow", tiny_config, tmp_path / "m.jsonl", SamplerSettings(3, seed=0),
                      TimingSettings(repeats=3, warmup=1), CpuLimit(0.5, (0,)), remeasure=0.0)
    run_jobs([job])
    assert len(read_dataset(tmp_path / "m.jsonl").first_pass()) == 3
    [(group, procs)] = created
    assert procs and group.name.startswith("shoal-") and not group.exists()


def test_a_quota_equal_to_the_pinned_cores_needs_no_cgroup():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert apply_cpu_limit(CpuLimit(1.0, (0,)), pid=child.pid) is None
        assert os.sched_getaffinity(child.pid) == {sorted(os.sched_getaffinity(0))[0]}
    finally:
        child.kill()
        child.wait()


@pytest.mark.skipif(NO_QUOTA is not None, reason=f"CPU quotas unavailable here: {NO_QUOTA}")
def test_cgroups_left_by_a_killed_run_are_removed_and_live_ones_kept():
    import time

    from shoal.devices.emulation import CGROUP_ROOT, cgroup_flavour, remove_stale_cgroups

    base = CGROUP_ROOT / "cpu" if cgroup_flavour() == "v1" else CGROUP_ROOT
    stale = base / "shoal-staletest"
    stale.mkdir(exist_ok=True)
    live = apply_cpu_limit(CpuLimit(0.9, None))   # this process is in it: never stale
    try:
        assert stale not in remove_stale_cgroups()   # too young yet: it may be a run starting now
        removed = remove_stale_cgroups(now=time.time() + 3600)
        assert stale in removed and not stale.exists()
        assert live is not None and live.exists() and live not in removed
    finally:
        remove_cgroup(live)
        if stale.exists():
            stale.rmdir()
