"""DeViT and ED-ViT as planning methods: sub-tasks, their sizing rules, budgets, bad input, end to end."""

from __future__ import annotations

import pytest
import torch

from shoal.data.datasets import load_task_data
from shoal.devices.spec import DeviceSet, DeviceSpec
from shoal.errors import ConfigError, DataError, InfeasibleError
from shoal.models import load_teacher
from shoal.models.accounting import spec_cost
from shoal.models.importance import compute_importance
from shoal.models.spec import SubModelSpec
from shoal.plan.directory import load_plan
from shoal.planner.devit import devit_plan
from shoal.planner.edvit import assign, edvit_plan
from shoal.planner.objective import Evaluator
from shoal.planner.pipeline import run_plan
from shoal.planner.settings import PlanRequest
from shoal.planner.subtasks import split_classes, subtask_images
from tests.planner.conftest import FlopsPredictor
from tests.planner.test_pipeline import _request


@pytest.fixture(scope="module")
def setting(tiny_digits_teacher):
    teacher = load_teacher(tiny_digits_teacher)
    data = load_task_data(teacher, None, max_per_split=300)
    devices = DeviceSet((DeviceSpec("hub", 64 << 20, central=True), DeviceSpec("fast", 64 << 20, link_mbps=1e4),
                         DeviceSpec("slow", 64 << 20, link_mbps=1e4)))
    predictors = [FlopsPredictor(teacher.config, s, overhead_ms=0.0) for s in (40.0, 25.0, 10.0)]
    evaluator = Evaluator(teacher.model, teacher.config, devices, predictors, data.train.images[:64],
                          data.val.images[:48], data.val.labels[:48], delta=0.05, proxy="ridge")
    return teacher, data, devices, evaluator


def test_classes_are_split_as_devit_eq_4_says():
    groups = split_classes(10, 4, seed=0, method="devit")
    assert [len(g) for g in groups] == [3, 3, 2, 2]   # ⌊C/N⌋ + 1 for the first C mod N groups
    assert sorted(c for g in groups for c in g) == list(range(10)) and all(list(g) == sorted(g) for g in groups)
    assert groups == split_classes(10, 4, seed=0, method="devit") != split_classes(10, 4, seed=1, method="devit")
    with pytest.raises(ConfigError, match=r"--method devit: 11 devices but the task has 10 classes"):
        split_classes(10, 11, seed=0, method="devit")


def test_a_sub_task_without_training_images_is_one_line(setting):
    _, data, _, _ = setting
    from dataclasses import replace

    from shoal.data.digits import TensorDataset

    no_sevens = data.train.labels != 7
    thinned = replace(data, train=TensorDataset(data.train.images[no_sevens], data.train.labels[no_sevens],
                                                data.train.classes))
    with pytest.raises(DataError, match=r"--method edvit: the sub-task of device 'edge' \(classes \[7\]\) has no"):
        subtask_images(thinned, (7,), 64, "edvit", "edge")


def test_importance_on_a_sub_task_reads_only_its_classes(setting):
    teacher, data, _, _ = setting
    images, labels = subtask_images(data, (0, 1), 64, "devit", "hub")
    sub = compute_importance(teacher.model, teacher.config, images, labels, "taylor", classes=(0, 1))
    whole = compute_importance(teacher.model, teacher.config, images, labels, "taylor")
    assert sub.heads.shape == whole.heads.shape and not torch.allclose(sub.heads, whole.heads)
    with pytest.raises(ConfigError, match="images of other classes"):
        compute_importance(teacher.model, teacher.config, images, labels, "taylor", classes=(2, 3))


def test_kl_importance_is_exact_for_heads(setting):
    """ED-ViT's criterion: a head's score is the KL of the teacher's outputs with that head removed."""
    teacher, data, _, _ = setting
    images = data.train.images[:32]
    kl = compute_importance(teacher.model, teacher.config, images, data.train.labels[:32], "kl")
    assert kl.rule == "kl" and bool((kl.heads >= 0).all()) and bool((kl.neurons >= 0).all())
    block = teacher.model.blocks[1]
    hd, h = teacher.config.head_dim, teacher.config.num_heads

    def drop_head(_m, args):
        (x,) = args
        x = x.clone()
        x[..., 2 * hd:3 * hd] = 0.0   # head 2 of block 1
        return (x,)

    with torch.no_grad():
        p = torch.log_softmax(teacher.model(images), -1)
        handle = block.attn.proj.register_forward_pre_hook(drop_head)
        try:
            q = torch.log_softmax(teacher.model(images), -1)
        finally:
            handle.remove()
    expected = float((p.exp() * (p - q)).sum(-1).mean())
    assert kl.heads[1, 2].item() == pytest.approx(expected, rel=1e-4, abs=1e-7) and h == 4


