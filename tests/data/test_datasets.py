"""`--data DIR`: an ImageFolder tree read with the teacher's own preprocessing, and its bad inputs."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from shoal.data.datasets import load_task_data
from shoal.data.digits import load_digits_split
from shoal.errors import DataError
from shoal.models import load_teacher


@pytest.fixture(scope="module")
def teacher():
    return load_teacher()


def _write_digits(root: Path, split: str, per_class: int, classes: range = range(10)) -> torch.Tensor:
    """Save the first `per_class` built-in digits of each class as 32x32 PNGs; return them in ImageFolder order."""
    ds = load_digits_split(split)
    kept = []
    for c in classes:
        idx = (ds.labels == c).nonzero().flatten()[:per_class].tolist()
        folder = root / split / f"digit{c}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in idx:
            pixels = ((ds.images[i, 0] * 0.5 + 0.5).clamp(0, 1) * 255).round().byte().numpy()
            Image.fromarray(pixels, mode="L").save(folder / f"{i:05d}.png")
        kept.extend(sorted(idx))
    return ds.images[kept]


def test_an_image_folder_of_digits_reads_as_the_built_in_split(teacher, tmp_path):
    expected = {s: _write_digits(tmp_path, s, 3) for s in ("train", "val", "test")}
    data = load_task_data(teacher, tmp_path)
    assert data.summary().to_dict() == {"name": str(tmp_path), "train": 30, "val": 30, "test": 30, "classes": 10}
    for split in ("train", "val", "test"):
        images = getattr(data, split).images
        assert images.shape == (30, 1, 32, 32)
        assert (images - expected[split]).abs().max() < 0.01   # PNG rounding only: no crop, no zoom
        assert getattr(data, split).labels.tolist() == [c for c in range(10) for _ in range(3)]
    with torch.inference_mode():
        assert torch.equal(teacher.model(data.test.images).argmax(1), teacher.model(expected["test"]).argmax(1))


def test_without_a_test_folder_val_is_split_in_two(teacher, tmp_path):
    for split in ("train", "val"):
        _write_digits(tmp_path, split, 2)
    data = load_task_data(teacher, tmp_path)
    assert len(data.val) == len(data.test) == 10


@pytest.mark.parametrize("breakage, message", [
    ("nine-classes", "has 9 classes but the teacher's head has 10"),
    ("val-classes-differ", "but train/ has"),
    ("empty-split", "holds no images|Couldn't find any class folder|Found no valid file"),
    ("corrupt-image", "cannot read .*digit3"),
    ("no-val", "needs train/ and val/"),
    ("missing", "does not exist"),
])
def test_bad_image_folders_are_one_clear_line(teacher, tmp_path, breakage, message):
    root = tmp_path / "data"
    if breakage == "nine-classes":
        for split in ("train", "val"):
            _write_digits(root, split, 1, classes=range(9))
    elif breakage != "missing":
        for split in ("train", "val"):
            _write_digits(root, split, 1)
    if breakage == "val-classes-differ":
        (root / "val" / "digit9").rename(root / "val" / "nine")
    elif breakage == "empty-split":
        shutil.rmtree(root / "val")
        for c in range(10):
            (root / "val" / f"digit{c}").mkdir(parents=True)
    elif breakage == "corrupt-image":
        victim = next((root / "train" / "digit3").iterdir())
        victim.write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really an image")
    elif breakage == "no-val":
        shutil.rmtree(root / "val")
    with pytest.raises(DataError, match=message) as info:
        load_task_data(teacher, root)
    assert "\n" not in str(info.value)


def test_a_built_in_task_fits_a_random_weight_teacher_of_another_input_size(tmp_path):
    """A real-scale teacher timed on digits: the images are resized and their grey channel repeated."""
    from shoal.data.datasets import fit_input, task_classes

    assert task_classes(None) == task_classes("digits") == task_classes("fashion-mnist") == 10
    (tmp_path / "train" / "a").mkdir(parents=True)
    (tmp_path / "train" / "b").mkdir(parents=True)
    assert task_classes(tmp_path) == 2 and task_classes(tmp_path / "missing") is None
    big = load_teacher("vit_tiny_patch16_224", pretrained=False,
                       model_kwargs={"img_size": 64, "num_classes": task_classes("digits")})
    assert big.random_weights and big.config.input_shape == (3, 64, 64)
    data = load_task_data(big, "digits", max_per_split=16)
    assert data.train.images.shape == (16, 3, 64, 64) and data.test.labels.shape == (16,)
    assert torch.equal(data.train.images[:, 0], data.train.images[:, 2])   # one grey channel, repeated
    native = load_digits_split("train").subset(16)
    assert fit_input(native, (1, 32, 32)) is native
    # resizing back down recovers the native images closely (bilinear both ways)
    back = torch.nn.functional.interpolate(data.train.images[:, :1], size=(32, 32), mode="bilinear",
                                           align_corners=False, antialias=True)
    assert (back - native.images).abs().mean() < 0.1
    assert data.augment is not None and data.augment(data.train.images[:4], None).shape == (4, 3, 64, 64)


def test_a_thousand_class_head_on_a_ten_class_task_is_refused():
    imagenet_head = load_teacher("vit_tiny_patch16_224", pretrained=False, model_kwargs={"img_size": 32})
    assert imagenet_head.random_weights and imagenet_head.config.num_classes == 1000
    with pytest.raises(DataError, match="10 classes but teacher .* has a head of 1000"):
        load_task_data(imagenet_head, "digits", max_per_split=4)
