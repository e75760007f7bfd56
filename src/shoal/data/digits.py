"""scikit-learn's bundled handwritten digits as a small image-classification task.

1,797 grey 8x8 images of the digits 0-9, shipped inside scikit-learn (no
download). Upsampled to 32x32 so a patch-4 ViT sees 64 tokens. The split is
fixed (stratified, seed 0): 60% train, 20% validation, 20% test.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

import torch
import torch.nn.functional as F

from shoal.errors import ConfigError

Split = Literal["train", "val", "test"]

IMG_SIZE = 32
MEAN, STD = 0.5, 0.5
SPLIT_SEED = 0


@dataclass(frozen=True)
class TensorDataset:
    """Images and labels held in memory.

    Attributes:
        images: (N, C, H, W) float32, normalised.
        labels: (N,) int64.
        classes: Class names, index = label.
    """

    images: torch.Tensor
    labels: torch.Tensor
    classes: tuple[str, ...]

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, n: int | None) -> TensorDataset:
        """The first `n` samples (all when n is None)."""
        if n is None or n >= len(self):
            return self
        return TensorDataset(self.images[:n], self.labels[:n], self.classes)


def preprocess(raw: torch.Tensor) -> torch.Tensor:
    """(N, 8, 8) pixel values 0..16 -> (N, 1, 32, 32) normalised float32."""
    x = raw.float().div(16.0).unsqueeze(1)
    x = F.interpolate(x, size=(IMG_SIZE, IMG_SIZE), mode="bilinear", align_corners=False)
    return (x - MEAN) / STD


@lru_cache(maxsize=1)
def _split_indices() -> dict[str, torch.Tensor]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    labels = load_digits().target
    idx = list(range(len(labels)))
    rest, test = train_test_split(idx, test_size=0.2, stratify=labels, random_state=SPLIT_SEED)
    train, val = train_test_split(
        rest, test_size=0.25, stratify=[labels[i] for i in rest], random_state=SPLIT_SEED)
    return {name: torch.tensor(sorted(ix)) for name, ix in (("train", train), ("val", val), ("test", test))}


@lru_cache(maxsize=3)
def load_digits_split(split: Split) -> TensorDataset:
    """One split of the digits task (train 1,077 / val 360 / test 360 images)."""
    from sklearn.datasets import load_digits

    if split not in ("train", "val", "test"):
        raise ConfigError(f"split must be 'train', 'val' or 'test', got {split!r}")
    bunch = load_digits()
    index = _split_indices()[split]
    raw = torch.from_numpy(bunch.images).index_select(0, index)
    labels = torch.from_numpy(bunch.target).long().index_select(0, index)
    return TensorDataset(preprocess(raw), labels, tuple(str(i) for i in range(10)))


def augment(images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Random affine jitter (rotation ±12°, scale 0.9-1.1, shift ±2 px) of normalised digits.

    Args:
        images: (B, 1, H, W) normalised images.
        generator: Source of randomness (for reproducible training).

    Returns:
        (B, 1, H, W) jittered images; the background value is preserved.
    """
    b = images.shape[0]
    angle = (torch.rand(b, generator=generator) * 2 - 1) * (12 * torch.pi / 180)
    scale = 0.9 + torch.rand(b, generator=generator) * 0.2
    shift = (torch.rand(b, 2, generator=generator) * 2 - 1) * (2 * 2 / images.shape[-1])
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    background = (0.0 - MEAN) / STD
    shifted = F.grid_sample(images - background, grid, align_corners=False, padding_mode="zeros")
    return shifted + background
