"""The profiling runner: time sampled sub-model shapes and append them to a dataset.

A job is a list of (shape, pass) items still to time for one device. It runs
in this process, or, for an emulated device (`CpuLimit`), in a child process
(`python -m shoal.profiling.runner JOB.json`) that the parent pins and puts
under the quota cgroup before telling it to start. Either way every item is
appended to the dataset as soon as it is timed, so an interrupted run
resumes where it stopped (`prepare_job` skips what the file already holds),
and a shape that fails (out of memory, a build error) is recorded as a
failure and the run goes on.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import shutil
import signal
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from shoal.devices.emulation import CpuLimit
from shoal.errors import ConfigError
from shoal.models.config import TeacherConfig, config_from_dict
from shoal.models.partition import SubModelShape
from shoal.models.surgery import build_submodel, example_input
from shoal.profiling.dataset import Failure, Measurement, header_mismatch, make_header, read_dataset
from shoal.profiling.sampling import sample_shapes, shape_to_spec
from shoal.profiling.settings import SamplerSettings, TimingSettings
from shoal.profiling.timing import LatencyStats, measure_latency, peak_memory_bytes
from shoal.utils.jsonl import appender, repair_tail

logger = logging.getLogger(__name__)

REMEASURE_FRACTION = 0.15


class DatasetMismatch(ConfigError):
    """An existing dataset was measured under other conditions than the run asks for."""


@dataclass(frozen=True)
class WorkItem:
    """One shape to time in one pass (1: main pass, 2: re-measurement)."""

    index: int
    pass_: int
    shape: SubModelShape


MeasureFn = Callable[[TeacherConfig, SubModelShape, TimingSettings], tuple[LatencyStats, int, int]]


def measure_shape(config: TeacherConfig, shape: SubModelShape, timing: TimingSettings) -> tuple[LatencyStats, int, int]:
    """Build the shape's sub-model (random weights) and time it: (stats, weight bytes, activation bytes)."""
    model = build_submodel(config, shape_to_spec(config, shape), device=timing.device)
    x = example_input(config, tokens=shape.tokens)   # a text shape at its own length
    weights, activations = peak_memory_bytes(model, x, timing.device)
    stats = measure_latency(model, x, repeats=timing.repeats, warmup=timing.warmup,
                            threads=timing.threads, device=timing.device, budget_ms=timing.budget_ms)
    return stats, weights, activations


def time_items(config: TeacherConfig, items: Sequence[WorkItem], dataset: Path, timing: TimingSettings,
               measure: MeasureFn = measure_shape, on_item: Callable[[], None] | None = None) -> int:
    """Time `items` in this process, appending each result to `dataset`; returns the failures.

    The item being timed is noted in a marker file beside the dataset, so that if the
    process dies on it (the kernel's out-of-memory killer, a segfault) the next run
    records it as a failure instead of dying on it again (`prepare_job`).
    """
    marker = current_marker(dataset)
    try:
        return _time_items(config, items, dataset, timing, measure, on_item, marker)
    except (KeyboardInterrupt, SystemExit):  # stopped on purpose: not a crash of the shape being timed
        marker.unlink(missing_ok=True)
        raise


def _time_items(config: TeacherConfig, items: Sequence[WorkItem], dataset: Path, timing: TimingSettings,
                measure: MeasureFn, on_item: Callable[[], None] | None, marker: Path) -> int:
    failed: set[str] = set()
    with appender(dataset) as out:
        for item in items:
            sid = item.shape.id
            if item.pass_ > 1 and sid in failed:  # its first pass failed: nothing to compare
                if on_item is not None:
                    on_item()
                continue
            marker.write_text(json.dumps({"index": item.index, "pass": item.pass_, "shape": item.shape.to_dict()}))
            start = time.perf_counter()
            try:
                stats, weights, activations = measure(config, item.shape, timing)
            except Exception as exc:  # out of memory, a build error: record it and go on
                failed.add(sid)
                message = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
                out.write(Failure(item.index, item.pass_, sid, item.shape, message))
                gc.collect()
                if timing.device == "cuda":
                    torch.cuda.empty_cache()
            else:
                build_ms = (time.perf_counter() - start) * 1e3 - stats.n * stats.mean_ms
                out.write(Measurement(item.index, item.pass_, sid, item.shape, stats, weights, activations,
                                      max(build_ms, 0.0), round(os.getloadavg()[0], 2)))
            if on_item is not None:
                on_item()
    marker.unlink(missing_ok=True)
    return len(failed)


def current_marker(dataset: Path) -> Path:
    """The file naming the item a measuring process is timing right now."""
    return dataset.with_name(f".{dataset.name}.current")


def _record_crash(dataset: Path, done: set[tuple[str, int]]) -> None:
    """If a run died while timing an item (its marker is left), record that item as a failure."""
    marker = current_marker(dataset)
    try:
        data = json.loads(marker.read_text())
        item = WorkItem(int(data["index"]), int(data["pass"]), SubModelShape.from_dict(data["shape"]))
    except (OSError, ValueError, KeyError, TypeError, ConfigError):
        marker.unlink(missing_ok=True)
        return
    sid = item.shape.id
    if (sid, item.pass_) not in done:
        with appender(dataset) as out:
            out.write(Failure(item.index, item.pass_, sid, item.shape, "the measuring process died while timing "
                              "this shape (killed for lack of memory?); skipped"))
        logger.warning(f"{dataset}: the last run died while timing shape {item.index} (pass {item.pass_}); "
            "recorded it as a failure and going on")
    marker.unlink(missing_ok=True)


