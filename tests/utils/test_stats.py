"""Accuracy intervals and paired tests against reference values (scipy, textbook Wilson intervals)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import binomtest

from shoal.errors import ConfigError, DataError
from shoal.utils.stats import Accuracy, McNemar, compare_seeds, exact_sign_p, mcnemar, mean_accuracy, wilson_interval


@pytest.mark.parametrize("k,n,expected", [
    # Newcombe (1998), Statistics in Medicine 17:857, Table I (Wilson score, no continuity correction)
    (81, 263, (0.2553, 0.3662)),
    (15, 148, (0.0624, 0.1605)),
    (0, 20, (0.0, 0.1611)),
    (1, 29, (0.0061, 0.1718)),
])
def test_wilson_matches_newcombe_table(k, n, expected):
    low, high = wilson_interval(k, n)
    assert low == pytest.approx(expected[0], abs=5e-5) and high == pytest.approx(expected[1], abs=5e-5)


@pytest.mark.parametrize("k,n", [(0, 1), (3, 7), (97, 100), (355, 360), (9000, 10000)])
def test_wilson_matches_scipy(k, n):
    ci = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    assert wilson_interval(k, n) == pytest.approx((ci.low, ci.high), abs=1e-9)


def test_wilson_edges_and_refusals():
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == 1.0
    low, high = wilson_interval(10, 10)
    assert 0.69 < low < 0.73                       # all right is not certainty: 10/10 -> [0.722, 1]
    with pytest.raises(ConfigError):
        wilson_interval(0, 0)
    with pytest.raises(ConfigError):
        wilson_interval(5, 4)
    with pytest.raises(ConfigError):
        wilson_interval(-1, 4)
    with pytest.raises(ConfigError):
        wilson_interval(True, 4)


def test_accuracy_round_trip_and_validation():
    acc = Accuracy.of(torch.tensor([True, True, False, True]))
    assert (acc.correct, acc.n, acc.top1) == (3, 4, 0.75)
    d = acc.to_dict()
    assert d["ci95"] == list(wilson_interval(3, 4)) and Accuracy.from_dict(d) == acc
    assert Accuracy.from_dict({"correct": 3, "n": 4}) == acc
    for bad in ({"correct": 3}, {"correct": 3.0, "n": 4}, {"correct": True, "n": 4}, {"correct": 5, "n": 4},
                {"correct": 0, "n": 0}, {**d, "top1": 0.7}, {**d, "ci95": [0.1]}, {**d, "ci95": [0.0, 1.0]},
                {**d, "ci95": "wide"}, [3, 4]):
        with pytest.raises(DataError):
            Accuracy.from_dict(bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        Accuracy(0, 0)
    with pytest.raises(ConfigError):
        Accuracy.of([0, 2, 1])
    with pytest.raises(ConfigError):
        Accuracy.of([])
    assert Accuracy(0, 5).ci95[0] == 0.0 and Accuracy(5, 5).ci95[1] == 1.0


@pytest.mark.parametrize("b01,b10", [(0, 0), (0, 1), (3, 3), (7, 2), (1, 12), (40, 60), (250, 310)])
def test_mcnemar_is_exact_binomial_on_discordant_pairs(b01, b10):
    concordant = 50
    a = [False] * b01 + [True] * b10 + [True] * concordant + [False] * 5
    b = [True] * b01 + [False] * b10 + [True] * concordant + [False] * 5
    m = mcnemar(a, b)
    assert (m.b01, m.b10, m.n) == (b01, b10, len(a))
    expected = binomtest(b01, b01 + b10, 0.5).pvalue if b01 + b10 else 1.0
    assert m.p_value == pytest.approx(expected, rel=1e-9, abs=1e-15)
    assert m.difference == pytest.approx((b01 - b10) / len(a))
    assert m.mid_p_value <= m.p_value
    assert mcnemar(b, a).p_value == pytest.approx(m.p_value)   # symmetric


def test_mcnemar_known_values_and_significance():
    # 1 vs 12 discordant: p = 2 * 14/8192
    m = McNemar(100, 1, 12, *exact_sign_p(1, 12))
    assert m.p_value == pytest.approx(28 / 8192)
    assert m.mid_p_value == pytest.approx(28 / 8192 - 13 / 8192)
    assert m.significant() and not m.significant(alpha=0.001)
    assert exact_sign_p(3, 3) == (1.0, 1.0) and exact_sign_p(0, 0) == (1.0, 1.0)
    assert exact_sign_p(0, 3)[0] == pytest.approx(0.25)
    d = m.to_dict()
    assert d["significant"] is True and d["b01"] == 1 and d["b10"] == 12


def test_mcnemar_refuses_unpaired_input():
    with pytest.raises(ConfigError):
        mcnemar([True, False], [True])
    with pytest.raises(ConfigError):
        mcnemar([], [])
    with pytest.raises(ConfigError):
        mcnemar([0.5, 1.0], [1, 0])


def test_compare_seeds_with_one_seed_is_mcnemar():
    rng = np.random.default_rng(0)
    a = rng.random(500) < 0.9
    b = rng.random(500) < 0.8
    c = compare_seeds([a], [b])
    m = mcnemar(a, b)
    assert c.p_value == pytest.approx(m.p_value, rel=1e-9)
    assert c.difference == pytest.approx(m.difference)
    assert c.seeds == 1 and c.per_seed[0] == m
    assert c.ci95[0] <= c.difference <= c.ci95[1]


def test_compare_seeds_sign_flip_matches_brute_force():
    # 6 images, 2 seeds: enumerate all 2^k sign patterns of the non-zero per-image differences
    a = [[1, 1, 0, 1, 0, 1], [1, 0, 0, 1, 1, 1]]
    b = [[0, 1, 1, 1, 1, 1], [0, 1, 1, 0, 1, 1]]
    levels = np.array(b).sum(0) - np.array(a).sum(0)
    nz = levels[levels != 0]
    import itertools

    sums = [abs(sum(s * v for s, v in zip(signs, nz))) for signs in itertools.product((-1, 1), repeat=len(nz))]
    expected = sum(x >= abs(levels.sum()) for x in sums) / len(sums)
    c = compare_seeds(a, b)
    assert c.p_value == pytest.approx(expected)
    assert c.difference == pytest.approx(levels.sum() / 12)


def test_compare_seeds_separates_only_a_consistent_real_difference():
    rng = np.random.default_rng(1)
    truth = rng.random(2000)
    a = [truth > 0.20 for _ in range(3)]                              # 80% right
    b = [(truth > 0.10) | (rng.random(2000) < 0.02) for _ in range(3)]  # ~90% right, a superset
    c = compare_seeds(a, b)
    assert c.difference > 0.09 and c.p_value < 1e-10 and c.separates() and c.seeds_agreeing == 3
    assert c.seed_sign_p == pytest.approx(0.25)     # 3 seeds cannot reach 5% in a sign test over seeds
    same = compare_seeds(a, a)
    assert same.difference == 0 and same.p_value == 1.0 and not same.separates()
    # noise: two independent draws of the same classifier quality
    noise = compare_seeds([rng.random(2000) < 0.9 for _ in range(3)], [rng.random(2000) < 0.9 for _ in range(3)])
    assert noise.ci95[0] < noise.difference < noise.ci95[1]


def test_compare_seeds_inconsistent_seeds_do_not_separate():
    base = np.zeros(400, dtype=bool)
    base[:300] = True
    up, down = base.copy(), base.copy()
    up[300:360] = True          # +60 images
    down[:5] = False            # -5 images
    c = compare_seeds([base, base, base], [up, up, down])
    assert c.significant() and c.seeds_agreeing == 2 and not c.separates()


def test_compare_seeds_broadcasts_a_single_reference_run_and_checks_shapes():
    t = [True] * 10 + [False] * 2
    c = compare_seeds([t], [t, t, t])
    assert c.seeds == 3 and c.p_value == 1.0
    with pytest.raises(ConfigError):
        compare_seeds([t, t], [t, t, t])
    with pytest.raises(ConfigError):
        compare_seeds([t], [t[:-1]])


def test_mean_accuracy():
    one = mean_accuracy([[1, 1, 1, 0]])
    assert one.top1 == 0.75 and one.ci95 == wilson_interval(3, 4)
    rng = np.random.default_rng(2)
    runs = [rng.random(1000) < 0.9 for _ in range(3)]
    m = mean_accuracy(runs)
    assert m.top1 == pytest.approx(np.mean(runs)) and m.seeds == 3 and m.n == 1000
    assert m.ci95[0] < m.top1 < m.ci95[1] and m.ci95[1] - m.ci95[0] < 0.05
    assert m.to_dict()["per_seed"][0]["n"] == 1000
    assert mean_accuracy(runs) == m          # deterministic (seeded bootstrap)


def test_quantile_interpolates_like_numpy():
    import numpy as np

    from shoal.utils.stats import quantile

    values = sorted([3.0, 1.0, 4.0, 1.5, 9.0, 2.6])
    for q in (0.0, 0.1, 0.5, 0.9, 0.95, 1.0):
        assert quantile(values, q) == pytest.approx(float(np.quantile(values, q)))
    assert quantile([7.0], 0.9) == 7.0
    with pytest.raises(ConfigError):
        quantile([], 0.5)
    with pytest.raises(ConfigError):
        quantile(values, 95)
