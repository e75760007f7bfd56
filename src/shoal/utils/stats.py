"""Accuracy with its uncertainty, and paired comparisons of classifiers scored on the same images.

One accuracy
    `Accuracy(correct, n)`: top-1 and its 95% Wilson score interval. Wilson rather than
    the normal (Wald) interval because accuracies sit near 1 on small test sets, where
    Wald's interval is too narrow and can pass 1.

Two classifiers, one run each, the same n images
    `mcnemar(a, b)`: the exact McNemar test. Only the discordant images carry information:
    b10 images A gets right and B wrong, b01 the other way round. Under H0 (both err
    equally often; marginal homogeneity) b01 ~ Binomial(b01 + b10, 1/2) given the
    discordant count; the p-value is the exact two-sided binomial one (and the mid-p,
    less conservative, beside it).

Two variants, S calibration seeds each, the same n images: `compare_seeds`
    Summing McNemar's discordant pairs over seeds is NOT valid: an image that is hard for
    B is hard in every seed, so the S pairs of one image are not independent and the
    pooled test counts one piece of evidence up to S times (anti-conservative). Instead
    the image stays the unit of resampling throughout:

    * d_i = (1/S) Σ_s (b_si - a_si), image i's difference averaged over seeds; the images
      are independent draws from the test distribution, so the d_i are i.i.d.
    * p-value: the exact sign-flip (randomisation) test of Σ d_i. Under H0 (the
      per-image difference is symmetric about 0: swapping the labels A and B on an image
      changes nothing) each d_i's sign is a fair coin independent of the others; the null
      distribution of Σ d_i is computed exactly by convolution (the d_i are multiples of
      1/S). With S = 1 this *is* the exact McNemar test.
    * ci95: percentile bootstrap over images (same resampled images for A and B and all
      seeds) of the mean-over-seeds accuracy difference.
    * per seed: the McNemar test of that seed's pair of runs, and how many seeds agree in
      sign with the mean; `seed_sign_p` is the exact sign test across seeds, which treats
      the seed as the unit (needs at least 6 seeds to reach p < 0.05 two-sided; with 3 it
      cannot go below 0.25, so it is reported, not required).

    The image-level test is conditional on the S trained runs: it says the mean
    difference of these runs is not test-set noise. It does not model how much a new seed
    would move; `separates` therefore also asks every seed's difference to have the
    sign of the mean (no seed contradicts it).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from shoal.errors import ConfigError, DataError

Z95 = 1.959963984540054   # standard normal quantile 0.975
BOOTSTRAP_SAMPLES = 4000

Correctness = torch.Tensor | np.ndarray | Sequence[bool] | Sequence[int]


def _count(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ConfigError(f"{name} must be an integer, got {value!r}")
    return int(value)


def quantile(ordered: Sequence[float], q: float) -> float:
    """Linearly interpolated quantile q in [0, 1] of values sorted ascending (numpy's default
    rule); the one quantile of shoal (latency statistics, served-latency percentiles)."""
    if not ordered:
        raise ConfigError("no values to take a quantile of")
    if not 0.0 <= q <= 1.0:
        raise ConfigError(f"a quantile must lie in [0, 1], got {q!r}")
    pos = q * (len(ordered) - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    return float(ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo))


def wilson_interval(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion k/n (95% for the default z).

    Raises:
        ConfigError: n < 1, k outside [0, n], or z <= 0.
    """
    k, n = _count(k, "k"), _count(n, "n")
    if n < 1:
        raise ConfigError(f"an interval needs n >= 1 trials, got n={n}")
    if not 0 <= k <= n:
        raise ConfigError(f"k must be in [0, n={n}], got {k}")
    if not z > 0:
        raise ConfigError(f"z must be positive, got {z}")
    p = k / n
    z2 = z * z
    denom = 1.0 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denom
    low = 0.0 if k == 0 else max(0.0, centre - half)
    high = 1.0 if k == n else min(1.0, centre + half)
    return low, high


def as_correctness(values: Correctness, name: str = "correctness") -> torch.Tensor:
    """A 1-D bool tensor from per-image correctness (bools or 0/1).

    Raises:
        ConfigError: not 1-D, empty, or values other than 0/1.
    """
    t = torch.as_tensor(np.asarray(values) if not isinstance(values, torch.Tensor) else values).detach().cpu()
    if t.dim() != 1 or t.numel() == 0:
        raise ConfigError(f"{name} must be a non-empty 1-D vector, got shape {tuple(t.shape)}")
    if t.dtype != torch.bool:
        if t.is_floating_point() or t.is_complex() or not bool(((t == 0) | (t == 1)).all()):
            raise ConfigError(f"{name} must hold booleans or 0/1 integers")
        t = t.bool()
    return t


