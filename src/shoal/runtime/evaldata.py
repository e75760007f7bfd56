"""Which test images `shoal bench` scores a plan on, and top-1 accuracy over them.

The hook for other tasks is `data`: None (or "digits") means the built-in
digits test split when the teacher family fits it (1x32x32, 10 classes);
a folder is read by `shoal.data.datasets.load_task_data` with the teacher's
own preprocessing.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from shoal.data.digits import TensorDataset, load_digits_split
from shoal.models.config import TeacherConfig, TextConfig

DIGITS_SHAPE = (1, 32, 32)


def resolve_test_data(config: TeacherConfig, teacher_source: str, data: str | None = None, *,
                      random_weights: bool = False) -> tuple[TensorDataset | None, str]:
    """The test split for a plan of family `config`, or None and why not.

    Args:
        config: The plan's teacher family.
        teacher_source: How to load the teacher (needed to preprocess a folder).
        data: None / "digits", or an ImageFolder tree (DATA/test/<class>/*.png).
        random_weights: The teacher was created with random weights (re-created so, to read a folder).

    Returns:
        (dataset or None, a short description or the reason accuracy is skipped).
    """
    from shoal.models.teacher import FASHION_TEACHER

    if data is None and teacher_source == FASHION_TEACHER:
        data = "fashion-mnist"
    if isinstance(config, TextConfig):   # a text plan: its task's test split, tokenised by its teacher
        from shoal.data.datasets import load_task_data
        from shoal.data.text import ROTTEN_TOMATOES
        from shoal.models import load_teacher

        source = data or ROTTEN_TOMATOES
        return load_task_data(load_teacher(teacher_source), source).test, f"{source}, test split"
    if data is None or data == "digits":
        if config.num_classes == 10 and config.in_chans in (1, 3):
            from shoal.data.datasets import fit_input

            resized = "" if config.input_shape == DIGITS_SHAPE else f" resized to {config.img_size}²"
            return fit_input(load_digits_split("test"), config.input_shape), f"sklearn digits, test split{resized}"
        return None, (f"no test data for input {config.input_shape} with {config.num_classes} classes; "
                      "pass --data DIR (an ImageFolder tree with a test/ split)")
    from shoal.data.datasets import load_task_data
    from shoal.models import load_teacher

    if random_weights:   # only its preprocessing is needed, and that does not depend on the weights
        teacher = load_teacher(teacher_source, pretrained=False, model_kwargs={"num_classes": config.num_classes})
    else:
        teacher = load_teacher(teacher_source)
    return load_task_data(teacher, data).test, f"{data}, test split"


def accuracy(predict: Callable[[torch.Tensor], torch.Tensor], dataset: TensorDataset, batch: int = 32) -> float:
    """Top-1 accuracy of `predict` ((B, C, H, W) -> (B, classes) logits or (B,) labels) on `dataset`."""
    correct = 0
    for start in range(0, len(dataset), batch):
        out = predict(dataset.images[start:start + batch])
        labels = out.argmax(-1) if out.dim() == 2 else out
        correct += int((labels == dataset.labels[start:start + batch]).sum())
    return correct / max(1, len(dataset))


def shuffled(dataset: TensorDataset, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(images, labels) in one seeded random order: the scenario benchmarks send every mode the same
    images in the same order, and a phase that starts at image k sees a mix of classes."""
    order = torch.randperm(len(dataset.labels), generator=torch.Generator().manual_seed(seed))
    return dataset.images[order], dataset.labels[order]
