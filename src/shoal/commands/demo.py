"""`shoal demo`: the whole job on the embedded default, in minutes on 2 cores.

Profile the three emulated default devices (only those without a profile),
plan (search + calibrate) for the shipped digits teacher, start the local
cluster, answer the test split through it, time it beside the teacher alone,
print the comparison, stop everything.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from shoal.commands._common import console, print_json
from shoal.commands.bench import print_tables
from shoal.commands.plan import LiveSearch, plan_hooks, show_document
from shoal.planner.settings import CalibrationSettings, PlanRequest, SearchSettings


def main(
    out: Annotated[Path, typer.Option(help="where the demo's plan goes")] = Path(".shoal/demo"),
    profile_samples: Annotated[int, typer.Option(help="shapes timed per device when profiling")] = 150,
    init: Annotated[int, typer.Option("--init", help="r: random policies first")] = 8,
    iterations: Annotated[int, typer.Option(help="I: BO iterations")] = 16,
    epochs: Annotated[int, typer.Option(help="distillation epochs per sub-model")] = 4,
    aggregator_epochs: Annotated[int, typer.Option(help="aggregator epochs")] = 40,
    requests: Annotated[int, typer.Option(help="timed requests through the runtime")] = 200,
    replan: Annotated[bool, typer.Option(help="plan again even if the demo plan exists")] = False,
    max_per_split: Annotated[int | None, typer.Option(
        help="use at most this many images per split (quick runs)")] = None,
    use_all_devices: Annotated[bool, typer.Option(
        help="give every device a sub-model (CoFormer's rule) instead of leaving out one that does not pay")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
) -> None:
    """Profile, plan, serve and benchmark the default teacher on three emulated devices."""
    from shoal.plan.directory import read_plan_json
    from shoal.plan.document import PLAN_FILE
    from shoal.planner.pipeline import run_plan
    from shoal.runtime.bench import run_bench

    plan_dir = out / "plan"
    if replan or not (plan_dir / PLAN_FILE).is_file() or read_plan_json(plan_dir).stage != "calibrated":
        console.rule("[bold]1-2. profile the devices and plan")
        request = PlanRequest(
            out=str(plan_dir), profile_samples=profile_samples, max_per_split=max_per_split,
            cal_images=min(512, max_per_split or 512),
            search=SearchSettings("bo", init=init, iterations=iterations),
            calibration=CalibrationSettings(epochs=epochs, aggregator_epochs=aggregator_epochs),
            allow_leave_out=not use_all_devices)
        with LiveSearch(request.search.budget, quiet=as_json) as ui:
            document = run_plan(request, plan_hooks(ui))
        if not as_json:
            show_document(document, plan_dir)
    else:
        console.print(f"using the existing demo plan {plan_dir} (--replan to make it again)")
    console.rule("[bold]3. serve it on a local cluster and benchmark it beside the teacher")
    result = run_bench(plan_dir, requests=requests, warmup=20)
    if as_json:
        print_json({"plan": read_plan_json(plan_dir).to_dict(), "bench": result.to_dict()})
        return
    print_tables(result)
    console.print(f"\nplan: {plan_dir}   figures: {plan_dir / 'figures'}   "
                  f"serve it yourself: shoal serve local --plan {plan_dir}", highlight=False)
