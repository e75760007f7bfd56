"""Defaults of the serving runtime, in a module the CLI can import without grpc or torch."""

from __future__ import annotations

DEFAULT_DEADLINE_MS = 2000.0   # the central node's budget for one fan-out to its workers