@dataclass(frozen=True)
class Accuracy:
    """`correct` of `n` images right: top-1 and its 95% Wilson interval."""

    correct: int
    n: int

    def __post_init__(self) -> None:
        correct, n = _count(self.correct, "Accuracy.correct"), _count(self.n, "Accuracy.n")
        if n < 1:
            raise ConfigError(f"an accuracy needs n >= 1 images, got n={n}")
        if not 0 <= correct <= n:
            raise ConfigError(f"Accuracy.correct must be in [0, n={n}], got {correct}")
        object.__setattr__(self, "correct", correct)
        object.__setattr__(self, "n", n)

    @classmethod
    def of(cls, correct: Correctness) -> Accuracy:
        """From a per-image correctness vector."""
        t = as_correctness(correct)
        return cls(int(t.sum()), t.numel())

    @property
    def top1(self) -> float:
        return self.correct / self.n

    @property
    def ci95(self) -> tuple[float, float]:
        return wilson_interval(self.correct, self.n)

    def to_dict(self) -> dict[str, Any]:
        return {"top1": self.top1, "n": self.n, "correct": self.correct, "ci95": list(self.ci95)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Accuracy:
        """Read `to_dict`'s output back; `top1` and `ci95`, when present, must agree with correct / n.

        Raises:
            DataError: a field is missing, of the wrong type, out of range or inconsistent.
        """
        if not isinstance(d, Mapping):
            raise DataError(f"an accuracy must be a mapping, got {type(d).__name__}")
        for key in ("correct", "n"):
            if key not in d:
                raise DataError(f"accuracy has no {key!r}: {dict(d)}")
            if isinstance(d[key], bool) or not isinstance(d[key], int):
                raise DataError(f"accuracy {key!r} must be an integer, got {d[key]!r}")
        try:
            acc = cls(d["correct"], d["n"])
        except ConfigError as exc:
            raise DataError(f"accuracy: {exc}") from None
        if "top1" in d:
            top1 = d["top1"]
            if isinstance(top1, bool) or not isinstance(top1, (int, float)) or abs(top1 - acc.top1) > 1e-9:
                raise DataError(f"accuracy 'top1' {top1!r} is not correct / n = {acc.correct}/{acc.n}")
        if "ci95" in d:
            ci = d["ci95"]
            if (not isinstance(ci, (list, tuple)) or len(ci) != 2
                    or any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in ci)):
                raise DataError(f"accuracy 'ci95' must be [low, high], got {ci!r}")
            if any(abs(a - b) > 1e-9 for a, b in zip(ci, acc.ci95)):
                raise DataError(f"accuracy 'ci95' {list(ci)} is not the Wilson interval {list(acc.ci95)} "
                                f"of {acc.correct}/{acc.n}")
        return acc


# -- exact binomial tails (p = 1/2) ---------------------------------------------------------

def _log_binom_pmf_half(k: int, m: int) -> float:
    return math.lgamma(m + 1) - math.lgamma(k + 1) - math.lgamma(m - k + 1) - m * math.log(2.0)


def _binom_pmf_half(m: int) -> np.ndarray:
    """pmf of Binomial(m, 1/2) over 0..m."""
    return np.exp([_log_binom_pmf_half(k, m) for k in range(m + 1)])


def exact_sign_p(k_pos: int, k_neg: int) -> tuple[float, float]:
    """(two-sided exact p, mid-p) of k_pos successes in k_pos + k_neg fair coin flips (sign test)."""
    m, k = k_pos + k_neg, min(k_pos, k_neg)
    if m == 0:
        return 1.0, 1.0
    tail = math.fsum(math.exp(_log_binom_pmf_half(i, m)) for i in range(k + 1))
    p = min(1.0, 2.0 * tail)
    mid = min(1.0, 2.0 * tail - math.exp(_log_binom_pmf_half(k, m)))
    return p, mid


