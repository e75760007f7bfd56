"""Fine-tuning a text teacher: a tiny encoder learns a trivially separable task and reloads as it was saved."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("transformers")

from shoal.data.text import text_splits  # noqa: E402
from shoal.data.train_text_teacher import TextRecipe, evaluate, save_text_teacher, train  # noqa: E402
from shoal.errors import ModelError  # noqa: E402
from shoal.models.text_teacher import load_text_encoder, load_text_teacher  # noqa: E402
from tests.conftest import bert_dir  # noqa: E402


def test_a_text_teacher_trains_saves_and_reloads(tmp_path):
    rows = [{"text": f"a very good fun film w{i}", "label": "fresh"} for i in range(60)]
    rows += [{"text": f"a bad dull film w{i}", "label": "rotten"} for i in range(60)]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    task = text_splits(str(tmp_path / "d.jsonl"))
    assert sum(len(d) for d in task.values()) == 120 and task["train"].classes == ("fresh", "rotten")
    encoder = load_text_encoder(bert_dir(tmp_path / "bert"))
    recipe = TextRecipe(epochs=4, lr=1e-3, head_lr=1e-2, batch_size=16, max_length=16)
    model = train(encoder, task, recipe, log=lambda _: None)
    assert evaluate(model, encoder, task["train"], 16)["top1"] >= 0.95   # "good fun" against "bad dull"
    path = save_text_teacher(model, encoder, task, "d.jsonl", recipe, tmp_path / "out", "tiny", 1.0)
    teacher = load_text_teacher(path)
    assert teacher.classes == ("fresh", "rotten") and teacher.max_length == 16
    assert teacher.metrics["test"]["n"] == len(task["test"])
    ids = torch.randint(5, 100, (2, 8))
    x = torch.stack([ids, torch.ones_like(ids)], 1)
    with torch.no_grad():
        assert torch.allclose(teacher.model(x), model(x), atol=1e-5)
    (tmp_path / "out" / "tiny.safetensors").write_bytes(b"changed")
    with pytest.raises(ModelError, match="sha256 differs"):
        load_text_teacher(path)
