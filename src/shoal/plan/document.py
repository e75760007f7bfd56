"""plan.json as typed records: what the planner writes and the runtime, `plan show` and
`bench` read.

One frozen dataclass per part, each with `to_dict` and a `from_dict` that reads it
field by field (`shoal.utils.fields`) and refuses a field of the wrong type, a
missing one or an unknown one with its dotted path. `to_dict(from_dict(d)) == d`
for every plan this version writes.

    PlanDocument
      format_version, stage, versions, teacher_config, family, devices, policy
      aggregator   AggregatorInfo       (not in a searched-only plan)
      teacher      TeacherInfo          source, metrics per split
      data         DataSummary          the task and split sizes the plan was made with
      objective    Objective            Ψ, L, δ, T of the chosen policy
      predicted    Predicted            T's breakdown per device, teacher latencies, speedup
      search       SearchSummary        how the search ran, Ψ per evaluation
      calibration  CalibrationSummary   settings and per-device losses
      accuracy     PlanAccuracy         every score on the test split with n and 95% CI
      phases       (PhaseTime, ...)     seconds per phase of `shoal plan`
      files        {path: sha256}       every other file of the directory
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from shoal.data.datasets import DataSummary
from shoal.data.text import TOKENS_FORMAT
from shoal.devices.spec import DeviceSet, DeviceSpec
from shoal.errors import ConfigError, DataError
from shoal.models.config import TeacherConfig, config_from_dict
from shoal.models.spec import Policy
from shoal.utils.fields import Fields, FlatRecord
from shoal.utils.stats import McNemar, wilson_interval

if TYPE_CHECKING:
    from shoal.models.aggregator import Aggregator

FORMAT_VERSION = 1
PLAN_FILE = "plan.json"
Stage = Literal["searched", "decomposed", "calibrated"]
STAGES: tuple[Stage, ...] = ("searched", "decomposed", "calibrated")
Scalar = str | int | float | bool | None


@dataclass(frozen=True)
class Versions(FlatRecord):
    """Versions of the software that wrote the plan."""

    shoal: str
    torch: str
    timm: str


@dataclass(frozen=True)
class AggregatorInfo:
    """Shape of `aggregator.safetensors`: the feature width per device, the fused width, and
    whether it was trained to answer without some devices (`--degrade`)."""

    widths: tuple[int, ...]
    out_dim: int
    device_dropout: bool = False
    activation: str = "none"

    @classmethod
    def of(cls, aggregator: Aggregator, device_dropout: bool = False) -> AggregatorInfo:
        return cls(tuple(aggregator.widths), aggregator.fuse.out_features, device_dropout, aggregator.activation)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"widths": list(self.widths), "out_dim": self.out_dim,
                               "device_dropout": self.device_dropout}
        if self.activation != "none":   # written only when set: older plans read unchanged
            out["activation"] = self.activation
        return out

    @classmethod
    def read(cls, f: Fields) -> AggregatorInfo:
        widths = f.raw("widths")
        if not isinstance(widths, list) or any(isinstance(w, bool) or not isinstance(w, int) for w in widths):
            raise DataError(f"{f.path('widths')} must be a list of integers, got {widths!r}")
        out = cls(tuple(widths), f.integer("out_dim"), f.flag("device_dropout", False),
                  f.choice("activation", ("none", "relu"), "none"))
        f.done()
        return out


@dataclass(frozen=True)
class MethodInfo:
    """How a plan of another method than CoFormer's search split the teacher (`--method`).

    Attributes:
        name: "devit" or "edvit".
        classes: Per device, the classes of its sub-task.
        choice: What the method chose, in words (DeViT's shape, ED-ViT's heads pruned per device).
    """

    name: str
    classes: dict[str, tuple[int, ...]]
    choice: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "classes": {k: list(v) for k, v in self.classes.items()}, "choice": self.choice}

    @classmethod
    def read(cls, f: Fields) -> MethodInfo:
        raw = f.raw("classes")
        if not isinstance(raw, dict) or any(
                not isinstance(v, list) or any(isinstance(c, bool) or not isinstance(c, int) for c in v)
                for v in raw.values()):
            raise DataError(f"{f.path('classes')} must map each device to a list of class indices, got {raw!r}")
        out = cls(f.choice("name", ("devit", "edvit")), {str(k): tuple(v) for k, v in raw.items()},
                  f.text("choice", ""))
        f.done()
        return out


@dataclass(frozen=True)
class PairedTest:
    """The exact McNemar test of classifier `b` against `a` on the same images."""

    a: str
    b: str
    test: McNemar
    alpha: float = 0.05

    @property
    def significant(self) -> bool:
        return self.test.significant(self.alpha)

    @property
    def difference(self) -> float:
        """top1(b) - top1(a)."""
        return self.test.difference

    def to_dict(self) -> dict[str, Any]:
        return {"a": self.a, "b": self.b, **self.test.to_dict(self.alpha)}

    @classmethod
    def read(cls, f: Fields) -> PairedTest:
        f.choice("test", ("mcnemar-exact",))
        out = cls(f.text("a"), f.text("b"),
                  McNemar(f.integer("n"), f.integer("b01"), f.integer("b10"), f.number("p_value"),
                          f.number("mid_p_value")), f.number("alpha"))
        f.number("difference")
        if f.flag("significant") != out.significant:
            raise DataError(f"{f.where}.significant does not follow from p_value and alpha")
        f.done()
        return out


@dataclass(frozen=True)
class Score:
    """One classifier on one split: top-1 of n images (its 95% Wilson interval) and its loss.

    Attributes:
        correct: Images right (None in plans written before it was recorded: then top1·n rounded).
        agreement_with_teacher: Share of images where it and the teacher pick the same class.
        vs_teacher: Its paired test against the teacher.
    """

    top1: float
    loss: float
    n: int
    correct: int | None = None
    agreement_with_teacher: float | None = None
    vs_teacher: PairedTest | None = None

    @property
    def ci95(self) -> tuple[float, float]:
        k = self.correct if self.correct is not None else round(self.top1 * self.n)
        return wilson_interval(k, self.n)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"top1": self.top1, "loss": self.loss, "n": self.n}
        if self.correct is not None:
            out.update(correct=self.correct, ci95=list(self.ci95))
        if self.agreement_with_teacher is not None:
            out["agreement_with_teacher"] = self.agreement_with_teacher
        if self.vs_teacher is not None:
            out["vs_teacher"] = self.vs_teacher.to_dict()
        return out

    @classmethod
    def read(cls, f: Fields) -> Score:
        out = cls(f.number("top1"), f.number("loss"), f.integer("n"), f.integer("correct", None),
                  f.number("agreement_with_teacher", None), f.record("vs_teacher", PairedTest.read, None))
        if out.n < 1 or not 0.0 <= out.top1 <= 1.0:
            raise DataError(f"{f.where}: top1 {out.top1} of n={out.n} images is not an accuracy")
        if out.correct is not None and abs(out.correct / out.n - out.top1) > 1e-6:
            raise DataError(f"{f.where}: top1 {out.top1} is not correct / n = {out.correct}/{out.n}")
        ci = f.floats("ci95", None)
        if ci is not None and (len(ci) != 2 or any(abs(a - b) > 1e-4 for a, b in zip(ci, out.ci95))):
            raise DataError(f"{f.where}.ci95 {list(ci)} is not the Wilson interval of top1·n")
        f.done()
        return out


@dataclass(frozen=True)
class AblationScores:
    """One ablation row (decompose only, decompose + aggregate): the ensemble and each sub-model."""

    ensemble: Score
    submodels: dict[str, Score]

    def to_dict(self) -> dict[str, Any]:
        return {"ensemble": self.ensemble.to_dict(), "submodels": {k: v.to_dict() for k, v in self.submodels.items()}}

    @classmethod
    def read(cls, f: Fields) -> AblationScores:
        out = cls(f.record("ensemble", Score.read), f.records("submodels", Score.read))
        f.done()
        return out


@dataclass(frozen=True)
class PlanAccuracy:
    """Every score of a calibrated plan on the test split (and the ensemble on validation).

    Attributes:
        n: Test images.
        teacher: The teacher.
        submodels: Each calibrated sub-model with its own head.
        ensemble: The aggregated ensemble (with its paired test against the teacher).
        subsets: The ensemble from every proper subset of the devices that includes the central
            node, keyed by the devices present in plan order ("hub+edge-b"): what a degraded
            answer is worth (plans before this recorded `missing`, one device absent: read as subsets).
        ablation: Rows of the ablation, by name.
        val: The ensemble on the validation split.
        stats: What the statistics are, in words.
    """

    n: int
    teacher: Score
    submodels: dict[str, Score]
    ensemble: Score
    subsets: dict[str, Score] = field(default_factory=dict)
    ablation: dict[str, AblationScores] = field(default_factory=dict)
    val: Score | None = None
    stats: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"n": self.n, "teacher": self.teacher.to_dict(),
                               "submodels": {k: v.to_dict() for k, v in self.submodels.items()},
                               "ensemble": self.ensemble.to_dict(), "stats": dict(self.stats)}
        if self.subsets:
            out["subsets"] = {k: v.to_dict() for k, v in self.subsets.items()}
        if self.ablation:
            out["ablation"] = {k: v.to_dict() for k, v in self.ablation.items()}
        if self.val is not None:
            out["val"] = self.val.to_dict()
        return out

    def expected(self, present: Sequence[str]) -> float | None:
        """Test top-1 of the ensemble answering from the devices `present` (None: not evaluated)."""
        names = [n for n in self.submodels if n in set(present)]
        if len(names) == len(self.submodels):
            return self.ensemble.top1
        score = self.subsets.get("+".join(names))
        return score.top1 if score is not None else None

    @classmethod
    def read(cls, f: Fields) -> PlanAccuracy:
        submodels = f.records("submodels", Score.read)
        subsets = f.records("subsets", Score.read, {})
        for absent, score in f.records("missing", Score.read, {}).items():   # older plans: one device absent
            subsets["+".join(n for n in submodels if n != absent)] = score
        out = cls(f.integer("n"), f.record("teacher", Score.read), submodels, f.record("ensemble", Score.read),
                  subsets, f.records("ablation", AblationScores.read, {}), f.record("val", Score.read, None),
                  f.str_map("stats", {}))
        f.done()
        return out


INPUT_FORMATS = ("float32", "uint8", "png", "jpeg", TOKENS_FORMAT)


@dataclass(frozen=True)
class InputSpec:
    """What a client sends a plan, and how every device turns pixels into the teacher's input.

    Attributes:
        mean, std: The normalisation of the plan's data, per channel (or one for all):
            a device given uint8 pixels or PNG/JPEG bytes computes (x / 255 - mean) / std.
        format: The input format the plan's latency was predicted for (`INPUT_FORMATS`); a text
            plan's is "tokens" (mean and std are then unused).
        bytes: Bytes of one image in that format (PNG/JPEG: the mean over the validation images; a
            text plan: the mean of one text's ids and mask).
        tokens: A text plan: the mean tokens per text the latency was predicted at (0: images).
    """

    mean: tuple[float, ...]
    std: tuple[float, ...]
    format: str = "float32"
    bytes: int = 0
    tokens: int = 0

    def __post_init__(self) -> None:
        if self.format not in INPUT_FORMATS:
            raise ConfigError(f"input format must be one of {', '.join(INPUT_FORMATS)}, got {self.format!r}")
        if not self.mean or len(self.mean) != len(self.std) or any(not s > 0 for s in self.std):
            raise ConfigError(f"input normalisation needs one positive std per mean, got {self.mean}, {self.std}")

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"mean": list(self.mean), "std": list(self.std), "format": self.format,
                               "bytes": self.bytes}
        if self.tokens:
            out["tokens"] = self.tokens
        return out

    @classmethod
    def read(cls, f: Fields) -> InputSpec:
        out = cls(f.floats("mean"), f.floats("std"), f.choice("format", INPUT_FORMATS), f.integer("bytes"),
                  f.integer("tokens", 0))
        f.done()
        return out


@dataclass(frozen=True)
class VariantInfo(FlatRecord):
    """One variant of a plan made with `--pareto` (the plan directory itself is "primary"; the
    others are whole plan directories under `variants/<name>/`).

    Attributes:
        name: "primary", "fastest", "central-only" or "front-<k>".
        dir: Its plan directory relative to this one ("." for the primary).
        devices: The devices it uses, "+"-joined in plan order.
        latency_ms: Its predicted T.
        proxy_loss: The search's accuracy proxy L.
        top1: Its calibrated test top-1 (None: a searched-only plan).
    """

    name: str
    dir: str
    devices: str
    latency_ms: float
    proxy_loss: float
    top1: float | None = None


RANDOM_WEIGHTS_NOTE = ("the teacher has random weights: every accuracy of this plan means nothing "
                       "(latency and speed-up do)")


@dataclass(frozen=True)
class TeacherInfo:
    """The teacher: what `shoal.models.load_teacher` reloads it from, and the metrics its
    checkpoint recorded (None: not looked up, as in a plan decomposed without the planner)."""

    source: str
    metrics: dict[str, Score] | None = None
    random_weights: bool = False   # created without trained weights: fit for timing only, accuracy means nothing

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"source": self.source}
        if self.metrics is not None:
            out["metrics"] = {k: v.to_dict() for k, v in self.metrics.items()}
        if self.random_weights:   # written only when set: older plans read unchanged
            out["random_weights"] = True
        return out

    @classmethod
    def read(cls, f: Fields) -> TeacherInfo:
        out = cls(f.text("source"), f.records("metrics", Score.read, None), f.flag("random_weights", False))
        f.done()
        return out


@dataclass(frozen=True)
class Objective(FlatRecord):
    """Ψ = L + δ·T of the chosen policy (CoFormer eq. 8) and how δ was set."""

    delta_per_ms: float
    proxy: str
    psi: float
    loss: float
    latency_ms: float
    delta_rule: str


@dataclass(frozen=True)
class DevicePrediction(FlatRecord):
    """One device's row of the predicted latency: t1, t2, its sub-model's size and the predictor."""

    compute_ms: float
    transfer_ms: float
    flops: int
    memory_bytes: int
    shape: str
    predictor: str
    estimate: bool


@dataclass(frozen=True)
class SlowestDevice:
    """On the policy's slowest device (highest teacher latency): sub-model vs teacher time."""

    device: str
    submodel_ms: float
    teacher_ms: float

    @property
    def ratio(self) -> float:
        return self.submodel_ms / self.teacher_ms

    def to_dict(self) -> dict[str, Any]:
        return {"device": self.device, "submodel_ms": self.submodel_ms, "teacher_ms": self.teacher_ms,
                "ratio": self.ratio}

    @classmethod
    def read(cls, f: Fields) -> SlowestDevice:
        out = cls(f.text("device"), f.number("submodel_ms"), f.number("teacher_ms"))
        f.number("ratio")
        f.done()
        return out


@dataclass(frozen=True)
class Predicted:
    """The predicted latency of the plan (`shoal.plan.latency`), per device, and against the teacher.

    Attributes:
        total_ms: T.
        aggregate_ms: The aggregation on the central node.
        request_ms: The central node's call overhead.
        straggler: The device that finishes last.
        teacher_ms: The whole teacher's predicted latency on each device of the policy.
        devices: Per device of the policy (policy order).
        left_out: Devices of the set the policy does not use.
        speedup_vs_teacher_on_central: Teacher on the central node / T.
        slowest_device_ratio: Sub-model vs teacher on the slowest device.
    """

    total_ms: float
    aggregate_ms: float
    request_ms: float
    straggler: str
    teacher_ms: dict[str, float]
    devices: dict[str, DevicePrediction]
    left_out: tuple[str, ...]
    speedup_vs_teacher_on_central: float
    slowest_device_ratio: SlowestDevice

    def to_dict(self) -> dict[str, Any]:
        return {"total_ms": self.total_ms, "aggregate_ms": self.aggregate_ms, "request_ms": self.request_ms,
                "straggler": self.straggler, "teacher_ms": dict(self.teacher_ms),
                "devices": {k: v.to_dict() for k, v in self.devices.items()}, "left_out": list(self.left_out),
                "speedup_vs_teacher_on_central": self.speedup_vs_teacher_on_central,
                "slowest_device_ratio": self.slowest_device_ratio.to_dict()}

    def total_ms_for_input(self, devices: DeviceSet, planned_bytes: int, sent_bytes: float) -> float:
        """T when each worker is sent `sent_bytes` per image instead of the `planned_bytes` it
        was predicted for (what `shoal bench --input` sends): only the input's share of t2 changes."""
        ends = []
        for name, d in self.devices.items():
            device = devices[name]
            extra = device.transfer_ms(round(sent_bytes)) - device.transfer_ms(planned_bytes)
            ends.append(d.compute_ms + d.transfer_ms + extra)
        return max(ends) + self.aggregate_ms + self.request_ms

    @classmethod
    def read(cls, f: Fields) -> Predicted:
        out = cls(f.number("total_ms"), f.number("aggregate_ms"), f.number("request_ms", 0.0), f.text("straggler"),
                  f.float_map("teacher_ms"), f.records("devices", DevicePrediction.read), f.strs("left_out", ()),
                  f.number("speedup_vs_teacher_on_central"), f.record("slowest_device_ratio", SlowestDevice.read))
        f.done()
        return out


@dataclass(frozen=True)
class SearchSummary:
    """How the policy was found: the search's settings and Ψ per evaluation, or the plan it was
    taken from (`--from-policy`, then every other field is None)."""

    strategy: str | None = None
    evaluations: int | None = None
    init: int | None = None
    iterations: int | None = None
    seed: int | None = None
    acquisition: str | None = None
    best_index: int | None = None
    best_psi: float | None = None
    best_so_far: tuple[float, ...] = ()
    psi: tuple[float, ...] = ()
    phases: tuple[str, ...] = ()
    seconds: float | None = None
    from_policy: str | None = None

    def to_dict(self) -> dict[str, Any]:
        if self.from_policy is not None:
            return {"from_policy": self.from_policy}
        return {"strategy": self.strategy, "evaluations": self.evaluations, "init": self.init,
                "iterations": self.iterations, "seed": self.seed, "acquisition": self.acquisition,
                "best_index": self.best_index, "best_psi": self.best_psi, "best_so_far": list(self.best_so_far),
                "psi": list(self.psi), "phases": list(self.phases), "seconds": self.seconds}

    @classmethod
    def read(cls, f: Fields) -> SearchSummary:
        if f.has("from_policy"):
            out = cls(from_policy=f.text("from_policy"))
        else:
            out = cls(f.text("strategy"), f.integer("evaluations"), f.integer("init"), f.integer("iterations"),
                      f.integer("seed"), f.text("acquisition"), f.integer("best_index"), f.number("best_psi"),
                      f.floats("best_so_far"), f.floats("psi"), f.strs("phases"), f.number("seconds"))
        f.done()
        return out


@dataclass(frozen=True)
class DeviceCalibration(FlatRecord):
    """One sub-model's calibration: final training loss and the range of its sample weights."""

    train_loss: float
    weight_max: float
    weight_min: float


@dataclass(frozen=True)
class CalibrationSummary:
    """How the sub-models were calibrated.

    Attributes:
        settings: The calibration settings as recorded (`shoal.planner.calibration.CalibrationSettings`).
        weighting: The sample weighting between sub-models.
        devices: Per device, its calibration.
        seconds: Wall time of calibration and aggregator training.
    """

    settings: dict[str, Scalar]
    weighting: str
    devices: dict[str, DeviceCalibration]
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {"settings": dict(self.settings), "weighting": self.weighting,
                "devices": {k: v.to_dict() for k, v in self.devices.items()}, "seconds": self.seconds}

    @classmethod
    def read(cls, f: Fields) -> CalibrationSummary:
        out = cls(f.scalar_map("settings"), f.text("weighting"), f.records("devices", DeviceCalibration.read),
                  f.number("seconds"))
        f.done()
        return out


@dataclass(frozen=True)
class PhaseTime(FlatRecord):
    """Seconds one phase of `shoal plan` took."""

    phase: str
    seconds: float


@dataclass(frozen=True)
class PlanDocument:
    """The whole plan.json.

    Attributes:
        stage: "searched" (policy and predictions only), "decomposed" (sliced sub-models, no
            calibration) or "calibrated".
        versions: Software that wrote it (the shoal major version must match to load).
        config: The teacher family (`teacher_config`).
        family: Its fingerprint.
        devices: The devices the policy uses, central first.
        policy: One sub-model spec per device.
        aggregator: Shape of the aggregator (None in a searched-only plan).
        decomposition: How a decomposed plan was made without a search ("even"), else None.
        importance, layer_rule, deal_rule: The decomposition rules of the search.
        resumed: The search resumed a journal.
        input: What clients send and the normalisation every device applies (None: a plan made
            before compact inputs; it takes float32 only).
        variants: The variants of a `--pareto` plan (empty: one plan).
        method: How DeViT or ED-ViT split it (None: CoFormer's search or a balanced split).
        files: sha256 of every other file of the directory.
    """

    stage: Stage
    versions: Versions
    config: TeacherConfig
    devices: DeviceSet
    policy: Policy
    aggregator: AggregatorInfo | None = None
    teacher: TeacherInfo | None = None
    data: DataSummary | None = None
    objective: Objective | None = None
    predicted: Predicted | None = None
    search: SearchSummary | None = None
    importance: str | None = None
    layer_rule: str | None = None
    deal_rule: str | None = None
    decomposition: str | None = None
    calibration: CalibrationSummary | None = None
    accuracy: PlanAccuracy | None = None
    phases: tuple[PhaseTime, ...] = ()
    resumed: bool | None = None
    input: InputSpec | None = None
    variants: tuple[VariantInfo, ...] = ()
    method: MethodInfo | None = None
    files: dict[str, str] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        if self.stage not in STAGES:
            raise ConfigError(f"plan stage must be one of {list(STAGES)}, got {self.stage!r}")
        if tuple(self.policy.devices) != tuple(self.devices.names):
            raise ConfigError(f"policy devices {list(self.policy.devices)} do not match the device set "
                              f"{list(self.devices.names)}")
        if self.stage != "searched" and self.aggregator is None:
            raise ConfigError(f"a {self.stage} plan needs its aggregator's shape")

    @property
    def family(self) -> str:
        return self.config.fingerprint()

    @property
    def teacher_source(self) -> str:
        return self.teacher.source if self.teacher is not None else "?"

    @property
    def random_weights(self) -> bool:
        """The teacher had random weights: every accuracy of this plan means nothing."""
        return self.teacher is not None and self.teacher.random_weights

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "format_version": self.format_version, "stage": self.stage, "versions": self.versions.to_dict(),
            "teacher_config": self.config.to_dict(), "family": self.family,
            "devices": self.devices.to_dict()["devices"], "policy": self.policy.to_dict()}
        optional: dict[str, Any] = {
            "aggregator": self.aggregator, "teacher": self.teacher, "data": self.data, "objective": self.objective,
            "predicted": self.predicted, "search": self.search, "importance": self.importance,
            "layer_rule": self.layer_rule, "deal_rule": self.deal_rule, "decomposition": self.decomposition,
            "calibration": self.calibration, "accuracy": self.accuracy,
            "phases": [p.to_dict() for p in self.phases] if self.phases else None, "resumed": self.resumed,
            "input": self.input, "variants": [v.to_dict() for v in self.variants] if self.variants else None,
            "method": self.method}
        for key, value in optional.items():
            if value is not None:
                out[key] = value.to_dict() if hasattr(value, "to_dict") else value
        if self.stage != "searched":
            out["files"] = dict(self.files)
        return out

    @classmethod
    def from_dict(cls, data: Any, where: str = PLAN_FILE) -> PlanDocument:
        """Read plan.json field by field; `DataError` names the first field that does not fit."""
        f = Fields(data, where)
        version = f.raw("format_version", None)
        if version != FORMAT_VERSION:
            raise DataError(f"{where} has format_version {version!r}; this shoal reads {FORMAT_VERSION} "
                            f"(rebuild the plan with `shoal plan`)")
        try:
            config = config_from_dict(f.raw("teacher_config"))
            devices_raw = f.raw("devices")
            if not isinstance(devices_raw, list):
                raise DataError(f"{where}.devices must be a list of devices")
            devices = DeviceSet(tuple(DeviceSpec.from_dict(d) for d in devices_raw), source=where)
            policy = Policy.from_dict(f.raw("policy"))
        except ConfigError as exc:
            raise DataError(f"{where}: {exc}") from None
        family = f.text("family")
        if family != config.fingerprint():
            raise DataError(f"{where}.family {family!r} is not the fingerprint of its teacher_config")
        phases = f.raw("phases", [])
        if not isinstance(phases, list):
            raise DataError(f"{where}.phases must be a list")
        try:
            doc = cls(
                stage=f.choice("stage", STAGES), versions=f.record("versions", Versions.read), config=config,
                devices=devices, policy=policy, aggregator=f.record("aggregator", AggregatorInfo.read, None),
                teacher=f.record("teacher", TeacherInfo.read, None), data=f.record("data", DataSummary.read, None),
                objective=f.record("objective", Objective.read, None),
                predicted=f.record("predicted", Predicted.read, None),
                search=f.record("search", SearchSummary.read, None), importance=f.text("importance", None),
                layer_rule=f.text("layer_rule", None), deal_rule=f.text("deal_rule", None),
                decomposition=f.text("decomposition", None),
                calibration=f.record("calibration", CalibrationSummary.read, None),
                accuracy=f.record("accuracy", PlanAccuracy.read, None),
                phases=tuple(PhaseTime.read(Fields(p, f"{where}.phases[{i}]")) for i, p in enumerate(phases)),
                resumed=f.flag("resumed", None), input=f.record("input", InputSpec.read, None),
                variants=tuple(VariantInfo.read(Fields(v, f"{where}.variants[{i}]"))
                               for i, v in enumerate(_list(f.raw("variants", []), f"{where}.variants"))),
                method=f.record("method", MethodInfo.read, None),
                files=f.str_map("files", {}))
        except ConfigError as exc:
            raise DataError(f"{where}: {exc}") from None
        f.done()
        return doc


def _list(value: Any, where: str) -> list[Any]:
    if not isinstance(value, list):
        raise DataError(f"{where} must be a list")
    return value
