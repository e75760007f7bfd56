"""`shoal profile`, `shoal predict`, `shoal measure`: measure a device, train and query its latency predictor."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from shoal.commands._common import console, print_json, progress_bars
from shoal.devices.emulation import CpuLimit, quota_unavailable_reason
from shoal.errors import ConfigError, DataError, PlatformError
from shoal.models.spec import SubModelSpec
from shoal.predictors.settings import DEFAULT_TARGET, TrainSettings
from shoal.profiling.settings import DeviceKind, SamplerSettings, TimingSettings

if TYPE_CHECKING:
    from shoal.models.config import TeacherConfig
    from shoal.profiling.profile import DeviceProfile

DEFAULT_SAMPLES = 600   # `shoal profile` of one device (a device set profiled by `shoal plan`: 300)
_TIMING = TimingSettings()
ModelOpt = Annotated[str | None, typer.Option(
    help="timm model name or checkpoint, or a text teacher (default: the shipped digits ViT); random weights are "
         "enough to time it")]
CheckpointOpt = Annotated[str | None, typer.Option(help="local weights for --model")]
ThreadsOpt = Annotated[int, typer.Option(min=1, help="torch intra-op threads while timing")]
QuotaOpt = Annotated[float | None, typer.Option(help="emulate a slower device: share of one core (cgroup quota)")]
CpusOpt = Annotated[str | None, typer.Option(help="emulation: cores to pin to, e.g. 0 or 0,1")]
JsonOpt = Annotated[bool, typer.Option("--json", help="machine-readable output on stdout")]
BudgetOpt = Annotated[float | None, typer.Option(
    help="stop timing a shape after this many ms of calls (at least 5 timed); for real-scale teachers on slow "
         "devices")]


def teacher_family(model: str | None, checkpoint: str | None) -> tuple[TeacherConfig, str]:
    """(family, source) of the teacher; timing needs no trained weights, so timm models are not downloaded."""
    from shoal.models.teacher import load_teacher

    teacher = load_teacher(model, checkpoint=checkpoint, pretrained=False)
    return teacher.config, teacher.source


def cpu_limit_option(cpu_quota: float | None, cpus: str | None) -> CpuLimit:
    """The `CpuLimit` of --cpu-quota / --cpus; one clear line where quotas cannot be set here."""
    cores = None
    if cpus is not None:
        try:
            cores = tuple(int(c) for c in cpus.split(",") if c.strip())
        except ValueError:
            raise ConfigError(f"--cpus must be core numbers separated by commas, got {cpus!r}") from None
    limit = CpuLimit(cpu_quota, cores)
    if limit.quota is not None and (reason := quota_unavailable_reason()):
        raise PlatformError(f"cannot emulate --cpu-quota {cpu_quota:g}: {reason}")
    return limit


def profile(
    model: ModelOpt = None,
    checkpoint: CheckpointOpt = None,
    device_name: Annotated[str, typer.Option(help="name of this device (profile directory name)")] = "local",
    samples: Annotated[int, typer.Option(min=10, help="sub-model shapes to time")] = DEFAULT_SAMPLES,
    threads: ThreadsOpt = _TIMING.threads,
    device: Annotated[str, typer.Option(help="cpu or cuda")] = _TIMING.device,
    cpu_quota: QuotaOpt = None,
    cpus: CpusOpt = None,
    repeats: Annotated[int, typer.Option(min=3, help="timed calls per shape (median, mean, p10, p90 kept)")
                       ] = _TIMING.repeats,
    seed: Annotated[int, typer.Option(help="seed of the shape sample and the split")] = SamplerSettings.seed,
    target: Annotated[str, typer.Option(
        help="statistic of the timed calls to learn per shape: auto (mean under --cpu-quota, else p10), median, "
             "mean, p10 or min")] = DEFAULT_TARGET,
    out: Annotated[Path | None, typer.Option(help="profile directory (default: .shoal/profiles/<device-name>)")] = None,
    resume: Annotated[bool, typer.Option(help="keep what an earlier, interrupted run measured")] = True,
    budget_ms: BudgetOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Measure this device on sampled sub-models of the teacher and train its latency predictor."""
    from shoal.profiling.dataset import read_dataset
    from shoal.profiling.machine import probe_device
    from shoal.profiling.profile import DATASET_FILE, ProfileRequest, profile_devices
    from shoal.runtime.overhead import measure_rpc

    if device not in ("cpu", "cuda"):
        raise ConfigError(f"--device must be cpu or cuda, got {device!r}")
    train = TrainSettings(seed=seed, target=target)
    kind: DeviceKind = "cuda" if device == "cuda" else "cpu"
    probe_device(threads, kind)  # fails early if cuda is asked for and absent
    config, source = teacher_family(model, checkpoint)
    limit = cpu_limit_option(cpu_quota, cpus)
    out = out or Path(".shoal") / "profiles" / device_name
    console.print(f"profiling [bold]{device_name}[/] ({limit.describe()}, {threads} thread(s), {device}) for "
                  f"{source} (family {config.fingerprint()}): {samples} shapes -> {out}", highlight=False)
    request = ProfileRequest(device_name, out, limit, TimingSettings(repeats=repeats, threads=threads, device=kind,
                                                                    budget_ms=budget_ms))
    try:
        with progress_bars() as bars:
            [result] = profile_devices([request], config, sampler=SamplerSettings(samples, seed),
                                       teacher_source=source, train=train, resume=resume, overhead=measure_rpc,
                                       progress=bars)
    except KeyboardInterrupt:
        kept = len(read_dataset(out / DATASET_FILE).measurements) if (out / DATASET_FILE).is_file() else 0
        console.print(f"[yellow]interrupted:[/] {kept} measurements kept in {out / DATASET_FILE}; "
                      "run the same command again to resume")
        raise typer.Exit(130) from None
    if as_json:
        print_json(result.document.to_dict())
        return
    _print_profile(result)


