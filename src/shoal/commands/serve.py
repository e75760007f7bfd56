"""`shoal serve worker|central|local|janus`: run a plan's sub-models over gRPC."""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from shoal.commands._common import console, guard
from shoal.runtime.defaults import DEFAULT_DEADLINE_MS

if TYPE_CHECKING:
    from shoal.runtime.security import Security

app = typer.Typer(help="Serve a plan: one worker per device, the central node, or all of them locally.",
                  no_args_is_help=True, add_completion=False)

PlanOpt = Annotated[Path, typer.Option("--plan", help="plan directory written by `shoal plan`")]
EmulateOpt = Annotated[bool, typer.Option(
    "--emulate/--no-emulate", help="apply the device's CPU quota and core pinning from the plan")]
WatchOpt = Annotated[bool, typer.Option("--watch-parent", hidden=True, help="exit when the parent process dies")]
GraceOpt = Annotated[float, typer.Option(help="seconds in-flight calls get to finish on SIGTERM/SIGINT")]
HostOpt = Annotated[str, typer.Option(help="interface to listen on (another than 127.0.0.1 exposes the device)")]
PortOpt = Annotated[int, typer.Option(help="port (0: a free one, printed on stdout)")]
ThreadsOpt = Annotated[int | None, typer.Option(help="torch threads (default: the device's threads)")]
DeadlineOpt = Annotated[float, typer.Option(help="deadline of every call to a worker, ms")]
DegradeOpt = Annotated[bool, typer.Option(help="answer from the devices that replied when some do not")]
AcceleratorOpt = Annotated[str | None, typer.Option(
    help="cpu | cuda: where the sub-model runs (default: the device's `accelerator` in the plan)")]
TlsDirOpt = Annotated[Path | None, typer.Option(
    help="folder written by `shoal certs`: TLS with this device's certificate (mutual TLS between the central "
         "node and its workers)")]
TokenOpt = Annotated[Path | None, typer.Option(
    help="file holding the bearer token clients must send (default: $SHOAL_TOKEN; never on the command line)")]
InsecureOpt = Annotated[bool, typer.Option(help="allow plaintext on an address other than loopback")]
RateOpt = Annotated[float | None, typer.Option(help="Predict calls per second per client at the central node")]
SloOpt = Annotated[float | None, typer.Option(
    help="answer within this many ms with the features that arrived; a worker that keeps missing it is demoted")]
MinAccOpt = Annotated[float | None, typer.Option(
    help="refuse a degraded answer whose expected top-1 (measured by the planner) is below this fraction")]


def _security(tls_dir: Path | None, token_file: Path | None = None, insecure: bool = False,
              rate_limit: float | None = None) -> Security:
    from shoal.runtime.security import Security

    return Security(tls_dir, token_file, insecure, rate_limit)


@app.command("worker")
@guard
def worker(
    plan: PlanOpt,
    device: Annotated[str, typer.Option(help="the device of the plan this process serves")],
    host: HostOpt = "127.0.0.1",
    port: PortOpt = 50052,
    threads: ThreadsOpt = None,
    emulate: EmulateOpt = True,
    grace: GraceOpt = 5.0,
    watch_parent: WatchOpt = False,
    accelerator: AcceleratorOpt = None,
    tls_dir: TlsDirOpt = None,
    insecure: InsecureOpt = False,
) -> None:
    """Serve one device's sub-model (health SERVING after warm-up)."""
    from shoal.runtime.worker import serve_worker

    serve_worker(plan, device, host=host, port=port, threads=threads, emulate=emulate, grace=grace,
                 watch_parent=watch_parent, accelerator=accelerator, security=_security(tls_dir, None, insecure))


@app.command("janus")
@guard
def janus(
    plan: Annotated[Path, typer.Option("--plan", help="Janus plan directory (`shoal plan --method janus`)")],
    role: Annotated[str, typer.Option(
        help="server: finish what the device sends; device: answer clients (the Predict API of a central "
             "node), choosing α and the split per request")] = "server",
    server: Annotated[str | None, typer.Option(
        help="device: host:port of the Janus server ('-': read it from stdin)")] = None,
    sla_ms: Annotated[float | None, typer.Option(
        help="device: the latency every request must meet (default: none; never prune, take the fastest split)")
    ] = None,
    prior_mbps: Annotated[float, typer.Option(
        help="device: uplink bandwidth assumed until a transfer is measured")] = 10.0,
    fixed: Annotated[str | None, typer.Option(
        help="device: ALPHA:SPLIT for every request instead of the scheduler's choice (a baseline: 0:0 sends "
             "the image, 0:<blocks + 1> runs everything on the device)")] = None,
    host: HostOpt = "127.0.0.1",
    port: PortOpt = 50053,
    threads: ThreadsOpt = None,
    emulate: EmulateOpt = True,
    grace: GraceOpt = 5.0,
    watch_parent: WatchOpt = False,
    connect_timeout: Annotated[float, typer.Option(help="device: seconds to wait for the server")] = 60.0,
    tls_dir: TlsDirOpt = None,
    token_file: TokenOpt = None,
    insecure: InsecureOpt = False,
    rate_limit: RateOpt = None,
) -> None:
    """Serve one side of a Janus plan: the server finishes what the device started; the device answers."""
    from shoal.errors import ConfigError
    from shoal.runtime.janus import serve_janus

    pinned = None
    if fixed is not None:
        alpha, sep, split = fixed.partition(":")
        try:
            pinned = (float(alpha), int(split))
        except ValueError:
            raise ConfigError(f"--fixed must be ALPHA:SPLIT (e.g. 0.3:2), got {fixed!r}") from None
        if not sep:
            raise ConfigError(f"--fixed must be ALPHA:SPLIT (e.g. 0.3:2), got {fixed!r}")
    serve_janus(plan, role=role, fixed=pinned, server=server, host=host, port=port, emulate=emulate, threads=threads,
                grace=grace, watch_parent=watch_parent, sla_ms=sla_ms, prior_mbps=prior_mbps,
                connect_timeout=connect_timeout, security=_security(tls_dir, token_file, insecure, rate_limit))


