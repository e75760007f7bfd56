from __future__ import annotations

import dataclasses
import time

import numpy as np
import pytest

from shoal.errors import ConfigError, DataError
from shoal.models import SubModelSpec, config_from_timm
from shoal.predictors import (
    EnsemblePredictor,
    LinearPredictor,
    MLPPredictor,
    error_metrics,
    fit_predictors,
    load_predictor,
    noise_floor,
    save_predictor,
)
from shoal.predictors.features import FEATURE_SETS, feature_matrix
from shoal.predictors.settings import TrainSettings
from shoal.predictors.training import resolve_target
from shoal.profiling.sampling import sample_shapes, shape_to_spec
from shoal.profiling.settings import SamplerSettings
from tests.conftest import make_vit
from tests.profiling.helpers import fake_latency_ms


def _data(config, n=60, seed=0):
    shapes = sample_shapes(config, SamplerSettings(n, seed=seed))
    return shapes, np.array([fake_latency_ms(config, s) for s in shapes])


def test_paper_features_of_a_spec(tiny_config):
    spec = SubModelSpec((0, 2), tuple(range(10)), ((0, 1), (1, 2, 3, 0)[:2]), ((0,), tuple(range(6))))
    row = feature_matrix(tiny_config, [spec], "paper")[0]
    assert row.tolist() == [2, 10, 2, 3.5]
    assert all(feature_matrix(tiny_config, [spec], k).shape == (1, len(v)) for k, v in FEATURE_SETS.items())
    with pytest.raises(ConfigError, match="unknown feature set"):
        feature_matrix(tiny_config, [spec], "nope")


def test_terms_linear_recovers_an_exact_linear_latency(tiny_config):
    shapes, y = _data(tiny_config)
    fit = LinearPredictor.fit(tiny_config, shapes, y, "terms", kind="terms-linear", relative=True, nonneg=True)
    assert error_metrics(fit.predict_array(shapes), y).mape < 1e-3
    assert fit.describe_terms()["intercept"] == pytest.approx(0.2, rel=1e-3)


def test_mlp_learns_a_smooth_latency_and_bigger_is_slower(tiny_config):
    shapes, y = _data(tiny_config, n=80)
    val = _data(tiny_config, n=20, seed=1)
    mlp = MLPPredictor.fit(tiny_config, shapes, y, "paper", kind="mlp", val=val, epochs=150)
    assert error_metrics(mlp.predict_array(val[0]), val[1]).mape < 0.15
    full = SubModelSpec.full(tiny_config)
    small = shape_to_spec(tiny_config, sample_shapes(tiny_config, SamplerSettings(2))[1])
    big_ms, small_ms = mlp.predict_ms([full, small])
    assert big_ms > 1.5 * small_ms  # true ratio ~3.5x


@pytest.mark.parametrize("kind", ["linear", "mlp", "residual", "ensemble"])
def test_save_load_round_trip_predicts_the_same(tiny_config, tmp_path, kind):
    shapes, y = _data(tiny_config, n=30)
    lin = LinearPredictor.fit(tiny_config, shapes, y, "terms", kind="terms-linear", relative=True, nonneg=True)
    made = {
        "linear": lambda: lin,
        "mlp": lambda: MLPPredictor.fit(tiny_config, shapes, y, "paper", kind="mlp", epochs=3),
        "residual": lambda: MLPPredictor.fit(tiny_config, shapes, y, "rich", kind="r", base=lin, epochs=3),
        "ensemble": lambda: EnsemblePredictor(tiny_config, "ensemble", [
            lin, MLPPredictor.fit(tiny_config, shapes, y, "paper", kind="mlp", epochs=3)], [2, 1]),
    }[kind]()
    save_predictor(made, tmp_path, "p")
    loaded = load_predictor(tmp_path, "p")
    assert type(loaded) is type(made) and loaded.kind == made.kind and loaded.family == tiny_config.fingerprint()
    np.testing.assert_allclose(loaded.predict_array(shapes), made.predict_array(shapes), rtol=1e-6)
    assert not list(tmp_path.glob("*.pkl")) and not list(tmp_path.glob("*.pt"))