@dataclass(frozen=True)
class MeasurementJob:
    """What is left to time for one device.

    Attributes:
        name: Device name (for progress and messages).
        config: Teacher family.
        dataset: The dataset file the results are appended to.
        items: Items still to time, pass 1 first.
        total: Items of the whole run (done ones included), for the progress bar.
        timing: How to time.
        cpu_limit: Emulated device limit (a child process runs under it), or unlimited.
    """

    name: str
    config: TeacherConfig
    dataset: Path
    items: tuple[WorkItem, ...]
    total: int
    timing: TimingSettings
    cpu_limit: CpuLimit = CpuLimit()

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "config": self.config.to_dict(), "dataset": str(self.dataset),
                "items": [{"index": i.index, "pass": i.pass_, "shape": i.shape.to_dict()} for i in self.items],
                "total": self.total, "timing": self.timing.to_dict(), "cpu_limit": self.cpu_limit.to_dict()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MeasurementJob:
        items = tuple(WorkItem(int(i["index"]), int(i["pass"]), SubModelShape.from_dict(i["shape"]))
                      for i in data["items"])
        return cls(data["name"], config_from_dict(data["config"]), Path(data["dataset"]), items,
                   int(data["total"]), TimingSettings(**data["timing"]), CpuLimit.from_dict(data["cpu_limit"]))


def prepare_job(name: str, config: TeacherConfig, dataset: Path, sampler: SamplerSettings, timing: TimingSettings,
                cpu_limit: CpuLimit = CpuLimit(), *, resume: bool = True, teacher_source: str = "",
                remeasure: float = REMEASURE_FRACTION) -> MeasurementJob:
    """Sample the shapes, open (or resume) the dataset and list what is left to time.

    Args:
        remeasure: Share of the shapes timed again at the end (the noise floor).
        resume: Keep what `dataset` already holds if it was taken under the same conditions;
            otherwise (or with resume=False) an existing file is moved aside, never deleted.

    Raises:
        ConfigError: resuming a dataset taken under other conditions.
        DataError: the dataset is corrupt (other than a truncated last line).
    """
    if not 0.0 <= remeasure <= 1.0:
        raise ConfigError(f"remeasure must be a share between 0 and 1, got {remeasure!r}")
    header = make_header(family=config.fingerprint(), config=config.to_dict(), sampler=sampler.to_dict(),
                         timing=timing.to_dict(), cpu_limit=cpu_limit, teacher_source=teacher_source)
    done: set[tuple[str, int]] = set()
    if dataset.is_file() and resume:
        removed = repair_tail(dataset)
        if removed:
            logger.warning(f"{dataset}: dropped a truncated last line ({removed} bytes, a run stopped mid-write)")
    if dataset.is_file() and dataset.stat().st_size and resume:
        existing = read_dataset(dataset)
        mismatch = header_mismatch(existing.header, header)
        if mismatch:
            raise DatasetMismatch(f"{dataset} was measured under other conditions ({'; '.join(mismatch)}); "
                                  "pass --no-resume to start over (the old file is kept beside it)")
        if current_marker(dataset).exists():
            _record_crash(dataset, existing.done())
            existing = read_dataset(dataset)
        done = existing.done() | {(f.id, 2) for f in existing.failures if f.pass_ == 1}
    elif dataset.is_file():
        current_marker(dataset).unlink(missing_ok=True)
        aside = dataset.with_name(f"{dataset.name}.{time.strftime('%Y%m%d-%H%M%S')}.bak")
        shutil.move(str(dataset), aside)
        logger.info(f"moved the previous dataset aside to {aside}")
    if not dataset.is_file() or not dataset.stat().st_size:
        dataset.parent.mkdir(parents=True, exist_ok=True)
        with appender(dataset) as out:
            out.write(header)
    shapes = sample_shapes(config, sampler)
    order = np.random.default_rng(sampler.seed + 1).permutation(len(shapes))
    again = sorted(order[: max(2, round(remeasure * len(shapes)))].tolist()) if remeasure > 0 else []
    wanted = [WorkItem(i, 1, s) for i, s in enumerate(shapes)] + [WorkItem(i, 2, shapes[i]) for i in again]
    todo = tuple(item for item in wanted if (item.shape.id, item.pass_) not in done)
    return MeasurementJob(name, config, dataset, todo, len(wanted), timing, cpu_limit)


def explicit_job(name: str, config: TeacherConfig, dataset: Path, shapes: Sequence[SubModelShape],
                 timing: TimingSettings, cpu_limit: CpuLimit = CpuLimit()) -> MeasurementJob:
    """A job timing the given shapes once each (pass 1, indices in order) into a new dataset file."""
    if dataset.exists():
        raise ConfigError(f"{dataset} already exists; explicit jobs write a new dataset")
    dataset.parent.mkdir(parents=True, exist_ok=True)
    with appender(dataset) as out:
        out.write(make_header(family=config.fingerprint(), config=config.to_dict(),
                              sampler={"explicit": len(shapes)}, timing=timing.to_dict(), cpu_limit=cpu_limit))
    items = tuple(WorkItem(i, 1, shape) for i, shape in enumerate(shapes))
    return MeasurementJob(name, config, dataset, items, len(items), timing, cpu_limit)


def _child_main(job_file: str) -> int:
    """Entry of the child process: wait for the parent's go (the limit is set), then time the items."""
    job = MeasurementJob.from_dict(json.loads(Path(job_file).read_text()))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # the parent stops us: clean exit, no crash marker
    if sys.stdin.readline().strip() != "go":
        return 3  # the parent could not set the limit and gave up
    torch.set_num_threads(job.timing.threads)
    time_items(job.config, job.items, job.dataset, job.timing)
    return 0


if __name__ == "__main__":
    sys.exit(_child_main(sys.argv[1]))
