"""The device profile directory that `shoal profile` writes, and reading it back.

    <out>/profile.json                 the `ProfileDocument` (`shoal.profiling.document`): device
                                       probe, cpu limit, teacher family, sampler and timing
                                       settings, noise floor, every predictor's metrics, which
                                       predictor is chosen and why, one call's overhead
    <out>/measurements.jsonl           the latency dataset (`shoal.profiling.dataset`)
    <out>/predictor-<kind>.safetensors one per trained predictor: its numbers
    <out>/predictor-<kind>.json        what it is (class, kind, family, teacher config)

Every file is written atomically; nothing is pickled. `profile.json` is
written last, so a directory without it is an unfinished profile (run the
same command again: it resumes).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import shoal
from shoal.devices.emulation import CpuLimit
from shoal.errors import DataError
from shoal.models.config import TeacherConfig, config_from_dict
from shoal.predictors.base import LatencyPredictor, load_predictor, save_predictor
from shoal.predictors.metrics import ErrorMetrics
from shoal.predictors.settings import TrainSettings
from shoal.predictors.training import PredictorSuite, fit_predictors
from shoal.profiling.dataset import LatencyDataset, read_dataset
from shoal.profiling.document import (
    Conditions,
    MeasurementSummary,
    PredictorEntry,
    ProfiledDevice,
    ProfileDocument,
    ProfiledTeacher,
)
from shoal.profiling.jobs import ProgressFn, run_jobs
from shoal.profiling.machine import DeviceProbe, probe_device
from shoal.profiling.runner import DatasetMismatch, MeasureFn, MeasurementJob, prepare_job
from shoal.profiling.settings import SamplerSettings, TimingSettings
from shoal.profiling.timing import LatencyStats
from shoal.utils.io import atomic_write_json, sha256_file

logger = logging.getLogger(__name__)

PROFILE_FILE = "profile.json"
DATASET_FILE = "measurements.jsonl"


@dataclass(frozen=True)
class DeviceProfile:
    """A loaded device profile: its directory, its profile.json and its chosen predictor.

    Attributes:
        path: The profile directory.
        document: The profile.json (`shoal.profiling.document.ProfileDocument`).
        predictor: The chosen latency predictor.
    """

    path: Path
    document: ProfileDocument
    predictor: LatencyPredictor

    @property
    def name(self) -> str:
        """Device name it was measured as."""
        return self.document.device.name

    @property
    def probe(self) -> DeviceProbe:
        """The machine it was measured on."""
        return self.document.device.probe

    @property
    def cpu_limit(self) -> CpuLimit:
        """Quota and pinning the measurements ran under (serve under the same)."""
        return self.document.device.cpu_limit

    @property
    def threads(self) -> int:
        return self.document.device.threads

    @property
    def config(self) -> TeacherConfig:
        return self.document.teacher.config

    @property
    def teacher_source(self) -> str:
        return self.document.teacher.source

    @property
    def family(self) -> str:
        return self.config.fingerprint()

    @property
    def chosen(self) -> str:
        return self.document.chosen

    @property
    def noise_floor(self) -> ErrorMetrics | None:
        return self.document.noise_floor

    @property
    def rpc_ms(self) -> float | None:
        """Round trip of one runtime call to this device beyond compute (`shoal.runtime.overhead`), in the
        statistic its predictors learn: the mean under a CPU quota, else the median (ADR 006)."""
        return self.document.rpc_ms


def measuring_conditions(dataset: LatencyDataset, limit: CpuLimit) -> Conditions:
    """How busy the machine was while measuring: load average, and wall / CPU time per call
    against what the quota alone explains (1 / quota, or 1 unlimited)."""
    first = dataset.first_pass()
    ratios = [m.stats.median_ms / m.stats.cpu_ms for m in first if m.stats.cpu_ms]
    expected = 1.0 / min(limit.quota, 1.0) if limit.quota is not None else 1.0
    observed = float(np.median(ratios)) if ratios else None
    loads = [m.loadavg for m in first]
    return Conditions(round(float(np.mean(loads)), 2) if loads else None, round(observed, 3) if observed else None,
                      round(expected, 3), bool(observed and observed > 1.25 * expected))


def write_profile(out: Path, name: str, probe: DeviceProbe, suite: PredictorSuite, *, teacher_source: str,
                  train: TrainSettings, rpc: LatencyStats | None = None) -> Path:
    """Save every predictor of `suite` and then `profile.json` into `out` (the dataset is already there)."""
    dataset = read_dataset(out / DATASET_FILE)
    header = dataset.header
    predictors = {}
    for kind, result in suite.results.items():
        weights, desc = save_predictor(result.predictor, out, f"predictor-{kind}")
        predictors[kind] = PredictorEntry(kind, (weights.name, desc.name), result.val, result.test,
                                          round(result.fit_s, 2))
    cpu_limit = CpuLimit.from_dict(header["cpu_limit"])
    document = ProfileDocument(
        created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), shoal_version=shoal.__version__,
        device=ProfiledDevice(name, probe, cpu_limit, int(header["timing"]["threads"]), header["timing"]["device"]),
        teacher=ProfiledTeacher(teacher_source, config_from_dict(header["config"])),
        sampler=SamplerSettings(**header["sampler"]), timing=TimingSettings(**header["timing"]), training=train,
        measurements=MeasurementSummary(DATASET_FILE, sha256_file(out / DATASET_FILE), len(dataset.first_pass()),
                                        len(dataset.pairs()), len(dataset.failures)),
        conditions=measuring_conditions(dataset, cpu_limit), noise_floor=suite.noise, target=suite.target,
        split=dict(suite.split), predictors=predictors, chosen=suite.chosen, reason=suite.reason, rpc=rpc)
    atomic_write_json(out / PROFILE_FILE, document.to_dict())
    return out / PROFILE_FILE


def load_profile(path: str | Path) -> DeviceProfile:
    """Read a profile directory (or its `profile.json`) and its chosen predictor.

    Raises:
        DataError: missing, unfinished or corrupt profile (names the file and what is wrong).
    """
    path = Path(path)
    directory = path.parent if path.name == PROFILE_FILE else path
    file = directory / PROFILE_FILE
    if not directory.is_dir():
        raise DataError(f"device profile {directory} does not exist; create it with `shoal profile --out {directory}`")
    if not file.is_file():
        raise DataError(f"{directory} holds no {PROFILE_FILE} (an unfinished profile?); run `shoal profile "
                        f"--out {directory}` again to finish it")
    try:
        data = json.loads(file.read_text())
    except json.JSONDecodeError as exc:
        raise DataError(f"{file} is not valid JSON ({exc})") from None
    document = ProfileDocument.from_dict(data, str(file))
    config = document.teacher.config
    predictor = load_predictor(directory, f"predictor-{document.chosen}")
    if predictor.family != config.fingerprint():
        raise DataError(f"{directory}: predictor-{document.chosen} is for family {predictor.family!r}, the profile "
                        f"for {config.fingerprint()!r}")
    return DeviceProfile(directory, document, predictor)


@dataclass(frozen=True)
class ProfileRequest:
    """One device to profile.

    Attributes:
        name: Device name.
        out: Profile directory.
        cpu_limit: Emulated limit (measured in a child process under it), or unlimited.
        timing: How each shape is timed (threads, device, repeats).
    """

    name: str
    out: Path
    cpu_limit: CpuLimit = CpuLimit()
    timing: TimingSettings = TimingSettings()


OverheadFn = Callable[[CpuLimit, Sequence[int], int], LatencyStats]
"""Measures one runtime call's cost beyond compute on a device: (limit, input shape, feature width).
The runtime provides it (`shoal.runtime.overhead.measure_rpc`); profiling, below the runtime,
takes it as an argument."""


def profile_devices(requests: Sequence[ProfileRequest], config: TeacherConfig, *, sampler: SamplerSettings,
                    teacher_source: str = "", train: TrainSettings = TrainSettings(), resume: bool = True,
                    restart_mismatched: bool = False, concurrent: bool = False, measure: MeasureFn | None = None,
                    overhead: OverheadFn | None = None, progress: ProgressFn | None = None
                    ) -> list[DeviceProfile]:
    """Measure every device (resuming what was measured), train its predictors, write its profile.

    Args:
        resume: Keep what a device's dataset already holds (same conditions).
        restart_mismatched: Start over (moving the old dataset aside) where a dataset was measured
            under other conditions, instead of raising `DatasetMismatch`.
        concurrent: Run emulated devices whose cores do not overlap at the same time.
        measure: Replace the timing of a shape (tests); only for unlimited devices.
        overhead: Measures the device's runtime-call overhead (None: not measured; the planner
            then counts only the link).
    """
    jobs: list[MeasurementJob] = []
    for req in requests:
        args = (req.name, config, req.out / DATASET_FILE, sampler, req.timing, req.cpu_limit)
        try:
            job = prepare_job(*args, resume=resume, teacher_source=teacher_source)
        except DatasetMismatch:
            if not restart_mismatched:
                raise
            logger.warning(f"{req.name}: its dataset was measured under other conditions; starting over")
            job = prepare_job(*args, resume=False, teacher_source=teacher_source)
        if job.items:  # the dataset will change: the old profile is stale until this run rewrites it
            (req.out / PROFILE_FILE).unlink(missing_ok=True)
        jobs.append(job)
    run_jobs(jobs, concurrent=concurrent, measure=measure, progress=progress)
    profiles = []
    for req in requests:
        dataset = read_dataset(req.out / DATASET_FILE)
        if dataset.failures:
            logger.warning(f"{req.name}: {len(dataset.failures)} shape(s) failed and were skipped, e.g. "
                f"{dataset.failures[0].error}")
        logger.info(f"{req.name}: training latency predictors on {len(dataset.first_pass())} measured shapes")
        suite = fit_predictors(config, dataset, train)
        probe = probe_device(req.timing.threads, req.timing.device)
        rpc = None if overhead is None else _measure_overhead(overhead, req, config)
        write_profile(req.out, req.name, probe, suite, teacher_source=teacher_source, train=train, rpc=rpc)
        profile = load_profile(req.out)
        busy = profile.document.conditions
        if busy.busy:
            logger.warning(f"{req.name}: the machine was busy while measuring (calls took "
                f"{busy.wall_over_cpu_median or 0:.2f}x their CPU time, {busy.wall_over_cpu_expected:.2f}x expected; "
                f"load average {busy.loadavg_mean}): latencies are inflated and noisy; profile again when idle")
        profiles.append(profile)
    return profiles


def _measure_overhead(overhead: OverheadFn, req: ProfileRequest, config: TeacherConfig) -> LatencyStats | None:
    """The device's runtime call overhead under its limit (None, said in one line, if it cannot be measured)."""
    try:
        stats = overhead(req.cpu_limit, config.input_shape, config.embed_dim)
    except Exception as exc:  # a probe failure must not lose the measured profile
        logger.warning(f"{req.name}: could not measure the RPC overhead ({type(exc).__name__}: {exc}); "
            "the planner will count only the link")
        return None
    logger.info(f"{req.name}: one runtime call costs {stats.median_ms:.2f} ms beyond compute (median of {stats.n}; "
        f"mean {stats.mean_ms:.2f} ms)")
    return stats