def test_devit_gives_every_device_the_same_structure_within_the_budgets(setting):
    teacher, data, devices, evaluator = setting
    plan = devit_plan(teacher, data, devices, evaluator, target_ms=None, channel_rule="magnitude", cal_images=64,
                      seed=0)
    shapes = {(s.layers, s.width, s.head_counts, s.mlp_widths) for s in plan.policy.specs}
    assert len(shapes) == 1 and plan.policy.shared_units   # homogeneous; units may repeat across sub-models
    c = teacher.config
    assert plan.policy.specs[0].width == c.head_dim * plan.policy.specs[0].head_counts[0]   # D_s = 64·h_s
    assert [sorted(g) for g in plan.classes] == [list(g) for g in plan.classes] and len(plan.classes) == 3
    full = plan.policy.specs[0]
    target = evaluator.latency(plan.policy).total_ms * 0.6
    smaller = devit_plan(teacher, data, devices, evaluator, target_ms=target, channel_rule="magnitude",
                         cal_images=64, seed=0)
    assert evaluator.latency(smaller.policy).total_ms <= target
    assert spec_cost(c, smaller.policy.specs[0]).flops < spec_cost(c, full).flops
    # pruned, each keeps what matters for its own classes: the same shape, not the same units
    assert len({(s.heads, s.neurons) for s in smaller.policy.specs}) > 1
    tight = DeviceSet(tuple(DeviceSpec(d.name, 4096, central=d.central, link_mbps=d.link_mbps)
                            for d in devices.devices))
    with pytest.raises(ConfigError, match=r"--method devit: no homogeneous sub-model fits every device"):
        devit_plan(teacher, data, tight, evaluator, target_ms=None, channel_rule="magnitude", cal_images=64, seed=0)


