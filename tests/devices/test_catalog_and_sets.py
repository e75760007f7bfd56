from __future__ import annotations

from pathlib import Path

import pytest

from shoal.devices.catalog import BOARDS, board
from shoal.devices.spec import DeviceSpec, default_device_set, load_device_set
from shoal.errors import ConfigError
from shoal.models import ViTConfig


def test_catalog_boards_from_table_vii(tiny_config):
    assert set(BOARDS) == {"jetson-nano", "jetson-tx2", "jetson-orin-nano", "raspberry-pi-4b"}
    assert board("TX2").peak_gflops == 665.6 and board("raspberry_pi_4b").peak_gflops == 13.5
    tx2 = board("jetson-tx2")
    small = tx2.estimate_ms(tiny_config, 8, (1,), (0,))
    big = tx2.estimate_ms(tiny_config, 48, (4, 4, 4), (96, 96, 96))
    assert 0 < small < big
    digits = ViTConfig(32, 4, 1, 10, 192, 6, 6, 32, 768)  # 365 MFLOPs: compute, not overhead, dominates
    full = (192, (6,) * 6, (768,) * 6)
    assert board("raspberry-pi-4b").estimate_ms(digits, *full) > 10 * board("jetson-tx2").estimate_ms(digits, *full)
    with pytest.raises(ConfigError, match="unknown catalog board 'xavier'"):
        board("xavier")


def test_default_set_resolves_profiles_against_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    devices = default_device_set()
    assert devices.names == ("hub", "edge-a", "edge-b") and devices.central.name == "hub"
    assert devices["hub"].profile == str(tmp_path / ".shoal/profiles/hub")
    assert devices["edge-b"].cpu_quota == 0.25 and devices["edge-b"].cpus == (1,)
    assert default_device_set(workdir="/srv/x")["edge-a"].profile == "/srv/x/.shoal/profiles/edge-a"


@pytest.mark.parametrize("entry, message", [
    ("- {name: a, central: true}", "missing field 'memory_mb'"),
    ("- {central: true, memory_mb: 8}", "missing field 'name'"),
    ("- {name: a, central: true, memory_mb: lots}", "memory_mb must be a number, got 'lots'"),
    ("- {name: a, central: true, memory_mb: 8, cpu_quota: fast}", "cpu_quota must be a number, got 'fast'"),
    ("- {name: a, central: true, memory_mb: 8, cpus: [a]}", "cpus must be a non-empty list"),
    ("- {name: a, central: true, memory_mb: 8, catalog: xavier}", "unknown catalog board 'xavier'"),
    ("- {name: a, central: true, memory_mb: 8, speed: 3}", r"unknown field\(s\) \['speed'\]"),
])
def test_device_file_errors_name_the_field(tmp_path: Path, entry: str, message: str):
    path = tmp_path / "devices.yaml"
    path.write_text(f"devices:\n  {entry}\n")
    with pytest.raises(ConfigError, match=message):
        load_device_set(path)


def test_own_device_file_resolves_profiles_against_its_directory(tmp_path):
    path = tmp_path / "sets" / "lab.yaml"
    path.parent.mkdir()
    path.write_text("devices:\n  - {name: a, central: true, memory_mb: 8, profile: p/a, catalog: tx2}\n")
    assert load_device_set(path)["a"].profile == str(tmp_path / "sets" / "p" / "a")
    assert DeviceSpec("b", 1 << 20, catalog="jetson-nano").catalog == "jetson-nano"


def test_an_accelerator_is_read_from_yaml_and_written_only_when_not_the_cpu(tmp_path):
    from shoal.devices.spec import load_device_set

    path = tmp_path / "set.yaml"
    path.write_text("devices:\n  - {name: hub, central: true, memory_mb: 64}\n"
                    "  - {name: jetson, memory_mb: 64, accelerator: cuda}\n")
    devices = load_device_set(path)
    assert [d.accelerator for d in devices.devices] == ["cpu", "cuda"]
    assert "accelerator" not in devices.devices[0].to_dict()      # as sets and plans before accelerators
    assert DeviceSpec.from_dict(devices.devices[1].to_dict()) == devices.devices[1]
    path.write_text("devices:\n  - {name: hub, central: true, memory_mb: 64, accelerator: tpu}\n")
    with pytest.raises(ConfigError, match=r"device 'hub': accelerator must be one of \['cpu', 'cuda'\], got 'tpu'"):
        load_device_set(path)
