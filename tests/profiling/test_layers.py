"""Per-layer latency against tokens (Janus §III-C): the fits, the leave-one-out choice, a real timing."""

from __future__ import annotations

import pytest

from shoal.errors import ConfigError
from shoal.profiling.layers import LayerLatency, fit_layers, time_layers
from tests.conftest import make_vit


def test_a_line_recovers_a_line_and_the_quadratic_term_a_parabola():
    fit = LayerLatency.fit([10, 20, 40], [2.0, 3.0, 5.0])
    assert fit.a == pytest.approx(0.1) and fit.b == pytest.approx(1.0) and fit(30) == pytest.approx(4.0)
    tokens = [10, 20, 40, 80, 160]
    curved = fit_layers([(t, 0.5 + 0.01 * t + 0.001 * t * t) for t in tokens])
    assert curved.chosen == "quadratic" and curved.quadratic.c == pytest.approx(0.001)
    straight = fit_layers([(t, 0.5 + 0.01 * t + (0.02 if i % 2 else -0.02)) for i, t in enumerate(tokens)])
    assert straight.chosen == "linear"   # the x² term only fits the noise: it predicts worse held out
    with pytest.raises(ConfigError, match="at least 4 distinct token counts"):
        fit_layers([(10, 1.0), (20, 2.0), (20, 2.1)])
    with pytest.raises(ConfigError, match="two token counts"):
        LayerLatency.fit([10, 10], [1.0, 1.0])


def test_one_block_is_timed_at_each_token_count():
    samples = time_layers(make_vit(img_size=16, patch_size=2), [8, 32, 65], repeats=3, warmup=1)
    assert [t for t, _ in samples] == [8, 32, 65] and all(ms > 0 for _, ms in samples)


def test_a_reducing_block_is_timed_as_a_reducing_run_runs_it():
    model = make_vit(img_size=16, patch_size=2)
    for reduction in ("merge", "prune"):
        samples = time_layers(model, [8, 65], repeats=3, warmup=1, reduction=reduction)
        assert [t for t, _ in samples] == [8, 65] and all(ms > 0 for _, ms in samples)