@dataclass(frozen=True)
class McNemar:
    """Exact McNemar test of classifiers A and B on the same n images.

    Attributes:
        n: Images.
        b01: Images A gets wrong and B right.
        b10: Images A gets right and B wrong.
        p_value: Exact two-sided binomial p-value of b01 given b01 + b10 (1 when no image is discordant).
        mid_p_value: The mid-p variant (subtracts half the probability of the observed table).
    """

    n: int
    b01: int
    b10: int
    p_value: float
    mid_p_value: float

    @property
    def discordant(self) -> int:
        return self.b01 + self.b10

    @property
    def difference(self) -> float:
        """top1(B) - top1(A)."""
        return (self.b01 - self.b10) / self.n

    def significant(self, alpha: float = 0.05) -> bool:
        return self.p_value < alpha

    def to_dict(self, alpha: float = 0.05) -> dict[str, Any]:
        return {"test": "mcnemar-exact", "n": self.n, "b01": self.b01, "b10": self.b10,
                "difference": self.difference, "p_value": self.p_value, "mid_p_value": self.mid_p_value,
                "alpha": alpha, "significant": self.significant(alpha)}


def mcnemar(a_correct: Correctness, b_correct: Correctness) -> McNemar:
    """Exact McNemar test of A vs B from per-image correctness vectors of the same images, same order.

    Raises:
        ConfigError: vectors of different lengths, empty or not boolean.
    """
    a, b = as_correctness(a_correct, "a_correct"), as_correctness(b_correct, "b_correct")
    if a.numel() != b.numel():
        raise ConfigError(f"paired vectors must score the same images: {a.numel()} vs {b.numel()}")
    b01 = int((~a & b).sum())
    b10 = int((a & ~b).sum())
    p, mid = exact_sign_p(b01, b10)
    return McNemar(a.numel(), b01, b10, p, mid)


# -- several seeds --------------------------------------------------------------------------

def _stack(runs: Sequence[Correctness], name: str) -> torch.Tensor:
    if len(runs) == 0:
        raise ConfigError(f"{name}: need at least one run")
    vectors = [as_correctness(r, name) for r in runs]
    if len({v.numel() for v in vectors}) != 1:
        raise ConfigError(f"{name}: every run must score the same images, got lengths {[v.numel() for v in vectors]}")
    return torch.stack(vectors)   # (S, n) bool


def _bootstrap_mean_ci(levels: np.ndarray, counts: np.ndarray, n: int, samples: int, seed: int
                       ) -> tuple[float, float]:
    """Percentile 95% interval of the mean of n i.i.d. values that take `levels` with `counts`.

    Resampling n images with replacement only changes how many images fall on each level, so
    a bootstrap replicate is one multinomial draw (cheap for any n).
    """
    rng = np.random.default_rng(seed)
    draws = rng.multinomial(n, counts / counts.sum(), size=samples)
    means = draws @ levels / n
    low, high = np.quantile(means, [0.025, 0.975])
    return float(low), float(high)


@dataclass(frozen=True)
class MeanAccuracy:
    """Accuracy of one variant over S seeds on the same n images.

    Attributes:
        top1: Mean over seeds.
        n: Images.
        per_seed: Each seed's accuracy (with its Wilson interval).
        ci95: One seed: its Wilson interval. Several: percentile bootstrap over images of
            the mean over seeds (an image's S outcomes are resampled together).
    """

    top1: float
    n: int
    per_seed: tuple[Accuracy, ...]
    ci95: tuple[float, float]

    @property
    def seeds(self) -> int:
        return len(self.per_seed)

    @property
    def seed_sd(self) -> float:
        """Standard deviation of the per-seed accuracies (0 with one seed)."""
        return float(np.std([a.top1 for a in self.per_seed], ddof=1)) if self.seeds > 1 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"top1": self.top1, "n": self.n, "seeds": self.seeds, "ci95": list(self.ci95),
                "seed_sd": self.seed_sd, "per_seed": [a.to_dict() for a in self.per_seed],
                "ci_method": "wilson" if self.seeds == 1 else "bootstrap over images of the mean over seeds"}


def mean_accuracy(runs: Sequence[Correctness], *, samples: int = BOOTSTRAP_SAMPLES, seed: int = 0) -> MeanAccuracy:
    """Mean top-1 over runs (seeds) that scored the same images, with its 95% interval."""
    c = _stack(runs, "mean_accuracy")
    s, n = c.shape
    per_seed = tuple(Accuracy(int(row.sum()), n) for row in c)
    top1 = sum(a.top1 for a in per_seed) / s
    if s == 1:
        return MeanAccuracy(top1, n, per_seed, per_seed[0].ci95)
    hits = c.sum(0).numpy()                     # per image: seeds that got it right, 0..S
    counts = np.bincount(hits, minlength=s + 1).astype(float)
    ci = _bootstrap_mean_ci(np.arange(s + 1) / s, counts, n, samples, seed)
    return MeanAccuracy(top1, n, per_seed, ci)


