"""Scores carry n and a Wilson interval; the ensemble a McNemar test against the teacher; vectors stay out of JSON."""

from __future__ import annotations

import json

import pytest
import torch

from shoal.data.digits import TensorDataset
from shoal.errors import ConfigError
from shoal.models import Aggregator, SubModelSpec, build_submodel, load_teacher
from shoal.planner.evaluation import ensemble_logits, logits_of, score_decomposition
from shoal.utils.stats import Accuracy, mcnemar


@pytest.fixture(scope="module")
def decomposition(tiny_digits_teacher):
    teacher = load_teacher(tiny_digits_teacher)
    c = teacher.config
    full = SubModelSpec.full(c)
    specs = [SubModelSpec(full.layers, tuple(range(0, c.embed_dim, 2)), full.heads, full.neurons),
             SubModelSpec(full.layers, tuple(range(1, c.embed_dim, 2)), full.heads, full.neurons)]
    subs = [build_submodel(c, s, teacher.model) for s in specs]
    agg = Aggregator.from_teacher_channels([s.channels for s in specs], teacher.model.head, c.global_pool,
                                           c.num_prefix_tokens)
    torch.manual_seed(0)
    split = TensorDataset(torch.randn(40, *c.input_shape), torch.randint(0, 10, (40,)), list(range(10)))
    return teacher, subs, agg, split


def test_every_score_has_n_and_wilson_interval(decomposition):
    teacher, subs, agg, split = decomposition
    scored = score_decomposition(logits_of(teacher.model, split.images), ["hub", "edge"], subs, agg, split)
    s = scored.accuracy.to_dict()
    rows = [s["teacher"], s["ensemble"], *s["submodels"].values(), *s["subsets"].values()]
    assert len(rows) == 5
    for row in rows:
        assert {"top1", "loss", "n", "correct", "ci95"} <= set(row)
        acc = Accuracy.from_dict({k: row[k] for k in ("top1", "n", "correct", "ci95")})   # consistent
        assert acc.n == 40 and row["ci95"][0] <= row["top1"] <= row["ci95"][1]
    assert set(scored.correct) == {"teacher", "ensemble", "submodels/hub", "submodels/edge", "subset/hub"}
    for vec in scored.correct.values():
        assert vec.dtype == torch.bool and vec.shape == (40,)
    assert int(scored.correct["teacher"].sum()) == s["teacher"]["correct"]
    assert int(scored.correct["submodels/edge"].sum()) == s["submodels"]["edge"]["correct"]
    # the paired test against the teacher is McNemar on those vectors
    vs = s["ensemble"]["vs_teacher"]
    expected = mcnemar(scored.correct["teacher"], scored.correct["ensemble"])
    assert (vs["b01"], vs["b10"], vs["p_value"]) == (expected.b01, expected.b10, expected.p_value)
    assert vs["a"] == "teacher" and vs["b"] == "ensemble" and isinstance(vs["significant"], bool)
    json.dumps(s)   # JSON-able: no tensors in the scores
    # the shared features give what running each model on the images gives
    with torch.no_grad():
        teacher_correct = teacher.model(split.images).argmax(1) == split.labels
        edge_correct = subs[1](split.images).argmax(1) == split.labels
    assert torch.equal(scored.correct["teacher"], teacher_correct)
    assert torch.equal(scored.correct["submodels/edge"], edge_correct)
    ens = ensemble_logits(subs, agg, split.images)
    assert torch.equal(scored.correct["ensemble"], ens.argmax(1) == split.labels)
    assert s["ensemble"]["loss"] == pytest.approx(torch.nn.functional.cross_entropy(ens, split.labels).item())
    missing = ensemble_logits(subs, agg, split.images, torch.tensor([1.0, 0.0]))
    assert torch.equal(scored.correct["subset/hub"], missing.argmax(1) == split.labels)
    with pytest.raises(ConfigError, match="teacher logits for 39 images"):
        score_decomposition(logits_of(teacher.model, split.images[:39]), ["hub", "edge"], subs, agg, split)


def test_calibrate_keeps_per_image_vectors_out_of_the_accuracy_document(tiny_digits_teacher, tmp_path):
    from types import SimpleNamespace

    from shoal.data.datasets import load_task_data
    from shoal.models import Policy
    from shoal.planner.pipeline import PlanHooks, calibrate
    from shoal.planner.settings import CalibrationSettings, PlanRequest

    teacher = load_teacher(tiny_digits_teacher)
    c = teacher.config
    full = SubModelSpec.full(c)
    policy = Policy(("hub", "edge"), (SubModelSpec(full.layers, tuple(range(0, c.embed_dim, 2)), full.heads,
                                                   full.neurons),
                                      SubModelSpec(full.layers, tuple(range(1, c.embed_dim, 2)), full.heads,
                                                   full.neurons)))
    problem = SimpleNamespace(teacher=teacher, data=load_task_data(teacher, None, max_per_split=64))
    settings = CalibrationSettings(epochs=1, aggregator_epochs=1, feature_copies=1, batch_size=64, device_dropout=0.2)
    request = PlanRequest(model=tiny_digits_teacher, out=str(tmp_path), calibration=settings)
    cal = calibrate(problem, policy, request, PlanHooks())  # type: ignore[arg-type]
    acc = cal.accuracy.to_dict()
    n = len(problem.data.test)
    assert acc["n"] == n and acc["ensemble"]["n"] == n and len(acc["ensemble"]["ci95"]) == 2
    for row in ("decompose_only", "decompose_aggregate"):
        e = acc["ablation"][row]["ensemble"]
        assert {"n", "ci95", "vs_teacher"} <= set(e)
        assert int(cal.correct[f"ablation/{row}/ensemble"].sum()) == e["correct"]
    assert acc["val"]["n"] == len(problem.data.val) and "ci95" in acc["val"]
    assert {"teacher", "ensemble", "submodels/hub", "submodels/edge", "subset/hub"} <= set(cal.correct)
    assert int(cal.correct["ensemble"].sum()) == acc["ensemble"]["correct"]
    json.dumps(acc)