def test_predictor_refuses_another_family_and_corrupt_files(tiny_config, tmp_path):
    shapes, y = _data(tiny_config, n=20)
    lin = LinearPredictor.fit(tiny_config, shapes, y, "flops", kind="flops-linear")
    other = SubModelSpec.full(config_from_timm(make_vit(embed_dim=24, num_heads=2)))
    with pytest.raises(ConfigError, match=f"family '{other.family}'.*family '{tiny_config.fingerprint()}'"):
        lin.predict_ms([other])
    assert lin.predict_ms([]) == []
    save_predictor(lin, tmp_path, "p")
    (tmp_path / "p.safetensors").write_bytes(b"garbage")
    with pytest.raises(DataError, match="cannot read predictor weights"):
        load_predictor(tmp_path, "p")
    (tmp_path / "p.json").write_text("{")
    with pytest.raises(DataError, match="not a valid predictor description"):
        load_predictor(tmp_path, "p")


def test_fit_predictors_chooses_by_validation_and_reports_noise(tiny_config, fake_dataset):
    suite = fit_predictors(tiny_config, fake_dataset, TrainSettings(epochs=20))
    assert set(suite.results) == {"flops-linear", "mlp", "terms-linear", "mlp-terms-residual", "ensemble"}
    best_val = min(r.val.mape for r in suite.results.values())
    assert suite.results[suite.chosen].val.mape == best_val and "validation MAPE" in suite.reason
    assert suite.results["terms-linear"].test.mape < 0.01  # the fake latency is linear in the cost terms
    assert suite.split == {"train": 38, "val": 7, "test": 15}
    assert suite.noise is not None and suite.noise.n == 9 and suite.noise.mape == 0.0
    assert suite.target == "p10"  # "auto" on an unlimited device
    quota = dataclasses.replace(fake_dataset, header=fake_dataset.header | {"cpu_limit": {"quota": 0.5}})
    assert resolve_target("auto", quota) == "mean" and resolve_target("median", quota) == "median"
    only = fit_predictors(tiny_config, fake_dataset, TrainSettings(candidates=("flops-linear",)))
    assert set(only.results) == {"flops-linear"}
    with pytest.raises(ConfigError, match="unknown predictor kind"):
        TrainSettings(candidates=("gbm",))


def test_metrics_and_noise_floor():
    m = error_metrics([1.1, 2.0, 2.5], [1.0, 2.0, 2.0])
    assert m.mape == pytest.approx((0.1 + 0 + 0.25) / 3) and m.within_10 == pytest.approx(2 / 3)
    n = noise_floor([1.0, 2.0], [1.0, 3.0])
    assert n.mape == pytest.approx(0.2) and n.within_10 == 0.5


def test_batched_prediction_is_fast_enough_for_the_planner(tiny_config, fake_dataset):
    """Not a timing assertion on the machine: a sanity bound 50x above the 2 ms target."""
    suite = fit_predictors(tiny_config, fake_dataset, TrainSettings(epochs=2))
    specs = [shape_to_spec(tiny_config, s) for s in sample_shapes(tiny_config, SamplerSettings(16, seed=5))]
    for result in suite.results.values():
        result.predictor.predict_ms(specs)
        start = time.perf_counter()
        result.predictor.predict_ms(specs)
        assert time.perf_counter() - start < 0.1


def test_vectorised_features_match_the_accounting(tiny_config):
    from shoal.models import spec_cost

    shapes = sample_shapes(tiny_config, SamplerSettings(40, seed=4))
    flops = feature_matrix(tiny_config, shapes, "flops")[:, 0]
    assert flops.tolist() == [spec_cost(tiny_config, shape_to_spec(tiny_config, s)).flops for s in shapes]
    rich = feature_matrix(tiny_config, shapes, "rich")
    names = FEATURE_SETS["rich"]
    for row, shape in zip(rich, shapes):
        assert row[names.index("h_std")] == pytest.approx(np.std(shape.head_counts))
        assert row[names.index("D_std")] == pytest.approx(np.std(shape.mlp_widths))
        assert row[names.index("n_attn")] == sum(h > 0 for h in shape.head_counts)