def _sign_flip_p(levels: np.ndarray) -> float:
    """Exact two-sided p of Σ ε_i·l_i ≥ |Σ l_i| under independent fair signs ε_i (integers l_i)."""
    observed = int(abs(levels.sum()))
    magnitudes = np.abs(levels[levels != 0])
    if magnitudes.size == 0:
        return 1.0
    # Σ over images with |l| = j of ε·j = j·(2·Binomial(c_j, 1/2) - c_j); convolve the levels
    dist = np.ones(1)
    offset = 0   # value of dist[0]
    for j, c in zip(*np.unique(magnitudes, return_counts=True)):
        j, c = int(j), int(c)
        pmf = _binom_pmf_half(c)
        spread = np.zeros(2 * j * c + 1)
        spread[::2 * j] = pmf                       # values -j·c, -j·c + 2j, ..., j·c
        dist = np.convolve(dist, spread)
        offset -= j * c
    values = np.arange(dist.size) + offset
    return float(min(1.0, dist[np.abs(values) >= observed].sum()))


@dataclass(frozen=True)
class SeedComparison:
    """Variant B vs variant A, S seeds each, on the same n images (see the module docstring).

    Attributes:
        n: Images.
        per_seed: McNemar test of seed s of A vs seed s of B.
        difference: Mean over seeds of top1(B) - top1(A).
        ci95: Percentile bootstrap over images of `difference`.
        p_value: Exact sign-flip test over images of the mean-over-seeds difference
            (= the exact McNemar p with one seed).
        seeds_agreeing: Seeds whose difference is non-zero and has the sign of `difference`.
        seed_sign_p: Exact two-sided sign test over seeds (seeds with no difference dropped).
    """

    n: int
    per_seed: tuple[McNemar, ...]
    difference: float
    ci95: tuple[float, float]
    p_value: float
    seeds_agreeing: int
    seed_sign_p: float

    @property
    def seeds(self) -> int:
        return len(self.per_seed)

    def significant(self, alpha: float = 0.05) -> bool:
        """The mean-over-seeds difference is not test-set noise (image-level test)."""
        return self.p_value < alpha

    def separates(self, alpha: float = 0.05) -> bool:
        """Significant at `alpha` and no seed's difference contradicts the mean's sign."""
        return self.significant(alpha) and self.seeds_agreeing == self.seeds

    def to_dict(self, alpha: float = 0.05) -> dict[str, Any]:
        return {"test": "sign-flip over images of the mean-over-seeds difference (exact)",
                "n": self.n, "seeds": self.seeds, "difference": self.difference, "ci95": list(self.ci95),
                "p_value": self.p_value, "alpha": alpha, "significant": self.significant(alpha),
                "seeds_agreeing": self.seeds_agreeing, "seed_sign_p": self.seed_sign_p,
                "separates": self.separates(alpha), "per_seed": [m.to_dict(alpha) for m in self.per_seed]}


def compare_seeds(a_runs: Sequence[Correctness], b_runs: Sequence[Correctness], *,
                  samples: int = BOOTSTRAP_SAMPLES, seed: int = 0) -> SeedComparison:
    """Paired comparison of B against A over seeds: run s of A is paired with run s of B.

    Every run must score the same images in the same order. A single A run may be given
    for several B runs (e.g. the teacher, which has no seed): it is paired with each.

    Raises:
        ConfigError: different numbers of runs (other than one A run) or of images.
    """
    a, b = _stack(a_runs, "a_runs"), _stack(b_runs, "b_runs")
    if a.shape[0] == 1 and b.shape[0] > 1:
        a = a.expand(b.shape[0], -1)
    if a.shape != b.shape:
        raise ConfigError(f"need as many runs of A as of B on the same images, got {tuple(a.shape)} and "
                          f"{tuple(b.shape)} (runs, images)")
    s, n = b.shape
    per_seed = tuple(mcnemar(a[i], b[i]) for i in range(s))
    levels = (b.int() - a.int()).sum(0).numpy()    # S·d_i, integers in [-S, S]
    difference = float(levels.sum()) / (s * n)
    values, counts = np.unique(levels, return_counts=True)
    ci = _bootstrap_mean_ci(values / s, counts.astype(float), n, samples, seed)
    sign = np.sign(difference)
    agreeing = sum(1 for m in per_seed if m.difference != 0 and np.sign(m.difference) == sign)
    positive = sum(1 for m in per_seed if m.difference > 0)
    negative = sum(1 for m in per_seed if m.difference < 0)
    return SeedComparison(n, per_seed, difference, ci, _sign_flip_p(levels), agreeing,
                          exact_sign_p(positive, negative)[0])
