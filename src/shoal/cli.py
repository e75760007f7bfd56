"""The `shoal` command line: registers commands, nothing else.

Each command lives in its own module under `shoal.commands`; `guard` turns a
`ShoalError` into one red line and exit status 1 (SHOAL_DEBUG=1 shows the
traceback).
"""

from __future__ import annotations

from typing import Annotated

import typer

from shoal.commands import bench, certs, demo, info, plan, profile, serve
from shoal.commands._common import guard, setup_logging

app = typer.Typer(
    name="shoal",
    help="Split a vision transformer across edge devices, search the split, calibrate and serve it.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.callback()
def _root(
    verbose: Annotated[int, typer.Option("--verbose", "-v", count=True, help="more messages (debug)")] = 0,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="only warnings and errors")] = False,
) -> None:
    """shoal: aggregate-edge inference for vision transformers (CoFormer)."""
    setup_logging(verbose, quiet)


app.command("profile")(guard(profile.profile))
app.command("predict")(guard(profile.predict))
app.command("measure")(guard(profile.measure))
app.add_typer(plan.app, name="plan")
app.add_typer(serve.app, name="serve")
app.command("bench")(guard(bench.main))
app.command("certs")(guard(certs.main))
app.command("demo")(guard(demo.main))
app.command("info")(guard(info.main))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
