"""The settings of `shoal plan`: what to search, how to calibrate, the whole request.

Frozen dataclasses validated in `__post_init__`, importable without torch, BoTorch or
timm, so the command line takes its option defaults from them (`--help` stays instant).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from shoal.errors import ConfigError

if TYPE_CHECKING:
    from shoal.models.aggregator import Activation
    from shoal.models.importance import ImportanceRule
    from shoal.models.partition import DealRule, LayerRule

Strategy = Literal["bo", "random", "uniform"]
Split = Literal["search", "balanced"]
SPLITS: tuple[Split, ...] = ("search", "balanced")
Acquisition = Literal["logei", "ei"]
Surrogate = Literal["policy", "encoding"]
Weighting = Literal["boost", "printed", "uniform"]
SubtaskLoss = Literal["distill", "labels"]
Method = Literal["coformer", "devit", "edvit", "janus"]
METHODS: tuple[Method, ...] = ("coformer", "devit", "edvit", "janus")
ProxyKind = Literal["sliced", "probe", "ridge", "logistic", "distill"]
PROXY_KINDS: tuple[str, ...] = ("sliced", "probe", "ridge", "logistic", "distill")
IMPORTANCE_RULES: tuple[str, ...] = ("mixed", "taylor", "fisher", "magnitude", "random", "kl")


@dataclass(frozen=True)
class SearchSettings:
    """How to search.

    Attributes:
        strategy: "bo", "random" or "uniform".
        init: r, random policies before the GP takes over (bo).
        iterations: I, GP-guided evaluations (bo), or extra random ones (random).
        seed: Seed of every random choice.
        acquisition: "logei" (BoTorch's recommendation) or "ei" (CoFormer eq. 12).
        num_restarts: Local searches per proposal: the best evaluations, then the best
            candidates, are each perturbed `LOCAL_SAMPLES` times.
        raw_samples: Sobol points over [0,1]^k every proposal scores (drawn and decoded once
            per search).
        surrogate: What the GP sees: "policy" (the decoded policy's description, so points
            decoding to one policy are one point) or "encoding" (x itself).
        known_latency: The GP models only the accuracy part of Ψ (Ψ − δ·T of each evaluation);
            each candidate's δ·T, known from the latency model without building anything, is
            added to its posterior before the acquisition ranks it. False: the GP models Ψ whole.
        anchors: Start the initial design (bo and random) with the central-node-alone and the
            uniform policies (`anchor_points`); they count towards `init`.
        prune: After the budget (bo and random, when workers may be left out), try leaving out
            each worker of the chosen policy, greedily, and keep a policy that uses fewer
            devices when its Ψ is within `PRUNE_TIE` of the best (`SearchResult.chosen`).
            A worker off the critical path costs nothing in Ψ, so the search has no reason
            to drop one that contributes nothing; this step does.
        pareto: K > 1: search latency and the accuracy proxy as two objectives and keep up to K
            non-dominated policies as variants (`shoal.planner.pareto`); each BO proposal maximises
            the expected hypervolume improvement of (T, L), T known exactly per candidate and L
            sampled from the GP (`shoal.planner.search._ehvi`). 0: one plan for one δ.
    """

    strategy: Strategy = "bo"
    init: int = 10
    iterations: int = 30
    seed: int = 0
    acquisition: Acquisition = "logei"
    num_restarts: int = 8
    raw_samples: int = 1024
    surrogate: Surrogate = "policy"
    known_latency: bool = True
    anchors: bool = True
    prune: bool = True
    pareto: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.pareto, bool) or not isinstance(self.pareto, int) or self.pareto < 0 or self.pareto == 1:
            raise ConfigError(f"--pareto must be 0 (one plan) or a number of variants of at least 2, got "
                              f"{self.pareto!r}")
        if self.strategy not in ("bo", "random", "uniform"):
            raise ConfigError(f"strategy must be bo, random or uniform, got {self.strategy!r}")
        if self.acquisition not in ("logei", "ei"):
            raise ConfigError(f"acquisition must be logei or ei, got {self.acquisition!r}")
        if self.surrogate not in ("policy", "encoding"):
            raise ConfigError(f"surrogate must be policy or encoding, got {self.surrogate!r}")
        if self.init < 1 or (self.strategy == "bo" and self.init < 2):
            raise ConfigError(f"init (r) must be at least {2 if self.strategy == 'bo' else 1}, got {self.init}")
        if self.iterations < 0:
            raise ConfigError(f"iterations (I) must be >= 0, got {self.iterations}")
        if self.num_restarts < 1 or self.raw_samples < self.num_restarts:
            raise ConfigError(f"need num_restarts >= 1 and raw_samples >= num_restarts, got "
                              f"{self.num_restarts}, {self.raw_samples}")

    @property
    def budget(self) -> int:
        return self.init + self.iterations


@dataclass(frozen=True)
class CalibrationSettings:
    """How sub-models and the aggregator are trained.

    Attributes:
        epochs: Distillation epochs per sub-model.
        lr: AdamW learning rate of the sub-models (cosine decay).
        batch_size: Training batch size.
        weight_decay: AdamW weight decay.
        weighting: Sample re-weighting between sub-models ("boost", "printed", "uniform").
        aggregator_epochs: Epochs of aggregator training (sub-models frozen).
        aggregator_lr: Its learning rate.
        joint_epochs: Epochs of joint fine-tuning (sub-models and aggregator) afterwards.
        device_dropout: Probability of dropping each non-central device's features while
            training the aggregator (so it can answer without them).
        feature_copies: Augmented copies of the training set whose frozen features train the aggregator.
        seed: Seed of shuffling and augmentation.
        fusion: The aggregator between its two layers: "none" (linear, to the teacher's width, its
            head; CoFormer, DeViT) or "relu" (ED-ViT's MLP to half the concatenated width, a new head).
        teacher_weight: Share of the teacher's hard decisions in the aggregator's and the joint
            fine-tune's loss, (1 - w)·CE(y) + w·CE(ŷ_t): ½ (CoFormer, DeViT eq. 10), 0 (ED-ViT: labels).
        token_weight: γ of DeViT eq. 14: + γ·MSE(fused features, the teacher's pooled features).
    """

    epochs: int = 8
    lr: float = 5e-4
    batch_size: int = 64
    weight_decay: float = 0.01
    weighting: Weighting = "boost"
    aggregator_epochs: int = 60
    aggregator_lr: float = 2e-3
    joint_epochs: int = 0
    device_dropout: float = 0.0
    feature_copies: int = 4
    seed: int = 0
    fusion: Activation = "none"
    teacher_weight: float = 0.5
    token_weight: float = 0.0

    def __post_init__(self) -> None:
        for name in ("epochs", "aggregator_epochs", "joint_epochs", "feature_copies"):
            if getattr(self, name) < 0:
                raise ConfigError(f"CalibrationSettings.{name} must be >= 0, got {getattr(self, name)}")
        if self.batch_size < 1:
            raise ConfigError(f"CalibrationSettings.batch_size must be >= 1, got {self.batch_size}")
        for name in ("lr", "aggregator_lr"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"CalibrationSettings.{name} must be positive, got {getattr(self, name)}")
        if self.weighting not in ("boost", "printed", "uniform"):
            raise ConfigError(f"CalibrationSettings.weighting must be boost, printed or uniform, "
                              f"got {self.weighting!r}")
        if not 0.0 <= self.device_dropout < 1.0:
            raise ConfigError(f"CalibrationSettings.device_dropout must be in [0, 1), got {self.device_dropout}")
        if self.fusion not in ("none", "relu"):
            raise ConfigError(f"CalibrationSettings.fusion must be none or relu, got {self.fusion!r}")
        if not 0.0 <= self.teacher_weight <= 1.0:
            raise ConfigError(f"CalibrationSettings.teacher_weight must be in [0, 1], got {self.teacher_weight}")
        if self.token_weight < 0 or (self.token_weight > 0 and self.fusion != "none"):
            raise ConfigError("CalibrationSettings.token_weight must be >= 0, and only with a linear fusion "
                              f"(its output is matched to the teacher's features); got {self.token_weight}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class PlanRequest:
    """Everything `shoal plan` needs to know.

    Attributes:
        model: timm name or checkpoint of the teacher (None: the shipped teacher of a built-in
            task, the digits ViT otherwise).
        checkpoint: Local weights for `model`.
        pretrained: Fetch timm's pretrained weights when no checkpoint is given.
        data: Dataset (None: built-in digits; "fashion-mnist"; else an ImageFolder tree).
        devices: Device-set YAML (None: the default set of three emulated devices).
        out: Plan directory.
        delta: δ in Ψ = L + δ·T, per ms (None: 1 / predicted teacher latency on the central node).
        proxy: Accuracy proxy (`shoal.planner.proxy.PROXY_KINDS`).
        search: Search strategy and budget.
        calibration: Booster and aggregator settings.
        importance: Importance rule for ranking units.
        layer_rule: How a sub-model's blocks are chosen.
        deal_rule: How ranked units are dealt among sub-models.
        allow_leave_out: The search may leave a worker out when it does not pay for its call
            (False: every device runs a sub-model, as in CoFormer).
        search_only: Stop after the search.
        from_policy: plan.json whose policy to calibrate (skips the search).
        resume: Continue an interrupted plan in `out`.
        profile_samples: Samples per device when a device of the set still needs profiling.
        profile_budget_ms: Their timing budget per shape (`TimingSettings.budget_ms`; None: none).
        cal_images: Training images used for importance and the proxy's read-out fits.
        val_images: Validation images the proxy scores (None: the whole split).
        max_per_split: Cap on images per split (a fixed subset; quick runs and big folders).
        device: Where the models run while planning: "cpu" or "cuda" (importance, the proxy,
            calibration, aggregator training, evaluation). Data stays on the host; each batch
            is moved to the device and results come back, so both mean the same.
        input_format: What clients will send: "float32", "uint8" pixels, "png" or "jpeg"; the
            latency model charges its bytes (PNG/JPEG: the mean size of validation images).
        precision: "fp32" or "bf16": the accuracy proxy's forward passes under bf16 autocast
            (ADR 012: measured to rank policies as fp32 does; calibration stays fp32).
        split: "search" (BO over decompositions, CoFormer) or "balanced": no search, every device
            keeps every block and channel and a share of each block's heads and neurons in
            proportion to its speed (`shoal.planner.balanced`): the teacher's work spread, not pruned.
        method: "coformer" (the search or the balanced split), "devit" or "edvit": the other edge
            ensembles of the papers, one sub-task of the classes per device (`shoal.planner.devit`,
            `shoal.planner.edvit`); "janus": device-to-server split inference with token merging
            (`shoal.planner.janus`, a `janus.json` plan).
        target_ms: DeViT and ED-ViT: the largest sub-models predicted to answer within this many
            ms (None: the largest that fit the devices' budgets).
    """

    model: str | None = None
    checkpoint: str | None = None
    pretrained: bool = True
    data: str | None = None
    devices: str | None = None
    out: str = ".shoal/plan"
    delta: float | None = None
    proxy: ProxyKind = "distill"
    search: SearchSettings = field(default_factory=SearchSettings)
    calibration: CalibrationSettings = field(default_factory=CalibrationSettings)
    importance: ImportanceRule = "mixed"
    layer_rule: LayerRule = "uniform"
    deal_rule: DealRule = "fair"
    allow_leave_out: bool = True
    search_only: bool = False
    from_policy: str | None = None
    resume: bool = False
    profile_samples: int | None = None
    profile_budget_ms: float | None = None
    cal_images: int = 512
    val_images: int | None = 1000
    max_per_split: int | None = None
    device: str = "cpu"
    split: Split = "search"
    precision: str = "fp32"
    input_format: str = "float32"
    method: Method = "coformer"
    target_ms: float | None = None

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"--method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if self.method != "coformer":
            for given, flag in ((self.split == "balanced", "--split balanced"), (self.search.pareto, "--pareto"),
                                (self.from_policy, "--from-policy"), (self.search_only, "--search-only")):
                if given:
                    raise ConfigError(f"--method {self.method} makes its own policy without a search; "
                                      f"{flag} is for --method coformer")
        if self.method == "janus" and self.target_ms is not None:
            raise ConfigError("--target-ms sizes DeViT's and ED-ViT's sub-models; Janus meets its SLA per request "
                              "(`shoal bench --sla-ms`)")
        if self.method == "coformer" and self.target_ms is not None:
            raise ConfigError("--target-ms sizes DeViT's and ED-ViT's sub-models; CoFormer trades latency by --delta")
        if self.target_ms is not None and not self.target_ms > 0:
            raise ConfigError(f"--target-ms must be positive, got {self.target_ms}")
        if self.input_format not in ("float32", "uint8", "png", "jpeg"):
            raise ConfigError(f"--input must be float32, uint8, png or jpeg, got {self.input_format!r}")
        if self.precision not in ("fp32", "bf16"):
            raise ConfigError(f"--precision must be fp32 or bf16, got {self.precision!r}")
        if self.split not in SPLITS:
            raise ConfigError(f"--split must be one of {', '.join(SPLITS)}, got {self.split!r}")
        if self.split == "balanced" and self.from_policy:
            raise ConfigError("--split balanced and --from-policy exclude each other")
        if self.delta is not None and not self.delta >= 0:
            raise ConfigError(f"--delta must be >= 0 (per ms), got {self.delta}")
        if self.proxy not in PROXY_KINDS:
            raise ConfigError(f"--proxy must be one of {', '.join(PROXY_KINDS)}, got {self.proxy!r}")
        if self.search_only and self.from_policy:
            raise ConfigError("--search-only and --from-policy exclude each other")
        if self.importance not in IMPORTANCE_RULES:
            raise ConfigError(f"--importance must be one of {', '.join(IMPORTANCE_RULES)}, got {self.importance!r}")
        if self.layer_rule not in ("importance", "uniform") or self.deal_rule not in ("fair", "ranked"):
            raise ConfigError(f"layer_rule must be importance|uniform and deal_rule fair|ranked, got "
                              f"{self.layer_rule!r}, {self.deal_rule!r}")
        if self.device not in ("cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ConfigError(f"--device must be cpu or cuda (or cuda:N), got {self.device!r}")
        if self.cal_images < 16:
            raise ConfigError(f"cal_images must be at least 16, got {self.cal_images}")
        if self.val_images is not None and self.val_images < 16:
            raise ConfigError(f"val_images must be at least 16, got {self.val_images}")
