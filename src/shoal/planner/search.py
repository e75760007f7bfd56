"""DeBo's decomposer (CoFormer Algorithm 1, lines 1-11) and its baselines, in one code path.

    strategy "bo"       r initial policies (two anchors: the central node alone and the
                        uniform split; then random feasible ones), then I iterations of a GP prior
                        (Matern ν=1.5, ARD lengthscales fitted by marginal likelihood)
                        and expected improvement (LogEI by default, EI selectable),
                        maximised over decoded policies not yet evaluated (below).
    strategy "random"   the same two anchors, then random feasible policies (r + I in all).
    strategy "uniform"  CoFormer Fig. 11's baseline: every device the same shape,
                        sized so the weakest device can hold it; the budget is spent
                        on a grid over that family (depth x size).

The encoding is many-to-one (rounding, repair, left-out workers): whole boxes of
[0,1]^k decode to one policy, so a GP over x sees plateaus it cannot model, and the
optimum of an acquisition over x often decodes to a policy already evaluated. BO
therefore works on decoded policies: the GP's input is the policy's own description
(`surrogate="policy"`: per device its depth, width, head and MLP shares and profile,
read back from the unit counts), every candidate is decoded before it is scored, and
the proposal is the candidate of highest acquisition among the policies not yet
evaluated. Candidates are a scrambled Sobol pool over [0,1]^k (decoded once per
search) and local perturbations of the best evaluations, then of the best candidates.
Only when every candidate decodes to an evaluated policy is a random point taken
instead (phase "fallback").

Ψ = L + δ·T has one part the search need not learn: T, the predicted latency, is a cheap
closed function of the decoded policy (the device profiles). So the GP models the accuracy
part alone (Ψ − δ·T of each evaluation), every candidate's δ·T is computed exactly in one
batched latency-model call, and the acquisition ranks candidates by (Log)EI of
-(GP + δ·T) against the best Ψ seen: the GP's mean moves by the known part, its spread
does not (`known_latency`; False models Ψ whole, as CoFormer does).

With `pareto` (`shoal plan --pareto K`) the acquisition is the expected hypervolume
improvement of (T, L) instead: T exact per candidate, L sampled from the same GP, the
front's improvement computed in closed form in 2-D (`pareto.hypervolume_improvement`).

Every evaluation is appended to the journal before the next one starts; the
same seed gives the same sequence, interrupted or not.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from shoal.planner.journal import Journal, Record
from shoal.planner.objective import Evaluator
from shoal.planner.pareto import hypervolume_improvement
from shoal.planner.settings import SearchSettings
from shoal.planner.space import PER_DEVICE, SearchSpace

LatencyModel = Callable[[Sequence[Sequence[Any]]], list[float]]   # decoded shapes -> T (ms) each
FIT_MAXITER = 100      # L-BFGS-B iterations of a GP fit (the marginal likelihood barely moves after)
FALLBACK_TRIES = 1000  # random points tried for an unevaluated policy when every candidate was evaluated


@dataclass(frozen=True)
class SearchResult:
    """All evaluations of a search, in order.

    Attributes:
        records: Every evaluation.
        settings: How the search ran.
        propose_seconds: Per record, the seconds spent choosing it (GP fit, candidates,
            acquisition); 0 for points that need no optimiser and for records read back
            from a journal.
    """

    records: tuple[Record, ...]
    settings: SearchSettings
    propose_seconds: tuple[float, ...] = ()

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

    @property
    def optimiser_seconds(self) -> float:
        """Seconds spent choosing points (see `propose_seconds`)."""
        return sum(self.propose_seconds)

    @property
    def evaluation_seconds(self) -> float:
        """Seconds spent evaluating Ψ."""
        return sum(r.evaluation.seconds for r in self.records)

    @property
    def wasted(self) -> int:
        """BO proposals that did not come from the acquisition or repeated an evaluated policy
        (phase "fallback", or a "bo" record whose policy an earlier record already had)."""
        seen: set[str] = set()
        count = 0
        for r in self.records:
            if r.phase == "fallback" or (r.phase == "bo" and r.key in seen):
                count += 1
            seen.add(r.key)
        return count


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
    seconds = [0.0] * len(records)

    def record(phase: str, x: Sequence[float], shapes: tuple[dict[str, object] | None, ...],
               spent: float = 0.0) -> Record:
        """Evaluate `x`, append it to the journal and the records, and report it."""
        new = Record(len(records), phase, tuple(float(v) for v in x), shapes, evaluator.evaluate(space.decode(x)))
        if journal is not None:
            journal.append(new)
        records.append(new)
        seconds.append(spent)
        seen.setdefault(new.key, new)
        if on_record is not None:
            on_record(new)
        return new

    proposals = _proposer(space, settings, lambda batch: [b.total_ms for b in evaluator.latencies(batch)])
    pruned = any(r.phase == "prune" for r in records)   # the budget was spent before pruning began
    # `seen` only steers BO away from re-evaluating a policy; journal records are never skipped
    while len(records) < settings.budget and not pruned:
        started = time.perf_counter()
        phase, x = proposals(records)
        spent = time.perf_counter() - started if phase in ("bo", "fallback") else 0.0
        record(phase, x, decode_key(space, x)[1], spent)
    if settings.prune and settings.strategy != "uniform" and space.allow_leave_out:
        _prune(space, records, seen, record)
    return SearchResult(tuple(records), settings, tuple(seconds))


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
            shapes = decode_key(space, x)[1]
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
    return shape.to_dict()  # type: ignore[attr-defined]


def decode_key(space: SearchSpace, x: Sequence[float]) -> tuple[str, tuple[dict[str, object] | None, ...]]:
    """The key of the policy `x` decodes to (its identity, as `Record.key`) and its unit counts
    (cheap: no sub-model is built)."""
    shapes = tuple(_shape_dict(s) for s in space.decode_shapes(x))
    return _key(shapes), shapes


def _random_points(dim: int, seed: int, n: int) -> list[list[float]]:
    """The first n points of a seeded uniform stream (stable prefix: resuming sees the same points)."""
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(n, dim, generator=gen, dtype=torch.float64).tolist()


def _proposer(space: SearchSpace, settings: SearchSettings, latency: LatencyModel
              ) -> Callable[[list[Record]], tuple[str, list[float]]]:
    if settings.strategy == "uniform":
        grid = _uniform_grid(space, settings.budget)
        return lambda records: ("uniform", grid[len(records) % len(grid)])
    anchors = anchor_points(space) if settings.anchors else []
    randoms = [*anchors, *_random_points(space.dim, settings.seed, settings.budget)]
    if settings.strategy == "random":
        return lambda records: ("anchor" if len(records) < len(anchors) else "random", randoms[len(records)])
    bo = _PolicyBO(space, settings, latency)

    def propose(records: list[Record]) -> tuple[str, list[float]]:
        if len(records) < len(anchors):
            return "anchor", randoms[len(records)]
        if len(records) < settings.init:
            return "init", randoms[len(records)]
        return bo.propose(records)

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


# -- BO over decoded policies ---------------------------------------------------------------

LOCAL_SAMPLES = 64                      # perturbations of each point a local search starts from
LOCAL_SIGMAS = (0.02, 0.05, 0.1, 0.2)   # their step sizes (standard deviations in [0,1]^k), mixed


@dataclass(frozen=True)
class _Candidate:
    """A decoded point: its policy's key and what the GP sees of it."""

    x: tuple[float, ...]
    key: str
    features: tuple[float, ...]
    latency_ms: float