@app.command("central")
@guard
def central(
    plan: PlanOpt,
    workers: Annotated[str, typer.Option(help="name=host:port,... of every worker device ('-': read from stdin)")],
    host: HostOpt = "127.0.0.1",
    port: PortOpt = 50051,
    deadline_ms: DeadlineOpt = DEFAULT_DEADLINE_MS,
    degrade: DegradeOpt = False,
    connect_timeout: Annotated[float, typer.Option(help="seconds to wait for the workers at startup")] = 60.0,
    threads: ThreadsOpt = None,
    emulate: EmulateOpt = True,
    grace: GraceOpt = 5.0,
    watch_parent: WatchOpt = False,
    accelerator: AcceleratorOpt = None,
    tls_dir: TlsDirOpt = None,
    token_file: TokenOpt = None,
    insecure: InsecureOpt = False,
    rate_limit: RateOpt = None,
    slo_ms: SloOpt = None,
    min_accuracy: MinAccOpt = None,
) -> None:
    """Serve the central node: fan out to the workers, compute locally, aggregate, answer."""
    from shoal.runtime.central import serve_central

    serve_central(plan, workers, host=host, port=port, threads=threads, emulate=emulate, deadline_ms=deadline_ms,
                  degrade=degrade, connect_timeout=connect_timeout, grace=grace, watch_parent=watch_parent,
                  accelerator=accelerator, security=_security(tls_dir, token_file, insecure, rate_limit),
                  slo_ms=slo_ms, min_accuracy=min_accuracy)


@app.command("local")
@guard
def local(
    plan: PlanOpt,
    base_port: Annotated[int, typer.Option(help="central node's port; workers use the next ones (0: free ports)")
                         ] = 50051,
    deadline_ms: DeadlineOpt = DEFAULT_DEADLINE_MS,
    degrade: DegradeOpt = False,
    emulate: EmulateOpt = True,
    tls_dir: TlsDirOpt = None,
    token_file: TokenOpt = None,
    rate_limit: RateOpt = None,
    slo_ms: SloOpt = None,
    min_accuracy: MinAccOpt = None,
    restarts: Annotated[int, typer.Option(help="times a worker that exits is restarted (with back-off)")] = 5,
) -> None:
    """Start every device of the plan on this machine, one process each, until Ctrl-C (a Janus plan: its
    server and its device, which clients call; --slo-ms is then the device's SLA)."""
    from shoal.runtime.cluster import LocalCluster

    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        with LocalCluster(plan, base_port=base_port, deadline_ms=deadline_ms, degrade=degrade, emulate=emulate,
                          security=_security(tls_dir, token_file, False, rate_limit), slo_ms=slo_ms,
                          min_accuracy=min_accuracy, restarts=restarts) as cluster:
            for warning in cluster.warnings:
                console.print(f"[yellow]warning:[/] {warning}", highlight=False)
            table = Table(title=f"shoal cluster of {plan} (ready)")
            for column in ("device", "role", "address", "pid", "emulated limit", "threads"):
                table.add_column(column)
            for child in sorted(cluster.children.values(), key=lambda c: c.role != "central"):
                spec = cluster.specs[child.name]
                limit = spec.cpu_limit.describe() if emulate else "off"
                role = f"janus {'device' if child.role == 'central' else 'server'}" if cluster.janus else child.role
                table.add_row(child.name, role, child.target, str(child.proc.pid), limit, str(spec.threads))
            console.print(table)
            tls = f" --tls-dir {tls_dir}" if tls_dir else ""
            console.print(f"predict with: shoal bench --plan {plan} --target {cluster.central_target}{tls}; "
                          "Ctrl-C stops")
            while not stop.wait(0.5):
                for event in cluster.revive():   # restarts dead workers with back-off; the central node
                    console.print(f"[yellow]{event}[/]", highlight=False)   # re-verifies them
                if cluster.central_exited():
                    console.print(f"[bold red]error:[/] {cluster.front} (which clients call) exited; stopping")
                    raise typer.Exit(1)
            console.print("stopping")
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
