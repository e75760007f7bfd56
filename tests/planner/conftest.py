"""A tiny digits-shaped teacher saved as a checkpoint, devices and analytic predictors."""

from __future__ import annotations

import json

import pytest
from safetensors.torch import save_file

from shoal.devices.spec import DeviceSet, DeviceSpec
from shoal.models import load_teacher
from shoal.models.accounting import shape_cost
from shoal.predictors.features import counts, tokens_of
from tests.conftest import make_vit

TINY_DIGITS = dict(img_size=32, patch_size=8, in_chans=1, num_classes=10, embed_dim=48, depth=3,
                   num_heads=4, mlp_ratio=2.0)


class FlopsPredictor:
    """Deterministic stand-in for a measured predictor: fixed overhead + FLOPs / speed."""

    kind = "test-flops"
    is_estimate = True

    def __init__(self, config, mflops_per_ms: float, overhead_ms: float = 0.3) -> None:
        self.config, self.speed, self.overhead = config, mflops_per_ms, overhead_ms
        self.family = config.fingerprint()

    def predict_ms(self, specs):
        return [self.overhead + shape_cost(self.config, *counts(s), tokens_of(self.config, s)).flops / 1e6 / self.speed
                for s in specs]


@pytest.fixture(scope="session")
def tiny_digits_teacher(tmp_path_factory):
    root = tmp_path_factory.mktemp("teacher")
    model = make_vit(**TINY_DIGITS)
    path = root / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    (root / "tiny.json").write_text(json.dumps({"timm_model": "vit_tiny_patch16_224", "timm_kwargs": TINY_DIGITS}))
    return str(path)


@pytest.fixture(scope="session")
def three_devices():
    return DeviceSet((DeviceSpec("hub", 64 << 20, central=True, link_mbps=1000.0),
                      DeviceSpec("fast", 64 << 20, link_mbps=100.0, link_latency_ms=0.5),
                      DeviceSpec("slow", 64 << 20, link_mbps=2.0, link_latency_ms=1.0)))


@pytest.fixture(scope="session")
def three_predictors(tiny_digits_teacher):
    config = load_teacher(tiny_digits_teacher).config
    return [FlopsPredictor(config, 40.0), FlopsPredictor(config, 25.0), FlopsPredictor(config, 10.0)]
