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
