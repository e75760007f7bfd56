"""Train the default teacher: a small timm ViT on scikit-learn's digits.

    python -m shoal.data.train_teacher [--epochs 150] [--out src/shoal/data]

Writes `digits_vit.safetensors` (float16 weights, no pickle) and
`digits_vit.json` (timm name and kwargs, preprocessing, recipe, the metrics
measured on the stored weights, and their sha256). Deterministic on CPU for a
given torch version and thread count; the shipped file was made by exactly
this script.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from shoal.data.digits import IMG_SIZE, MEAN, STD, augment, load_digits_split
from shoal.utils.io import atomic_save_safetensors, atomic_write_json, sha256_file

TIMM_MODEL = "vit_tiny_patch16_224"
TIMM_KWARGS: dict[str, Any] = dict(
    img_size=IMG_SIZE, patch_size=4, in_chans=1, num_classes=10,
    embed_dim=192, depth=6, num_heads=6, mlp_ratio=4.0, global_pool="token",
)


def _accuracy_and_loss(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    model.eval()
    with torch.inference_mode():
        logits = torch.cat([model(images[i:i + 256]) for i in range(0, len(images), 256)])
    return (logits.argmax(1) == labels).float().mean().item(), F.cross_entropy(logits, labels).item()


def train(epochs: int, seed: int, lr: float, batch_size: int) -> tuple[torch.nn.Module, dict[str, Any]]:
    import timm

    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    train_set, val_set = load_digits_split("train"), load_digits_split("val")
    model = timm.create_model(TIMM_MODEL, pretrained=False, drop_path_rate=0.1, **TIMM_KWARGS)
    decay = [p for n, p in model.named_parameters() if p.ndim > 1 and "pos_embed" not in n]
    no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1 or "pos_embed" in n]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.05}, {"params": no_decay, "weight_decay": 0.0}], lr=lr)
    steps_per_epoch = math.ceil(len(train_set) / batch_size)
    total, warmup = epochs * steps_per_epoch, 5 * steps_per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
    best: tuple[float, float, dict[str, torch.Tensor]] = (-1.0, 0.0, {})
    started = time.time()
    for epoch in range(epochs):
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
        if (val_acc, -val_loss) > (best[0], -best[1]):
            best = (val_acc, val_loss, {k: v.detach().clone() for k, v in model.state_dict().items()})
        if epoch % 10 == 0 or epoch == epochs - 1:
            print(f"epoch {epoch:4d}  loss {loss.item():.3f}  val acc {val_acc:.4f}  "
                  f"({time.time() - started:.0f}s)", flush=True)
    model.load_state_dict(best[2])
    recipe = dict(epochs=epochs, seed=seed, lr=lr, batch_size=batch_size, optimizer="AdamW wd=0.05",
                  schedule="5-epoch warmup + cosine", label_smoothing=0.1, drop_path=0.1,
                  augment="affine: rot 12deg, scale 0.9-1.1, shift 2px", selection="best val accuracy",
                  torch=torch.__version__, threads=torch.get_num_threads(),
                  train_seconds=round(time.time() - started, 1))
    return model, recipe


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=150)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent)
    args = parser.parse_args(argv)

    model, recipe = train(args.epochs, args.seed, args.lr, args.batch_size)
    # Store float16 (half the size); the teacher *is* these rounded weights, so
    # metrics are measured after the round trip.
    stored = {k: v.half() for k, v in model.state_dict().items()}
    model.load_state_dict({k: v.float() for k, v in stored.items()})
    metrics = {}
    for split in ("train", "val", "test"):
        data = load_digits_split(split)
        acc, loss = _accuracy_and_loss(model, data.images, data.labels)
        metrics[split] = {"top1": round(acc, 6), "loss": round(loss, 6), "n": len(data)}
        print(f"{split:5s}  top-1 {acc:.4f}  loss {loss:.4f}  (n={len(data)})")
    weights = args.out / "digits_vit.safetensors"
    atomic_save_safetensors(weights, stored, metadata={"format": "pt"})
    atomic_write_json(args.out / "digits_vit.json", {
        "name": "shoal-digits-vit",
        "timm_model": TIMM_MODEL,
        "timm_kwargs": TIMM_KWARGS,
        # crop_pct 1 and bilinear: an image folder of full-frame 32x32 digits is read exactly as
        # the built-in split (timm's default 0.875 centre crop would zoom them in)
        "data": {"dataset": "sklearn-digits", "img_size": IMG_SIZE, "mean": [MEAN], "std": [STD],
                 "crop_pct": 1.0, "interpolation": "bilinear", "split": "stratified seed 0: 60/20/20"},
        "metrics": metrics,
        "recipe": recipe,
        "weights_dtype": "float16",
        "weights_sha256": sha256_file(weights),
    })
    print(f"wrote {weights}")


if __name__ == "__main__":
    main()
