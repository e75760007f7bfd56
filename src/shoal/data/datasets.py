"""Task data for planning and calibration: a built-in task, or an ImageFolder tree.

Built-in tasks (`BUILTIN_TASKS`): "digits" (scikit-learn's, the instant
default) and "fashion-mnist" (Debian's `dataset-fashion-mnist`, `$SHOAL_DATA`,
or a folder holding its four IDX files; see `shoal.data.fashion_mnist`).
Each has a shipped teacher, used when no model is named.

An ImageFolder tree has one folder per split, each with one folder per class:

    DATA/train/<class>/*.png   DATA/val/<class>/*.png   [DATA/test/<class>/*.png]

Images are preprocessed once with the teacher's own eval transform (timm
`resolve_data_config` of the teacher) and held in memory as tensors;
`max_per_split` bounds that memory. Without a test split, the validation
split is halved into val and test (fixed seed).

A built-in task given to a teacher of another input size (a DeiT at 224² with
random weights, timed on digits) is resized to it: bilinear, its grey channel
repeated, its own normalisation kept (`fit_input`). Only the class count must match.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from shoal.data import digits, fashion_mnist
from shoal.data.digits import TensorDataset, augment, load_digits_split
from shoal.data.text import ROTTEN_CLASSES, ROTTEN_TOMATOES, TEXT_SUFFIXES, read_labelled_text, text_splits, tokenize
from shoal.errors import DataError
from shoal.models.teacher import DEFAULT_TEACHER, FASHION_TEACHER, Teacher
from shoal.models.text_teacher import TEXT_TEACHER
from shoal.utils.fields import FlatRecord

# built-in task -> the shipped teacher trained on it
BUILTIN_TASKS = {"digits": DEFAULT_TEACHER, fashion_mnist.NAME: FASHION_TEACHER}


def default_teacher_for(data: str | Path | None) -> str:
    """The shipped teacher to use when the user names data but no model."""
    if data is None:
        return DEFAULT_TEACHER
    if str(data) in BUILTIN_TASKS:
        return BUILTIN_TASKS[str(data)]
    if str(data) == ROTTEN_TOMATOES:
        return TEXT_TEACHER
    if Path(data).suffix in TEXT_SUFFIXES:
        raise DataError(f"{data} is a text task: name its teacher with --model (a fine-tuned text teacher's "
                        "JSON from `python -m shoal.data.train_text_teacher --data FILE`, or an encoder directory)")
    if Path(data).is_dir() and fashion_mnist.available(data) and not (Path(data) / "train").is_dir():
        return FASHION_TEACHER
    return DEFAULT_TEACHER

Augment = Callable[[torch.Tensor, torch.Generator | None], torch.Tensor]

BUILTIN_CLASSES = 10   # both built-in tasks


def task_classes(data: str | Path | None) -> int | None:
    """How many classes the task `data` has, without reading its images (None: cannot tell).

    A teacher with random weights gets a head of this many classes.
    """
    if data is None or str(data) in BUILTIN_TASKS:
        return BUILTIN_CLASSES
    if str(data) == ROTTEN_TOMATOES:
        return len(ROTTEN_CLASSES)
    if Path(data).suffix in TEXT_SUFFIXES:
        return len(read_labelled_text(data).classes) if Path(data).is_file() else None
    root = Path(data)
    if root.is_dir() and not (root / "train").is_dir() and fashion_mnist.available(root):
        return len(fashion_mnist.CLASSES)
    train = root / "train"
    if train.is_dir():
        return sum(1 for p in train.iterdir() if p.is_dir()) or None
    return None


def fit_input(dataset: TensorDataset, input_shape: tuple[int, int, int]) -> TensorDataset:
    """A built-in task's images at another teacher input shape: bilinear resize, channels repeated.

    Shapes: (N, 1, h, w) -> (N, C, H, W); the normalisation of the task is kept.
    """
    c, h, w = input_shape
    if tuple(dataset.images.shape[1:]) == (c, h, w):
        return dataset
    if dataset.images.shape[1] not in (1, c):
        raise DataError(f"cannot fit {dataset.images.shape[1]}-channel images to a {c}-channel teacher")
    chunks = [F.interpolate(dataset.images[i:i + 256], size=(h, w), mode="bilinear", align_corners=False)
              for i in range(0, len(dataset), 256)]
    images = torch.cat(chunks).expand(-1, c, -1, -1).contiguous()
    return TensorDataset(images, dataset.labels, dataset.classes)


@dataclass(frozen=True)
class DataSummary(FlatRecord):
    """The task data the plan was made with: its name and split sizes."""

    name: str
    train: int
    val: int
    test: int
    classes: int


@dataclass(frozen=True)
class TaskData:
    """Train / validation / test splits of one classification task.

    Attributes:
        name: "sklearn-digits" or the folder path.
        train: Calibration data (distillation, importance, probes).
        val: Validation data (the search's accuracy proxy, checkpoint selection).
        test: Held-out data (reported accuracy only).
        augment: Train-time augmentation of a (B, C, H, W) batch, or None.
        mean, std: The normalisation the images were given (per channel, or one for all):
            pixels x in [0, 1] became (x - mean) / std. Devices given compact inputs apply it.
    """

    name: str
    train: TensorDataset
    val: TensorDataset
    test: TensorDataset
    augment: Augment | None = None
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)

    def summary(self) -> DataSummary:
        return DataSummary(self.name, len(self.train), len(self.val), len(self.test), len(self.train.classes))


def load_task_data(teacher: Teacher, data: str | Path | None = None, *, max_per_split: int | None = None,
                   ) -> TaskData:
    """The data a plan is made with.

    Args:
        teacher: The teacher (its class count and preprocessing must match the data).
        data: None or "digits" for the built-in digits, "fashion-mnist" (found as
            `shoal.data.fashion_mnist.find_dir` says), a folder holding the Fashion-MNIST IDX
            files, or an ImageFolder tree.
        max_per_split: Keep at most this many images per split (a fixed random subset).

    Raises:
        DataError: missing/empty/corrupt folder, or classes that do not match the teacher's head.
    """
    if teacher.is_text:
        return _text_task(teacher, data, max_per_split)
    vit = teacher.vit("image data")
    if str(data) == ROTTEN_TOMATOES or Path(str(data)).suffix in TEXT_SUFFIXES:
        raise DataError(f"{data} is a text task but teacher {teacher.source} is a vision model; leave out --model "
                        "(rotten-tomatoes brings its text teacher) or name a text teacher")
    shape = vit.input_shape
    if data is None or str(data) == "digits":
        _check_classes("the built-in digits data", teacher, "pass --data DIR")
        train, val, test = (fit_input(load_digits_split(s).subset(max_per_split), shape)
                            for s in ("train", "val", "test"))
        return TaskData("sklearn-digits", train, val, test, augment=augment, mean=(digits.MEAN,), std=(digits.STD,))
    idx_folder = Path(data).is_dir() and not (Path(data) / "train").is_dir() and fashion_mnist.available(data)
    if str(data) == fashion_mnist.NAME or idx_folder:
        path = None if str(data) == fashion_mnist.NAME else data
        _check_classes("Fashion-MNIST", teacher, f"leave out --model to use its shipped teacher {FASHION_TEACHER}")
        train, val, test = (fit_input(fashion_mnist.load_split(s, path).subset(max_per_split), shape)
                            for s in ("train", "val", "test"))
        native = shape == (1, fashion_mnist.IMG_SIZE, fashion_mnist.IMG_SIZE)
        chosen = fashion_mnist.augment if native else _flip_augment   # its crop is 28x28-specific
        return TaskData(fashion_mnist.NAME, train, val, test, augment=chosen, mean=(fashion_mnist.MEAN,),
                        std=(fashion_mnist.STD,))
    return _image_folder(teacher, Path(data), max_per_split)


def _text_task(teacher: Teacher, data: str | Path | None, max_per_split: int | None) -> TaskData:
    """A text task tokenised once by the teacher's tokenizer: (N, 2, seq_len) ids and mask per split,
    each split in the order of its texts' sha256 (a fixed, content-blind order: `max_per_split` keeps a
    fair sample, not the alphabetically first texts)."""
    source = ROTTEN_TOMATOES if data is None else data
    if str(source) != ROTTEN_TOMATOES and Path(source).suffix not in TEXT_SUFFIXES:
        raise DataError(f"{source} is not a text task, and teacher {teacher.source} is a text teacher: give it "
                        f"--data {ROTTEN_TOMATOES} or a labelled .csv/.jsonl file")
    splits = text_splits(source)
    names = splits["train"].classes
    if len(names) != teacher.config.num_classes:
        raise DataError(f"{source} has {len(names)} classes but teacher {teacher.source} has a head of "
                        f"{teacher.config.num_classes}; use its own task, or fine-tune a teacher on this one")
    out = []
    for split in ("train", "val", "test"):
        part = splits[split]
        order = sorted(range(len(part)), key=lambda i: hashlib.sha256(part.texts[i].encode("utf-8")).digest())
        order = order[:max_per_split] if max_per_split is not None else order
        texts = [part.texts[i] for i in order]
        tokens = tokenize(teacher.tokenizer, texts, teacher.config.seq_len, pad_to_max=True)   # (N, 2, L)
        out.append(TensorDataset(tokens, part.labels[order], names))
    name = ROTTEN_TOMATOES if str(source) == ROTTEN_TOMATOES else str(source)
    return TaskData(name, out[0], out[1], out[2])


def _check_classes(what: str, teacher: Teacher, hint: str) -> None:
    if teacher.config.num_classes != BUILTIN_CLASSES:
        raise DataError(f"{what} has {BUILTIN_CLASSES} classes but teacher {teacher.source} has a head of "
                        f"{teacher.config.num_classes}; {hint} (a teacher with random weights gets a head "
                        "of the task's classes)")


def _image_folder(teacher: Teacher, root: Path, max_per_split: int | None) -> TaskData:
    if not root.is_dir():
        raise DataError(f"data folder {root} does not exist")
    found = {name: root / name for name in ("train", "val", "validation", "test") if (root / name).is_dir()}
    if "validation" in found and "val" not in found:
        found["val"] = found.pop("validation")
    if "train" not in found or "val" not in found:
        raise DataError(f"{root} needs train/ and val/ folders (one sub-folder per class), found {sorted(found)}")
    train = _read_split(teacher, found["train"], max_per_split)
    val = _read_split(teacher, found["val"], max_per_split, classes=train.classes)
    if "test" in found:
        test = _read_split(teacher, found["test"], max_per_split, classes=train.classes)
    else:
        order = torch.randperm(len(val), generator=torch.Generator().manual_seed(0))
        half = len(val) // 2
        if half == 0:
            raise DataError(f"{found['val']} has too few images to also serve as a test split; add {root}/test")
        val, test = (TensorDataset(val.images[idx], val.labels[idx], val.classes)
                     for idx in (order[:half], order[half:]))
    c = teacher.vit("an ImageFolder tree").in_chans
    mean = tuple(float(v) for v in teacher.data_config.get("mean", (0.0,) * c))[:c]
    std = tuple(float(v) for v in teacher.data_config.get("std", (1.0,) * c))[:c]
    return TaskData(str(root), train, val, test, augment=_flip_augment, mean=mean, std=std)


def _read_split(teacher: Teacher, folder: Path, limit: int | None,
                classes: tuple[str, ...] | None = None) -> TensorDataset:
    from timm.data import create_transform
    from torchvision.datasets import ImageFolder

    config = dict(teacher.data_config)
    vit = teacher.vit("an ImageFolder tree")
    config["input_size"] = tuple(vit.input_shape)
    keys = ("input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode")
    transform = create_transform(**{k: config[k] for k in keys if k in config}, is_training=False)
    if vit.in_chans == 1:
        import torchvision.transforms as T

        transform = T.Compose([T.Grayscale(1), transform])
    try:
        dataset = ImageFolder(str(folder), transform=transform)
    except (FileNotFoundError, RuntimeError) as exc:
        raise DataError(f"{folder}: {str(exc).splitlines()[0]}") from None
    if len(dataset) == 0:
        raise DataError(f"{folder} holds no images")
    names = tuple(dataset.classes)
    if classes is not None and names != classes:
        raise DataError(f"{folder} has classes {list(names)[:6]}... but train/ has {list(classes)[:6]}...")
    if len(names) != teacher.config.num_classes:
        raise DataError(f"{folder} has {len(names)} classes but the teacher's head has "
                        f"{teacher.config.num_classes}; use a matching dataset or teacher")
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(0)).tolist()
    if limit is not None:
        order = order[:limit]
    images, labels = [], []
    for i in sorted(order):
        try:
            image, label = dataset[i]
        except Exception as exc:  # PIL.UnidentifiedImageError, truncated files
            raise DataError(f"cannot read {dataset.samples[i][0]}: {type(exc).__name__}") from None
        images.append(image)
        labels.append(label)
    return TensorDataset(torch.stack(images), torch.tensor(labels), names)


def _flip_augment(images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Random horizontal flips: the one augmentation safe for any natural-image task."""
    flip = torch.rand(images.shape[0], generator=generator) < 0.5
    out = images.clone()
    out[flip] = out[flip].flip(-1)
    return out
