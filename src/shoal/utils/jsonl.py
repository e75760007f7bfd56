"""Append-only JSON-lines files that survive a crash mid-write.

Used by the profiling dataset (`shoal.profiling.dataset`) and the search journal
(`shoal.planner.journal`). Each record is one `write` of one line, flushed and
fsynced, so a crash loses at most the line being written: reading treats a cut-off
last line as absent, and `repair_tail` removes it before the next append.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Protocol


class _HasDict(Protocol):
    def to_dict(self) -> dict[str, Any]: ...


def _is_object(line: bytes) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return False


def read_lines(path: str | Path) -> tuple[list[tuple[int, bytes]], bool]:
    """The complete lines of a JSONL file, each with its 1-based line number, and whether a
    partial last line (a crash mid-write) was left out. A whole last record that only lost
    its newline counts as complete."""
    lines = Path(path).read_bytes().split(b"\n")
    complete, tail = lines[:-1], lines[-1]   # tail: bytes after the last newline (empty if none)
    if tail.strip() and _is_object(tail):
        complete, tail = lines, b""
    return list(enumerate(complete, start=1)), bool(tail.strip())


def repair_tail(path: str | Path) -> int:
    """Make `path` end on a newline before appending: cut off a partial last line, or end a
    whole last record that lost its newline. Returns the bytes removed."""
    with open(path, "rb+") as fh:
        data = fh.read()
        keep = data.rfind(b"\n") + 1
        if keep == len(data):
            return 0
        if _is_object(data[keep:]):
            fh.write(b"\n")
            return 0
        fh.truncate(keep)
    return len(data) - keep


class JsonlWriter:
    """Writes records to an open JSONL file, one fsynced line each."""

    def __init__(self, fh: IO[str]) -> None:
        self._fh = fh

    def write(self, record: dict[str, Any] | _HasDict) -> None:
        data = record if isinstance(record, dict) else record.to_dict()
        self._fh.write(json.dumps(data, separators=(",", ":")) + "\n")
        self._fh.flush()
        os.fsync(self._fh.fileno())


@contextmanager
def appender(path: str | Path, *, fresh: bool = False) -> Iterator[JsonlWriter]:
    """Append records to `path` (`fresh`: start the file anew)."""
    with open(path, "w" if fresh else "a", encoding="utf-8") as fh:
        yield JsonlWriter(fh)
