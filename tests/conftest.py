"""Shared fixtures: small timm ViTs so the suite stays fast."""

from __future__ import annotations

import os

import pytest
import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def make_vit(seed: int = 0, **overrides):
    """A small timm VisionTransformer with non-trivial (perturbed) weights."""
    from timm.models.vision_transformer import VisionTransformer

    kwargs = dict(img_size=16, patch_size=4, in_chans=3, num_classes=5, embed_dim=48, depth=3,
                  num_heads=4, mlp_ratio=2.0)
    kwargs.update(overrides)
    torch.manual_seed(seed)
    model = VisionTransformer(**kwargs).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


@pytest.fixture
def tiny_vit():
    return make_vit()


BERT_WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "good", "bad", "film", "fun", "dull", "a", "very"]


def make_bert(seed: int = 0):
    """A small Hugging Face BertModel (3 layers, 32 wide, 4 heads, 100 token ids), random weights."""
    import transformers

    torch.manual_seed(seed)
    config = transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                                     intermediate_size=64, max_position_embeddings=40, hidden_dropout_prob=0.0,
                                     attention_probs_dropout_prob=0.0)
    return transformers.BertModel(config, add_pooling_layer=False).eval()


def bert_dir(path, safetensors: bool = True, tokenizer: bool = True):
    """`make_bert()` saved as a local model directory, with a WordPiece vocabulary of its 100 ids."""
    make_bert().save_pretrained(path)
    if not safetensors:   # what an old checkpoint has: only the pickle
        (path / "model.safetensors").unlink()
        (path / "pytorch_model.bin").write_bytes(b"not loaded")
    if tokenizer:
        (path / "vocab.txt").write_text("\n".join(BERT_WORDS + [f"w{i}" for i in range(100 - len(BERT_WORDS))]) + "\n")
    return path


@pytest.fixture
def tiny_config(tiny_vit):
    from shoal.models import config_from_timm

    return config_from_timm(tiny_vit)


def text_task_rows(n: int = 120) -> list[dict[str, str]]:
    """A two-class labelled text task a tiny encoder learns in a few epochs ("good fun" against "bad dull")."""
    rows = [{"text": f"a very good fun film w{i}", "label": "fresh"} for i in range(n // 2)]
    return rows + [{"text": f"a bad dull film w{i}", "label": "rotten"} for i in range(n // 2)]


def make_text_teacher(root, n: int = 120, epochs: int = 4):
    """A tiny fine-tuned text teacher (`make_bert` + a head) on `text_task_rows`: (its JSON, the task's JSONL)."""
    import json

    from shoal.data.text import text_splits
    from shoal.data.train_text_teacher import TextRecipe, save_text_teacher, train
    from shoal.models.text_teacher import load_text_encoder

    data = root / "task.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in text_task_rows(n)))
    task = text_splits(str(data))
    encoder = load_text_encoder(bert_dir(root / "bert"))
    recipe = TextRecipe(epochs=epochs, lr=1e-3, head_lr=1e-2, batch_size=16, max_length=16)
    model = train(encoder, task, recipe, log=lambda _: None)
    return save_text_teacher(model, encoder, task, str(data), recipe, root / "out", "tiny-text", 1.0), data
