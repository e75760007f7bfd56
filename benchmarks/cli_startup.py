"""How long `shoal --help` and `shoal <command> --help` take to start, median of several runs.

    .venv/bin/python benchmarks/cli_startup.py [--runs 7] [--baseline-src DIR]

Each run is a fresh interpreter (`python -c` that runs the CLI with `--help`), so the
figure includes Python's own start-up. `--baseline-src` points at the `src/` of another
checkout (e.g. `git worktree add /tmp/old be59031`) to time it side by side, interleaved
run by run so drift hits both alike.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

COMMANDS = ([], ["plan"], ["profile"], ["serve", "local"], ["bench"], ["demo"])
RUNNER = ("import sys; sys.path.insert(0, sys.argv[1]); sys.argv = ['shoal', *sys.argv[2:]]; "
          "from shoal.cli import main; main()")


def _once(src: Path, args: list[str]) -> float:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", RUNNER, str(src), *args, "--help"], capture_output=True)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"shoal {' '.join(args)} --help failed: {done.stderr.decode()[-500:]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--baseline-src", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/cli_startup.json"))
    args = parser.parse_args()
    here = Path(__file__).resolve().parents[1] / "src"
    trees = {"this tree": here} | ({"baseline": args.baseline_src.resolve()} if args.baseline_src else {})
    times: dict[str, dict[str, list[float]]] = {t: {" ".join(c) or "(root)": [] for c in COMMANDS} for t in trees}
    for _ in range(args.runs):
        for command in COMMANDS:
            for tree, src in trees.items():
                times[tree][" ".join(command) or "(root)"].append(_once(src, command))
    table = Table(title=f"shoal ... --help, seconds (median of {args.runs} fresh interpreters)")
    table.add_column("command")
    for tree in trees:
        table.add_column(tree, justify="right")
    if len(trees) == 2:
        table.add_column("speedup", justify="right")
    result: dict[str, object] = {"runs": args.runs, "python": sys.version.split()[0],
                                 "trees": {t: str(s) for t, s in trees.items()}, "median_s": {}}
    for command in times["this tree"]:
        medians = {t: statistics.median(times[t][command]) for t in trees}
        result["median_s"][command] = medians  # type: ignore[index]
        row = [command, *(f"{m:.3f}" for m in medians.values())]
        if len(trees) == 2:
            row.append(f"{medians['baseline'] / medians['this tree']:.1f}×")
        table.add_row(*row)
    Console().print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
