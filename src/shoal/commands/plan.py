"""`shoal plan`: search a decomposition policy, calibrate it, write a deployable plan; `shoal plan show DIR`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Group
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from shoal.commands._common import console, guard, print_json
from shoal.planner.settings import CalibrationSettings, PlanRequest, SearchSettings

if TYPE_CHECKING:
    from shoal.plan.document import PairedTest, PlanDocument, Score
    from shoal.plan.janus import JanusPlan
    from shoal.planner.journal import Record
    from shoal.planner.pipeline import PlanHooks

_SEARCH, _CAL, _REQUEST = SearchSettings(), CalibrationSettings(), PlanRequest()   # the defaults

app = typer.Typer(help="Search, decompose and calibrate a plan; or show one.", no_args_is_help=False)

_SPARK = "▁▂▃▄▅▆▇█"


def _spark(values: list[float], width: int = 40) -> str:
    values = values[-width:]
    lo, hi = min(values), max(values)
    if hi - lo < 1e-12:
        return _SPARK[0] * len(values)
    return "".join(_SPARK[int((v - lo) / (hi - lo) * (len(_SPARK) - 1))] for v in values)


class LiveSearch:
    """Progress bars for every phase, and a live table of the best policy so far."""

    def __init__(self, budget: int, quiet: bool) -> None:
        self.quiet = quiet
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), console=console)
        self.search_task = None
        self.budget = budget
        self.tasks: dict[str, Any] = {}
        self.best: Record | None = None
        self.best_curve: list[float] = []
        self.table: Table | None = None
        self.live = Live(Group(self.progress), console=console, refresh_per_second=4, transient=False)

    def __enter__(self) -> LiveSearch:
        if not self.quiet:
            self.live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if not self.quiet:
            self.live.__exit__(*exc)  # type: ignore[arg-type]

    def phase(self, name: str) -> None:
        if not self.quiet:
            console.log(f"[bold]{name}[/]")

    def step(self, desc: str, done: int, total: int) -> None:
        if self.quiet:
            return
        if desc not in self.tasks:
            self.tasks[desc] = self.progress.add_task(desc, total=total)
        self.progress.update(self.tasks[desc], completed=done, total=total)

    def record(self, record: Record, evaluator: Any, space: Any) -> None:
        if self.best is None or record.psi < self.best.psi:
            self.best = record
        self.best_curve.append(self.best.psi)
        if self.quiet:
            return
        self.step("search evaluations", record.index + 1, self.budget)
        table = Table(title=f"best policy after {record.index + 1} evaluations (#{self.best.index}, "
                            f"{self.best.phase})", title_justify="left")
        for col in ("device", "blocks", "width", "heads/blk", "MLP/blk", "t1 ms", "t2 ms"):
            table.add_column(col, justify="right" if col != "device" else "left")
        ev = self.best.evaluation
        timings = iter(zip(ev.latency.compute_ms, ev.latency.transfer_ms))
        for name, shape in zip(space.names, self.best.shapes):
            if shape is None:
                table.add_row(name, "[dim]left out[/]", "", "", "", "", "")
                continue
            t1, t2 = next(timings)
            heads, mlp = shape["heads"], shape["mlp"]
            table.add_row(name, str(len(shape["layers"])), str(shape["width"]),
                          f"{sum(heads) / max(len(heads), 1):.1f}", f"{sum(mlp) / max(len(mlp), 1):.0f}",
                          f"{t1:.2f}", f"{t2:.3f}")
        table.caption = (f"Ψ {ev.psi:.4f} = L {ev.loss:.4f} + δ {ev.delta:.4f}/ms × T {ev.latency.total_ms:.2f} ms"
                         f"   best Ψ {_spark(self.best_curve)}")
        self.live.update(Group(self.progress, table))


def plan_hooks(ui: LiveSearch) -> PlanHooks:
    from shoal.planner.pipeline import PlanHooks

    return PlanHooks(phase=ui.phase, progress=ui.step, record=ui.record)


@app.callback(invoke_without_command=True)
@guard
def plan(
    ctx: typer.Context,
    model: Annotated[str | None, typer.Option(
        help="timm model name or checkpoint, or a text teacher: its JSON (python -m shoal.data.train_text_teacher) "
             "or a BERT directory (default: the teacher of the task)")] = None,
    checkpoint: Annotated[str | None, typer.Option(help="local weights for --model")] = None,
    pretrained: Annotated[bool, typer.Option(help="fetch timm's pretrained weights")] = True,
    data: Annotated[str | None, typer.Option(
        help="digits | fashion-mnist | an ImageFolder tree with train/ val/ [test/] | rotten-tomatoes | a "
             "labelled text .csv/.jsonl (columns text, label) (default: digits)")] = None,
    devices: Annotated[str | None, typer.Option(help="device-set YAML (default: three emulated devices)")] = None,
    delta: Annotated[float | None, typer.Option(
        help="δ per ms in Ψ = L + δ·T (default: 1/teacher latency on the central node)")] = None,
    strategy: Annotated[str, typer.Option(help="bo | random | uniform")] = _SEARCH.strategy,
    init: Annotated[int, typer.Option("--init", help="r: random policies first")] = _SEARCH.init,
    iterations: Annotated[int, typer.Option(help="I: BO iterations")] = _SEARCH.iterations,
    acquisition: Annotated[str, typer.Option(help="logei | ei")] = _SEARCH.acquisition,
    pareto: Annotated[int, typer.Option(
        help="K >= 2: search latency and accuracy as two objectives and calibrate up to K variants from the front "
             "(the fastest and the central node alone among them); 0: one plan")] = _SEARCH.pareto,
    proxy: Annotated[str, typer.Option(help="accuracy proxy: distill | logistic | ridge | probe | sliced")
                     ] = _REQUEST.proxy,
    seed: Annotated[int, typer.Option(help="seed of the search and calibration")] = _SEARCH.seed,
    out: Annotated[Path, typer.Option(help="plan directory")] = Path(_REQUEST.out),
    use_all_devices: Annotated[bool, typer.Option(
        help="every device runs a sub-model (CoFormer's rule); by default a worker whose compute does not pay "
             "for its call may be left out")] = False,
    importance: Annotated[str, typer.Option(help="unit ranking: mixed | taylor | fisher | magnitude | random")
                          ] = _REQUEST.importance,
    search_only: Annotated[bool, typer.Option(help="stop after the search")] = False,
    from_policy: Annotated[str | None, typer.Option(help="calibrate the policy of this plan.json")] = None,
    resume: Annotated[bool, typer.Option(help="continue an interrupted plan in --out")] = False,
    epochs: Annotated[int, typer.Option(help="distillation epochs per sub-model")] = _CAL.epochs,
    lr: Annotated[float, typer.Option(help="sub-model learning rate")] = _CAL.lr,
    batch_size: Annotated[int, typer.Option(help="training batch size")] = _CAL.batch_size,
    weighting: Annotated[str, typer.Option(help="sample weighting: boost | printed | uniform")] = _CAL.weighting,
    aggregator_epochs: Annotated[int, typer.Option(help="aggregator epochs")] = _CAL.aggregator_epochs,
    joint_epochs: Annotated[int, typer.Option(help="joint fine-tune epochs after the aggregator")] = _CAL.joint_epochs,
    device_dropout: Annotated[float, typer.Option(help="train the aggregator to answer without devices")
                              ] = _CAL.device_dropout,
    profile_samples: Annotated[int | None, typer.Option(help="samples when a device still needs profiling")] = None,
    profile_budget_ms: Annotated[float | None, typer.Option(
        help="when profiling: stop timing a shape after this many ms of calls (real-scale teachers)")] = None,
    max_per_split: Annotated[int | None, typer.Option(help="use at most this many images per split")] = None,
    cal_images: Annotated[int, typer.Option(help="training images for importance and the proxy's fits")
                          ] = _REQUEST.cal_images,
    val_images: Annotated[int | None, typer.Option(help="validation images the proxy scores")] = _REQUEST.val_images,
    device: Annotated[str, typer.Option(
        help="where the models run while planning: cpu | cuda (importance, proxy, calibration, evaluation)")
                      ] = _REQUEST.device,
    input_format: Annotated[str, typer.Option(
        "--input", help="what clients will send: float32 | uint8 | png | jpeg (the latency model charges its bytes)")
                            ] = _REQUEST.input_format,
    precision: Annotated[str, typer.Option(
        help="fp32 | bf16: the search's accuracy proxy under bf16 autocast (about 3x faster on CPUs with AMX)")
                         ] = _REQUEST.precision,
    split: Annotated[str, typer.Option(
        help="search: BO over decompositions (CoFormer); balanced: no search, every device keeps every block "
             "and channel and a share of each block's heads and neurons in proportion to its speed")
                     ] = _REQUEST.split,
    method: Annotated[str, typer.Option(
        help="coformer: the search (or --split balanced); devit | edvit: the papers' class-wise edge "
             "ensembles, one sub-task per device, sized to the devices' budgets (and --target-ms)")
                      ] = _REQUEST.method,
    target_ms: Annotated[float | None, typer.Option(
        help="devit | edvit: the largest sub-models predicted to answer within this many ms")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print plan.json")] = False,
) -> None:
    """Search the decomposition (BO), calibrate the sub-models and write a deployable plan directory."""
    if ctx.invoked_subcommand is not None:
        return
    from shoal.planner.pipeline import run_plan

    request = PlanRequest(
        model=model, checkpoint=checkpoint, pretrained=pretrained, data=data, devices=devices, out=str(out),
        delta=delta, proxy=proxy,  # type: ignore[arg-type]
        search=SearchSettings(strategy=strategy, init=init, iterations=iterations, seed=seed,  # type: ignore[arg-type]
                              acquisition=acquisition, pareto=pareto),  # type: ignore[arg-type]
        calibration=CalibrationSettings(epochs=epochs, lr=lr, batch_size=batch_size, weighting=weighting,  # type: ignore[arg-type]
                                        aggregator_epochs=aggregator_epochs, joint_epochs=joint_epochs,
                                        device_dropout=device_dropout, seed=seed),
        search_only=search_only, from_policy=from_policy, resume=resume, profile_samples=profile_samples,
        profile_budget_ms=profile_budget_ms,
        allow_leave_out=not use_all_devices, importance=importance,  # type: ignore[arg-type]
        max_per_split=max_per_split, cal_images=cal_images, val_images=val_images, device=device,
        split=split, precision=precision, input_format=input_format,  # type: ignore[arg-type]
        method=method, target_ms=target_ms)  # type: ignore[arg-type]
    searching = not from_policy and split == "search" and method == "coformer"
    if method == "janus":
        from shoal.planner.janus import run_janus_plan

        with LiveSearch(0, quiet=as_json) as ui:
            janus = run_janus_plan(request, plan_hooks(ui))
        if as_json:
            print_json(janus.to_dict())
        else:
            show_janus(janus, out)
        return
    with LiveSearch(request.search.budget if searching else 0, quiet=as_json) as ui:
        try:
            document = run_plan(request, plan_hooks(ui))
        except KeyboardInterrupt:
            console.print(f"[yellow]interrupted: continue with `shoal plan --resume --out {out}`[/]")
            raise typer.Exit(130) from None
    if as_json:
        print_json(document.to_dict())
    else:
        show_document(document, out)


@app.command("show")
@guard
def show(
    plan_dir: Annotated[Path, typer.Argument(help="plan directory")],
    as_json: Annotated[bool, typer.Option("--json", help="print plan.json")] = False,
) -> None:
    """Print a plan: policy, predicted latency, accuracy."""
    from shoal.plan.directory import check_plan, read_plan_json

    document = read_plan_json(plan_dir)
    if document.stage != "searched":
        check_plan(plan_dir, document)  # hashes and shapes; names what does not match
    if as_json:
        print_json(document.to_dict())
    else:
        show_document(document, plan_dir)


def show_janus(plan: JanusPlan, where: Path) -> None:
    """A Janus plan: accuracy and tokens per α (every tenth of the grid), the latency fits."""
    m = plan.model
    table = Table(title=f"Janus plan {where}: {plan.device.name} (device) → {plan.server.name} (server), "
                        f"teacher {plan.teacher}, {plan.reduction}", title_justify="left")
    for col in ("α", "tokens after each block", "val top-1", f"test top-1 (n={plan.test_n})"):
        table.add_column(col, justify="left" if col.startswith("tokens") else "right")
    step = max(1, len(m.configs) // 10)
    for k in sorted({*range(0, len(m.configs), step), len(m.configs) - 1}):
        c = m.configs[k]
        table.add_row(f"{c.alpha:.2f}", " ".join(map(str, c.counts[1:])), f"{c.accuracy:.2%}",
                      f"{plan.test_accuracy[k]:.2%}")
    console.print(table)
    for side, fit, reducing in (("device", m.device, m.device_reducing), ("server", m.server, m.server_reducing)):
        chosen = plan.profiles.get(getattr(plan, side).name, {})
        console.print(f"{side} {getattr(plan, side).name}: a block takes {fit.a:.4f}·x + {fit.c:.2e}·x² "
                      f"+ {fit.b:.3f} ms for x tokens ({chosen.get('chosen', '?')} fit kept by leave-one-out)"
                      + (f"; one that removes tokens {reducing.a:.4f}·x + {reducing.c:.2e}·x² + {reducing.b:.3f} ms"
                         if reducing is not None else ""), highlight=False)
    console.print(f"split points {list(m.candidates)}; {m.token_bytes} bytes per token, {m.image_bytes} per image "
                  f"({plan.input.format}); fixed {m.fixed_ms:.2f} ms per request", highlight=False)


def show_document(doc: PlanDocument, where: Path) -> None:
    """Rich tables of a plan.json document."""
    from shoal.plan.document import RANDOM_WEIGHTS_NOTE

    predicted = doc.predicted
    table = Table(title=f"plan {where} ({doc.stage}, teacher {doc.teacher_source})", title_justify="left")
    for col in ("device", "sub-model", "MFLOPs", "memory MiB", "t1 ms", "t2 ms", "teacher ms", "predictor"):
        table.add_column(col, justify="left" if col in ("device", "sub-model", "predictor") else "right")
    if predicted is not None:
        for name, d in predicted.devices.items():
            table.add_row(name, d.shape, f"{d.flops / 1e6:.1f}", f"{d.memory_bytes / 2**20:.2f}",
                          f"{d.compute_ms:.2f}", f"{d.transfer_ms:.3f}",
                          f"{predicted.teacher_ms.get(name, float('nan')):.2f}",
                          d.predictor + (" (estimate)" if d.estimate else ""))
        ratio, obj = predicted.slowest_device_ratio, doc.objective
        table.caption = (f"T = {predicted.total_ms:.2f} ms (straggler {predicted.straggler}, aggregation "
                         f"{predicted.aggregate_ms:.3f} ms, request {predicted.request_ms:.2f} ms); "
                         f"{predicted.speedup_vs_teacher_on_central:.2f}× the "
                         f"teacher on the central node; on {ratio.device} the sub-model takes "
                         f"{ratio.ratio:.0%} of the teacher's time."
                         + (f"  Ψ {obj.psi:.4f} (L {obj.loss:.4f}, δ {obj.delta_per_ms:.4f}/ms)" if obj else ""))
        for name in predicted.left_out:
            table.add_row(name, "[dim]left out: its compute does not pay for its call[/]", "", "", "", "", "", "")
    console.print(table)
    if doc.method is not None:
        groups = "; ".join(f"{name} {list(classes)}" for name, classes in doc.method.classes.items())
        console.print(f"method {doc.method.name}: {doc.method.choice}; classes per device: {groups}", highlight=False)
    if doc.input is not None:
        console.print(f"input: T charges {doc.input.format} ({doc.input.bytes / 1024:.1f} KiB per image to each "
                      f"worker); devices normalise uint8/PNG/JPEG with mean {list(doc.input.mean)}, "
                      f"std {list(doc.input.std)}", highlight=False)
    accuracy = doc.accuracy
    if accuracy is not None:
        title = f"top-1 on the test split (n={accuracy.n})"
        if doc.random_weights:
            title += f"; [bold yellow]{RANDOM_WEIGHTS_NOTE}[/]"
        acc = Table(title=title, title_justify="left")
        acc.add_column("model")
        acc.add_column("top-1", justify="right")
        acc.add_column("95% CI", justify="right")
        acc.add_column("loss", justify="right")

        def row(label: str, s: Score, bold: bool = False) -> None:
            top1 = f"{s.top1:.2%}"
            low, high = s.ci95
            acc.add_row(label, f"[bold]{top1}[/]" if bold else top1, f"[{low:.2%}, {high:.2%}]", f"{s.loss:.4f}")

        row("teacher", accuracy.teacher)
        for label, key in (("decompose only", "decompose_only"), ("decompose + aggregate", "decompose_aggregate")):
            if key in accuracy.ablation:
                row(label, accuracy.ablation[key].ensemble)
        for name, s in accuracy.submodels.items():
            row(f"  sub-model {name} (calibrated)", s)
        row("[bold]shoal ensemble (calibrated)[/]", accuracy.ensemble, bold=True)
        for key, s in accuracy.subsets.items():
            row(f"  from {key.replace('+', ', ')} only", s)
        acc.caption = paired_text(accuracy.ensemble.vs_teacher)
        console.print(acc)
    if doc.variants:
        var = Table(title="variants (--pareto): one plan directory each; the central node can serve any",
                    title_justify="left")
        for col in ("variant", "directory", "devices", "T ms", "proxy L", "test top-1"):
            var.add_column(col, justify="right" if col in ("T ms", "proxy L", "test top-1") else "left")
        for v in doc.variants:
            var.add_row(v.name, v.dir, v.devices.replace("+", ", "), f"{v.latency_ms:.2f}", f"{v.proxy_loss:.4f}",
                        f"{v.top1:.2%}" if v.top1 is not None else "-")
        console.print(var)
    if doc.phases:
        total = sum(p.seconds for p in doc.phases)
        console.print(f"time per phase{' (this run, resumed)' if doc.resumed else ''}: "
                      + " · ".join(f"{p.phase} {_duration(p.seconds)}" for p in doc.phases)
                      + f"; total {_duration(total)}", highlight=False)


def _duration(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds < 90 else f"{seconds / 60:.1f} min"


def paired_text(test: PairedTest | None) -> str | None:
    """One line for the ensemble-vs-teacher McNemar test of plan.json (None for older plans)."""
    if test is None:
        return None
    verdict = "significant" if test.significant else "not significant"
    return (f"ensemble - teacher: {test.difference * 100:+.2f} pt; exact McNemar p = {test.test.p_value:.3g} "
            f"({verdict} at {test.alpha:g}; {test.test.b01} images only the ensemble gets right, "
            f"{test.test.b10} only the teacher)")
