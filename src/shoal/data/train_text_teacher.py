"""Fine-tune a BERT-family teacher on a text task: all-MiniLM-L6-v2 on rotten-tomatoes by default.

    python -m shoal.data.train_text_teacher [--model DIR] [--data rotten-tomatoes|FILE.csv|FILE.jsonl]
                                            [--epochs 1] [--layers N] [--out .shoal/teachers]

The encoder (a local directory, `shoal.models.text_teacher.load_text_encoder`; default the MiniLM
extracted from its wheel) gets a linear head on its pooled features (the mean over real tokens),
and both are trained with AdamW (linear warm-up over the first 10% of steps, then linear decay),
texts cut to `--max-length` tokens. `--layers N` keeps only the encoder's first N layers before
fine-tuning (the truncated model a user would deploy alone: the baseline of `benchmarks/text.py`).
Writes `<name>.safetensors` (the encoder's and the head's
weights, float32, no pickle) and `<name>.json` (the encoder directory, the classes, the
tokenisation, the recipe, the metrics measured on the stored weights with n and 95% Wilson
intervals, the sha256 of the weights); `load_text_teacher` reads them back. A user file is split
80/10/10 by the sha256 of each text, as the built-in task is.
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from shoal.data.text import ROTTEN_TOMATOES, TextDataset, text_splits, tokenize
from shoal.models.bert import TextClassifier
from shoal.models.text_teacher import TextEncoder, load_text_encoder, minilm_dir
from shoal.utils.io import atomic_save_safetensors, atomic_write_json, sha256_file
from shoal.utils.stats import wilson_interval


@dataclass(frozen=True)
class TextRecipe:
    """How a text teacher is fine-tuned."""

    epochs: int = 1
    lr: float = 5e-5
    head_lr: float = 1e-3
    batch_size: int = 32
    max_length: int = 64
    warmup: float = 0.1
    weight_decay: float = 0.01
    seed: int = 0


def truncate(encoder: TextEncoder, layers: int) -> TextEncoder:
    """The encoder with its first `layers` layers only, saved as its own directory beside the original
    (a text teacher's JSON names its encoder directory, which must match its weights)."""
    from shoal.errors import ConfigError

    model: Any = encoder.model
    depth = len(model.encoder.layer)
    if not 1 <= layers <= depth:
        raise ConfigError(f"--layers must be 1..{depth}, got {layers}")
    model.encoder.layer = model.encoder.layer[:layers]
    model.config.num_hidden_layers = layers
    target = Path(encoder.source).parent / f"{Path(encoder.source).name}-{layers}l"
    if not (target / "model.safetensors").is_file():
        model.save_pretrained(str(target))
        encoder.tokenizer.save_pretrained(str(target))
    return load_text_encoder(target)


def evaluate(model: TextClassifier, encoder: TextEncoder, data: TextDataset, max_length: int,
             batch_size: int = 128) -> dict[str, Any]:
    """top-1 and mean loss with n and the 95% Wilson interval."""
    model.eval()
    correct, loss = 0, 0.0
    with torch.inference_mode():
        for i in range(0, len(data), batch_size):
            logits = model(tokenize(encoder.tokenizer, data.texts[i:i + batch_size], max_length))
            labels = data.labels[i:i + batch_size]
            correct += int((logits.argmax(1) == labels).sum())
            loss += float(F.cross_entropy(logits, labels, reduction="sum"))
    n = len(data)
    low, high = wilson_interval(correct, n)
    return {"top1": correct / n, "loss": loss / n, "n": n, "correct": correct, "ci95": [low, high]}


def train(encoder: TextEncoder, task: dict[str, TextDataset], recipe: TextRecipe,
          log: Any = print) -> TextClassifier:
    """Fine-tune `encoder` with a new head on `task["train"]` (see the module docstring)."""
    torch.manual_seed(recipe.seed)
    train_set = task["train"]
    model = TextClassifier(encoder.model, len(train_set.classes))
    head = list(model.head.parameters())
    body = list(model.encoder.parameters())
    opt = torch.optim.AdamW([{"params": body, "lr": recipe.lr}, {"params": head, "lr": recipe.head_lr}],
                            weight_decay=recipe.weight_decay)
    steps = recipe.epochs * math.ceil(len(train_set) / recipe.batch_size)
    warm = max(1, int(recipe.warmup * steps))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warm if s < warm else max(0.0, (steps - s) / max(1, steps - warm)))
    gen = torch.Generator().manual_seed(recipe.seed)
    step, t0 = 0, time.perf_counter()
    for epoch in range(recipe.epochs):
        model.train()
        order = torch.randperm(len(train_set), generator=gen).tolist()
        for i in range(0, len(order), recipe.batch_size):
            index = order[i:i + recipe.batch_size]
            x = tokenize(encoder.tokenizer, [train_set.texts[k] for k in index], recipe.max_length)
            loss = F.cross_entropy(model(x), train_set.labels[index])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            if step % 50 == 0 or step == steps:
                log(f"epoch {epoch + 1} step {step}/{steps} loss {loss.item():.4f} "
                    f"({time.perf_counter() - t0:.0f} s)")
    model.eval()
    return model


def save_text_teacher(model: TextClassifier, encoder: TextEncoder, task: dict[str, TextDataset], data: str,
                      recipe: TextRecipe, out: Path, name: str, seconds: float) -> Path:
    """Write `<name>.safetensors` and `<name>.json` (weights first; the JSON names their sha256)."""
    out.mkdir(parents=True, exist_ok=True)
    weights = out / f"{name}.safetensors"
    atomic_save_safetensors(weights, {k: v.detach().float() for k, v in model.state_dict().items()})
    metrics = {split: evaluate(model, encoder, task[split], recipe.max_length) for split in ("val", "test")}
    description = {
        "name": name, "family": "bert", "encoder": encoder.source, "classes": list(task["train"].classes),
        "max_length": recipe.max_length, "pooling": "mean over non-padding tokens",
        "data": {"task": data, "split": "80/10/10 by the sha256 of each text",
                 "sizes": {s: len(d) for s, d in task.items()}},
        "recipe": {**vars(recipe), "optimizer": "AdamW", "schedule": "linear warm-up, linear decay",
                   "seconds": round(seconds, 1), "threads": torch.get_num_threads()},
        "metrics": metrics, "sha256": sha256_file(weights)}
    atomic_write_json(out / f"{name}.json", description)
    return out / f"{name}.json"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="a local BERT encoder directory (default: all-MiniLM-L6-v2)")
    parser.add_argument("--data", default=ROTTEN_TOMATOES)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--out", type=Path, default=Path(".shoal") / "teachers")
    parser.add_argument("--name", default=None)
    parser.add_argument("--layers", type=int, default=None, help="keep the encoder's first N layers only")
    args = parser.parse_args(argv)
    encoder = load_text_encoder(args.model or minilm_dir())
    if args.layers is not None:
        encoder = truncate(encoder, args.layers)
    task = text_splits(args.data)
    recipe = TextRecipe(epochs=args.epochs, max_length=args.max_length)
    name = args.name or f"{Path(args.data).stem}-{Path(encoder.source).name}".lower()   # a truncated one: -<N>l
    t0 = time.perf_counter()
    model = train(encoder, task, recipe)
    path = save_text_teacher(model, encoder, task, args.data, recipe, args.out, name, time.perf_counter() - t0)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
