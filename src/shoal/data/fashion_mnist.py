"""Fashion-MNIST (Zalando, MIT licence) as the second built-in task.

70,000 grey 28x28 images of 10 kinds of clothing: 60,000 train and 10,000
test. Nothing is downloaded: the four IDX files are read from the first of

    1. the folder the user names (`--data PATH` pointing at them),
    2. `$SHOAL_DATA` (the files, or a `fashion-mnist/` folder inside it),
    3. `/usr/share/datasets/fashion-mnist` (Debian's `dataset-fashion-mnist`),

gzipped or not. The split is fixed: the last 5,000 training images (a
stratified draw, seed 0) are the validation split, the official 10,000 test
images the test split. Images stay 28x28 (a patch-4 ViT sees 7x7 tokens).
"""

from __future__ import annotations

import gzip
import os
from functools import lru_cache
from pathlib import Path

import torch
import torch.nn.functional as F

from shoal.data.digits import Split, TensorDataset
from shoal.errors import DataError

NAME = "fashion-mnist"
IMG_SIZE = 28
MEAN, STD = 0.2860, 0.3530          # of the 60,000 training images
VAL_SIZE = 5000
SPLIT_SEED = 0
CLASSES = ("t-shirt/top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag",
           "ankle boot")
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
          "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
_COUNTS = {"train": 60000, "test": 10000}
INSTALL_HINT = ("install it with `apt-get install dataset-fashion-mnist` (Debian/Ubuntu), or put the four IDX "
                "files (train-images-idx3-ubyte[.gz], ...) in a folder and set SHOAL_DATA to it")


def candidate_dirs(path: str | Path | None = None) -> list[Path]:
    """Folders searched for the IDX files, in order."""
    dirs: list[Path] = []
    if path is not None:
        dirs.append(Path(path))
    env = os.environ.get("SHOAL_DATA")
    if env:
        dirs += [Path(env), Path(env) / NAME]
    dirs.append(DEBIAN_DIR)
    return dirs


def find_dir(path: str | Path | None = None) -> Path:
    """The first folder holding all four IDX files.

    Raises:
        DataError: none does; the message says where it looked and how to install the data.
    """
    dirs = candidate_dirs(path)
    for d in dirs:
        if all(_idx_path(d, name) is not None for pair in _FILES.values() for name in pair):
            return d
    looked = ", ".join(str(d) for d in dirs)
    raise DataError(f"Fashion-MNIST not found (looked in {looked}); {INSTALL_HINT}")


def available(path: str | Path | None = None) -> bool:
    """Whether the IDX files can be found (tests skip with `INSTALL_HINT` when not)."""
    try:
        find_dir(path)
    except DataError:
        return False
    return True


def _idx_path(folder: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def read_idx(path: Path, expected_ndim: int, expected_count: int) -> torch.Tensor:
    """An IDX file of unsigned bytes as a uint8 tensor, its header checked against the file size.

    Raises:
        DataError: wrong magic, wrong rank or count, or a truncated/oversized payload.
    """
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            header = fh.read(4)
            if len(header) != 4 or header[0] != 0 or header[1] != 0 or header[2] != 0x08:
                raise DataError(f"{path} is not an IDX file of unsigned bytes (magic {header.hex()})")
            ndim = header[3]
            if ndim != expected_ndim:
                raise DataError(f"{path} has {ndim} dimensions, expected {expected_ndim}")
            dims = [int.from_bytes(fh.read(4), "big") for _ in range(ndim)]
            if dims[0] != expected_count or (ndim == 3 and dims[1:] != [IMG_SIZE, IMG_SIZE]):
                raise DataError(f"{path} holds shape {dims}, expected {expected_count} items of "
                                f"{'28x28' if ndim == 3 else 'one label'}")
            size = 1
            for d in dims:
                size *= d
            payload = fh.read(size + 1)   # one byte more: a longer file is corrupt too
    except (OSError, EOFError) as exc:
        raise DataError(f"cannot read {path}: {exc}") from None
    if len(payload) != size:
        raise DataError(f"{path} holds {len(payload)} bytes of data, its header says {size}; the file is damaged")
    return torch.frombuffer(bytearray(payload), dtype=torch.uint8).reshape(dims)


@lru_cache(maxsize=2)
def _raw(part: str, folder: str) -> tuple[torch.Tensor, torch.Tensor]:
    images_stem, labels_stem = _FILES[part]
    base = Path(folder)
    images = read_idx(_idx_path(base, images_stem), 3, _COUNTS[part])  # type: ignore[arg-type]
    labels = read_idx(_idx_path(base, labels_stem), 1, _COUNTS[part]).long()  # type: ignore[arg-type]
    if int(labels.max()) >= len(CLASSES):
        raise DataError(f"{base}: labels up to {int(labels.max())}, Fashion-MNIST has {len(CLASSES)} classes")
    return images, labels


def _val_index(labels: torch.Tensor) -> torch.Tensor:
    """A stratified draw of VAL_SIZE training indices (seed 0), sorted."""
    gen = torch.Generator().manual_seed(SPLIT_SEED)
    per_class = VAL_SIZE // len(CLASSES)
    picks = []
    for c in range(len(CLASSES)):
        members = (labels == c).nonzero().squeeze(1)
        picks.append(members[torch.randperm(len(members), generator=gen)[:per_class]])
    return torch.cat(picks).sort().values


def preprocess(raw: torch.Tensor) -> torch.Tensor:
    """(N, 28, 28) uint8 pixels -> (N, 1, 28, 28) normalised float32."""
    return (raw.float().div(255.0).unsqueeze(1) - MEAN) / STD


def load_split(split: Split, path: str | Path | None = None) -> TensorDataset:
    """One split: train 55,000 / val 5,000 / test 10,000 images (uint8 pixels are read once per process)."""
    if split not in ("train", "val", "test"):
        raise DataError(f"split must be 'train', 'val' or 'test', got {split!r}")
    folder = str(find_dir(path))
    if split == "test":
        images, labels = _raw("test", folder)
    else:
        images, labels = _raw("train", folder)
        val = _val_index(labels)
        keep = torch.zeros(len(labels), dtype=torch.bool)
        keep[val] = True
        index = val if split == "val" else (~keep).nonzero().squeeze(1)
        images, labels = images.index_select(0, index), labels.index_select(0, index)
    return TensorDataset(preprocess(images), labels, CLASSES)


def augment(images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Random horizontal flip and a random crop after 2-px padding (the standard recipe for this data).

    Args:
        images: (B, 1, 28, 28) normalised images.

    Returns:
        (B, 1, 28, 28); the padding has the value of a black pixel.
    """
    b = images.shape[0]
    flip = torch.rand(b, generator=generator) < 0.5
    out = torch.where(flip.view(b, 1, 1, 1), images.flip(-1), images)
    background = (0.0 - MEAN) / STD
    padded = F.pad(out, (2, 2, 2, 2), value=background)
    dy = torch.randint(0, 5, (b,), generator=generator)
    dx = torch.randint(0, 5, (b,), generator=generator)
    rows = (dy.view(b, 1) + torch.arange(IMG_SIZE).view(1, -1))           # (B, 28)
    cols = (dx.view(b, 1) + torch.arange(IMG_SIZE).view(1, -1))           # (B, 28)
    batch = torch.arange(b).view(b, 1, 1)
    return padded[batch, 0, rows.unsqueeze(2), cols.unsqueeze(1)].unsqueeze(1)
