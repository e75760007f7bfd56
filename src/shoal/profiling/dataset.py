"""The latency dataset: one JSON object per line, appended as measurements are taken.

    {"record": "header", "family": ..., "config": {...}, "sampler": {...}, "timing": {...}, "cpu_limit": {...}}
    {"record": "measurement", "index": 0, "pass": 1, "id": "3f2a...", "shape": {...}, "latency": {...}, ...}
    {"record": "failure", "index": 7, "pass": 1, "id": "...", "shape": {...}, "error": "OutOfMemoryError: ..."}

Written and read with `shoal.utils.jsonl`. Pass 1 times every sampled shape; pass 2 re-times a random subset at the end
(the noise floor). Each record is written with one `write` and fsynced, so a
crash loses at most the line being written: a truncated *last* line is
tolerated (dropped, and cut off before the next append); a bad line anywhere
else is an error naming the file and the line.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shoal.devices.emulation import CpuLimit
from shoal.errors import ConfigError, DataError
from shoal.models.partition import SubModelShape
from shoal.profiling.timing import LatencyStats
from shoal.utils.jsonl import read_lines

FORMAT_VERSION = 1
# header fields that must agree for measurements to be pooled (resume, merge)
_CONDITIONS = ("family", "sampler", "timing", "cpu_limit")


@dataclass(frozen=True)
class Measurement:
    """One timed shape.

    Attributes:
        index: Position of the shape in the sampled list.
        pass_: 1 for the main pass, 2 for the re-measurement.
        id: `SubModelShape.id` of the shape.
        shape: The unit counts timed.
        stats: Latency statistics of the timed calls.
        weight_bytes: Bytes of parameters and buffers.
        activation_bytes: Peak bytes of live activations during one inference.
        build_ms: Time to build the model (not part of the latency).
        loadavg: 1-minute load average of the machine when it was taken (a noise hint).
        extra: Other fields of the record (kept on rewrite).
    """

    index: int
    pass_: int
    id: str
    shape: SubModelShape
    stats: LatencyStats
    weight_bytes: int
    activation_bytes: int
    build_ms: float = 0.0
    loadavg: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def peak_memory_bytes(self) -> int:
        return self.weight_bytes + self.activation_bytes

    @property
    def median_ms(self) -> float:
        return self.stats.median_ms

    def to_dict(self) -> dict[str, Any]:
        return {"record": "measurement", "index": self.index, "pass": self.pass_, "id": self.id,
                "shape": self.shape.to_dict(), "latency": self.stats.to_dict(),
                "weight_bytes": self.weight_bytes, "activation_bytes": self.activation_bytes,
                "peak_memory_bytes": self.peak_memory_bytes, "build_ms": round(self.build_ms, 3),
                "loadavg": self.loadavg, **self.extra}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Measurement:
        known = {"record", "index", "pass", "id", "shape", "latency", "weight_bytes", "activation_bytes",
                 "peak_memory_bytes", "build_ms", "loadavg"}
        return cls(int(data["index"]), int(data["pass"]), str(data["id"]), SubModelShape.from_dict(data["shape"]),
                   LatencyStats(**data["latency"]), int(data["weight_bytes"]), int(data["activation_bytes"]),
                   float(data.get("build_ms", 0.0)), float(data.get("loadavg", 0.0)),
                   {k: v for k, v in data.items() if k not in known})


@dataclass(frozen=True)
class Failure:
    """A shape that could not be timed (out of memory, a build error); profiling went on."""

    index: int
    pass_: int
    id: str
    shape: SubModelShape
    error: str

    def to_dict(self) -> dict[str, Any]:
        return {"record": "failure", "index": self.index, "pass": self.pass_, "id": self.id,
                "shape": self.shape.to_dict(), "error": self.error}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Failure:
        return cls(int(data["index"]), int(data["pass"]), str(data["id"]), SubModelShape.from_dict(data["shape"]),
                   str(data["error"]))


@dataclass(frozen=True)
class LatencyDataset:
    """The records of one dataset file.

    Attributes:
        header: The header record (conditions of every measurement in the file).
        measurements: Timed shapes, both passes, in file order.
        failures: Shapes that failed.
        truncated_tail: Whether a truncated last line (a crash mid-write) was dropped.
    """

    header: dict[str, Any]
    measurements: tuple[Measurement, ...] = ()
    failures: tuple[Failure, ...] = ()
    truncated_tail: bool = False

    def done(self) -> set[tuple[str, int]]:
        """(shape id, pass) of every record, measured or failed: what a resumed run skips."""
        return {(m.id, m.pass_) for m in self.measurements} | {(f.id, f.pass_) for f in self.failures}

    def first_pass(self) -> list[Measurement]:
        return [m for m in self.measurements if m.pass_ == 1]

    def pairs(self) -> list[tuple[Measurement, Measurement]]:
        """(pass 1, pass 2) measurements of every re-timed shape."""
        first = {m.id: m for m in self.first_pass()}
        return [(first[m.id], m) for m in self.measurements if m.pass_ == 2 and m.id in first]


def make_header(*, family: str, config: dict[str, Any], sampler: dict[str, Any], timing: dict[str, Any],
                cpu_limit: CpuLimit, teacher_source: str = "") -> dict[str, Any]:
    return {"record": "header", "version": FORMAT_VERSION, "family": family, "teacher_source": teacher_source,
            "config": config, "sampler": sampler, "timing": timing, "cpu_limit": cpu_limit.to_dict()}


def header_mismatch(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Conditions on which two headers differ (empty: their measurements can be pooled)."""
    return [f"{key}: {old.get(key)!r} != {new.get(key)!r}" for key in _CONDITIONS if old.get(key) != new.get(key)]


def read_dataset(path: str | Path) -> LatencyDataset:
    """Read and validate a dataset file.

    Raises:
        DataError: the file is missing, has no header, or a line other than a truncated
            last one is not a valid record (names the file and the line).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"latency dataset {path} does not exist")
    complete, truncated = read_lines(path)
    header: dict[str, Any] | None = None
    measurements: list[Measurement] = []
    failures: list[Failure] = []
    for number, line in complete:
        if not line.strip():
            continue
        record = _parse(path, number, line)
        kind = record.get("record")
        if header is None and kind != "header":
            raise DataError(f"{path}:{number}: the first record must be the header, got {kind!r}; "
                            "this is not a shoal latency dataset")
        try:
            if kind == "header":
                if header is not None and header_mismatch(header, record):
                    raise DataError(f"{path}:{number}: a second header with other conditions "
                                    f"({'; '.join(header_mismatch(header, record))})")
                header = record
            elif kind == "measurement":
                measurements.append(Measurement.from_dict(record))
            elif kind == "failure":
                failures.append(Failure.from_dict(record))
            else:
                raise DataError(f"{path}:{number}: unknown record type {kind!r}")
        except (KeyError, TypeError, ValueError, ConfigError) as exc:
            raise DataError(f"{path}:{number}: not a valid {kind} record ({type(exc).__name__}: {exc})") from None
    if header is None:
        raise DataError(f"{path} holds no header record; it is not a shoal latency dataset")
    return LatencyDataset(header, tuple(measurements), tuple(failures), truncated)


def _parse(path: Path, number: int, line: bytes) -> dict[str, Any]:
    try:
        record = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}:{number}: corrupt line, not valid JSON ({exc}); fix or delete that line") from None
    if not isinstance(record, dict):
        raise DataError(f"{path}:{number}: a record must be a JSON object, got {type(record).__name__}")
    return record