def test_edvit_assigns_largest_first_and_prunes_the_largest_until_all_fit(setting):
    teacher, data, devices, evaluator = setting
    c = teacher.config
    # the edge devices hold about half the teacher: ED-ViT prunes heads off sub-models until each has a home
    half = spec_cost(c, SubModelSpec.full(c)).memory_bytes
    small = DeviceSet((DeviceSpec("hub", 64 << 20, central=True), DeviceSpec("fast", half // 2, link_mbps=1e4),
                       DeviceSpec("slow", half // 2, link_mbps=1e4)))
    plan = edvit_plan(teacher, data, small, evaluator, target_ms=None, cal_images=64, seed=0)
    for name, spec in zip(plan.policy.devices, plan.policy.specs):
        assert small[name].fits(spec_cost(c, spec).memory_bytes, spec_cost(c, spec).flops)
        assert spec.layers == tuple(range(c.depth))   # ED-ViT never drops a block
        s = spec.head_counts[0] / c.num_heads         # one factor for channels, heads and neurons
        assert spec.width == max(1, round(s * c.embed_dim)) and set(spec.head_counts) == {spec.head_counts[0]}
    flops = [spec_cost(c, spec).flops for spec in plan.policy.specs]
    assert flops[0] == max(flops) > min(flops)   # the largest went to the hub (the fastest, most memory)
    with pytest.raises(ConfigError, match=r"--method edvit: no assignment fits"):
        edvit_plan(teacher, data, DeviceSet(tuple(DeviceSpec(d.name, 4096, central=d.central, link_mbps=1e4)
                                                  for d in small.devices)), evaluator, target_ms=None,
                   cal_images=64, seed=0)


def test_algorithm_3_drops_a_device_that_does_not_fit(setting):
    c = setting[0].config
    big, tiny = SubModelSpec.full(c), SubModelSpec((0,), tuple(range(8)), ((0,),), ((0,),))
    need = spec_cost(c, big).memory_bytes
    devices = DeviceSet((DeviceSpec("hub", need // 2, central=True), DeviceSpec("b", need * 2)))
    # the big one first: the hub (fastest, speed 1.0) is tried, does not fit and is dropped; b takes it;
    # then nothing is left for the tiny one (the paper's rule, although the hub could have held it)
    assert assign(c, devices, [tiny, big], speed=[1.0, 5.0]) is None
    devices = DeviceSet((DeviceSpec("hub", need * 2, central=True), DeviceSpec("b", need * 2)))
    assert assign(c, devices, [tiny, big], speed=[1.0, 5.0]) == ["b", "hub"]


def test_more_devices_than_classes_is_refused_before_any_profiling(tiny_digits_teacher, tmp_path):
    from shoal.devices.spec import device_set_to_yaml

    many = [DeviceSpec(f"d{i}", 64 << 20, central=i == 0, profile=str(tmp_path / f"never-{i}")) for i in range(11)]
    (tmp_path / "many.yaml").write_text(device_set_to_yaml(many))
    with pytest.raises(ConfigError, match=r"--method devit: 11 devices but the task has 10 classes"):
        run_plan(_request(tiny_digits_teacher, tmp_path / "p", method="devit", devices=str(tmp_path / "many.yaml")))
    assert not any((tmp_path / f"never-{i}").exists() for i in range(11))


@pytest.mark.parametrize("method", ["coformer", "devit", "edvit"])
def test_a_device_set_no_method_can_fit_is_one_line_naming_the_method(method, tiny_digits_teacher, three_predictors,
                                                                       tmp_path):
    tiny = DeviceSet((DeviceSpec("hub", 4096, central=True), DeviceSpec("fast", 4096, link_mbps=1e4),
                      DeviceSpec("slow", 4096, link_mbps=1e4)))
    with pytest.raises((ConfigError, InfeasibleError), match=rf"^--method {method}: "):
        run_plan(_request(tiny_digits_teacher, tmp_path, method=method), predictors=three_predictors, devices=tiny)
    assert not (tmp_path / "plan.json").exists()


def test_methods_refuse_options_of_the_search():
    for kw in ({"split": "balanced"}, {"from_policy": "x/plan.json"}, {"search_only": True}):
        with pytest.raises(ConfigError, match="makes its own policy without a search"):
            PlanRequest(method="devit", **kw)
    with pytest.raises(ConfigError, match="--target-ms sizes DeViT's"):
        PlanRequest(target_ms=5.0)
    with pytest.raises(ConfigError, match="--method must be one of"):
        PlanRequest(method="splitwise")  # type: ignore[arg-type]


@pytest.mark.slow
@pytest.mark.parametrize("method", ["devit", "edvit"])
def test_a_method_plan_is_calibrated_written_and_answers_from_the_plan(method, tiny_digits_teacher, three_devices,
                                                                        three_predictors, tmp_path):
    out = tmp_path / method
    written = run_plan(_request(tiny_digits_teacher, out, method=method), predictors=three_predictors,
                       devices=three_devices)
    assert written.stage == "calibrated" and written.method is not None and written.method.name == method
    assert written.search is not None and written.search.strategy == method
    assert sorted(c for g in written.method.classes.values() for c in g) == list(range(10))
    assert written.accuracy is not None and 0.0 <= written.accuracy.ensemble.top1 <= 1.0
    plan = load_plan(out)   # hashes, shared units and the aggregator's form read back
    assert plan.document.method == written.method
    agg = plan.build_aggregator()
    assert agg.activation == ("relu" if method == "edvit" else "none")
    x = torch.randn(2, 1, 32, 32)
    feats = [plan.build_submodel(n).forward_head(plan.build_submodel(n).forward_features(x), pre_logits=True)
             for n in plan.devices.names]
    assert agg(feats).shape == (2, 10)
    settings = written.calibration.settings if written.calibration else {}
    assert settings["weighting"] == "uniform"
    assert settings["fusion"] == ("relu" if method == "edvit" else "none")


@pytest.mark.slow
def test_a_janus_plan_measures_every_alpha_and_both_sides(tiny_digits_teacher, three_devices, three_predictors,
                                                           tmp_path):
    from shoal.plan.janus import JanusPlan
    from shoal.planner.janus import run_janus_plan

    written = run_janus_plan(_request(tiny_digits_teacher, tmp_path, method="janus"), predictors=three_predictors,
                             devices=three_devices)
    assert JanusPlan.read(tmp_path) == written   # janus.json round-trips field by field
    m = written.model
    assert (written.device.name, written.server.name) == ("fast", "hub")
    assert m.configs[0].alpha == 0.0 and m.configs[1].alpha == 0.01 and len(m.configs) == len(written.test_accuracy)
    assert m.configs[0].accuracy >= m.configs[-1].accuracy - 0.05   # merging more never helps much
    assert m.candidates[0] == 0 and m.candidates[-1] == m.depth + 1
    assert m.device(17) > 0 and m.server(17) > 0 and set(written.profiles) == {"fast", "hub"}
    assert m.image_bytes == 4 * 32 * 32 and m.token_bytes == 48 * 2 + 2


def test_janus_refuses_what_it_has_no_use_for(tiny_digits_teacher, three_predictors, tmp_path):
    from shoal.planner.janus import run_janus_plan

    with pytest.raises(ConfigError, match="Janus meets its SLA per request"):
        PlanRequest(method="janus", target_ms=5.0)
    alone = DeviceSet((DeviceSpec("hub", 64 << 20, central=True),))
    with pytest.raises(ConfigError, match="--method janus: the device set needs a device besides the central"):
        run_janus_plan(_request(tiny_digits_teacher, tmp_path, method="janus"), predictors=three_predictors[:1],
                       devices=alone)
