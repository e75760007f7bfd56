"""`shoal bench`: the plan through the runtime beside the teacher alone, in one run."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from shoal.commands._common import console, print_json

if TYPE_CHECKING:
    from shoal.runtime.bench import BenchResult


def main(
    plan: Annotated[Path, typer.Option("--plan", help="plan directory")],
    target: Annotated[str | None, typer.Option(
        help="host:port of a running central node (default: start a local cluster of the plan)")] = None,
    requests: Annotated[int, typer.Option(help="timed requests (batch 1)")] = 200,
    concurrency: Annotated[int, typer.Option(help="clients sending at once")] = 1,
    warmup: Annotated[int, typer.Option(help="untimed requests first")] = 20,
    data: Annotated[str | None, typer.Option(
        help="test data: 'digits' (default when the teacher fits it), an ImageFolder tree with test/, or a text "
             "plan's task (default: rotten-tomatoes)")] = None,
    teacher: Annotated[bool, typer.Option("--teacher/--no-teacher",
                                          help="also time the teacher alone on the central device's share")] = True,
    emulate: Annotated[bool, typer.Option("--emulate/--no-emulate",
                                          help="run devices (and the teacher) under their CPU limits")] = True,
    input_format: Annotated[str, typer.Option(
        "--input", help="what the requests carry: float32 | raw (uint8 pixels) | png | jpeg; every device "
                        "normalises compact inputs itself")] = "float32",
    tls_dir: Annotated[Path | None, typer.Option(
        help="folder written by `shoal certs`: TLS to the central node (its ca.crt) and its client.token; "
             "a local cluster is started with it too")] = None,
    token_file: Annotated[Path | None, typer.Option(
        help="bearer token file (default: the tls-dir's client.token, else $SHOAL_TOKEN)")] = None,
    sla_ms: Annotated[float | None, typer.Option(
        help="a Janus plan: the device's SLA (default: none; never prune, take the fastest split)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
) -> None:
    """Latency (median, p95), throughput and accuracy through the runtime; the teacher alone beside it
    (a Janus plan: served as its device and its server, the teacher timed alone on the device)."""
    from shoal.errors import ConfigError
    from shoal.runtime.bench import run_bench

    formats = {"float32": "float32", "raw": "uint8", "uint8": "uint8", "png": "png", "jpeg": "jpeg"}
    if input_format not in formats:
        raise ConfigError(f"--input must be float32, raw, png or jpeg, got {input_format!r}")
    from shoal.runtime.security import TOKEN_FILE, Security

    if token_file is None and tls_dir is not None and (tls_dir / TOKEN_FILE).is_file():
        token_file = tls_dir / TOKEN_FILE
    result = run_bench(plan, target=target, requests=requests, concurrency=concurrency, warmup=warmup, data=data,
                       teacher=teacher, emulate=emulate, input_format=formats[input_format],
                       security=Security(tls_dir, token_file), sla_ms=sla_ms)
    if as_json:
        print_json(result.to_dict())
        return
    print_tables(result)


def _top1(top1: float | None, ci95: tuple[float, float] | None, n: int) -> str:
    """'98.33% [96.4, 99.2] n=360', or '-' when not measured."""
    if top1 is None:
        return "-"
    ci = f" [{ci95[0]:.1%}, {ci95[1]:.1%}]" if ci95 is not None else ""
    return f"{top1:.2%}{ci} n={n}"


def print_tables(r: BenchResult) -> None:
    """The comparison, the per-device breakdown and the notes, on the console."""
    cmp = Table(title=f"shoal vs teacher ({r.requests} requests, concurrency {r.concurrency}, plan {r.fingerprint}; "
                      f"input {r.input_format}, {r.input_bytes / 1024:.1f} KiB per image)")
    for column in ("", "median ms", "p95 ms", "throughput /s", "top-1"):
        cmp.add_column(column, justify="right")
    acc = _top1(r.accuracy, r.accuracy_ci95, r.accuracy_n) + (" (random weights)" if r.random_weights else "")
    cmp.add_row("shoal (end to end)", f"{r.latency.median_ms:.2f}", f"{r.latency.p95_ms:.2f}",
                f"{r.throughput_rps:.1f}", acc)
    if r.teacher is not None:
        t = r.teacher["latency"]
        top1 = _top1(r.teacher.get("top1"), r.teacher.get("ci95"), r.teacher.get("n", 0))
        cmp.add_row(f"teacher alone on {r.teacher['device']}", f"{t['median_ms']:.2f}", f"{t['p95_ms']:.2f}",
                    f"{1e3 / t['median_ms']:.1f} (1/median)", top1)
        cmp.add_row("speedup (teacher median / shoal median)", f"{r.speedup:.2f}×", "", "", "")
    console.print(cmp)
    parts = Table(title="where the time goes (medians, ms)")
    for column in ("device", "compute", "queue", "transfer", "round trip"):
        parts.add_column(column, justify="right")
    for d in r.devices:
        parts.add_row(d.device, f"{d.compute_ms:.2f}", f"{d.queue_ms:.2f}", f"{d.transfer_ms:.2f}",
                      f"{d.round_trip_ms:.2f}")
    parts.add_row("aggregation", f"{r.aggregation_ms:.2f}", "", "", "")
    parts.add_row("compute on the critical path + aggregation", f"{r.critical_ms:.2f}", "", "", "")
    parts.add_row("central node, receipt to reply", f"{r.server_ms:.2f}", "", "", "")
    parts.add_row("runtime overhead", f"{r.overhead_ms:.2f}", "", "", f"median / critical = {r.overhead_ratio:.2f}")
    console.print(parts)
    if r.errors:
        console.print(f"[yellow]errors:[/] {r.errors}")
    if set(r.answers) - {"primary"}:
        console.print("answered by: " + ", ".join(f"{k} {v}" for k, v in r.answers.items()), highlight=False)
    if r.predicted_ms is not None:
        console.print(f"planner predicted T = {r.predicted_ms:.2f} ms; measured median / predicted = "
                      f"{r.latency.median_ms / r.predicted_ms:.2f}", highlight=False)
    if r.predicted_speedup is not None and r.speedup is not None:
        console.print(f"planner predicted speedup {r.predicted_speedup:.2f}×; measured {r.speedup:.2f}× "
                      f"(measured / predicted = {r.speedup / r.predicted_speedup:.2f})", highlight=False)
    for note in r.notes:
        console.print(f"[yellow]note:[/] {note}", highlight=False)
    console.print(f"accuracy data: {r.data}", highlight=False)
    if r.phases:
        console.print("time per phase: " + " · ".join(f"{k} {v:.1f} s" for k, v in r.phases.items())
                      + f"; total {sum(r.phases.values()):.1f} s", highlight=False)
