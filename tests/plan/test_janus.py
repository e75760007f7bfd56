"""Janus's split candidates, per-layer latency fit and Algorithm 1."""

from __future__ import annotations

import pytest

from shoal.errors import ConfigError
from shoal.models.tokens import counts
from shoal.plan.janus import JanusConfig, JanusModel, split_candidates
from shoal.profiling.layers import LayerLatency


def test_split_candidates_are_eq_3():
    assert split_candidates(24, 5) == (0, 1, 2, 3, 4, 5, 6, 8, 10, 12, 14, 16, 19, 22, 25)   # the paper's N = 24
    assert split_candidates(12, 3) == (0, 1, 2, 3, 4, 6, 8, 10, 13)                          # its Fig. 4


def test_a_linear_fit_recovers_a_line():
    fit = LayerLatency.fit([10, 20, 40], [2.0, 3.0, 5.0])
    assert fit.a == pytest.approx(0.1) and fit.b == pytest.approx(1.0) and fit(30) == pytest.approx(4.0)
    with pytest.raises(ConfigError, match="two token counts"):
        LayerLatency.fit([10, 10], [1.0, 1.0])


def _model() -> JanusModel:
    depth, tokens = 6, 65
    configs = tuple(JanusConfig(a, counts(a, depth, tokens), acc) for a, acc in ((0.0, 0.99), (0.5, 0.98), (1.0, 0.9)))
    # a slow device (3 ms + 0.2 ms/token per layer) and a fast server (0.1 + 0.005)
    # the image as the paper sends it (fp32, about as large as all the tokens): worth shrinking before sending
    return JanusModel(configs, LayerLatency(0.2, 3.0), LayerLatency(0.005, 0.1), token_bytes=386,
                      image_bytes=25_000, candidates=split_candidates(depth, 5))


def test_fast_links_send_the_image_slow_links_split_late_and_prune():
    model = _model()
    fast = model.choose(1e9, sla_ms=5.0)                  # 1 Gbit/s: the server does it all, no pruning
    assert (fast.alpha, fast.split, fast.meets) == (0.0, 0, True)
    slow = model.choose(2e6, sla_ms=60.0)                 # 2 Mbit/s: the device prunes, then sends fewer tokens
    assert slow.meets and slow.split > 0 and slow.alpha > 0 and slow.predicted_ms <= 60.0
    assert slow.predicted_ms == pytest.approx(model.latency_ms(
        next(c for c in model.configs if c.alpha == slow.alpha), slow.split, 2e6))
    hopeless = model.choose(1e5, sla_ms=1.0)               # nothing meets 1 ms at 100 kbit/s: the fastest of all
    every = [model.latency_ms(c, s, 1e5) for c in model.configs for s in model.candidates]
    assert not hopeless.meets and hopeless.predicted_ms == pytest.approx(min(every))


def test_the_least_pruned_alpha_that_meets_the_sla_wins():
    model = _model()
    # at 20 Mbit/s every α meets a generous SLA: the most accurate (α = 0) is chosen
    assert model.choose(2e7, sla_ms=1e3).alpha == 0.0
    tight = min(min(model.latency_ms(c, s, 2e7) for s in model.candidates) for c in model.configs)
    # an SLA only the most pruned α can meet picks it, although it is the least accurate
    best = model.choose(2e7, sla_ms=tight)
    assert best.meets and best.alpha == 1.0
    with pytest.raises(ConfigError, match="bandwidth must be a positive"):
        model.choose(0.0, sla_ms=10.0)


def test_the_summed_parts_are_the_per_layer_fits_and_alpha_must_increase():
    model = _model()
    for config in model.configs:
        x = config.counts
        for split in range(model.depth + 2):
            device = sum(model.device(x[layer - 1]) for layer in range(1, min(split, model.depth) + 1))
            server = sum(model.server(x[layer - 1]) for layer in range(split + 1, model.depth + 1))
            assert model.parts_ms(config, split) == pytest.approx((device, server))
    assert model.config(0.5) is model.configs[1] and model.config(0.123) is None
    with pytest.raises(ConfigError, match="α of a Janus model must increase"):
        JanusModel(model.configs[::-1], model.device, model.server, 1, 1, model.candidates)


