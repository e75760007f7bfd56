from __future__ import annotations

import pytest
import torch

from shoal.data.datasets import load_task_data
from shoal.models import build_submodel, load_teacher
from shoal.planner.calibration import Booster, distillation_losses, update_weights
from shoal.planner.settings import CalibrationSettings


def test_boosting_raises_the_weight_of_hard_samples():
    w = torch.ones(4)
    losses = torch.tensor([0.01, 0.02, 2.0, 0.05])
    boosted = update_weights(w, losses, "boost")
    printed = update_weights(w, losses, "printed")
    assert boosted.argmax() == 2 and printed.argmin() == 2
    assert boosted.mean() == pytest.approx(1.0) and printed.mean() == pytest.approx(1.0)
    assert torch.equal(update_weights(w, losses, "uniform"), w)
    assert torch.isfinite(update_weights(w, torch.tensor([0.0, 1e4, 0.0, 0.0]), "boost")).all()
    assert update_weights(w, torch.tensor([0.0, 1e4, 0.0, 0.0]), "boost").max() / update_weights(
        w, torch.tensor([0.0, 1e4, 0.0, 0.0]), "boost").min() <= 20 * 20 + 1e-3


def test_distillation_loss_is_the_mean_of_both_cross_entropies():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    y, yt = torch.tensor([0, 0]), torch.tensor([0, 1])
    ce = torch.nn.functional.cross_entropy
    expected = 0.5 * (ce(logits, y, reduction="none") + ce(logits, yt, reduction="none"))
    assert torch.allclose(distillation_losses(logits, y, yt), expected)


def test_settings_validation():
    with pytest.raises(Exception, match="weighting"):
        CalibrationSettings(weighting="adaboost")  # type: ignore[arg-type]
    with pytest.raises(Exception, match="device_dropout"):
        CalibrationSettings(device_dropout=1.0)


def test_booster_checkpoints_and_resumes(tiny_digits_teacher, tmp_path):
    teacher = load_teacher(tiny_digits_teacher)
    data = load_task_data(teacher, None, max_per_split=96)
    from shoal.models import SubModelSpec

    full = SubModelSpec.full(teacher.config)
    specs = [SubModelSpec(full.layers, tuple(range(0, 48, 2)), full.heads, full.neurons),
             SubModelSpec(full.layers, tuple(range(1, 48, 2)), full.heads, full.neurons)]
    settings = CalibrationSettings(epochs=2, batch_size=32)

    def models():
        return [build_submodel(teacher.config, s, teacher.model) for s in specs]

    reference = models()
    Booster(teacher.model, reference, ["a", "b"], data, settings, tmp_path / "ref").run(resume=False)

    # the same run, interrupted after the first epoch of "b"
    interrupted = models()
    booster = Booster(teacher.model, interrupted, ["a", "b"], data, settings, tmp_path / "cut")
    calls = {"n": 0}

    def stop_after_three(desc, done, total):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        booster.run(stop_after_three, resume=False)
    resumed = models()
    Booster(teacher.model, resumed, ["a", "b"], data, settings, tmp_path / "cut").run(resume=True)
    for ref, res in zip(reference, resumed):
        for (k, a), b in zip(ref.state_dict().items(), res.state_dict().values()):
            assert torch.allclose(a, b, atol=1e-5), k
