"""The search journal: one JSON line per evaluation, appended as it completes.

The first line describes the problem (teacher family, devices, δ, proxy,
strategy, seed, budget). `--resume` re-reads the journal, checks that it was
made for the same problem, and continues: no evaluation is lost or repeated.
A last line cut short by a crash is ignored (and cut off), any other
corrupt line is an error naming the line (`shoal.utils.jsonl`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shoal.errors import DataError
from shoal.planner.objective import Evaluation
from shoal.utils.jsonl import appender, read_lines, repair_tail

JOURNAL_VERSION = 1


@dataclass(frozen=True)
class Record:
    """One evaluated point of the search.

    Attributes:
        index: 0-based evaluation number.
        phase: "anchor", "init", "bo", "random", "uniform", "fallback" or "prune".
        x: The encoding in [0,1]^k.
        shapes: Unit counts per device (layers, width, heads, mlp), the policy's identity.
        evaluation: Ψ and its parts.
    """

    index: int
    phase: str
    x: tuple[float, ...]
    shapes: tuple[dict[str, Any] | None, ...]
    evaluation: Evaluation

    @property
    def psi(self) -> float:
        return self.evaluation.psi

    @property
    def key(self) -> str:
        """Identity of the decoded policy (its unit counts)."""
        return json.dumps(self.shapes, sort_keys=True)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "eval", "index": self.index, "phase": self.phase, "x": list(self.x),
                "shapes": list(self.shapes), "evaluation": self.evaluation.to_dict()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Record:
        return cls(int(data["index"]), str(data["phase"]), tuple(float(v) for v in data["x"]),
                   tuple(data["shapes"]), Evaluation.from_dict(data["evaluation"]))


class Journal:
    """Append-only JSONL journal of a search."""

    def __init__(self, path: str | Path, header: dict[str, Any]) -> None:
        self.path = Path(path)
        self.header = {"kind": "header", "version": JOURNAL_VERSION, **header}

    def start(self, resume: bool) -> list[Record]:
        """Open the journal; returns the records to resume from (empty for a fresh start)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume and self.path.exists():
            return self._read()
        with appender(self.path, fresh=True) as out:
            out.write(self.header)
        return []

    def append(self, record: Record) -> None:
        with appender(self.path) as out:
            out.write(record)

    def _read(self) -> list[Record]:
        lines, _ = read_lines(self.path)
        if not lines:
            raise DataError(f"journal {self.path} is empty or truncated before its header; "
                            "start afresh without --resume")
        try:
            header = json.loads(lines[0][1])
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise DataError(f"journal {self.path}: line 1 (header) is corrupt") from None
        self._check_header(header)
        records = []
        for number, line in lines[1:]:
            try:
                records.append(Record.from_dict(json.loads(line)))
            except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError) as exc:
                raise DataError(f"journal {self.path}: line {number} is corrupt ({type(exc).__name__})") from None
        repair_tail(self.path)   # a line cut short by a crash is cut off, so the next append starts clean
        for expected, record in enumerate(records):
            if record.index != expected:
                raise DataError(f"journal {self.path}: evaluation {expected} is missing (found {record.index})")
        return records

    def _check_header(self, header: dict[str, Any]) -> None:
        if header.get("kind") != "header" or header.get("version") != JOURNAL_VERSION:
            raise DataError(f"journal {self.path} has no valid header (version {header.get('version')!r})")
        differ = sorted(k for k in set(header) | set(self.header)
                        if k not in ("budget",) and header.get(k) != self.header.get(k))
        if differ:
            raise DataError(f"journal {self.path} was made for another search (differs in {', '.join(differ)}); "
                            "use another --out or start without --resume")
