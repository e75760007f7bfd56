"""`shoal certs`: a CA, one certificate per device of a plan, a client token and the plan's signature."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from shoal.commands._common import console, print_json


def main(
    plan: Annotated[Path, typer.Option("--plan", help="plan directory written by `shoal plan`")],
    out: Annotated[Path, typer.Option(help="folder for the key material (created owner-only)")],
    address: Annotated[list[str] | None, typer.Option(
        help="device=host-or-ip added to that device's certificate (repeatable); the runtime checks device "
             "names, so this is only for other tools")] = None,
    days: Annotated[int, typer.Option(min=1, help="validity of every certificate")] = 365,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
) -> None:
    """Create the key material to serve a plan with TLS and tokens (see README: deploying on a network)."""
    from shoal.errors import ConfigError
    from shoal.plan.directory import is_janus_plan, load_plan
    from shoal.plan.janus import JanusPlan
    from shoal.runtime.device import plan_fingerprint
    from shoal.runtime.pki import issue

    if is_janus_plan(plan):   # the server and the device (the device's Predict endpoint takes the token)
        janus = JanusPlan.read(plan)
        names = [janus.server.name, janus.device.name]
        front = janus.device.name
    else:
        loaded = load_plan(plan)
        names, front = list(loaded.devices.names), loaded.devices.central.name
    extra: dict[str, list[str]] = {}
    for item in address or []:
        device, sep, host = item.partition("=")
        if not sep or device not in names or not host:
            raise ConfigError(f"--address {item!r} must be device=host with a device of the plan {names}")
        extra.setdefault(device, []).append(host)
    issued = issue(plan, names, out, plan_fingerprint(plan), addresses=extra, days=days)
    files = {"ca": "ca.crt (every device and client), ca.key (keep it off the devices)",
             **{n: f"{n}.crt, {n}.key" for n in names},
             "token": f"client.token ({front}, which clients call, and the clients)",
             "signature": "plan.sig (every device: the plan the CA signed)"}
    if as_json:
        print_json({"out": str(issued.out), "devices": names, "expires": issued.expires.isoformat(), "files": files})
        return
    table = Table(title=f"key material for plan {plan} in {issued.out} (valid until {issued.expires:%Y-%m-%d})")
    table.add_column("for")
    table.add_column("files")
    for who, what in files.items():
        table.add_row(who, what)
    console.print(table)
    console.print(f"serve with --tls-dir {issued.out} (and {front} with --token-file "
                  f"{issued.out / 'client.token'}); private files are mode 600", highlight=False)
