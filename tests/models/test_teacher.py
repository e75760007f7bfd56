from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from shoal.errors import ModelError
from shoal.models import load_teacher
from shoal.models.config import config_from_timm
from tests.conftest import make_vit


def test_checkpoint_with_description(tmp_path):
    model = make_vit()
    path = tmp_path / "mine.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    (tmp_path / "mine.json").write_text(json.dumps({
        "timm_model": "vit_tiny_patch16_224",
        "timm_kwargs": dict(img_size=16, patch_size=4, in_chans=3, num_classes=5, embed_dim=48, depth=3,
                            num_heads=4, mlp_ratio=2.0)}))
    teacher = load_teacher(str(path))
    x = torch.randn(2, 3, 16, 16)
    assert torch.allclose(teacher.model(x), model(x), atol=1e-6)
    assert teacher.config == config_from_timm(model)


def test_timm_name_with_torch_checkpoint(tmp_path):
    model = make_vit()
    path = tmp_path / "ckpt.pth"
    torch.save({"state_dict": model.state_dict()}, path)
    kwargs = dict(img_size=16, patch_size=4, in_chans=3, num_classes=5, embed_dim=48, depth=3, num_heads=4,
                  mlp_ratio=2.0)
    teacher = load_teacher("vit_tiny_patch16_224", checkpoint=path, model_kwargs=kwargs)
    x = torch.randn(1, 3, 16, 16)
    assert torch.allclose(teacher.model(x), model(x), atol=1e-6)
    assert teacher.data_config["input_size"] == [3, 16, 16]


def test_pickled_code_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "obj": object()}, path)
    with pytest.raises(ModelError, match="cannot read checkpoint"):
        load_teacher("vit_tiny_patch16_224", checkpoint=path)


def test_timm_name_without_pretrained_weights():
    teacher = load_teacher("deit_tiny_patch16_224", pretrained=False, model_kwargs={"num_classes": 3})
    assert teacher.config.embed_dim == 192 and teacher.config.num_classes == 3


@pytest.mark.parametrize("name, match", [
    ("resnet18", "ResNet; shoal decomposes plain timm VisionTransformer"),
    ("deit_tiny_distilled_patch16_224", "VisionTransformerDistilled"),
    ("not_a_model_xyz", "unknown timm model"),
])
def test_unsupported_models_are_refused_by_name(name, match):
    with pytest.raises(ModelError, match=match):
        load_teacher(name, pretrained=False)


def test_mismatched_checkpoint(tmp_path):
    path = tmp_path / "small.safetensors"
    save_file({k: v.contiguous() for k, v in make_vit().state_dict().items()}, str(path))
    with pytest.raises(ModelError, match="does not match its architecture"):
        load_teacher("vit_tiny_patch16_224", checkpoint=path)


def test_missing_description(tmp_path):
    path = tmp_path / "lonely.safetensors"
    save_file({"w": torch.zeros(1)}, str(path))
    with pytest.raises(ModelError, match="no description"):
        load_teacher(str(path))


def test_unreachable_hub_gives_one_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")   # nothing listens on the discard port
    monkeypatch.setenv("HF_HOME", str(tmp_path))              # empty cache
    with pytest.raises(ModelError, match="hub is unreachable"):
        load_teacher("deit_tiny_patch16_224", pretrained=True)


def test_shipped_teacher_loads_offline_and_reaches_its_reported_accuracy(monkeypatch):
    from shoal.data.digits import load_digits_split

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    teacher = load_teacher()
    assert teacher.is_default and teacher.config.input_shape == (1, 32, 32)
    reported = teacher.meta["metrics"]["test"]
    test = load_digits_split("test")
    with torch.inference_mode():
        top1 = (teacher.model(test.images).argmax(1) == test.labels).float().mean().item()
    assert top1 == pytest.approx(reported["top1"], abs=1e-6)
    assert top1 >= 0.97


@pytest.mark.slow
def test_shipped_fashion_mnist_teacher_reaches_its_reported_accuracy(monkeypatch):
    from shoal.data import fashion_mnist as fm

    if not fm.available():
        pytest.skip(f"Fashion-MNIST is not installed: {fm.INSTALL_HINT}")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    teacher = load_teacher("shoal-fashion-mnist-vit")
    assert not teacher.is_default and teacher.config.input_shape == (1, 28, 28)
    reported = teacher.meta["metrics"]["test"]
    test = fm.load_split("test")
    with torch.inference_mode():
        logits = torch.cat([teacher.model(test.images[i:i + 500]) for i in range(0, len(test), 500)])
    top1 = (logits.argmax(1) == test.labels).float().mean().item()
    assert reported["n"] == len(test) == 10000
    assert top1 == pytest.approx(reported["top1"], abs=2e-4)   # batch-order rounding: at most one image
    assert top1 >= 0.85
