from __future__ import annotations

import json
import logging

import pytest

from shoal.devices.emulation import CpuLimit
from shoal.devices.spec import DeviceSet, DeviceSpec
from shoal.errors import ConfigError, DataError, ShoalError
from shoal.models import SubModelSpec, config_from_timm
from shoal.predictors.settings import TrainSettings
from shoal.profiling.document import ProfileDocument
from shoal.profiling.profile import ProfileRequest, load_profile, profile_devices
from shoal.profiling.resolve import CatalogPredictor, ensure_profiles, load_device_costs, load_device_latency
from shoal.profiling.sampling import sample_shapes, shape_to_spec
from shoal.profiling.settings import SamplerSettings, TimingSettings
from shoal.profiling.timing import LatencyStats
from tests.conftest import make_vit
from tests.profiling.helpers import fake_measure

FAST = TrainSettings(epochs=5)


def _profile(config, out, **kw):
    [prof] = profile_devices([ProfileRequest("dev", out, kw.pop("limit", CpuLimit()),
                                             TimingSettings(repeats=3, warmup=0))],
                             config, sampler=SamplerSettings(kw.pop("samples", 30), seed=0), train=FAST,
                             measure=fake_measure, teacher_source="tiny", **kw)
    return prof


def test_profile_directory_format(tiny_config, tmp_path):
    out = tmp_path / "dev"
    prof = _profile(tiny_config, out)
    data = json.loads((out / "profile.json").read_text())
    assert data["format"] == "shoal-device-profile" and data["version"] == 1
    assert data["teacher"] == {"source": "tiny", "family": tiny_config.fingerprint(), "config": tiny_config.to_dict()}
    assert data["device"]["cpu_limit"] == CpuLimit().to_dict() and data["device"]["threads"] == 1
    assert data["measurements"]["measured"] == 30 and data["measurements"]["remeasured"] == 4
    assert data["noise_floor"]["n"] == 4 and data["chosen"] in data["predictors"]
    for entry in data["predictors"].values():
        assert {"val", "test", "files"} <= set(entry)
        assert all((out / f).is_file() for f in entry["files"])
    assert not [p for p in out.iterdir() if p.suffix in (".pkl", ".pt", ".pth")]
    assert prof.predictor.kind == data["chosen"] and not prof.predictor.is_estimate
    assert prof.family == tiny_config.fingerprint() and prof.teacher_source == "tiny"
    again = load_profile(out / "profile.json")
    spec = SubModelSpec.full(tiny_config)
    assert again.predictor.predict_ms([spec]) == prof.predictor.predict_ms([spec])


