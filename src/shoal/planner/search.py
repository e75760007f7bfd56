"""DeBo's decomposer (CoFormer Algorithm 1, lines 1-11) and its baselines, in one code path.

    strategy "bo"       r initial policies (two anchors: the central node alone and the
                        uniform split; then random feasible ones), then I iterations of a GP prior
                        (Matern ν=1.5, ARD lengthscales fitted by marginal likelihood)
                        and expected improvement (LogEI by default, EI selectable),
                        optimised over [0,1]^k with BoTorch's `optimize_acqf`.
    strategy "random"   the same two anchors, then random feasible policies (r + I in all).
    strategy "uniform"  CoFormer Fig. 11's baseline: every device the same shape,
                        sized so the weakest device can hold it; the budget is spent
                        on a grid over that family (depth x size).

Every evaluation is appended to the journal before the next one starts; the
same seed gives the same sequence, interrupted or not.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from shoal.errors import ConfigError
from shoal.planner.journal import Journal, Record
from shoal.planner.objective import Evaluator
from shoal.planner.space import PER_DEVICE, SearchSpace

Strategy = Literal["bo", "random", "uniform"]
Acquisition = Literal["logei", "ei"]
MAX_DUPLICATES = 3


@dataclass(frozen=True)
class SearchSettings:
    """How to search.

    Attributes:
        strategy: "bo", "random" or "uniform".
        init: r, random policies before the GP takes over (bo).
        iterations: I, GP-guided evaluations (bo), or extra random ones (random).
        seed: Seed of every random choice.
        acquisition: "logei" (BoTorch's recommendation) or "ei" (CoFormer eq. 12).
        num_restarts: Restarts of the acquisition optimiser.
        raw_samples: Raw samples seeding those restarts.
        anchors: Start the initial design (bo and random) with the central-node-alone and the
            uniform policies (`anchor_points`); they count towards `init`.
        prune: After the budget (bo and random, when workers may be left out), try leaving out
            each worker of the chosen policy, greedily, and keep a policy that uses fewer
            devices when its Ψ is within `PRUNE_TIE` of the best (`SearchResult.chosen`).
            A worker off the critical path costs nothing in Ψ, so the search has no reason
            to drop one that contributes nothing; this step does.
    """

    strategy: Strategy = "bo"
    init: int = 10
    iterations: int = 30
    seed: int = 0
    acquisition: Acquisition = "logei"
    num_restarts: int = 8
    raw_samples: int = 256
    anchors: bool = True
    prune: bool = True

    def __post_init__(self) -> None:
        if self.strategy not in ("bo", "random", "uniform"):
            raise ConfigError(f"strategy must be bo, random or uniform, got {self.strategy!r}")
        if self.acquisition not in ("logei", "ei"):
            raise ConfigError(f"acquisition must be logei or ei, got {self.acquisition!r}")
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
class SearchResult:
    """All evaluations of a search, in order.

    Attributes:
        records: Every evaluation.
        settings: How the search ran.
    """

    records: tuple[Record, ...]
    settings: SearchSettings

    @property
    def best(self) -> Record:
        """The evaluation of lowest Ψ."""
        return min(self.records, key=lambda r: r.psi)

    @property
    def chosen(self) -> Record:
        """The policy the plan takes: among evaluations within `PRUNE_TIE` of the best Ψ, the one
        using the fewest devices (then the lowest Ψ)."""
        return _choose(self.records)

    def best_so_far(self) -> list[float]:
        """Best Ψ after each evaluation (the convergence curve)."""
        out, best = [], math.inf
        for r in self.records:
            best = min(best, r.psi)
            out.append(best)
        return out


def run_search(
    space: SearchSpace,
    evaluator: Evaluator,
    settings: SearchSettings,
    journal: Journal | None = None,
    *,
    resume: bool = False,
    on_record: Callable[[Record], None] | None = None,
) -> SearchResult:
    """Search the policy minimising Ψ.

    Args:
        space: Encoding/decoding of policies (budgets repaired inside).
        evaluator: Ψ of a policy.
        settings: Strategy and budget.
        journal: Where evaluations are appended (None: in memory only).
        resume: Continue from the journal's records instead of starting afresh.
        on_record: Called after each evaluation (progress display).
    """
    space.check_feasible()
    records = journal.start(resume) if journal is not None else []
    records = records[:settings.budget] + [r for r in records[settings.budget:] if r.phase == "prune"]
    if on_record is not None:
        for r in records:
            on_record(r)
    seen = {r.key: r for r in records}

    def record(phase: str, x: Sequence[float], shapes: tuple[dict[str, object] | None, ...]) -> Record:
        """Evaluate `x`, append it to the journal and the records, and report it."""
        new = Record(len(records), phase, tuple(float(v) for v in x), shapes, evaluator.evaluate(space.decode(x)))
        if journal is not None:
            journal.append(new)
        records.append(new)
        seen.setdefault(new.key, new)
        if on_record is not None:
            on_record(new)
        return new

    proposals = _proposer(space, settings)
    pruned = any(r.phase == "prune" for r in records)   # the budget was spent before pruning began
    # `seen` only steers BO away from re-evaluating a policy; journal records are never skipped
    while len(records) < settings.budget and not pruned:
        phase, x = proposals(records)
        shapes = tuple(_shape_dict(s) for s in space.decode_shapes(x))
        if phase == "bo" and _key(shapes) in seen:
            # the acquisition's optimum decodes to a policy already evaluated: explore instead
            x = _random_points(space.dim, settings.seed + 7919, len(records) + 1)[-1]
            phase = "fallback"
            shapes = tuple(_shape_dict(s) for s in space.decode_shapes(x))
        record(phase, x, shapes)
    if settings.prune and settings.strategy != "uniform" and space.allow_leave_out:
        _prune(space, records, seen, record)
    return SearchResult(tuple(records), settings)


PRUNE_TIE = 2e-3   # Ψ differences below this are noise of the proxy: fewer devices win the tie


def _devices_used(record: Record) -> int:
    return sum(shape is not None for shape in record.shapes)


def _choose(records: Sequence[Record]) -> Record:
    best = min(r.psi for r in records)
    return min((r for r in records if r.psi <= best + PRUNE_TIE), key=lambda r: (_devices_used(r), r.psi))


def _prune(space: SearchSpace, records: list[Record], seen: dict[str, Record],
           record: Callable[[str, Sequence[float], tuple[dict[str, object] | None, ...]], Record]) -> None:
    """Greedily leave out one more worker of the chosen policy while Ψ stays within the tie.

    Deterministic given the records, so a resumed search walks the same path and finds each
    step's evaluation in `seen` (from the journal) instead of repeating it.
    """
    while True:
        current = _choose(records)
        workers = [n for n, (device, shape) in enumerate(zip(space.devices.devices, current.shapes))
                   if not device.central and shape is not None]
        step = None
        for n in workers:
            x = list(current.x)
            x[PER_DEVICE * n] = 0.0   # depth ratio below LEAVE_OUT: the worker is left out
            shapes = tuple(_shape_dict(sh) for sh in space.decode_shapes(x))
            candidate = seen.get(_key(shapes)) or record("prune", x, shapes)
            if _choose(records) is candidate:
                step = candidate
                break
        if step is None:
            return


def _key(shapes: tuple[dict[str, object] | None, ...]) -> str:
    return json.dumps(shapes, sort_keys=True)


def _shape_dict(shape: object) -> dict[str, object] | None:
    """JSON of a device's unit counts (None: the device is left out)."""
    if shape is None:
        return None
    return {"layers": list(shape.layers), "width": shape.width,  # type: ignore[attr-defined]
            "heads": list(shape.heads), "mlp": list(shape.mlp)}  # type: ignore[attr-defined]


def _random_points(dim: int, seed: int, n: int) -> list[list[float]]:
    """The first n points of a seeded uniform stream (stable prefix: resuming sees the same points)."""
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(n, dim, generator=gen, dtype=torch.float64).tolist()


def _proposer(space: SearchSpace, settings: SearchSettings
              ) -> Callable[[list[Record]], tuple[str, list[float]]]:
    if settings.strategy == "uniform":
        grid = _uniform_grid(space, settings.budget)
        return lambda records: ("uniform", grid[len(records) % len(grid)])
    anchors = anchor_points(space) if settings.anchors else []
    randoms = [*anchors, *_random_points(space.dim, settings.seed, settings.budget)]
    if settings.strategy == "random":
        return lambda records: ("anchor" if len(records) < len(anchors) else "random", randoms[len(records)])

    def propose(records: list[Record]) -> tuple[str, list[float]]:
        if len(records) < len(anchors):
            return "anchor", randoms[len(records)]
        if len(records) < settings.init:
            return "init", randoms[len(records)]
        return "bo", _bo_candidate(records, space.dim, settings, step=len(records))

    return propose


def anchor_points(space: SearchSpace) -> list[list[float]]:
    """The two baselines every search starts from: the central node alone running the whole
    teacher (when workers may be left out), and the largest uniform decomposition.

    Leaving every worker out is a corner random sampling almost never hits (each worker's
    depth ratio below 0.1), yet it is CoFormer's single-edge baseline; seeding the design
    with it lets the GP learn what a worker's call costs.
    """
    points = []
    if space.allow_leave_out and len(space.devices) > 1:
        alone = []
        for device in space.devices.devices:
            alone += [1.0, 1.0, 1.0, 1.0] if device.central else [0.0, 0.5, 0.5, 0.5]
        points.append(alone + [0.5] * space.knots)
    points.append(space.uniform_point(1.0, space.largest_uniform_scale(1.0)))
    return points


def _uniform_grid(space: SearchSpace, budget: int) -> list[list[float]]:
    """Depth x size grid over the uniform family, largest (weakest-device-sized) first."""
    n_depth = max(1, min(space.config.depth, round(math.sqrt(budget))))
    n_size = max(1, math.ceil(budget / n_depth))
    points = []
    for i in range(n_size):
        for j in range(n_depth):
            depth = 1.0 - j / max(n_depth, 1)
            top = space.largest_uniform_scale(depth)
            scale = top * (1.0 - i / (n_size + 1))
            points.append(space.uniform_point(depth, scale))
    return points[:budget]


def _bo_candidate(records: list[Record], dim: int, settings: SearchSettings, step: int) -> list[float]:
    with warnings.catch_warnings():   # linear_operator decorates with torch.jit.script at import (deprecated)
        warnings.filterwarnings("ignore", message=".*torch.jit.script.*deprecated", category=FutureWarning)
        import botorch  # noqa: F401
    from botorch.acquisition import ExpectedImprovement, LogExpectedImprovement
    from botorch.fit import fit_gpytorch_mll
    from botorch.models import SingleTaskGP
    from botorch.models.transforms.outcome import Standardize
    from botorch.optim import optimize_acqf
    from gpytorch.constraints import GreaterThan
    from gpytorch.kernels import MaternKernel, ScaleKernel
    from gpytorch.mlls import ExactMarginalLogLikelihood
    from gpytorch.priors import LogNormalPrior

    torch.manual_seed(settings.seed * 100_003 + step)
    X = torch.tensor([r.x for r in records], dtype=torch.float64)
    Y = -torch.tensor([[r.psi] for r in records], dtype=torch.float64)   # BoTorch maximises
    # Matern ν=1.5 as CoFormer eq. 9, with the dimension-scaled lengthscale prior BoTorch uses
    # for its defaults (Hvarfner et al. 2024), fitted by marginal likelihood.
    prior = LogNormalPrior(loc=math.sqrt(2) + 0.5 * math.log(dim), scale=math.sqrt(3))
    kernel = ScaleKernel(MaternKernel(nu=1.5, ard_num_dims=dim, lengthscale_prior=prior,
                                      lengthscale_constraint=GreaterThan(2.5e-2, initial_value=prior.mode)))
    gp = SingleTaskGP(X, Y, covar_module=kernel, outcome_transform=Standardize(m=1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit_gpytorch_mll(ExactMarginalLogLikelihood(gp.likelihood, gp))
        acq_class = LogExpectedImprovement if settings.acquisition == "logei" else ExpectedImprovement
        acq = acq_class(gp, best_f=Y.max())
        bounds = torch.stack([torch.zeros(dim, dtype=torch.float64), torch.ones(dim, dtype=torch.float64)])
        candidate, _ = optimize_acqf(acq, bounds=bounds, q=1, num_restarts=settings.num_restarts,
                                     raw_samples=settings.raw_samples,
                                     options={"seed": settings.seed * 100_003 + step})
    return candidate.squeeze(0).clamp(0, 1).tolist()
