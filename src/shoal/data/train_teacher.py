"""Train a built-in teacher: a small timm ViT on digits or Fashion-MNIST.

    python -m shoal.data.train_teacher [--task digits|fashion-mnist] [--epochs N] [--out DIR]

Writes `<task>_vit.safetensors` (float16 weights, no pickle) and
`<task>_vit.json` (timm name and kwargs, preprocessing, recipe, the metrics
measured on the stored weights, and their sha256). Deterministic on CPU for a
given torch version and thread count; the shipped files were made by exactly
this script (`digits`: 150 epochs; `fashion-mnist`: see its JSON's recipe).

Training checkpoints after every epoch (`<out>/<task>_vit.ckpt.{safetensors,json}`:
weights, AdamW moments, the best weights so far, the random generator; no
pickle) and `--resume` continues from there: the result is the same as an
uninterrupted run. Long runs on a slow machine can be stopped and restarted.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from shoal.data.digits import TensorDataset
from shoal.utils.io import (
    atomic_save_safetensors,
    atomic_write_json,
    load_optimizer_tensors,
    optimizer_tensors,
    sha256_file,
)

TIMM_MODEL = "vit_tiny_patch16_224"


@dataclass(frozen=True)
class TeacherRecipe:
    """How one built-in teacher is trained.

    Attributes:
        task: Built-in task name (`shoal.data.datasets.BUILTIN_TASKS`).
        stem: File stem of the shipped weights and description.
        timm_kwargs: timm `create_model` arguments.
        data: Preprocessing description stored in the teacher's JSON.
        epochs, lr, batch_size, warmup_epochs: Optimisation defaults.
        augment_text: What the augmentation does (recorded in the recipe).
    """

    task: str
    stem: str
    timm_kwargs: dict[str, Any]
    data: dict[str, Any]
    epochs: int
    lr: float
    batch_size: int
    warmup_epochs: int
    augment_text: str


def _recipes() -> dict[str, TeacherRecipe]:
    from shoal.data import digits, fashion_mnist

    vit = dict(patch_size=4, in_chans=1, num_classes=10, embed_dim=192, depth=6, num_heads=6, mlp_ratio=4.0,
               global_pool="token")
    return {
        "digits": TeacherRecipe(
            "digits", "digits_vit", dict(img_size=digits.IMG_SIZE, **vit),
            # crop_pct 1 and bilinear: an image folder of full-frame 32x32 digits is read exactly as
            # the built-in split (timm's default 0.875 centre crop would zoom them in)
            {"dataset": "sklearn-digits", "img_size": digits.IMG_SIZE, "mean": [digits.MEAN], "std": [digits.STD],
             "crop_pct": 1.0, "interpolation": "bilinear", "split": "stratified seed 0: 60/20/20"},
            epochs=150, lr=1e-3, batch_size=64, warmup_epochs=5,
            augment_text="affine: rot 12deg, scale 0.9-1.1, shift 2px"),
        "fashion-mnist": TeacherRecipe(
            "fashion-mnist", "fashion_mnist_vit", dict(img_size=fashion_mnist.IMG_SIZE, **vit),
            {"dataset": fashion_mnist.NAME, "img_size": fashion_mnist.IMG_SIZE, "mean": [fashion_mnist.MEAN],
             "std": [fashion_mnist.STD], "crop_pct": 1.0, "interpolation": "bilinear",
             "split": "train 55,000 / val 5,000 (stratified seed 0 of the official train) / test 10,000 (official)"},
            epochs=8, lr=1e-3, batch_size=128, warmup_epochs=1,
            augment_text="horizontal flip, random crop after 2px padding"),
    }


def _task(recipe: TeacherRecipe) -> tuple[Callable[[str], TensorDataset],
                                          Callable[[torch.Tensor, torch.Generator | None], torch.Tensor]]:
    from shoal.data import digits, fashion_mnist

    if recipe.task == "digits":
        return digits.load_digits_split, digits.augment
    return fashion_mnist.load_split, fashion_mnist.augment  # type: ignore[return-value]


def _accuracy_and_loss(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    model.eval()
    with torch.inference_mode():
        logits = torch.cat([model(images[i:i + 256]) for i in range(0, len(images), 256)])
    return (logits.argmax(1) == labels).float().mean().item(), F.cross_entropy(logits, labels).item()


class _Checkpoint:
    """Per-epoch training state as safetensors + JSON (no pickle)."""

    def __init__(self, out: Path, stem: str) -> None:
        self.tensors, self.meta = out / f"{stem}.ckpt.safetensors", out / f"{stem}.ckpt.json"

    def save(self, model: torch.nn.Module, opt: torch.optim.Optimizer, gen: torch.Generator,
             best_state: dict[str, torch.Tensor], info: dict[str, Any]) -> None:
        tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
        tensors.update({f"best.{k}": v for k, v in best_state.items()})
        tensors.update({f"opt.{k}": v for k, v in optimizer_tensors(opt).items()})
        tensors["generator"] = gen.get_state()
        tensors["global_rng"] = torch.get_rng_state()   # drop-path draws from it
        atomic_save_safetensors(self.tensors, tensors)
        atomic_write_json(self.meta, info)

    def load(self, model: torch.nn.Module, opt: torch.optim.Optimizer, gen: torch.Generator
             ) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
        if not (self.tensors.exists() and self.meta.exists()):
            return None
        from safetensors.torch import load_file

        tensors = load_file(str(self.tensors))
        info = json.loads(self.meta.read_text())
        model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
        best = {k[5:]: v for k, v in tensors.items() if k.startswith("best.")}
        load_optimizer_tensors(opt, {k[4:]: v for k, v in tensors.items() if k.startswith("opt.")})
        gen.set_state(tensors["generator"])
        torch.set_rng_state(tensors["global_rng"])
        return best, info


def train(recipe: TeacherRecipe, epochs: int, seed: int, lr: float, batch_size: int,
          checkpoint: _Checkpoint | None = None, resume: bool = False, max_train: int | None = None,
          ) -> tuple[torch.nn.Module, dict[str, Any]]:
    import timm

    load_split, augment = _task(recipe)
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    train_set, val_set = load_split("train").subset(max_train), load_split("val")
    model = timm.create_model(TIMM_MODEL, pretrained=False, drop_path_rate=0.1, **recipe.timm_kwargs)
    decay = [p for n, p in model.named_parameters() if p.ndim > 1 and "pos_embed" not in n]
    no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1 or "pos_embed" in n]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.05}, {"params": no_decay, "weight_decay": 0.0}], lr=lr)
    steps_per_epoch = math.ceil(len(train_set) / batch_size)
    total, warmup = epochs * steps_per_epoch, recipe.warmup_epochs * steps_per_epoch
    def lr_factor(step: int) -> float:
        return min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(step, total) / total))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)
    best: tuple[float, float, dict[str, torch.Tensor]] = (-1.0, 0.0, {})
    first, spent, history = 0, 0.0, []
    run_key = dict(task=recipe.task, epochs=epochs, seed=seed, lr=lr, batch_size=batch_size, max_train=max_train)
    if checkpoint is not None and resume:
        loaded = checkpoint.load(model, opt, gen)
        if loaded is not None and loaded[1].get("run") == run_key:
            state, info = loaded
            first, spent, history = info["epoch"] + 1, info["seconds"], info["history"]
            best = (info["best_val_top1"], info["best_val_loss"], state)
            sched.last_epoch = first * steps_per_epoch   # where the schedule stood
            for group, base in zip(opt.param_groups, sched.base_lrs):
                group["lr"] = base * lr_factor(sched.last_epoch)
            print(f"resuming after epoch {first - 1} ({spent:.0f}s so far)", flush=True)
    started = time.time() - spent
    for epoch in range(first, epochs):
        model.train()
        order = torch.randperm(len(train_set), generator=gen)
        for i in range(0, len(order), batch_size):
            idx = order[i:i + batch_size]
            x = augment(train_set.images[idx], gen)
            loss = F.cross_entropy(model(x), train_set.labels[idx], label_smoothing=0.1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
        val_acc, val_loss = _accuracy_and_loss(model, val_set.images, val_set.labels)
        history.append({"epoch": epoch, "val_top1": round(val_acc, 6), "val_loss": round(val_loss, 6),
                        "seconds": round(time.time() - started, 1)})
        if (val_acc, -val_loss) > (best[0], -best[1]):
            best = (val_acc, val_loss, {k: v.detach().clone() for k, v in model.state_dict().items()})
        if checkpoint is not None:
            checkpoint.save(model, opt, gen, best[2], {
                "run": run_key, "epoch": epoch, "seconds": time.time() - started, "history": history,
                "best_val_top1": best[0], "best_val_loss": best[1]})
        if epochs <= 20 or epoch % 10 == 0 or epoch == epochs - 1:
            print(f"epoch {epoch:4d}  loss {loss.item():.3f}  val acc {val_acc:.4f}  "
                  f"({time.time() - started:.0f}s)", flush=True)
    model.load_state_dict(best[2])
    recipe_out = dict(epochs=epochs, seed=seed, lr=lr, batch_size=batch_size, optimizer="AdamW wd=0.05",
                      schedule=f"{recipe.warmup_epochs}-epoch warmup + cosine", label_smoothing=0.1, drop_path=0.1,
                      augment=recipe.augment_text, selection="best val accuracy",
                      train_images=len(train_set), torch=torch.__version__, threads=torch.get_num_threads(),
                      train_seconds=round(time.time() - started, 1))
    if len(history) > 0 and recipe.task != "digits":
        recipe_out["history"] = history
    return model, recipe_out


def main(argv: list[str] | None = None) -> None:
    recipes = _recipes()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", choices=sorted(recipes), default="digits")
    parser.add_argument("--epochs", type=int, default=None, help="default: the task's recipe")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--max-train", type=int, default=None, help="train on the first N training images only")
    parser.add_argument("--resume", action="store_true", help="continue from the per-epoch checkpoint")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent)
    args = parser.parse_args(argv)
    recipe = recipes[args.task]
    load_split, _ = _task(recipe)

    checkpoint = _Checkpoint(args.out, recipe.stem)
    model, recipe_out = train(recipe, args.epochs or recipe.epochs, args.seed, args.lr or recipe.lr,
                              args.batch_size or recipe.batch_size, checkpoint, args.resume, args.max_train)
    # Store float16 (half the size); the teacher *is* these rounded weights, so
    # metrics are measured after the round trip.
    stored = {k: v.half() for k, v in model.state_dict().items()}
    model.load_state_dict({k: v.float() for k, v in stored.items()})
    metrics = {}
    for split in ("train", "val", "test"):
        data = load_split(split)
        acc, loss = _accuracy_and_loss(model, data.images, data.labels)
        metrics[split] = {"top1": round(acc, 6), "loss": round(loss, 6), "n": len(data)}
        print(f"{split:5s}  top-1 {acc:.4f}  loss {loss:.4f}  (n={len(data)})")
    weights = args.out / f"{recipe.stem}.safetensors"
    atomic_save_safetensors(weights, stored, metadata={"format": "pt"})
    atomic_write_json(args.out / f"{recipe.stem}.json", {
        "name": f"shoal-{recipe.stem.replace('_', '-')}",
        "timm_model": TIMM_MODEL,
        "timm_kwargs": recipe.timm_kwargs,
        "data": recipe.data,
        "metrics": metrics,
        "recipe": recipe_out,
        "weights_dtype": "float16",
        "weights_sha256": sha256_file(weights),
    })
    for path in (checkpoint.tensors, checkpoint.meta):
        path.unlink(missing_ok=True)
    print(f"wrote {weights}")


if __name__ == "__main__":
    main()
