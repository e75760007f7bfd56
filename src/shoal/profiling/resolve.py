"""A device's latency predictor for the planner: its measured profile, else a catalog estimate.

`load_device_latency` is what the planner calls per device; `ensure_profiles`
profiles every device of a set that lacks a valid profile (the default
device set's emulated devices on a fresh checkout).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from shoal.devices.catalog import Board, board
from shoal.devices.emulation import CpuLimit
from shoal.devices.spec import DeviceSet, DeviceSpec
from shoal.errors import ConfigError, DataError
from shoal.models.config import TeacherConfig
from shoal.models.teacher import Teacher
from shoal.predictors.base import LatencyPredictor
from shoal.predictors.features import Shape, counts
from shoal.predictors.settings import TrainSettings
from shoal.profiling.jobs import ProgressFn
from shoal.profiling.profile import (
    PROFILE_FILE,
    DeviceProfile,
    OverheadFn,
    ProfileRequest,
    load_profile,
    profile_devices,
)
from shoal.profiling.runner import MeasureFn
from shoal.profiling.settings import SamplerSettings, TimingSettings

logger = logging.getLogger(__name__)

PROFILES_DIR = Path(".shoal") / "profiles"
DEVICE_SET_SAMPLES = 300  # per device of a set: emulated slow devices take several times longer per shape


class CatalogPredictor(LatencyPredictor):
    """An analytic estimate for a catalog board (`shoal.devices.catalog`); never a measurement."""

    is_estimate = True

    def __init__(self, config: TeacherConfig, board: Board) -> None:
        super().__init__(config, "catalog-estimate")
        self.board = board

    def predict_array(self, shapes: Sequence[Shape]) -> np.ndarray:
        return np.array([self.board.estimate_ms(self.config, *counts(s)) for s in shapes], dtype=np.float64)

    def __repr__(self) -> str:
        return f"CatalogPredictor(board={self.board.name!r}, family={self.family!r}, estimate)"


def profile_command(device: DeviceSpec, out: str | Path) -> str:
    """The `shoal profile` command line that profiles `device` into `out`."""
    cmd = f"shoal profile --device-name {device.name} --out {out} --threads {device.threads}"
    if device.cpu_quota is not None:
        cmd += f" --cpu-quota {device.cpu_quota:g}"
    if device.cpus is not None:
        cmd += f" --cpus {','.join(map(str, device.cpus))}"
    if device.accelerator != "cpu":
        cmd += f" --device {device.accelerator}"
    return cmd


def _limit_text(limit: CpuLimit) -> str:
    """`limit.describe()`, with the CFS period where a quota cgroup is applied."""
    applied = limit.quota is not None and (limit.cpus is None or limit.quota < len(limit.cpus))
    return limit.describe() + (f" (CFS period {limit.period_us} us)" if applied else "")


def check_profile_matches(profile: DeviceProfile, device: DeviceSpec, config: TeacherConfig) -> None:
    """Raise `ConfigError` if the profile is for another family or other serving conditions."""
    where = f"device {device.name!r}: profile {profile.path}"
    if profile.family != config.fingerprint():
        raise ConfigError(
            f"{where} was measured for teacher family {profile.family!r} ({profile.teacher_source or 'unnamed'}), "
            f"but this teacher's family is {config.fingerprint()!r}; profile it for this teacher: "
            f"{profile_command(device, profile.path)} --model ...")
    limit = device.cpu_limit
    same_quota = (profile.cpu_limit.quota is None) == (limit.quota is None) and (
        limit.quota is None or math.isclose(profile.cpu_limit.quota or 0.0, limit.quota, rel_tol=1e-6))
    applies_quota = limit.quota is not None and (limit.cpus is None or limit.quota < len(limit.cpus))
    same_period = not applies_quota or profile.cpu_limit.period_us == limit.period_us
    if not same_quota or not same_period or profile.cpu_limit.cpus != limit.cpus:
        raise ConfigError(
            f"{where} was measured under {_limit_text(profile.cpu_limit)} but the device is set to "
            f"{_limit_text(limit)}; a device must serve under the limit it was profiled under: "
            f"{profile_command(device, profile.path)}")
    if profile.threads != device.threads:
        raise ConfigError(f"{where} was measured with {profile.threads} thread(s) but the device uses "
                          f"{device.threads}; profile it again: {profile_command(device, profile.path)}")
    measured_on = profile.document.device.device
    if measured_on != device.accelerator:
        raise ConfigError(f"{where} was measured on {measured_on} but the device runs on {device.accelerator} "
                          f"(`accelerator:`); profile it there: {profile_command(device, profile.path)}")


def load_device_latency(device: DeviceSpec, config: TeacherConfig) -> LatencyPredictor:
    """The latency predictor of `device` for teacher family `config` (see `load_device_costs`)."""
    return load_device_costs(device, config)[0]


def load_device_costs(device: DeviceSpec, config: TeacherConfig) -> tuple[LatencyPredictor, float | None]:
    """The latency predictor of `device` for teacher family `config`, and its runtime-call overhead.

    A measured profile (`device.profile`, when that directory exists) wins, with the call
    overhead it measured (`DeviceProfile.rpc_ms`); else the catalog board (`device.catalog`)
    gives an estimate (`is_estimate=True`) and the overhead is unknown (None).

    Raises:
        ConfigError: the profile is for another family, thread count or CPU limit; or the device
            names neither a profile nor a catalog board (says what to run).
        DataError: the profile directory exists but is unfinished or corrupt, or the device's
            profile path holds nothing and it has no catalog board (says what to run).
    """
    if device.profile is not None and Path(device.profile).exists():
        profile = load_profile(device.profile)
        check_profile_matches(profile, device, config)
        return profile.predictor, profile.rpc_ms
    if device.catalog is not None:
        return CatalogPredictor(config, board(device.catalog)), None
    if device.profile is not None:
        raise DataError(f"device {device.name!r} has no profile at {device.profile} and no catalog board; "
                         f"measure it: {profile_command(device, device.profile)}")
    raise ConfigError(f"device {device.name!r} has neither a profile nor a catalog board; measure it "
                     f"({profile_command(device, PROFILES_DIR / device.name)}) and set `profile:`, or set "
                     "`catalog:` to a board for a rough estimate")


def _profile_problem(device: DeviceSpec, path: Path, config: TeacherConfig) -> str | None:
    """None if `path` holds a profile that `device` can use for `config`, else why not."""
    if not (path / PROFILE_FILE).is_file():
        return "no profile yet"
    try:
        check_profile_matches(load_profile(path), device, config)
    except (ConfigError, DataError) as exc:
        return str(exc)
    return None


def ensure_profiles(devices: DeviceSet, teacher: TeacherConfig | Teacher, *, samples: int = DEVICE_SET_SAMPLES,
                    workdir: str | Path | None = None, seed: int = 0, concurrent: bool = False,
                    timing: TimingSettings | None = None, train: TrainSettings = TrainSettings(),
                    progress: ProgressFn | None = None, measure: MeasureFn | None = None,
                    overhead: OverheadFn | None = None) -> DeviceSet:
    """Profile every device of `devices` that lacks a valid profile for this teacher; return the set with paths.

    A device with a catalog board and no profile path keeps its estimate. A device
    with neither gets `<workdir>/.shoal/profiles/<name>`. A profile for another
    family or other limits is measured again (its old dataset is moved aside, not
    deleted); an interrupted run resumes.

    Args:
        concurrent: Measure devices on disjoint cores at the same time (see docs/decisions).
        timing: Repeats and warm-up per shape; threads come from each device.
        progress: Gets (description, done, total) as shapes are timed.
        measure: Replace the timing of a shape (tests; unlimited devices only).
        overhead: Measures each device's runtime-call overhead (`shoal.runtime.overhead.measure_rpc`).
    """
    config, source = (teacher.config, teacher.source) if isinstance(teacher, Teacher) else (teacher, "")
    base = Path(workdir) if workdir is not None else Path.cwd()
    updated, requests = [], []
    for device in devices.devices:
        if device.profile is None and device.catalog is not None:
            updated.append(device)
            continue
        path = Path(device.profile) if device.profile is not None else base / PROFILES_DIR / device.name
        device = dataclasses.replace(device, profile=str(path))
        updated.append(device)
        problem = _profile_problem(device, path, config)
        if problem is not None:
            if problem != "no profile yet":
                logger.warning(f"{device.name}: measuring again ({problem})")
            requests.append((device, ProfileRequest(
                device.name, path, device.cpu_limit,
                dataclasses.replace(timing or TimingSettings(), threads=device.threads,
                                    device="cuda" if device.accelerator == "cuda" else "cpu"))))
    if requests:
        profile_devices([r for _, r in requests], config, sampler=SamplerSettings(samples, seed),
                        teacher_source=source, train=train, concurrent=concurrent, restart_mismatched=True,
                        measure=measure, overhead=overhead, progress=progress)
    return DeviceSet(tuple(updated), source=devices.source)