def _print_profile(result: DeviceProfile) -> None:
    doc = result.document
    m = doc.measurements
    console.print(f"[bold]{result.name}[/]: {result.probe.describe()}; {result.cpu_limit.describe()}", highlight=False)
    console.print(f"measured {m.measured} shapes, re-measured {m.remeasured}, failed {m.failed}", highlight=False)
    table = Table(title=f"latency predictors ({doc.target} per shape), {doc.split.get('test', 0)} "
                        "held-out shapes; noise floor: pass 1 vs re-measurement")
    for col in ("predictor", "val MAPE", "test RMSE ms", "test MAPE", "±10%", ""):
        table.add_column(col, justify="left" if col in ("predictor", "") else "right", no_wrap=col == "predictor")
    noise = result.noise_floor
    if noise:
        table.add_row("noise floor", "", f"{noise.rmse_ms:.3f}", f"{noise.mape:.1%}",
                      f"{noise.within_10:.0%}", f"n={noise.n}", style="dim")
    for kind, r in doc.predictors.items():
        t = r.test
        table.add_row(kind, f"{r.val.mape:.1%}", f"{t.rmse_ms:.3f}", f"{t.mape:.1%}",
                      f"{t.within_10:.0%}", "chosen" if kind == result.chosen else "",
                      style="bold green" if kind == result.chosen else None)
    console.print(table)
    console.print(f"chosen: {result.chosen} ({doc.reason}); profile written to {result.path}", highlight=False)


def read_specs(path: Path) -> list[SubModelSpec]:
    """SubModelSpecs of a JSONL file, one per line; errors name the file and the line."""
    if not path.is_file():
        raise DataError(f"spec file {path} does not exist")
    specs = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if line.strip():
            try:
                specs.append(SubModelSpec.from_json(line))
            except ConfigError as exc:
                raise DataError(f"{path}:{number}: {exc}") from None
    if not specs:
        raise DataError(f"spec file {path} holds no specs (one SubModelSpec JSON object per line)")
    return specs


def _check_family(specs: list[SubModelSpec], config: TeacherConfig, path: Path, what: str) -> None:
    for number, spec in enumerate(specs, start=1):
        try:
            spec.check_against(config)
        except ConfigError as exc:
            raise ConfigError(f"{path} spec {number} does not fit {what}: {exc}") from None


def _spec_row(spec: SubModelSpec, config: TeacherConfig) -> dict[str, Any]:
    from shoal.models.accounting import spec_cost

    return {"l": spec.depth, "d": spec.width, "h_mean": sum(spec.head_counts) / max(spec.depth, 1),
            "D_mean": sum(spec.mlp_widths) / max(spec.depth, 1), "mflops": spec_cost(config, spec).flops / 1e6}


def _spec_table(title: str, rows: list[dict[str, Any]], extra: list[str]) -> Table:
    table = Table(title=title)
    for col in ("#", "l", "d", "h̄", "D̄", "MFLOPs", *extra):
        table.add_column(col, justify="right")
    for i, r in enumerate(rows, start=1):
        values = [f"{r[k]:.2f}" if isinstance(r[k], float) else str(r[k]) for k in extra_keys(extra)]
        table.add_row(str(i), str(r["l"]), str(r["d"]), f"{r['h_mean']:.1f}", f"{r['D_mean']:.0f}",
                      f"{r['mflops']:.1f}", *values)
    return table


