from __future__ import annotations

import pytest
import torch

from shoal.errors import DataError
from shoal.plan.directory import load_plan, read_plan_json
from shoal.plan.document import PlanDocument
from shoal.planner.pipeline import run_plan
from shoal.planner.settings import CalibrationSettings, PlanRequest, SearchSettings

FAST_SEARCH = SearchSettings("bo", init=3, iterations=2, num_restarts=2, raw_samples=32)
FAST_CAL = CalibrationSettings(epochs=1, aggregator_epochs=3, feature_copies=1, batch_size=64)


def _request(teacher, out, **kw):
    return PlanRequest(model=teacher, out=str(out), search=FAST_SEARCH, calibration=FAST_CAL, cal_images=128,
                       max_per_split=200, **kw)


def test_search_only_writes_policy_figures_and_journal(tiny_digits_teacher, three_devices, three_predictors, tmp_path):
    written = run_plan(_request(tiny_digits_teacher, tmp_path, search_only=True),
                       predictors=three_predictors, devices=three_devices)
    doc = written.to_dict()
    assert read_plan_json(tmp_path) == written   # what it returns is what it wrote
    assert PlanDocument.from_dict(doc) == written
    assert doc["stage"] == "searched"
    used = list(doc["policy"]["devices"])
    assert used[0] == "hub" and set(used) <= {"hub", "fast", "slow"}
    assert doc["predicted"]["left_out"] == [n for n in ("hub", "fast", "slow") if n not in used]
    assert doc["search"]["evaluations"] == 5 and len(doc["search"]["best_so_far"]) == 5
    assert (tmp_path / "figures" / "convergence.png").stat().st_size > 1000
    assert (tmp_path / "figures" / "latency.png").stat().st_size > 1000
    assert len((tmp_path / "journal.jsonl").read_text().splitlines()) == 6
    pred = doc["predicted"]
    assert pred["total_ms"] == pytest.approx(doc["objective"]["latency_ms"])
    names = [p["phase"] for p in doc["phases"]]
    assert names[0] == "loading teacher and data" and names[-1].startswith("searching (bo, 5 evaluations)")
    assert all(p["seconds"] >= 0 for p in doc["phases"]) and doc["resumed"] is False
    with pytest.raises(DataError, match="searched policy only"):
        load_plan(tmp_path)


@pytest.mark.slow
def test_full_plan_is_deployable_and_from_policy_reuses_it(tiny_digits_teacher, three_devices, three_predictors,
                                                          tmp_path):
    out = tmp_path / "plan"
    written = run_plan(_request(tiny_digits_teacher, out, delta=0.01, allow_leave_out=False),
                       predictors=three_predictors, devices=three_devices)
    doc = written.to_dict()
    assert read_plan_json(out) == written and PlanDocument.from_dict(doc).to_dict() == doc
    assert doc["stage"] == "calibrated"
    acc = doc["accuracy"]
    assert set(acc["submodels"]) == {"hub", "fast", "slow"}
    assert {"decompose_only", "decompose_aggregate"} <= set(acc["ablation"])
    assert acc["ensemble"]["n"] == acc["n"] and len(acc["ensemble"]["ci95"]) == 2
    assert acc["ensemble"]["vs_teacher"]["n"] == acc["n"] and "p_value" in acc["ensemble"]["vs_teacher"]
    phases = [p["phase"] for p in doc["phases"]]
    assert {"training the aggregator", "evaluating on the test split"} <= set(phases)
    assert phases.index("training the aggregator") > phases.index("calibrating sub-models (boost weighting)")
    plan = load_plan(out)
    import torch

    x = torch.randn(2, 1, 32, 32)
    feats = [plan.build_submodel(n).forward_head(plan.build_submodel(n).forward_features(x), pre_logits=True)
             for n in plan.devices.names]
    assert plan.build_aggregator()(feats).shape == (2, 10)
    # calibrate the same policy again from its plan.json, without searching
    again = run_plan(_request(tiny_digits_teacher, tmp_path / "again", from_policy=str(out / "plan.json"),
                              allow_leave_out=False),
                     predictors=three_predictors, devices=three_devices).to_dict()
    assert again["policy"] == doc["policy"]
    assert again["search"] == {"from_policy": str(out / "plan.json")}


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is visible")
def test_plan_on_cuda_without_a_gpu_stops_before_any_work(tiny_digits_teacher, three_devices, three_predictors,
                                                           tmp_path):
    from shoal.errors import PlatformError

    with pytest.raises(PlatformError, match="no CUDA device is visible"):
        run_plan(_request(tiny_digits_teacher, tmp_path, search_only=True, device="cuda"),
                 predictors=three_predictors, devices=three_devices)
    assert not (tmp_path / "plan.json").exists()


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_calibration_on_cuda_means_what_it_means_on_the_cpu(tiny_digits_teacher, three_devices, three_predictors,
                                                            tmp_path):
    """One policy calibrated on both devices: accuracies within a few images (GPU kernels are not
    bit-identical; every random number is drawn on the host, so the batches are the same)."""
    cpu = run_plan(_request(tiny_digits_teacher, tmp_path / "cpu", delta=0.01, allow_leave_out=False),
                   predictors=three_predictors, devices=three_devices)
    cuda = run_plan(_request(tiny_digits_teacher, tmp_path / "cuda", allow_leave_out=False, device="cuda",
                             from_policy=str(tmp_path / "cpu" / "plan.json")),
                    predictors=three_predictors, devices=three_devices)
    assert cuda.policy == cpu.policy
    a, b = cpu.accuracy, cuda.accuracy
    assert a is not None and b is not None and a.n == b.n
    assert abs(a.ensemble.top1 - b.ensemble.top1) <= 3 / a.n + 0.02


@pytest.mark.slow
def test_a_balanced_split_is_calibrated_written_and_served_from_the_plan(tiny_digits_teacher, three_devices,
                                                                         three_predictors, tmp_path):
    """--split balanced: no search, every device keeps every block and channel, the plan loads."""
    out = tmp_path / "plan"
    written = run_plan(_request(tiny_digits_teacher, out, split="balanced", precision="bf16"),
                       predictors=three_predictors, devices=three_devices)
    assert written.stage == "calibrated" and written.policy.shared_channels
    assert written.search is not None and written.search.strategy == "balanced" and written.search.evaluations == 1
    assert not (out / "journal.jsonl").exists()
    names = [p.phase for p in written.phases]
    assert names[2].startswith("balanced split")
    plan = load_plan(out)   # hashes and shapes check; the policy's shared channels are read back
    assert plan.document.policy.shared_channels
    x = torch.randn(2, 1, 32, 32)
    feats = [plan.build_submodel(n).forward_head(plan.build_submodel(n).forward_features(x), pre_logits=True)
             for n in plan.devices.names]
    assert [f.shape[1] for f in feats] == [48, 48, 48]   # every device the teacher's width
    assert plan.build_aggregator()(feats).shape == (2, 10)