def test_a_pruned_run_pays_for_its_reducing_blocks_and_old_plans_still_read():
    depth, tokens = 6, 65
    configs = tuple(JanusConfig(a, counts(a, depth, tokens), 0.9) for a in (0.0, 0.5))
    plain, reducing = LayerLatency(0.01, 1.0), LayerLatency(0.01, 3.0)   # reducing costs 2 ms more per block
    model = JanusModel(configs, plain, plain, 386, 784, split_candidates(depth, 5), 0.0, reducing, reducing)
    alone = depth + 1
    assert model.parts_ms(configs[0], alone)[0] == pytest.approx(sum(plain(x) for x in configs[0].counts[:-1]))
    assert model.parts_ms(configs[1], alone)[0] == pytest.approx(sum(reducing(x) for x in configs[1].counts[:-1]))
    # so the scheduler keeps α = 0 when pruning saves no time
    assert model.choose(1e3, sla_ms=1e3).alpha == 0.0
    assert model.choose(1e3, sla_ms=1.0).alpha == 0.0   # nothing meets it: the fastest is still unpruned
    without = JanusModel(configs, plain, plain, 386, 784, split_candidates(depth, 5))
    assert without.parts_ms(configs[1], alone)[0] == pytest.approx(sum(plain(x) for x in configs[1].counts[:-1]))


def test_janus_json_round_trips_and_format_1_reads_without_reducing_fits():
    from shoal.devices.spec import DeviceSpec
    from shoal.plan.document import InputSpec
    from shoal.plan.janus import JanusPlan

    depth, tokens = 6, 65
    configs = tuple(JanusConfig(a, counts(a, depth, tokens), 0.9) for a in (0.0, 0.5))
    model = JanusModel(configs, LayerLatency(0.01, 1.0), LayerLatency(0.02, 0.5), 386, 784,
                       split_candidates(depth, 5), 1.5, LayerLatency(0.01, 3.0), LayerLatency(0.02, 2.0))
    plan = JanusPlan("t", "f", DeviceSpec("edge", 1 << 20), DeviceSpec("hub", 1 << 20, central=True), "merge",
                     model, (0.9, 0.8), 10, InputSpec((0.5,), (0.5,)), {})
    data = plan.to_dict()
    assert JanusPlan.from_dict(data) == plan
    old = {**data, "format_version": 1, "latency": {k: v for k, v in data["latency"].items() if "reducing" not in k}}
    assert JanusPlan.from_dict(old).model.device_reducing is None
    with pytest.raises(Exception, match="unknown field"):   # format 1 has no reducing fits
        JanusPlan.from_dict({**data, "format_version": 1})


def test_the_vectorised_choice_is_algorithm_1():
    """Every L(s, α) at once gives what the loop over α (least pruned first) and splits gives."""
    import itertools

    import numpy as np

    model = _model()
    rng = np.random.default_rng(0)
    for bw, sla in itertools.product((1e5, 2e6, 1e8, 1e9), (1.0, 5.0, 20.0, 60.0, 1e3)):
        dev, srv = rng.uniform(0.5, 3.0, len(model.configs)), rng.uniform(0.5, 3.0, len(model.configs))
        expected = None
        fastest = None
        for k, c in enumerate(model.configs):
            ms, s = min((model.latency_ms(c, s, bw, dev[k], srv[k]), s) for s in model.candidates)
            if ms <= sla:
                expected = (c.alpha, s, True)
                break
            if fastest is None or ms < fastest[2]:
                fastest = (c.alpha, s, ms)
        if expected is None:
            expected = (fastest[0], fastest[1], False)
        got = model.choose(bw, sla, (dev, srv))
        assert (got.alpha, got.split, got.meets) == expected
