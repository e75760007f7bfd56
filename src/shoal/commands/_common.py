"""What every command shares: the console, logging, progress bars, error handling, JSON output.

Library code reports through `logging` (loggers named after their modules) and a
`ProgressFn` callback; only the command line draws: `setup_logging` installs one rich
handler on stderr (-v shows debug messages, -q only warnings and errors), and
`progress_bars` turns the callbacks into rich progress rows.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import typer
from rich.console import Console

from shoal.errors import ShoalError

console = Console(stderr=True)
F = TypeVar("F", bound=Callable[..., Any])
ProgressFn = Callable[[str, int, int], None]   # shoal.profiling.jobs.ProgressFn


def setup_logging(verbose: int = 0, quiet: bool = False) -> None:
    """Library messages (`logging.getLogger("shoal...")`) to stderr through rich: info by default,
    debug with -v, warnings only with -q."""
    from rich.logging import RichHandler

    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "shoal_cli", False)]:
        root.removeHandler(old)
    handler = RichHandler(console=console, show_time=False, show_path=False, markup=False, rich_tracebacks=False)
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler.shoal_cli = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(logging.WARNING)   # other libraries: warnings only
    logging.getLogger("shoal").setLevel(logging.WARNING if quiet else logging.DEBUG if verbose > 0 else logging.INFO)


@contextmanager
def progress_bars(enabled: bool = True) -> Iterator[ProgressFn]:
    """A `ProgressFn` that draws one rich progress row per description (device, step)."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    bars = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=console,
                    disable=not enabled, transient=False)
    tasks: dict[str, Any] = {}

    def update(description: str, done: int, total: int) -> None:
        if description not in tasks:
            tasks[description] = bars.add_task(description, total=total)
        bars.update(tasks[description], completed=done, total=total)

    with bars:
        yield update


def guard(func: F) -> F:
    """Turn a `ShoalError` into one red line and exit status 1 (`SHOAL_DEBUG=1` re-raises)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except ShoalError as exc:
            if os.environ.get("SHOAL_DEBUG") == "1":
                raise
            console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            console.print("[yellow]interrupted[/]")
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def print_json(data: Any) -> None:
    """Machine-readable output on stdout (everything human goes to stderr)."""
    sys.stdout.write(json.dumps(data, indent=2, default=_default) + "\n")
    sys.stdout.flush()


def _default(obj: Any) -> Any:
    if hasattr(obj, "to_dict"):
        return obj.to_dict()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    return str(obj)
