"""profile.json as typed records: what `shoal profile` writes and the planner, `shoal predict`
and `shoal plan` read.

Read field by field (`shoal.utils.fields`); a bad, missing or unknown field is refused with
its dotted path. Profiles written before `n` replaced `calls` in the call-overhead record
still load.

    ProfileDocument
      format, version, created, shoal_version
      device        ProfiledDevice      name, the machine (probe), CPU limit, threads, cpu|cuda
      teacher       ProfiledTeacher     source and family (config)
      sampler, timing, training         the settings it was measured and trained with
      measurements  MeasurementSummary  the measurement file, its sha256 and counts
      conditions    Conditions          how busy the machine was
      noise_floor   ErrorMetrics        re-measured shapes against their first measurement
      target, split, predictors, chosen, reason
      rpc           LatencyStats        one runtime call's overhead (None: not measured)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from shoal.devices.emulation import CpuLimit
from shoal.errors import ConfigError, DataError
from shoal.models.config import TeacherConfig, config_from_dict
from shoal.predictors.metrics import ErrorMetrics
from shoal.predictors.settings import TrainSettings
from shoal.profiling.machine import DeviceProbe
from shoal.profiling.settings import SamplerSettings, TimingSettings
from shoal.profiling.timing import LatencyStats
from shoal.utils.fields import Fields, FlatRecord

FORMAT = "shoal-device-profile"
VERSION = 1


def _settings(f: Fields, key: str, cls: Any) -> Any:
    """A settings dataclass from its `to_dict` (its own validation applies)."""
    try:
        return cls(**f.raw(key))
    except (TypeError, ValueError, ConfigError) as exc:
        raise DataError(f"{f.path(key)}: {exc}") from None


@dataclass(frozen=True)
class ProfiledDevice:
    """The device as measured: its name, the machine, the CPU limit, threads and compute device."""

    name: str
    probe: DeviceProbe
    cpu_limit: CpuLimit
    threads: int
    device: str

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "probe": self.probe.to_dict(), "cpu_limit": self.cpu_limit.to_dict(),
                "threads": self.threads, "device": self.device}

    @classmethod
    def read(cls, f: Fields) -> ProfiledDevice:
        try:
            probe = DeviceProbe.from_dict(f.raw("probe"))
            limit = CpuLimit.from_dict(f.raw("cpu_limit"))
        except (KeyError, TypeError, ValueError, ConfigError) as exc:
            raise DataError(f"{f.where}: {type(exc).__name__}: {exc}") from None
        out = cls(f.text("name"), probe, limit, f.integer("threads"), f.choice("device", ("cpu", "cuda")))
        f.done()
        return out


@dataclass(frozen=True)
class ProfiledTeacher:
    """The teacher family the shapes were cut from, and what the user named it."""

    source: str
    config: TeacherConfig

    @property
    def family(self) -> str:
        return self.config.fingerprint()

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "family": self.family, "config": self.config.to_dict()}

    @classmethod
    def read(cls, f: Fields) -> ProfiledTeacher:
        try:
            config = config_from_dict(f.raw("config"))
        except ConfigError as exc:
            raise DataError(f"{f.where}.config: {exc}") from None
        family = f.text("family")
        if family != config.fingerprint():
            raise DataError(f"{f.where}: teacher family {family!r} does not match its config "
                            f"({config.fingerprint()!r}); the file was altered")
        out = cls(f.text("source"), config)
        f.done()
        return out


@dataclass(frozen=True)
class MeasurementSummary(FlatRecord):
    """The measurement file the predictors were trained on."""

    file: str
    sha256: str
    measured: int
    remeasured: int
    failed: int


@dataclass(frozen=True)
class Conditions(FlatRecord):
    """How busy the machine was: load average, and wall / CPU time per call against what the
    quota alone explains (`busy` when it is over 1.25× that)."""

    loadavg_mean: float | None
    wall_over_cpu_median: float | None
    wall_over_cpu_expected: float
    busy: bool


@dataclass(frozen=True)
class PredictorEntry:
    """One trained predictor of the profile: its files and its validation and test errors."""

    kind: str
    files: tuple[str, ...]
    val: ErrorMetrics
    test: ErrorMetrics
    fit_s: float

    def to_dict(self) -> dict[str, Any]:
        return {"files": list(self.files), "kind": self.kind, "val": self.val.to_dict(), "test": self.test.to_dict(),
                "fit_s": self.fit_s}

    @classmethod
    def read(cls, f: Fields) -> PredictorEntry:
        out = cls(f.text("kind"), f.strs("files"), f.record("val", ErrorMetrics.read),
                  f.record("test", ErrorMetrics.read), f.number("fit_s"))
        f.done()
        return out


def _rpc(f: Fields) -> LatencyStats:
    """The call-overhead record; `calls` is what profiles before `LatencyStats` named `n`, and
    they may lack `mean_ms` (null) and `min_ms`."""
    n = f.integer("n") if f.has("n") else f.integer("calls")
    median, p10 = f.number("median_ms"), f.number("p10_ms")
    mean = f.number("mean_ms", None)
    try:
        out = LatencyStats(median_ms=median, p10_ms=p10, p90_ms=f.number("p90_ms"),
                           mean_ms=median if mean is None else mean, min_ms=f.number("min_ms", p10), n=n,
                           warmup=f.integer("warmup", 0), threads=f.integer("threads", None),
                           device=f.text("device", None), cpu_ms=f.number("cpu_ms", None),
                           p95_ms=f.number("p95_ms", None))
    except ConfigError as exc:
        raise DataError(f"{f.where}: {exc}") from None
    f.done()
    return out


@dataclass(frozen=True)
class ProfileDocument:
    """The whole profile.json (see the module docstring)."""

    created: str
    shoal_version: str
    device: ProfiledDevice
    teacher: ProfiledTeacher
    sampler: SamplerSettings
    timing: TimingSettings
    training: TrainSettings
    measurements: MeasurementSummary
    conditions: Conditions
    noise_floor: ErrorMetrics | None
    target: str
    split: dict[str, int]
    predictors: dict[str, PredictorEntry]
    chosen: str
    reason: str
    rpc: LatencyStats | None = None

    def __post_init__(self) -> None:
        if self.chosen not in self.predictors:
            raise DataError(f"profile.json: the chosen predictor {self.chosen!r} is not among "
                            f"{sorted(self.predictors)}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT, "version": VERSION, "created": self.created, "shoal_version": self.shoal_version,
            "device": self.device.to_dict(), "teacher": self.teacher.to_dict(), "sampler": self.sampler.to_dict(),
            "timing": self.timing.to_dict(), "training": self.training.to_dict(),
            "measurements": self.measurements.to_dict(), "conditions": self.conditions.to_dict(),
            "noise_floor": self.noise_floor.to_dict() if self.noise_floor else None, "target": self.target,
            "split": dict(self.split), "predictors": {k: v.to_dict() for k, v in self.predictors.items()},
            "chosen": self.chosen, "reason": self.reason, "rpc": self.rpc.to_dict() if self.rpc else None}

    @classmethod
    def from_dict(cls, data: Any, where: str = "profile.json") -> ProfileDocument:
        f = Fields(data, where)
        if f.raw("format", None) != FORMAT:
            raise DataError(f"{where} is not a shoal device profile (format {f.data.get('format')!r})")
        if f.raw("version", None) != VERSION:
            raise DataError(f"{where} has profile version {f.data.get('version')!r}; this shoal reads version "
                            f"{VERSION}; profile the device again")
        out = cls(
            created=f.text("created"), shoal_version=f.text("shoal_version"),
            device=f.record("device", ProfiledDevice.read), teacher=f.record("teacher", ProfiledTeacher.read),
            sampler=_settings(f, "sampler", SamplerSettings), timing=_settings(f, "timing", TimingSettings),
            training=_settings(f, "training", TrainSettings),
            measurements=f.record("measurements", MeasurementSummary.read),
            conditions=f.record("conditions", Conditions.read),
            noise_floor=f.record("noise_floor", ErrorMetrics.read, None),
            target=f.text("target"), split=f.int_map("split"), predictors=f.records("predictors", PredictorEntry.read),
            chosen=f.text("chosen"), reason=f.text("reason"), rpc=f.record("rpc", _rpc, None))
        f.done()
        return out

    @property
    def rpc_ms(self) -> float | None:
        """One runtime call's overhead in the statistic the predictors learn: the mean under a CPU
        quota, else the median (ADR 006); None where it was not measured."""
        if self.rpc is None:
            return None
        return self.rpc.mean_ms if self.target == "mean" else self.rpc.median_ms
