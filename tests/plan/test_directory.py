"""A plan directory is self-contained, and a missing, altered or foreign file is refused by name."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from shoal.errors import DataError
from shoal.plan.directory import load_plan
from shoal.runtime.demo_plan import device_set, write_even_plan
from shoal.utils.io import sha256_file
from tests.conftest import make_vit

DEVICES = [("hub", None, None), ("edge-a", None, None)]


@pytest.fixture(scope="module")
def plan_root(tmp_path_factory):
    return write_even_plan(tmp_path_factory.mktemp("plan") / "plan", make_vit(), device_set(DEVICES), "tiny")


@pytest.fixture
def copy(plan_root, tmp_path):
    """A copy of the plan somewhere else, as a device would receive it (no teacher beside it)."""
    return shutil.copytree(plan_root, tmp_path / "copied")


def test_a_copied_plan_loads_and_runs_without_the_teacher(copy):
    plan = load_plan(copy)
    x = torch.randn(2, *plan.config.input_shape)
    with torch.inference_mode():
        assert plan.build_submodel("edge-a")(x).shape == (2, plan.config.num_classes)


@pytest.mark.parametrize("breakage, message", [
    ("missing-weights", r"is missing device-edge-a/weights\.safetensors"),
    ("altered-aggregator", r"aggregator\.safetensors does not match the sha256"),
    ("truncated-weights", r"device-hub/weights\.safetensors does not match the sha256"),
    ("corrupt-plan-json", r"plan\.json is corrupt"),
    ("no-plan-json", r"is not a plan directory"),
    ("newer-format", r"format_version"),
    ("rehashed-foreign-weights", r"device-edge-a/weights\.safetensors does not fit its spec"),
])
def test_a_broken_plan_is_refused_naming_the_file(copy, breakage, message):
    doc_path = copy / "plan.json"
    doc = json.loads(doc_path.read_text())
    if breakage == "missing-weights":
        (copy / "device-edge-a" / "weights.safetensors").unlink()
    elif breakage == "altered-aggregator":
        path = copy / "aggregator.safetensors"
        state = load_file(str(path))
        name = next(iter(state))
        state[name] = state[name] + 1e-3
        save_file(state, str(path))
    elif breakage == "truncated-weights":
        path = copy / "device-hub" / "weights.safetensors"
        path.write_bytes(path.read_bytes()[:-100])
    elif breakage == "corrupt-plan-json":
        doc_path.write_text(doc_path.read_text()[:-20])
    elif breakage == "no-plan-json":
        doc_path.unlink()
    elif breakage == "newer-format":
        doc["format_version"] = doc["format_version"] + 1
        doc_path.write_text(json.dumps(doc))
    elif breakage == "rehashed-foreign-weights":   # hashes updated, but the weights are of another shape
        path = copy / "device-edge-a" / "weights.safetensors"
        state = load_file(str(path))
        save_file({k: v[..., :1].contiguous() if v.ndim else v for k, v in state.items()}, str(path))
        doc["files"]["device-edge-a/weights.safetensors"] = sha256_file(path)
        doc_path.write_text(json.dumps(doc))
    with pytest.raises(DataError, match=message) as info:
        plan = load_plan(copy)
        plan.build_submodel("edge-a")
    assert "\n" not in str(info.value)
