"""A text teacher through the same pipeline as a ViT: search, calibration, the plan directory, serving, bench."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers")

from shoal.errors import ConfigError, DataError, ModelError  # noqa: E402
from shoal.models import load_teacher  # noqa: E402
from shoal.plan.directory import load_plan, read_plan_json  # noqa: E402
from shoal.planner.pipeline import run_plan  # noqa: E402
from shoal.planner.settings import CalibrationSettings, PlanRequest, SearchSettings  # noqa: E402
from tests.conftest import make_text_teacher  # noqa: E402
from tests.planner.conftest import FlopsPredictor  # noqa: E402

FAST_SEARCH = SearchSettings("bo", init=3, iterations=2, num_restarts=2, raw_samples=32)
FAST_CAL = CalibrationSettings(epochs=1, aggregator_epochs=3, feature_copies=1, batch_size=32)


@pytest.fixture(scope="module")
def text_task(tmp_path_factory):
    """(the tiny text teacher's JSON, its task's JSONL)."""
    teacher, data = make_text_teacher(tmp_path_factory.mktemp("text"), n=240)
    return str(teacher), str(data)


@pytest.fixture(scope="module")
def text_predictors(text_task):
    config = load_teacher(text_task[0]).config
    return [FlopsPredictor(config, 4.0), FlopsPredictor(config, 2.5), FlopsPredictor(config, 1.0)]


def _request(text_task, out, **kw):
    teacher, data = text_task
    return PlanRequest(model=teacher, data=data, out=str(out), search=FAST_SEARCH, calibration=FAST_CAL,
                       cal_images=96, val_images=40, **kw)


def test_a_text_teacher_is_searched_like_a_vit(text_task, text_predictors, three_devices, tmp_path):
    doc = run_plan(_request(text_task, tmp_path, search_only=True), predictors=text_predictors,
                   devices=three_devices).to_dict()
    assert doc["teacher_config"]["family"] == "bert" and doc["stage"] == "searched"
    assert doc["input"]["format"] == "tokens" and doc["input"]["tokens"] >= 5   # "[CLS] a very good ... [SEP]"
    assert doc["input"]["bytes"] == pytest.approx(8 * doc["input"]["tokens"], abs=8)   # int32 ids and mask
    assert doc["search"]["evaluations"] == 5 and list(doc["policy"]["devices"])[0] == "hub"


def test_predicted_latency_follows_the_planned_text_length(text_task, text_predictors, three_devices):
    """The predictors see the task's mean length, not the tokeniser's limit: a shape's prediction at the
    planned length is below its prediction at the full 16 tokens."""
    from shoal.models.spec import SubModelSpec
    from shoal.planner.pipeline import PlanHooks, build_problem

    problem = build_problem(_request(text_task, "/nonexistent-unused"), PlanHooks(), text_predictors,
                            three_devices)
    full = SubModelSpec.full(problem.teacher.config)
    assert 0 < problem.evaluator.tokens < problem.teacher.config.seq_len
    planned = problem.evaluator.teacher_latency()[0]
    assert planned < text_predictors[0].predict_ms([full])[0]


def test_vit_only_methods_and_image_data_refuse_a_text_teacher(text_task, text_predictors, three_devices, tmp_path):
    for method in ("devit", "edvit", "janus"):
        with pytest.raises(ConfigError, match=f"--method {method} splits a vision teacher"):
            run_plan(_request(text_task, tmp_path / method, method=method),
                     predictors=text_predictors, devices=three_devices)
    teacher, _ = text_task
    from shoal.data.datasets import load_task_data

    with pytest.raises(DataError, match="digits is not a text task, and teacher .* is a text teacher"):
        load_task_data(load_teacher(teacher), "digits")
    with pytest.raises(DataError, match="rotten-tomatoes is a text task but teacher .* is a vision model"):
        load_task_data(load_teacher(), "rotten-tomatoes")
    with pytest.raises(ModelError, match="name the data"):
        load_teacher(_encoder_dir(teacher))   # an encoder without a head, and no task to size one


def _encoder_dir(teacher_json: str) -> str:
    import json

    return json.loads(open(teacher_json).read())["encoder"]


@pytest.mark.slow
def test_a_text_plan_is_calibrated_served_secured_adaptive_and_benched(text_task, text_predictors, three_devices,
                                                                        tmp_path):
    """The whole path a ViT plan has, for text: variants on the front (--pareto 3), mutual TLS and a token
    (`shoal certs`), the SLO-driven variant choice, the token checks, and `shoal bench` on the test split."""
    from dataclasses import replace

    from shoal.runtime.bench import run_bench
    from shoal.runtime.client import ShoalClient
    from shoal.runtime.cluster import LocalCluster
    from shoal.runtime.device import plan_fingerprint
    from shoal.runtime.pki import issue
    from shoal.runtime.security import TOKEN_FILE, Security

    out = tmp_path / "plan"
    request = replace(_request(text_task, out), search=replace(FAST_SEARCH, init=4, iterations=4, pareto=3))
    doc = run_plan(request, predictors=text_predictors, devices=three_devices).to_dict()
    assert len(doc["variants"]) >= 2
    assert read_plan_json(out).to_dict() == doc and doc["stage"] == "calibrated"
    acc = doc["accuracy"]
    assert acc["ensemble"]["n"] == acc["n"] > 0 and acc["ensemble"]["top1"] >= 0.9   # "good fun" against "bad dull"
    plan = load_plan(out)
    teacher = load_teacher(text_task[0])
    keys = tmp_path / "keys"
    issue(out, list(plan.devices.names), keys, plan_fingerprint(out))
    security = Security(keys, keys / TOKEN_FILE)
    with LocalCluster(out, emulate=False, security=security, slo_ms=200.0) as cluster, \
            ShoalClient(cluster.central_target, ca=security.ca, server_name=plan.devices.central.name,
                        token=security.token()) as client:
        texts = ["a very good fun film", "a bad dull film", "good fun", "dull"]
        served = client.predict_texts(texts, teacher.tokenizer, plan.config.seq_len, top_k=1)
        assert served.labels.tolist() == [0, 1, 0, 1]   # fresh, rotten (classes sorted by name)
        from shoal.runtime.status import RemoteError

        bad = torch.tensor([[[5, 6, 999]], [[1, 1, 1]]]).transpose(0, 1)   # (1, 2, 3), an id past the vocabulary
        with pytest.raises(RemoteError, match="outside the vocabulary"):
            client.predict(bad, input_format="tokens")
    result = run_bench(out, requests=20, warmup=3, emulate=False, data=text_task[1], teacher_repeats=20)
    assert result.input_format == "tokens" and result.accuracy is not None and result.accuracy_n == acc["n"]
    assert result.teacher is not None and result.teacher["n"] == acc["n"]
    assert 8 <= result.input_bytes <= 8 * plan.config.seq_len


def test_a_vit_description_given_as_a_text_teacher_is_one_line(tiny_digits_teacher):
    from pathlib import Path

    description = str(Path(tiny_digits_teacher).with_suffix(".json"))
    with pytest.raises(ModelError, match="is not a text teacher's description"):
        load_teacher(description)