def test_broken_profiles_are_refused_with_one_clear_line(tiny_config, tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_profile(tmp_path / "nowhere")
    (tmp_path / "half").mkdir()
    with pytest.raises(DataError, match="unfinished"):
        load_profile(tmp_path / "half")
    out = tmp_path / "dev"
    _profile(tiny_config, out)
    text = (out / "profile.json").read_text()
    (out / "profile.json").write_text(text[:50])
    with pytest.raises(DataError, match="not valid JSON"):
        load_profile(out)
    data = json.loads(text)
    data["version"] = 99
    (out / "profile.json").write_text(json.dumps(data))
    with pytest.raises(DataError, match="version 99"):
        load_profile(out)
    data["version"] = 1
    del data["device"]["cpu_limit"]
    (out / "profile.json").write_text(json.dumps(data))
    with pytest.raises(DataError, match="cpu_limit"):
        load_profile(out)


def _device(profile=None, **kw):
    return DeviceSpec("dev", 1 << 24, profile=str(profile) if profile else None, central=True, **kw)


def test_measured_profile_wins_over_the_catalog(tiny_config, tmp_path):
    out = tmp_path / "dev"
    estimate = load_device_latency(_device(out, catalog="jetson-tx2"), tiny_config)
    assert isinstance(estimate, CatalogPredictor) and estimate.is_estimate and estimate.kind == "catalog-estimate"
    _profile(tiny_config, out)
    measured = load_device_latency(_device(out, catalog="jetson-tx2"), tiny_config)
    assert not measured.is_estimate and measured.family == tiny_config.fingerprint()


def test_device_costs_carry_the_profiles_call_overhead(tiny_config, tmp_path):
    out = tmp_path / "dev"
    _, unknown = load_device_costs(_device(out, catalog="jetson-tx2"), tiny_config)
    assert unknown is None   # a catalog estimate knows nothing of the runtime's calls
    _profile(tiny_config, out)
    data = json.loads((out / "profile.json").read_text())
    data["rpc"] = {"median_ms": 0.6, "p10_ms": 0.5, "p90_ms": 7.0, "calls": 200, "mean_ms": 2.5}
    (out / "profile.json").write_text(json.dumps(data))
    predictor, rpc = load_device_costs(_device(out), tiny_config)
    assert not predictor.is_estimate and rpc == 0.6   # an unlimited device: the median call


def test_missing_profile_and_catalog_says_what_to_run(tiny_config, tmp_path):
    with pytest.raises(ShoalError, match="shoal profile --device-name dev --out .*/nope --threads 1 --cpu-quota 0.5"):
        load_device_latency(_device(tmp_path / "nope", cpu_quota=0.5), tiny_config)
    with pytest.raises(ShoalError, match="neither a profile nor a catalog"):
        load_device_latency(_device(), tiny_config)


def test_profile_of_another_family_or_limit_is_refused(tiny_config, tmp_path):
    out = tmp_path / "dev"
    _profile(tiny_config, out)
    other = config_from_timm(make_vit(embed_dim=24, num_heads=2))
    with pytest.raises(ConfigError, match=f"family '{tiny_config.fingerprint()}'.*family is '{other.fingerprint()}'"):
        load_device_latency(_device(out), other)
    with pytest.raises(ConfigError, match="measured under unlimited but the device is set to 50% of a core"):
        load_device_latency(_device(out, cpu_quota=0.5), tiny_config)
    with pytest.raises(ConfigError, match="1 thread.*uses 2"):
        load_device_latency(_device(out, threads=2), tiny_config)


def test_ensure_profiles_measures_only_what_is_missing(tiny_config, tmp_path, caplog):
    devices = DeviceSet((
        DeviceSpec("hub", 1 << 24, central=True),
        DeviceSpec("board", 1 << 24, catalog="jetson-nano"),
        DeviceSpec("edge", 1 << 24, profile=str(tmp_path / "edge")),
    ))
    kw = dict(samples=20, workdir=tmp_path, train=FAST, measure=fake_measure)
    ready = ensure_profiles(devices, tiny_config, **kw)
    assert ready["hub"].profile == str(tmp_path / ".shoal/profiles/hub") and ready["board"].profile is None
    assert (tmp_path / ".shoal/profiles/hub/profile.json").is_file() and (tmp_path / "edge/profile.json").is_file()
    assert isinstance(load_device_latency(ready["board"], tiny_config), CatalogPredictor)
    stamp = (tmp_path / "edge/profile.json").stat().st_mtime_ns
    ensure_profiles(ready, tiny_config, **kw)  # all valid: nothing measured again
    assert (tmp_path / "edge/profile.json").stat().st_mtime_ns == stamp
    other = config_from_timm(make_vit(embed_dim=24, num_heads=2))
    with caplog.at_level(logging.INFO, logger="shoal"):
        ensure_profiles(ready, other, **kw)  # another family: measured again
    assert load_profile(tmp_path / "edge").family == other.fingerprint()
    assert any("measuring again" in m for m in caplog.messages)
    assert list((tmp_path / "edge").glob("measurements.jsonl.*.bak"))  # the old measurements are kept


def test_predict_specs_of_the_profiled_family(tiny_config, tmp_path):
    prof = _profile(tiny_config, tmp_path / "dev", samples=40)
    specs = [shape_to_spec(tiny_config, s) for s in sample_shapes(tiny_config, SamplerSettings(16, seed=9))]
    assert all(v > 0 for v in prof.predictor.predict_ms(specs))
    full, small = prof.predictor.predict_ms([SubModelSpec.full(tiny_config), specs[1]])
    assert full > small


def test_profile_under_another_cfs_period_is_refused(tiny_config, tmp_path):
    out = tmp_path / "dev"
    _profile(tiny_config, out)
    data = json.loads((out / "profile.json").read_text())
    data["device"]["cpu_limit"] = CpuLimit(0.5, (0,), period_us=2000).to_dict()
    (out / "profile.json").write_text(json.dumps(data))
    with pytest.raises(ConfigError, match=r"50% of a core, pinned to cpu 0 \(CFS period 2000 us\) but .*10000 us"):
        load_device_latency(_device(out, cpu_quota=0.5, cpus=(0,)), tiny_config)
    data["device"]["cpu_limit"] = CpuLimit(1.0, (0,), period_us=2000).to_dict()  # a full core: no cgroup, no period
    (out / "profile.json").write_text(json.dumps(data))
    assert not load_device_latency(_device(out, cpu_quota=1.0, cpus=(0,)), tiny_config).is_estimate


@pytest.mark.parametrize("target, expected", [("mean", 2.5), ("p10", 0.6)])
def test_rpc_overhead_uses_the_statistic_the_predictors_learn(tiny_config, tmp_path, target, expected):
    prof = _profile(tiny_config, tmp_path / "dev")
    rpc = {"median_ms": 0.6, "p10_ms": 0.5, "p90_ms": 7.0, "calls": 200, "mean_ms": 2.5}
    written = prof.document.to_dict()
    assert ProfileDocument.from_dict(written | {"target": target, "rpc": rpc}).rpc_ms == expected   # `calls`: before n
    older = {k: v for k, v in rpc.items() if k != "mean_ms"}   # profiles written before the mean was kept
    assert ProfileDocument.from_dict(written | {"target": "mean", "rpc": older}).rpc_ms == 0.6
    new = prof.document.to_dict() | {"rpc": LatencyStats.from_times([0.5, 0.6, 0.7]).to_dict()}
    assert ProfileDocument.from_dict(new).to_dict() == new   # what this shoal writes reads back unchanged


def test_a_cuda_device_needs_a_profile_measured_on_cuda(tiny_config, tmp_path):
    out = tmp_path / "dev"
    _profile(tiny_config, out)   # measured on the CPU
    with pytest.raises(ConfigError, match=r"measured on cpu but the device runs on cuda .*--device cuda"):
        load_device_latency(_device(out, accelerator="cuda"), tiny_config)
