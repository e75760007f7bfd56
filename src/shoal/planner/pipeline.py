"""`shoal plan` end to end: search, decompose, calibrate, aggregate, evaluate, write the plan.

The pipeline is a function of a frozen `PlanRequest`; the command only turns
options into a request and draws progress. Every phase leaves its output in
the plan directory as it finishes (importance scores, the search journal,
calibration checkpoints), so an interrupted plan resumes with `resume=True`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from shoal.data.datasets import TaskData, default_teacher_for, load_task_data, task_classes
from shoal.data.imagecodec import mean_encoded_bytes
from shoal.data.text import TOKENS_FORMAT, sent_token_bytes, token_lengths
from shoal.devices.spec import DeviceSet
from shoal.errors import ConfigError, DataError, InfeasibleError
from shoal.models.accounting import spec_cost
from shoal.models.aggregator import Aggregator
from shoal.models.importance import ImportanceScores, compute_importance
from shoal.models.spec import Policy, SubModelSpec
from shoal.models.surgery import build_submodel, head_of
from shoal.models.teacher import BUILTIN_TEACHERS, Teacher, load_teacher
from shoal.plan.directory import read_plan_json, versions, write_document, write_plan
from shoal.plan.document import (
    PLAN_FILE,
    AblationScores,
    AggregatorInfo,
    CalibrationSummary,
    DeviceCalibration,
    DevicePrediction,
    InputSpec,
    MethodInfo,
    Objective,
    PhaseTime,
    PlanAccuracy,
    PlanDocument,
    Predicted,
    SearchSummary,
    SlowestDevice,
    TeacherInfo,
    VariantInfo,
)
from shoal.planner.aggregation import joint_finetune, train_aggregator
from shoal.planner.balanced import balanced_policy
from shoal.planner.calibration import Booster
from shoal.planner.devit import devit_plan
from shoal.planner.edvit import edvit_plan
from shoal.planner.evaluation import logits_of, score_decomposition
from shoal.planner.figures import convergence_figure, latency_figure
from shoal.planner.journal import Journal, Record
from shoal.planner.objective import Evaluation, Evaluator, LatencyPredictor
from shoal.planner.pareto import Variant, choose_variants, pareto_figure
from shoal.planner.proxy import ProxySettings
from shoal.planner.search import SearchResult, run_search
from shoal.planner.settings import CalibrationSettings, PlanRequest
from shoal.planner.space import SearchSpace
from shoal.planner.subtasks import SubtaskPlan, split_classes
from shoal.utils.accel import compute_device
from shoal.utils.fields import Fields
from shoal.utils.io import atomic_save_safetensors

log = logging.getLogger(__name__)

Progress = Callable[[str, int, int], None]




class PhaseClock:
    """Wraps a phase callback and times each phase (until the next begins, or `finish`)."""

    def __init__(self, inner: Callable[[str], None]) -> None:
        self.inner = inner
        self.phases: list[tuple[str, float]] = []
        self._started: float | None = None

    def __call__(self, name: str) -> None:
        self._close()
        self.phases.append((name, 0.0))
        self._started = time.perf_counter()
        self.inner(name)

    def _close(self) -> None:
        if self._started is not None and self.phases:
            name, _ = self.phases[-1]
            self.phases[-1] = (name, time.perf_counter() - self._started)
            self._started = None

    def finish(self) -> tuple[PhaseTime, ...]:
        """Each phase so far and its seconds (the last one closed now)."""
        self._close()
        return tuple(PhaseTime(name, round(seconds, 3)) for name, seconds in self.phases)


@dataclass
class PlanHooks:
    """Callbacks the command uses to draw progress (all optional)."""

    phase: Callable[[str], None] = lambda name: None
    progress: Progress = lambda desc, done, total: None
    record: Callable[[Record, Evaluator, SearchSpace], None] = lambda record, evaluator, space: None


@dataclass(frozen=True)
class Problem:
    """The search problem: teacher, data, devices and their predictors, the space and Ψ."""

    teacher: Teacher
    data: TaskData
    devices: DeviceSet
    predictors: list[LatencyPredictor]
    scores: ImportanceScores
    space: SearchSpace
    evaluator: Evaluator
    input: InputSpec


def input_spec(teacher: Teacher, data: TaskData, val_images: torch.Tensor, input_format: str) -> InputSpec:
    """What clients will send and what the latency model charges for it: images in `input_format`; a text
    teacher's token ids and mask, at the validation texts' mean length (latency is predicted there)."""
    if teacher.is_text:
        tokens = max(1, round(float(token_lengths(val_images).float().mean())))
        return InputSpec(data.mean, data.std, TOKENS_FORMAT, sent_token_bytes(val_images), tokens)
    return InputSpec(data.mean, data.std, input_format,
                     mean_encoded_bytes(val_images, data.mean, data.std, input_format))


def load_devices(request: PlanRequest, teacher: Teacher, hooks: PlanHooks
                 ) -> tuple[DeviceSet, list[LatencyPredictor], list[float | None]]:
    """The device set, one latency predictor and one runtime-call overhead per device (profiling those lacking one)."""
    from shoal.devices.spec import default_device_set, load_device_set
    from shoal.profiling.resolve import DEVICE_SET_SAMPLES, ensure_profiles, load_device_costs
    from shoal.profiling.settings import TimingSettings
    from shoal.runtime.overhead import measure_rpc

    # the default set keeps the shipped digits teacher's profiles where they always were; any
    # other teacher's profiles go beside them, in a folder of their family
    family = None if teacher.is_default else teacher.config.fingerprint()
    teacher_bytes = spec_cost(teacher.config, SubModelSpec.full(teacher.config)).memory_bytes
    devices = (load_device_set(request.devices) if request.devices
               else default_device_set(family=family, teacher_bytes=teacher_bytes))
    if request.method in ("devit", "edvit"):   # one class per device at least: said before any profiling
        split_classes(teacher.config.num_classes, len(devices), request.search.seed, request.method)
    devices = ensure_profiles(devices, teacher, samples=request.profile_samples or DEVICE_SET_SAMPLES,
                              progress=hooks.progress, overhead=measure_rpc,
                              timing=TimingSettings(budget_ms=request.profile_budget_ms))
    costs = [load_device_costs(d, teacher.config) for d in devices.devices]
    return devices, [predictor for predictor, _ in costs], [rpc for _, rpc in costs]


def build_problem(request: PlanRequest, hooks: PlanHooks,
                  predictors: Sequence[LatencyPredictor] | None = None, devices: DeviceSet | None = None,
                  rpc_ms: Sequence[float | None] | None = None) -> Problem:
    """Load teacher, data and devices; score unit importance; set up the space and Ψ."""
    out = Path(request.out)
    compute = compute_device(request.device)   # refused here, before any work, where it is absent
    hooks.phase("loading teacher and data")
    model = request.model
    if model is None and request.checkpoint is None:
        model = default_teacher_for(request.data)   # a built-in task brings its shipped teacher
    kwargs: dict[str, Any] = {}
    if not request.pretrained and request.checkpoint is None and model not in BUILTIN_TEACHERS:
        classes = task_classes(request.data)   # random weights: the head fits the task
        kwargs = {"num_classes": classes} if classes is not None else {}
    teacher = load_teacher(model, checkpoint=request.checkpoint, pretrained=request.pretrained, model_kwargs=kwargs)
    if teacher.random_weights:
        log.warning("teacher %s has random weights: its accuracy and the plan's mean nothing; latency does",
                    teacher.source)
    if teacher.is_text and request.method != "coformer":
        raise ConfigError(f"--method {request.method} splits a vision teacher; {teacher.source} is a text teacher "
                          "(plan it with --method coformer)")
    teacher.model.to(compute)   # data stays on the host; batches move (shoal.utils.accel)
    data = load_task_data(teacher, request.data, max_per_split=request.max_per_split)
    if devices is None or predictors is None:
        hooks.phase("loading device profiles")
        devices, predictors, rpc_ms = load_devices(request, teacher, hooks)
    for device, predictor in zip(devices.devices, predictors):
        if predictor.family != teacher.config.fingerprint():
            raise ConfigError(f"device {device.name!r}: its predictor was trained for family {predictor.family}, "
                              f"this teacher is {teacher.config.fingerprint()}; re-run shoal profile")
    hooks.phase(f"scoring unit importance ({request.importance})")
    scores = _importance(teacher, data, request, out)
    space = SearchSpace(teacher.config, devices, scores, layer_rule=request.layer_rule, deal_rule=request.deal_rule,
                        allow_leave_out=request.allow_leave_out)
    if request.method == "coformer":   # DeViT and ED-ViT check their own policies (and say which method)
        try:
            space.check_feasible()
        except InfeasibleError as exc:
            raise InfeasibleError(f"--method coformer: {exc}") from None
    cal = data.train.subset(request.cal_images)
    val = data.val.subset(request.val_images)
    sent = input_spec(teacher, data, val.images, request.input_format)
    evaluator = Evaluator(teacher.model, teacher.config, devices, list(predictors), cal.images, val.images,
                          val.labels, delta=0.0, proxy=ProxySettings(kind=request.proxy, precision=request.precision),
                          rpc_ms=rpc_ms, cal_labels=cal.labels, augment=data.augment, input_bytes=sent.bytes,
                          tokens=sent.tokens)
    delta = request.delta if request.delta is not None else 1.0 / evaluator.teacher_latency()[0]
    evaluator.delta = delta
    return Problem(teacher, data, devices, list(predictors), scores, space, evaluator, sent)


def _importance(teacher: Teacher, data: TaskData, request: PlanRequest, out: Path) -> ImportanceScores:
    from safetensors.torch import load_file

    path = out / "importance.safetensors"
    key = f"{teacher.config.fingerprint()}:{data.name}:{request.importance}:{request.cal_images}"
    if path.exists():
        from safetensors import safe_open

        with safe_open(str(path), "pt") as fh:
            if (fh.metadata() or {}).get("key") == key:
                return ImportanceScores.from_tensors(load_file(str(path)), request.importance)
    n = min(request.cal_images, 256)
    scores = compute_importance(teacher.model, teacher.config, data.train.images[:n], data.train.labels[:n],
                                request.importance, seed=request.search.seed)
    atomic_save_safetensors(path, scores.to_tensors(), metadata={"key": key})
    return scores


def search_header(problem: Problem, request: PlanRequest) -> dict[str, Any]:
    """What identifies a search (a journal made for another header is not resumed)."""
    s = request.search
    extra: dict[str, Any] = {}   # keys written only when set, so older journals still resume
    if request.precision != "fp32":
        extra["precision"] = request.precision
    if s.pareto:
        extra["pareto"] = s.pareto
    return {**extra, "family": problem.teacher.config.fingerprint(), "teacher": problem.teacher.source,
            "data": problem.data.name, "devices": problem.devices.to_dict(), "delta": problem.evaluator.delta,
            "proxy": request.proxy, "val_images": request.val_images, "strategy": s.strategy, "seed": s.seed,
            "init": s.init, "anchors": s.anchors,
            "acquisition": s.acquisition, "importance": request.importance, "layer_rule": request.layer_rule,
            "deal_rule": request.deal_rule, "allow_leave_out": request.allow_leave_out, "dim": problem.space.dim}


def search(problem: Problem, request: PlanRequest, hooks: PlanHooks) -> SearchResult:
    journal = Journal(Path(request.out) / "journal.jsonl", search_header(problem, request))
    return run_search(problem.space, problem.evaluator, request.search, journal, resume=request.resume,
                      on_record=lambda r: hooks.record(r, problem.evaluator, problem.space))


def search_summary(result: SearchResult) -> SearchSummary:
    best = result.chosen
    return SearchSummary(
        strategy=result.settings.strategy, evaluations=len(result.records), init=result.settings.init,
        iterations=result.settings.iterations, seed=result.settings.seed, acquisition=result.settings.acquisition,
        best_index=best.index, best_psi=best.psi, best_so_far=tuple(result.best_so_far()),
        psi=tuple(r.psi for r in result.records), phases=tuple(r.phase for r in result.records),
        seconds=sum(r.evaluation.seconds for r in result.records))


def single_summary(evaluation: Evaluation, request: PlanRequest, strategy: str) -> SearchSummary:
    """The search record of a policy made without a search (a balanced split, DeViT, ED-ViT): one evaluation."""
    psi = evaluation.psi
    return SearchSummary(strategy=strategy, evaluations=1, init=0, iterations=0, seed=request.search.seed,
                         acquisition="none", best_index=0, best_psi=psi, best_so_far=(psi,), psi=(psi,),
                         phases=(strategy,), seconds=evaluation.seconds)


def predicted_summary(problem: Problem, policy: Policy, evaluation: Evaluation) -> Predicted:
    names = policy.devices
    index = [problem.devices.names.index(n) for n in names]
    teacher_all = problem.evaluator.teacher_latency()
    teacher_ms = [teacher_all[i] for i in index]
    predictors = [problem.predictors[i] for i in index]
    lat = evaluation.latency
    slowest = max(range(len(names)), key=lambda k: teacher_ms[k])   # highest teacher latency
    return Predicted(
        total_ms=lat.total_ms, aggregate_ms=lat.aggregate_ms, request_ms=lat.request_ms,
        straggler=names[lat.straggler], teacher_ms=dict(zip(names, teacher_ms)),
        devices={n: DevicePrediction(c, t, f, m, s.describe(), p.kind, p.is_estimate)
                 for n, c, t, f, m, s, p in zip(names, lat.compute_ms, lat.transfer_ms, evaluation.flops,
                                                evaluation.memory_bytes, policy.specs, predictors)},
        left_out=tuple(n for n in problem.devices.names if n not in names),
        speedup_vs_teacher_on_central=teacher_ms[0] / lat.total_ms,
        slowest_device_ratio=SlowestDevice(names[slowest], lat.compute_ms[slowest], teacher_ms[slowest]))


def policy_from_plan(path: str | Path) -> Policy:
    """The policy recorded in a plan.json (or a plan directory)."""
    path = Path(path)
    if path.name != PLAN_FILE and not path.is_dir():
        raise DataError(f"--from-policy expects a plan.json or a plan directory, got {path}")
    return read_plan_json(path if path.is_dir() else path.parent).policy


@dataclass(frozen=True)
class Calibrated:
    """Calibrated sub-models and aggregator, the calibration summary and the test accuracy.

    Attributes:
        correct: Per-image test correctness (bool, test split order) behind `accuracy`, for paired
            tests between variants: the rows of `score_decomposition` ("teacher", "ensemble",
            "submodels/<device>", "subset/<present devices>") and "ablation/<row>/ensemble". Not in plan.json.
    """

    submodels: list[nn.Module]
    aggregator: Aggregator
    summary: CalibrationSummary
    accuracy: PlanAccuracy
    correct: dict[str, torch.Tensor] = field(default_factory=dict)


def method_settings(request: PlanRequest) -> CalibrationSettings:
    """The calibration settings of `request.method`: CoFormer's as given; DeViT: no boosting between
    sub-tasks, the ensemble trained with γ = 1 (eq. 14) and fine-tuned jointly (Algorithm 3: at least
    2 epochs); ED-ViT: labels only, its fusion MLP on frozen sub-models."""
    s = request.calibration
    if request.method == "devit":
        return replace(s, weighting="uniform", token_weight=1.0, joint_epochs=max(2, s.joint_epochs))
    if request.method == "edvit":
        return replace(s, weighting="uniform", fusion="relu", teacher_weight=0.0, joint_epochs=0)
    return s


def calibrate(problem: Problem, policy: Policy, request: PlanRequest, hooks: PlanHooks,
              subtasks: SubtaskPlan | None = None) -> Calibrated:
    """Booster, aggregator, optional joint fine-tune, and the evaluation with its ablation rows (CoFormer;
    DeViT and ED-ViT: their sub-task training and fusion, `subtasks`, without CoFormer's ablation)."""
    teacher, config, data, s = problem.teacher, problem.teacher.config, problem.data, method_settings(request)
    names = list(policy.devices)
    teacher_test = logits_of(teacher.model, data.test.images)   # once: every row is scored on the same images
    ablation = {}
    if subtasks is None:
        sliced = [build_submodel(config, spec, teacher.model) for spec in policy.specs]
        hooks.phase("ablation: decompose only / decompose + aggregate")
        scatter = Aggregator.from_teacher_channels([sp.channels for sp in policy.specs], head_of(teacher.model),
                                                   config.global_pool, config.num_prefix_tokens)
        ablation["decompose_only"] = score_decomposition(teacher_test, names, sliced, scatter, data.test,
                                                         with_subsets=False)
        agg_only = train_aggregator(teacher.model, config, sliced, data,
                                    replace(s, device_dropout=0.0, feature_copies=1), hooks.progress)
        ablation["decompose_aggregate"] = score_decomposition(teacher_test, names, sliced, agg_only, data.test,
                                                              with_subsets=False)

    hooks.phase(f"calibrating sub-models ({s.weighting} weighting)" if subtasks is None
                else f"{request.method}: training each sub-model on its sub-task")
    submodels = [build_submodel(config, spec, teacher.model) for spec in policy.specs]
    if subtasks is None:
        booster = Booster(teacher.model, submodels, names, data, s, Path(request.out) / "calibration")
    else:
        booster = Booster(teacher.model, submodels, names, data, s, Path(request.out) / "calibration",
                          classes=subtasks.classes, loss="labels" if request.method == "edvit" else "distill",
                          relation=DEVIT_RELATION if request.method == "devit" else (0.0, 0.0, 0.0),
                          relation_layers=subtasks.relation_layers or None)
    started = time.perf_counter()
    summary = booster.run(hooks.progress, resume=request.resume)
    hooks.phase("training the aggregator" if request.method != "edvit" else "edvit: training the fusion MLP")
    aggregator = train_aggregator(teacher.model, config, submodels, data, s, hooks.progress)
    joint_finetune(teacher.model, submodels, aggregator, data, s, hooks.progress)
    calibration = CalibrationSummary(
        settings=s.to_dict(), weighting=summary["weighting"],
        devices={name: DeviceCalibration(**row) for name, row in summary["devices"].items()},
        seconds=time.perf_counter() - started)
    hooks.phase("evaluating on the test split")
    scored = score_decomposition(teacher_test, names, submodels, aggregator, data.test)
    val = score_decomposition(logits_of(teacher.model, data.val.images), names, submodels, aggregator, data.val,
                              with_subsets=False)
    accuracy = replace(scored.accuracy, val=val.accuracy.ensemble, ablation={
        k: AblationScores(v.accuracy.ensemble, v.accuracy.submodels) for k, v in ablation.items()})
    correct = dict(scored.correct)
    correct.update({f"ablation/{k}/ensemble": v.correct["ensemble"] for k, v in ablation.items()})
    return Calibrated(submodels, aggregator, calibration, accuracy, correct)


def write_search_outputs(problem: Problem, result: SearchResult | None, policy: Policy, evaluation: Evaluation,
                         out: Path) -> Predicted:
    figures = out / "figures"
    if result is not None:
        convergence_figure(figures / "convergence.png", {result.settings.strategy: result.best_so_far()},
                           {result.settings.strategy: [r.psi for r in result.records]},
                           init=result.settings.init if result.settings.strategy == "bo" else None)
    summary = predicted_summary(problem, policy, evaluation)
    latency_figure(figures / "latency.png", list(policy.devices), evaluation.latency,
                   teacher_ms=list(summary.teacher_ms.values()))
    return summary


def run_plan(request: PlanRequest, hooks: PlanHooks | None = None,
             predictors: Sequence[LatencyPredictor] | None = None, devices: DeviceSet | None = None,
             ) -> PlanDocument:
    """Run `shoal plan`; returns the plan.json document that was written."""
    clock = PhaseClock((hooks or PlanHooks()).phase)
    hooks = replace(hooks or PlanHooks(), phase=clock)
    out = Path(request.out)
    out.mkdir(parents=True, exist_ok=True)
    problem = build_problem(request, hooks, predictors, devices)
    result: SearchResult | None = None
    subtasks: SubtaskPlan | None = None
    if request.from_policy:
        policy = policy_from_plan(request.from_policy)
        unknown = [n for n in policy.devices if n not in problem.devices.names]
        if unknown or policy.devices[0] != problem.devices.central.name:
            raise ConfigError(f"the policy in {request.from_policy} is for devices {list(policy.devices)}, "
                              f"the device set has {list(problem.devices.names)} (central first)")
        policy.check_against(problem.teacher.config)
        hooks.phase("evaluating the given policy")
        evaluation = problem.evaluator.evaluate(policy)
    elif request.method in ("devit", "edvit"):
        hooks.phase(f"{request.method}: sub-tasks, importance per sub-task, sub-model sizes (no search)")
        subtasks = method_plan(problem, request)
        policy = subtasks.policy
        evaluation = problem.evaluator.evaluate(policy)
        alone = problem.evaluator.teacher_latency()[0]
        if evaluation.latency.total_ms > alone:
            log.warning("--method %s: predicted T %.2f ms is slower than the teacher alone on the central node "
                        "(%.2f ms); --target-ms sizes the sub-models for a latency", request.method,
                        evaluation.latency.total_ms, alone)
    elif request.split == "balanced":
        hooks.phase("balanced split on the device profiles (no search)")
        policy = balanced_policy(problem.teacher.config, problem.evaluator, problem.scores, request.deal_rule)
        evaluation = problem.evaluator.evaluate(policy)
    else:
        hooks.phase(f"searching ({request.search.strategy}, {request.search.budget} evaluations)")
        result = search(problem, request, hooks)
        policy = problem.space.decode(result.chosen.x)
        evaluation = result.chosen.evaluation
    variants: list[Variant] = []
    if result is not None and request.search.pareto:
        variants = choose_variants(result.records, result.chosen, request.search.pareto)
        pareto_figure(out / "figures" / "pareto.png", result.records, variants)
    predicted = write_search_outputs(problem, result, policy, evaluation, out)
    document = _document(problem, request, policy, evaluation, predicted, result)
    if subtasks is not None:
        document = replace(document, method=MethodInfo(request.method, dict(zip(policy.devices, subtasks.classes)),
                                                       subtasks.choice))
    if request.search_only:
        document = replace(document, phases=clock.finish(), variants=tuple(
            _variant_info(v, problem.space.decode(v.record.x), None) for v in variants))
        write_document(out, document)
        return document
    calibrated = calibrate(problem, policy, request, hooks, subtasks)
    infos, extra = [], []
    for variant in variants:
        if variant.name == "primary":
            infos.append(_variant_info(variant, policy, calibrated.accuracy.ensemble.top1))
            continue
        where = Path("variants") / variant.name
        hooks.phase(f"variant {variant.name}: T {variant.latency_ms:.2f} ms")
        vpolicy = problem.space.decode(variant.record.x)
        vpredicted = predicted_summary(problem, vpolicy, variant.record.evaluation)
        vrequest = replace(request, out=str(out / where))
        vcal = calibrate(problem, vpolicy, vrequest, hooks)
        vdoc = replace(_document(problem, vrequest, vpolicy, variant.record.evaluation, vpredicted, result),
                       stage="calibrated", calibration=vcal.summary, accuracy=vcal.accuracy,
                       aggregator=AggregatorInfo.of(vcal.aggregator))
        write_plan(out / where, vdoc, dict(zip(vpolicy.devices, vcal.submodels)), vcal.aggregator,
                   device_dropout=request.calibration.device_dropout > 0)
        infos.append(_variant_info(variant, vpolicy, vcal.accuracy.ensemble.top1, str(where)))
        extra.append(str(where / PLAN_FILE))
    document = replace(document, stage="calibrated", calibration=calibrated.summary, accuracy=calibrated.accuracy,
                       phases=clock.finish(), variants=tuple(infos),
                       aggregator=AggregatorInfo.of(calibrated.aggregator))
    hooks.phase("writing the plan")
    models = dict(zip(policy.devices, calibrated.submodels))
    return write_plan(out, document, models, calibrated.aggregator,
                      device_dropout=request.calibration.device_dropout > 0, extra_files=extra)


DEVIT_RELATION = (0.2, 0.1, 0.3)   # DeViT's feature-matching weights of Q, K, V (its authors' code; ADR 015)


def method_plan(problem: Problem, request: PlanRequest) -> SubtaskPlan:
    """DeViT's or ED-ViT's policy for the problem's devices."""
    cal_images, seed = min(request.cal_images, 256), request.search.seed
    if request.method == "devit":
        return devit_plan(problem.teacher, problem.data, problem.devices, problem.evaluator,
                          target_ms=request.target_ms, cal_images=cal_images, seed=seed,
                          channel_rule="magnitude" if request.importance == "mixed" else request.importance)
    return edvit_plan(problem.teacher, problem.data, problem.devices, problem.evaluator,
                      target_ms=request.target_ms, cal_images=cal_images, seed=seed)


def _variant_info(variant: Variant, policy: Policy, top1: float | None, where: str = ".") -> VariantInfo:
    return VariantInfo(variant.name, where, "+".join(policy.devices), variant.latency_ms, variant.loss, top1)


def _document(problem: Problem, request: PlanRequest, policy: Policy, evaluation: Evaluation, predicted: Predicted,
              result: SearchResult | None) -> PlanDocument:
    """plan.json of a searched policy (stage "searched": no weights yet)."""
    used = DeviceSet(tuple(problem.devices[n] for n in policy.devices), source=problem.devices.source)
    teacher = TeacherInfo.read(Fields({"source": problem.teacher.source,
                                       "metrics": problem.teacher.meta.get("metrics", {}),
                                       "random_weights": problem.teacher.random_weights}, "teacher"))
    return PlanDocument(
        stage="searched", versions=versions(), config=problem.teacher.config, devices=used, policy=policy,
        teacher=teacher, data=problem.data.summary(),
        objective=Objective(problem.evaluator.delta, request.proxy, evaluation.psi, evaluation.loss,
                            evaluation.latency.total_ms,
                            "given" if request.delta is not None else "1 / teacher latency on central"),
        predicted=predicted,
        search=(search_summary(result) if result is not None
                else single_summary(evaluation, request, request.method) if request.method != "coformer"
                else single_summary(evaluation, request, "balanced") if request.split == "balanced"
                else SearchSummary(from_policy=str(request.from_policy))),
        importance=request.importance, layer_rule=request.layer_rule, deal_rule=request.deal_rule,
        resumed=request.resume,
        input=problem.input)
