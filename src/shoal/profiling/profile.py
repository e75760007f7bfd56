"""The device profile directory that `shoal profile` writes, and reading it back.

    <out>/profile.json                 device probe, cpu limit, teacher family, sampler and
                                       timing settings, noise floor, every predictor's metrics,
                                       which predictor is chosen and why
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

import shoal
from shoal.devices.emulation import CpuLimit
from shoal.errors import ConfigError, DataError
from shoal.models.config import ViTConfig
from shoal.predictors.base import LatencyPredictor, load_predictor, save_predictor
from shoal.predictors.settings import TrainSettings
from shoal.predictors.training import PredictorSuite, fit_predictors
from shoal.profiling.dataset import LatencyDataset, read_dataset
from shoal.profiling.jobs import ProgressFn, run_jobs
from shoal.profiling.machine import DeviceProbe, probe_device
from shoal.profiling.runner import DatasetMismatch, MeasureFn, MeasurementJob, prepare_job
from shoal.profiling.settings import SamplerSettings, TimingSettings
from shoal.utils.io import atomic_write_json, sha256_file

logger = logging.getLogger(__name__)

FORMAT = "shoal-device-profile"
VERSION = 1
PROFILE_FILE = "profile.json"
DATASET_FILE = "measurements.jsonl"


@dataclass(frozen=True)
class DeviceProfile:
    """A loaded device profile.

    Attributes:
        path: The profile directory.
        name: Device name it was measured as.
        probe: The machine it was measured on.
        cpu_limit: Quota and pinning the measurements ran under (serve under the same).
        threads: Torch threads of the measurements.
        config: Teacher family.
        teacher_source: What teacher the user named (timm name, checkpoint, default id).
        predictor: The chosen latency predictor.
        metrics: Noise floor, every predictor's validation and test metrics, the choice and why.
        data: The whole `profile.json`.
    """

    path: Path
    name: str
    probe: DeviceProbe
    cpu_limit: CpuLimit
    threads: int
    config: ViTConfig
    teacher_source: str
    predictor: LatencyPredictor
    metrics: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def family(self) -> str:
        return self.config.fingerprint()

    @property
    def chosen(self) -> str:
        return str(self.metrics.get("chosen", self.predictor.kind))

    @property
    def noise_floor(self) -> dict[str, Any] | None:
        return self.metrics.get("noise_floor")

    @property
    def rpc_ms(self) -> float | None:
        """Round trip of one runtime call to this device beyond compute (`shoal.runtime.overhead`), in the
        statistic its predictors learn: the mean under a CPU quota, else the median (ADR 006)."""
        rpc = self.data.get("rpc")
        if not isinstance(rpc, dict) or "median_ms" not in rpc:
            return None
        key = "mean_ms" if self.data.get("target") == "mean" and rpc.get("mean_ms") is not None else "median_ms"
        return float(rpc[key])


def measuring_conditions(dataset: LatencyDataset, limit: CpuLimit) -> dict[str, Any]:
    """How busy the machine was while measuring: load average, and wall / CPU time per call
    against what the quota alone explains (1 / quota, or 1 unlimited)."""
    first = dataset.first_pass()
    ratios = [m.stats.median_ms / m.stats.cpu_ms for m in first if m.stats.cpu_ms]
    expected = 1.0 / min(limit.quota, 1.0) if limit.quota is not None else 1.0
    observed = float(np.median(ratios)) if ratios else None
    loads = [m.loadavg for m in first]
    return {"loadavg_mean": round(float(np.mean(loads)), 2) if loads else None,
            "wall_over_cpu_median": round(observed, 3) if observed else None,
            "wall_over_cpu_expected": round(expected, 3),
            "busy": bool(observed and observed > 1.25 * expected)}


def write_profile(out: Path, name: str, probe: DeviceProbe, suite: PredictorSuite, *, teacher_source: str,
                  train: TrainSettings, rpc: dict[str, Any] | None = None) -> Path:
    """Save every predictor of `suite` and then `profile.json` into `out` (the dataset is already there)."""
    dataset = read_dataset(out / DATASET_FILE)
    header = dataset.header
    predictors = {}
    for kind, result in suite.results.items():
        weights, desc = save_predictor(result.predictor, out, f"predictor-{kind}")
        predictors[kind] = {"files": [weights.name, desc.name], **result.to_dict()}
    data = {
        "format": FORMAT, "version": VERSION, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "shoal_version": getattr(shoal, "__version__", "unknown"),
        "device": {"name": name, "probe": probe.to_dict(), "cpu_limit": header["cpu_limit"],
                   "threads": header["timing"]["threads"], "device": header["timing"]["device"]},
        "teacher": {"source": teacher_source, "family": header["family"], "config": header["config"]},
        "sampler": header["sampler"], "timing": header["timing"], "training": train.to_dict(),
        "measurements": {"file": DATASET_FILE, "sha256": sha256_file(out / DATASET_FILE),
                         "measured": len(dataset.first_pass()), "remeasured": len(dataset.pairs()),
                         "failed": len(dataset.failures)},
        "conditions": measuring_conditions(dataset, CpuLimit.from_dict(header["cpu_limit"])),
        "noise_floor": suite.noise.to_dict() if suite.noise else None,
        "target": suite.target, "split": suite.split, "predictors": predictors, "chosen": suite.chosen,
        "reason": suite.reason,
        "rpc": rpc,
    }
    atomic_write_json(out / PROFILE_FILE, data)
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
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise DataError(f"{file} is not a shoal device profile (format {data.get('format')!r})"
                        if isinstance(data, dict) else f"{file} is not a shoal device profile")
    if data.get("version") != VERSION:
        raise DataError(f"{file} has profile version {data.get('version')!r}; this shoal reads version {VERSION}; "
                        "profile the device again")
    try:
        device, teacher = data["device"], data["teacher"]
        config = ViTConfig.from_dict(teacher["config"])
        chosen = data["chosen"]
        probe = DeviceProbe.from_dict(device["probe"])
        cpu_limit = CpuLimit.from_dict(device["cpu_limit"])
        threads = int(device["threads"])
    except (KeyError, TypeError, ValueError, ConfigError) as exc:
        raise DataError(f"{file} is missing or has a bad field ({type(exc).__name__}: {exc})") from None
    if config.fingerprint() != teacher.get("family"):
        raise DataError(f"{file}: teacher family {teacher.get('family')!r} does not match its config "
                        f"({config.fingerprint()!r}); the file was altered")
    predictor = load_predictor(directory, f"predictor-{chosen}")
    if predictor.family != config.fingerprint():
        raise DataError(f"{directory}: predictor-{chosen} is for family {predictor.family!r}, the profile for "
                        f"{config.fingerprint()!r}")
    metrics = {k: data.get(k) for k in ("noise_floor", "predictors", "chosen", "reason", "split", "target")}
    return DeviceProfile(directory, str(device["name"]), probe, cpu_limit, threads, config,
                         str(teacher.get("source", "")), predictor, metrics, data)


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


class CallOverhead(Protocol):
    """What a call-overhead measurement reports (a `LatencyStats` of the calls)."""

    @property
    def median_ms(self) -> float: ...
    @property
    def mean_ms(self) -> float: ...
    @property
    def n(self) -> int: ...

    def to_dict(self) -> dict[str, Any]: ...


OverheadFn = Callable[[CpuLimit, Sequence[int], int], CallOverhead]
"""Measures one runtime call's cost beyond compute on a device: (limit, input shape, feature width).
The runtime provides it (`shoal.runtime.overhead.measure_rpc`); profiling, below the runtime,
takes it as an argument."""


def profile_devices(requests: Sequence[ProfileRequest], config: ViTConfig, *, sampler: SamplerSettings,
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
        busy = profile.data["conditions"]
        if busy["busy"]:
            logger.warning(f"{req.name}: the machine was busy while measuring (calls took "
                f"{busy['wall_over_cpu_median']:.2f}x their CPU time, {busy['wall_over_cpu_expected']:.2f}x expected; "
                f"load average {busy['loadavg_mean']}): latencies are inflated and noisy; profile again when idle")
        profiles.append(profile)
    return profiles


def _measure_overhead(overhead: OverheadFn, req: ProfileRequest, config: ViTConfig) -> dict[str, Any] | None:
    """The device's runtime call overhead under its limit (None, said in one line, if it cannot be measured)."""
    try:
        stats = overhead(req.cpu_limit, config.input_shape, config.embed_dim)
    except Exception as exc:  # a probe failure must not lose the measured profile
        logger.warning(f"{req.name}: could not measure the RPC overhead ({type(exc).__name__}: {exc}); "
            "the planner will count only the link")
        return None
    logger.info(f"{req.name}: one runtime call costs {stats.median_ms:.2f} ms beyond compute (median of {stats.n}; "
        f"mean {stats.mean_ms:.2f} ms)")
    return stats.to_dict()
