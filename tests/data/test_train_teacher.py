"""The teacher training script: an interrupted run resumes to the same weights as an uninterrupted one."""

from __future__ import annotations

import pytest
import torch

from shoal.data import train_teacher as tt


def _run(tmp_path, resume=False):
    recipe = tt._recipes()["digits"]
    return tt.train(recipe, epochs=2, seed=0, lr=1e-3, batch_size=32, checkpoint=tt._Checkpoint(tmp_path, "t"),
                    resume=resume, max_train=96)


@pytest.mark.slow
def test_resume_after_an_interrupted_epoch_gives_the_same_teacher(tmp_path, monkeypatch):
    straight, _ = _run(tmp_path / "a")

    original = tt._Checkpoint.save
    calls = {"n": 0}

    def save_then_die(self, *args, **kwargs):
        original(self, *args, **kwargs)
        calls["n"] += 1
        raise KeyboardInterrupt

    monkeypatch.setattr(tt._Checkpoint, "save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path / "b")
    monkeypatch.setattr(tt._Checkpoint, "save", original)
    resumed, recipe = _run(tmp_path / "b", resume=True)
    assert calls["n"] == 1
    for key, value in straight.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key
