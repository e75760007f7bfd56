"""Fashion-MNIST: the IDX reader on files made here, where it looks, and the real data where installed."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest
import torch

from shoal.data import fashion_mnist as fm
from shoal.data.datasets import default_teacher_for
from shoal.errors import DataError

needs_data = pytest.mark.skipif(not fm.available(), reason=f"Fashion-MNIST is not installed: {fm.INSTALL_HINT}")


def _idx(path: Path, array: torch.Tensor, *, gz: bool = False, magic: bytes | None = None,
         dims: list[int] | None = None) -> None:
    dims = dims if dims is not None else list(array.shape)
    header = (magic or bytes([0, 0, 8, len(dims)])) + b"".join(d.to_bytes(4, "big") for d in dims)
    data = header + array.to(torch.uint8).numpy().tobytes()
    if gz:
        with gzip.open(path.with_name(path.name + ".gz"), "wb") as fh:
            fh.write(data)
    else:
        path.write_bytes(data)


def _fake_dataset(root: Path, gz: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (60000, 28, 28), dtype=torch.uint8, generator=gen)
    labels = torch.arange(60000) % 10
    _idx(root / "train-images-idx3-ubyte", images, gz=gz)
    _idx(root / "train-labels-idx1-ubyte", labels, gz=gz)
    _idx(root / "t10k-images-idx3-ubyte", images[:10000], gz=gz)
    _idx(root / "t10k-labels-idx1-ubyte", labels[:10000], gz=gz)
    fm._raw.cache_clear()
    return images, labels


def test_idx_files_made_here_read_back_into_fixed_splits(tmp_path, monkeypatch):
    images, labels = _fake_dataset(tmp_path)
    monkeypatch.setenv("SHOAL_DATA", str(tmp_path))
    assert fm.find_dir() == tmp_path
    train, val, test = (fm.load_split(s) for s in ("train", "val", "test"))
    assert (len(train), len(val), len(test)) == (55000, 5000, 10000)
    assert torch.bincount(val.labels).tolist() == [500] * 10          # stratified
    assert train.images.shape == (55000, 1, 28, 28) and train.images.dtype == torch.float32
    # the pixels are the file's, normalised; val and train are disjoint and cover the file
    restored = (test.images[:, 0] * fm.STD + fm.MEAN) * 255
    assert (restored - images[:10000].float()).abs().max() < 1e-3
    assert len(train) + len(val) == 60000
    assert fm.load_split("val").labels.tolist() == val.labels.tolist()   # same split every time


def test_a_folder_named_on_the_command_line_is_found_first(tmp_path, monkeypatch):
    _fake_dataset(tmp_path, gz=False)
    monkeypatch.setenv("SHOAL_DATA", str(tmp_path / "nowhere"))
    assert fm.find_dir(tmp_path) == tmp_path
    assert default_teacher_for(tmp_path) == "shoal-fashion-mnist-vit"
    assert default_teacher_for("fashion-mnist") == "shoal-fashion-mnist-vit"
    assert default_teacher_for(None) == default_teacher_for("digits") == "shoal-digits-vit"


def test_missing_data_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setenv("SHOAL_DATA", str(tmp_path))
    monkeypatch.setattr(fm, "DEBIAN_DIR", tmp_path / "absent")
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        fm.find_dir()


@pytest.mark.parametrize("damage, message", [
    ("magic", "not an IDX file"),
    ("count", "expected 60000 items"),
    ("truncated", "the file is damaged"),
    ("longer", "the file is damaged"),
])
def test_damaged_idx_files_are_refused_by_name(tmp_path, damage, message):
    path = tmp_path / "train-labels-idx1-ubyte"
    labels = torch.arange(60000) % 10
    if damage == "magic":
        _idx(path, labels, magic=b"\x00\x00\x0d\x01")
    elif damage == "count":
        _idx(path, labels[:100])
    else:
        _idx(path, labels)
        data = path.read_bytes()
        path.write_bytes(data[:-10] if damage == "truncated" else data + b"\x00")
    with pytest.raises(DataError, match=message):
        fm.read_idx(path, 1, 60000)


def test_augment_keeps_shape_and_flips_or_shifts():
    x = torch.randn(64, 1, 28, 28)
    y = fm.augment(x, torch.Generator().manual_seed(0))
    assert y.shape == x.shape
    assert not torch.equal(x, y)
    # a crop of the padded image: every output pixel is an input pixel or the background
    background = (0.0 - fm.MEAN) / fm.STD
    values = set(x.flatten().tolist()) | {background}
    assert set(y[:4].flatten().tolist()) <= {float(torch.tensor(v)) for v in values}


@needs_data
def test_the_installed_data_has_its_documented_shape():
    fm._raw.cache_clear()
    test = fm.load_split("test")
    assert len(test) == 10000 and test.classes == fm.CLASSES
    assert torch.bincount(test.labels).tolist() == [1000] * 10