def policy_features(space: SearchSpace, shapes: Sequence[object | None]) -> list[float]:
    """A fixed-length description of a decoded policy in [0,1]: per device its depth (blocks / L,
    0 when left out), width share, mean head and MLP shares over its blocks, and profile
    (0.5 flat, towards 1 when its later blocks keep more units than its earlier ones).

    Points of [0,1]^k decoding to one policy have one description: the GP sees the
    policy, not where in its plateau the point lay.
    """
    c = space.config
    out: list[float] = []
    for shape in shapes:
        if shape is None:
            out += [0.0, 0.0, 0.0, 0.0, 0.5]
            continue
        layers, heads, mlp = shape.layers, shape.head_counts, shape.mlp_widths  # type: ignore[attr-defined]
        n = len(layers)
        units = [h / c.num_heads + m / c.mlp_hidden for h, m in zip(heads, mlp)]
        front, back = sum(units[:n // 2]), sum(units[(n + 1) // 2:])
        profile = 0.5 + 0.5 * (back - front) / (back + front) if n > 1 and back + front > 0 else 0.5
        out += [n / c.depth, shape.width / c.embed_dim,  # type: ignore[attr-defined]
                sum(heads) / (n * c.num_heads), sum(mlp) / (n * c.mlp_hidden), profile]
    return out


class _PolicyBO:
    """Proposes, for a set of evaluated records, the unevaluated policy of highest acquisition.

    State kept between proposals is a cache only (decoded Sobol pool and decoded records), so a
    proposal depends on the records alone and a resumed search proposes what an uninterrupted one
    would.
    """

    def __init__(self, space: SearchSpace, settings: SearchSettings, latency: LatencyModel) -> None:
        self.space, self.settings, self.latency = space, settings, latency
        self._pool: list[_Candidate] | None = None
        self._decoded: dict[tuple[float, ...], _Candidate] = {}   # records' points, decoded once

    def decode(self, points: Sequence[Sequence[float]], cache: bool = False) -> list[_Candidate]:
        """Decode a batch of points: their policies' keys, descriptions and predicted latency
        (one latency-model call for the batch)."""
        out: list[_Candidate | None] = []
        todo: list[tuple[int, tuple[float, ...], list[object | None]]] = []
        for x in points:
            point = tuple(float(v) for v in x)
            hit = self._decoded.get(point)
            out.append(hit)
            if hit is None:
                todo.append((len(out) - 1, point, list(self.space.decode_shapes(point))))
        if todo:
            totals = self.latency([shapes for _, _, shapes in todo])
            for (i, point, shapes), total in zip(todo, totals):
                candidate = _Candidate(point, _key(tuple(_shape_dict(s) for s in shapes)),
                                       tuple(policy_features(self.space, shapes)), total)
                out[i] = candidate
                if cache:
                    self._decoded[point] = candidate
        return out  # type: ignore[return-value]

    def pool(self) -> list[_Candidate]:
        if self._pool is None:
            sobol = torch.quasirandom.SobolEngine(self.space.dim, scramble=True, seed=self.settings.seed)
            self._pool = self.decode(sobol.draw(self.settings.raw_samples, dtype=torch.float64).tolist())
        return self._pool

    def inputs(self, candidates: Sequence[_Candidate]) -> torch.Tensor:
        if self.settings.surrogate == "policy":
            return torch.tensor([c.features for c in candidates], dtype=torch.float64)
        return torch.tensor([c.x for c in candidates], dtype=torch.float64)

    def propose(self, records: list[Record]) -> tuple[str, list[float]]:
        settings, step = self.settings, len(records)
        gen = torch.Generator().manual_seed(settings.seed * 100_003 + step)
        evaluated = self.decode([r.x for r in records], cache=True)
        seen = {r.key for r in records}
        # one training point per policy: its first evaluation (Ψ is deterministic)
        first: dict[str, int] = {}
        for i, r in enumerate(records):
            first.setdefault(r.key, i)
        train = sorted(first.values())
        base = records[0].evaluation.delta
        delta = base if settings.known_latency else 0.0
        # BoTorch maximises: the GP models -(Ψ - δ·T), each candidate's -δ·T is added to its posterior
        X = self.inputs([evaluated[i] for i in train])
        Y = -torch.tensor([[records[i].psi - delta * records[i].evaluation.latency.total_ms] for i in train],
                          dtype=torch.float64)
        incumbent = min(r.psi for r in records)
        if settings.pareto and settings.known_latency:
            # a front, not one point: expected hypervolume improvement of (T, L), T known exactly for
            # every candidate (passed as the offset, δ = 1), L sampled from the GP of the accuracy part
            delta = 1.0
            points = [(r.evaluation.latency.total_ms, r.evaluation.loss) for r in records]
            acq = _ehvi(X, Y, points, settings, settings.seed * 100_003 + step)
        else:
            acq = _acquisition(X, Y, -incumbent, settings, settings.seed * 100_003 + step)

        best: dict[str, tuple[float, _Candidate]] = {}

        def score(candidates: Sequence[_Candidate]) -> None:
            fresh = [c for c in candidates if c.key not in seen]
            if not fresh:
                return
            with torch.no_grad():
                offset = -delta * torch.tensor([c.latency_ms for c in fresh], dtype=torch.float64)
                values = acq(self.inputs(fresh), offset).tolist()
            for c, v in zip(fresh, values):
                if c.key not in best or v > best[c.key][0]:
                    best[c.key] = (v, c)

        # start points: the pool, then local searches around the best evaluations and around
        # the best candidates found so far
        score(self.pool())
        by_psi = sorted(range(len(records)), key=lambda i: (records[i].psi, i))
        starts = [evaluated[i].x for i in dict.fromkeys(first[records[i].key] for i in by_psi)]
        score(self._around(starts[:settings.num_restarts], gen))
        top = sorted(best.values(), key=lambda vc: -vc[0])[:settings.num_restarts]
        score(self._around([c.x for _, c in top], gen))
        if best:
            chosen = max(best.values(), key=lambda vc: vc[0])[1]
            return "bo", list(chosen.x)
        # every candidate decodes to an evaluated policy: a seeded random point that does not
        for x in torch.rand(FALLBACK_TRIES, self.space.dim, generator=gen, dtype=torch.float64).tolist():
            if self.decode([x])[0].key not in seen:
                return "fallback", x
        return "fallback", x

    def _around(self, starts: Sequence[Sequence[float]], gen: torch.Generator) -> list[_Candidate]:
        """`LOCAL_SAMPLES` perturbations of each start: a random subset of coordinates (about 3)
        moved by a Gaussian step of a random size from `LOCAL_SIGMAS`, clipped to [0,1]."""
        if not starts:
            return []
        dim = self.space.dim
        base = torch.tensor(starts, dtype=torch.float64).repeat_interleave(LOCAL_SAMPLES, 0)
        mask = torch.rand(base.shape, generator=gen, dtype=torch.float64) < min(1.0, 3.0 / dim)
        forced = torch.randint(dim, (base.shape[0],), generator=gen)
        mask[torch.arange(base.shape[0]), forced] = True
        sigmas = torch.tensor(LOCAL_SIGMAS, dtype=torch.float64)
        sigma = sigmas[torch.randint(len(LOCAL_SIGMAS), (base.shape[0], 1), generator=gen)]
        step = torch.randn(base.shape, generator=gen, dtype=torch.float64) * sigma
        points = (base + mask * step).clamp(0.0, 1.0)
        return self.decode(points.tolist())


EHVI_SAMPLES = 128   # posterior samples of L per candidate for the expected hypervolume improvement


def _ehvi(X: torch.Tensor, Y: torch.Tensor, points: Sequence[tuple[float, float]], settings: SearchSettings,
          seed: int) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Expected hypervolume improvement of (T, L): the GP of (X, Y = -L) samples L, the candidate's T is
    exact (its offset is -T). Monte Carlo with fixed seeds (a candidate's value does not depend on the
    batch it is scored in); the reference point is 10% beyond the worst T and L evaluated."""
    gp = _fit_gp(X, Y, seed)
    reference = (max(t for t, _ in points) * 1.1, max(loss for _, loss in points) * 1.1)

    def acquisition(inputs: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
        values = []
        for chunk, shift in zip(inputs.split(1024), offset.split(1024)):
            posterior = gp.posterior(chunk)
            mean = posterior.mean.squeeze(-1)
            sigma = posterior.variance.squeeze(-1).clamp_min(1e-12).sqrt()
            normal = torch.randn(EHVI_SAMPLES, 1, generator=torch.Generator().manual_seed(seed),
                                 dtype=torch.float64)
            loss = -(mean.unsqueeze(0) + sigma.unsqueeze(0) * normal)    # (S, n): marginal samples of L
            improvement = hypervolume_improvement(-shift, loss, points, reference).mean(0)
            values.append(improvement + 1e-9 * (-loss.mean(0)))         # ties (no improvement): the better L
        return torch.cat(values)

    return acquisition


def _fit_gp(X: torch.Tensor, Y: torch.Tensor, seed: int) -> Any:
    """The search's GP (Matern ν=1.5, ARD, dimension-scaled lengthscale prior) fitted to (X, Y)."""
    with warnings.catch_warnings():   # linear_operator decorates with torch.jit.script at import (deprecated)
        warnings.filterwarnings("ignore", message=".*torch.jit.script.*deprecated", category=FutureWarning)
        import botorch  # noqa: F401
    from botorch.fit import fit_gpytorch_mll
    from botorch.models import SingleTaskGP
    from botorch.models.transforms.outcome import Standardize
    from gpytorch.constraints import GreaterThan
    from gpytorch.kernels import MaternKernel, ScaleKernel
    from gpytorch.mlls import ExactMarginalLogLikelihood
    from gpytorch.priors import LogNormalPrior

    dim = X.shape[-1]
    prior = LogNormalPrior(loc=math.sqrt(2) + 0.5 * math.log(dim), scale=math.sqrt(3))
    kernel = ScaleKernel(MaternKernel(nu=1.5, ard_num_dims=dim, lengthscale_prior=prior,
                                      lengthscale_constraint=GreaterThan(2.5e-2, initial_value=prior.mode)))
    gp = SingleTaskGP(X, Y, covar_module=kernel, outcome_transform=Standardize(m=1))
    with warnings.catch_warnings(), torch.random.fork_rng():
        warnings.simplefilter("ignore")
        torch.manual_seed(seed)   # a failed fit restarts from hyperparameters drawn from the priors
        fit_gpytorch_mll(ExactMarginalLogLikelihood(gp.likelihood, gp), max_attempts=3,
                         optimizer_kwargs={"options": {"maxiter": FIT_MAXITER}})
    gp.eval()
    return gp


def _acquisition(X: torch.Tensor, Y: torch.Tensor, best_f: float, settings: SearchSettings, seed: int
                 ) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """(Log)EI over a GP fitted to (X, Y), as a function of (n, d) inputs and a known (n,) offset added
    to the objective the GP models (the candidates' -δ·T; zeros when the GP models Ψ whole); the
    incumbent `best_f` is the best observed objective (-Ψ)."""
    from botorch.acquisition.analytic import _ei_helper, _log_ei_helper

    # Matern ν=1.5 as CoFormer eq. 9, with the dimension-scaled lengthscale prior BoTorch uses
    # for its defaults (Hvarfner et al. 2024), fitted by marginal likelihood.
    gp = _fit_gp(X, Y, seed)
    sigma_min = 1e-12

    def acquisition(inputs: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
        # the analytic (Log)EI of BoTorch's LogExpectedImprovement / ExpectedImprovement, on the
        # objective GP + offset: its mean moves by the offset, its spread does not
        values = []
        for chunk, shift in zip(inputs.split(2048), offset.split(2048)):
            posterior = gp.posterior(chunk)
            mean = posterior.mean.squeeze(-1) + shift
            sigma = posterior.variance.squeeze(-1).clamp_min(sigma_min).sqrt()
            u = (mean - best_f) / sigma
            values.append(_log_ei_helper(u) + sigma.log() if settings.acquisition == "logei"
                          else sigma * _ei_helper(u))
        return torch.cat(values)

    return acquisition
