"""Running measurement jobs: in this process or in limited child processes, with a progress bar.

Jobs of emulated devices whose cores do not overlap may run at the same
time (`concurrent=True`); each child is pinned to its own cores and has its
own quota. Whether that changes the measurements is recorded in
docs/decisions (the default is sequential).
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence

from shoal.devices.child import LimitedChild
from shoal.devices.emulation import quota_unavailable_reason
from shoal.errors import ConfigError, PlatformError
from shoal.profiling.runner import MeasureFn, MeasurementJob, measure_shape, time_items
from shoal.utils.io import atomic_write_json

POLL_S = 0.2


class JobRun:
    """A job running in this process or in a child process; `poll` says how far it got."""

    def __init__(self, job: MeasurementJob, measure: MeasureFn | None = None) -> None:
        self.job = job
        self._measure = measure
        self._child: LimitedChild | None = None
        self._job_file = job.dataset.with_name(f".{job.dataset.name}.job.json")
        self._log_file = job.dataset.with_name(f".{job.dataset.name}.child.log")
        self._start_size = job.dataset.stat().st_size if job.dataset.is_file() else 0
        self.done_items = 0

    @property
    def in_child(self) -> bool:
        return self.job.cpu_limit.is_limited

    def start(self, on_item: Callable[[], None] | None = None) -> None:
        """Run in-process to the end (no limit), or start the child and put it under the limit."""
        if not self.job.items:
            return
        if not self.in_child:
            time_items(self.job.config, self.job.items, self.job.dataset, self.job.timing,
                       self._measure or measure_shape, on_item)
            return
        if self._measure is not None:
            raise ConfigError("a custom measure function cannot run in a child process")
        if self.job.cpu_limit.quota is not None and (reason := quota_unavailable_reason()):
            raise PlatformError(f"cannot emulate device {self.job.name!r}: {reason}")
        atomic_write_json(self._job_file, self.job.to_dict())
        with open(self._log_file, "wb") as log:  # a file, not a pipe: a chatty child cannot block on it
            self._child = LimitedChild([sys.executable, "-m", "shoal.profiling.runner", str(self._job_file)],
                                       self.job.cpu_limit, who=f"the measuring process of {self.job.name!r}",
                                       stdin=subprocess.PIPE, stdout=None, stderr=log)
        try:
            proc = self._child.proc
            assert proc.stdin is not None
            proc.stdin.write(b"go\n")   # limited now: it may start timing
            proc.stdin.close()
        except BaseException:
            self.stop()
            raise

    def poll(self) -> bool:
        """Update `done_items` from the dataset file; True while the child still runs."""
        if self._child is None:
            self.done_items = len(self.job.items)
            return False
        with open(self.job.dataset, "rb") as fh:
            fh.seek(self._start_size)
            self.done_items = fh.read().count(b"\n")
        return self._child.running

    def finish(self) -> None:
        """Wait for the child, clean up, and raise if it failed."""
        if self._child is None:
            return
        try:
            code = self._child.proc.wait()
            if code != 0:
                err = self._log_file.read_text(errors="replace") if self._log_file.is_file() else ""
                lines = [ln for ln in err.splitlines() if ln.strip()]
                why = lines[-1] if lines else ("killed (out of memory?)" if code == -9 else "no message")
                raise PlatformError(f"the measuring process of device {self.job.name!r} died (exit {code}): {why}; "
                                    "what it measured is kept: run again to resume (the shape it was timing is "
                                    "then recorded as a failure)")
        finally:
            self.stop()

    def stop(self) -> None:
        """Stop the child if it still runs; remove its cgroup and job file (what was measured stays)."""
        if self._child is not None:
            self._child.stop()
        self._job_file.unlink(missing_ok=True)
        if self._child is not None and self._child.proc.returncode is not None:
            self._log_file.unlink(missing_ok=True)


def waves(jobs: Sequence[MeasurementJob], concurrent: bool) -> list[list[MeasurementJob]]:
    """Groups of jobs that may run together: child jobs on disjoint cores (one job per group if not concurrent)."""
    if not concurrent:
        return [[job] for job in jobs]
    groups: list[list[MeasurementJob]] = []
    for job in jobs:
        cpus = job.cpu_limit.cpus
        for group in groups:
            taken = [set(j.cpu_limit.cpus or ()) for j in group]
            if cpus is not None and all(j.cpu_limit.cpus is not None for j in group) \
                    and not any(set(cpus) & t for t in taken):
                group.append(job)
                break
        else:
            groups.append([job])
    return groups


ProgressFn = Callable[[str, int, int], None]
"""Progress of a long step: (description, done, total). The one progress interface of shoal: the
library calls it, the command line draws it (`shoal.commands._common.progress_bars`)."""


def run_jobs(jobs: Sequence[MeasurementJob], *, concurrent: bool = False, measure: MeasureFn | None = None,
             progress: ProgressFn | None = None) -> None:
    """Run every job to the end (a limited job in a child under its `CpuLimit`).

    Args:
        progress: Gets (f"profiling {name}", done, total) as shapes are timed.

    On an interrupt or an error the children are stopped and their cgroups
    removed; whatever was measured stays in the datasets (run again to resume).
    """
    def report(job: MeasurementJob, done: int) -> None:
        if progress is not None:
            progress(f"profiling {job.name}", done, job.total)

    for job in jobs:
        report(job, job.total - len(job.items))
    for wave in waves(jobs, concurrent):
        runs = [JobRun(job, measure) for job in wave]
        try:
            for run in runs:
                counter = iter(range(run.job.total - len(run.job.items) + 1, run.job.total + 1))
                run.start(on_item=_reporter(report, run.job, counter))
            while True:
                running = [run.poll() for run in runs]
                for run in runs:
                    if run.in_child:
                        report(run.job, run.job.total - len(run.job.items) + run.done_items)
                if not any(running):
                    break
                time.sleep(POLL_S)
            for run in runs:
                run.finish()
                report(run.job, run.job.total)
        finally:
            for run in runs:
                run.stop()


def _reporter(report: Callable[[MeasurementJob, int], None], job: MeasurementJob, counter: Iterator[int]
              ) -> Callable[[], None]:
    """The callback one job calls after each item: report how many of its items are done."""
    return lambda: report(job, next(counter))