_COLUMN_KEYS = {"predicted ms": "predicted_ms", "median ms": "median_ms", "p10 ms": "p10_ms", "p90 ms": "p90_ms",
                "error": "error"}


def extra_keys(columns: list[str]) -> list[str]:
    return [_COLUMN_KEYS[c] for c in columns]


def predict(
    profile_dir: Annotated[Path, typer.Argument(help="profile directory written by `shoal profile`")],
    specs_file: Annotated[Path, typer.Argument(help="JSONL file, one SubModelSpec per line")],
    as_json: JsonOpt = False,
) -> None:
    """Predict the latency of each spec on a profiled device."""
    from shoal.profiling.profile import load_profile

    prof = load_profile(profile_dir)
    specs = read_specs(specs_file)
    _check_family(specs, prof.config, specs_file, f"the teacher family {prof.family} of {prof.path}")
    predicted = prof.predictor.predict_ms(specs)
    rows = [_spec_row(s, prof.config) | {"predicted_ms": p} for s, p in zip(specs, predicted)]
    if as_json:
        print_json({"profile": str(prof.path), "device": prof.name, "predictor": prof.predictor.kind,
                    "estimate": prof.predictor.is_estimate, "specs": rows})
        return
    console.print(_spec_table(f"{prof.name}: {prof.predictor.kind} predictor", rows, ["predicted ms"]))


def measure(
    specs_file: Annotated[Path, typer.Argument(help="JSONL file, one SubModelSpec per line")],
    model: ModelOpt = None,
    checkpoint: CheckpointOpt = None,
    threads: ThreadsOpt = 1,
    device: Annotated[str, typer.Option(help="cpu or cuda")] = "cpu",
    cpu_quota: QuotaOpt = None,
    cpus: CpusOpt = None,
    repeats: Annotated[int, typer.Option(min=3, help="timed calls per spec (median kept)")] = 50,
    profile_dir: Annotated[Path | None, typer.Option("--profile", help="also show this profile's prediction")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Time each spec now on this machine (to check a prediction)."""
    from shoal.models.partition import SubModelShape
    from shoal.profiling.dataset import read_dataset
    from shoal.profiling.jobs import run_jobs
    from shoal.profiling.profile import DATASET_FILE, load_profile
    from shoal.profiling.runner import explicit_job

    if device not in ("cpu", "cuda"):
        raise ConfigError(f"--device must be cpu or cuda, got {device!r}")
    config, source = teacher_family(model, checkpoint)
    specs = read_specs(specs_file)
    _check_family(specs, config, specs_file, f"the teacher {source} (family {config.fingerprint()})")
    limit = cpu_limit_option(cpu_quota, cpus)
    prof = load_profile(profile_dir) if profile_dir is not None else None
    timing = TimingSettings(repeats=repeats, threads=threads, device="cuda" if device == "cuda" else "cpu")
    rows = [_spec_row(s, config) for s in specs]
    with tempfile.TemporaryDirectory(prefix="shoal-measure-") as tmp:
        dataset = Path(tmp) / DATASET_FILE
        job = explicit_job("measure", config, dataset, [SubModelShape.of(s) for s in specs], timing, limit)
        with progress_bars() as bars:
            run_jobs([job], progress=bars)
        results = read_dataset(dataset)
    by_index = {m.index: m for m in results.measurements}
    failures = {f.index: f.error for f in results.failures}
    predicted = prof.predictor.predict_ms(specs) if prof is not None else None
    for i, row in enumerate(rows):
        if i in by_index:
            stats = by_index[i].stats
            row |= {"median_ms": stats.median_ms, "p10_ms": stats.p10_ms, "p90_ms": stats.p90_ms}
        else:
            row |= {"median_ms": None, "error": failures.get(i, "not measured")}
        if predicted is not None:
            row["predicted_ms"] = predicted[i]
    if as_json:
        print_json({"teacher": source, "family": config.fingerprint(), "cpu_limit": limit.to_dict(),
                    "threads": threads, "device": device, "specs": rows})
        return
    extra = ["median ms", "p10 ms", "p90 ms"] + (["predicted ms"] if predicted is not None else [])
    shown = [r | {k: r.get(k) if r.get(k) is not None else "failed" for k in extra_keys(extra)} for r in rows]
    console.print(_spec_table(f"measured now ({limit.describe()}, {threads} thread(s), {device})", shown, extra))
    for i, error in failures.items():
        console.print(f"[red]spec {i + 1} failed:[/] {error}", highlight=False)
