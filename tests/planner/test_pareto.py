from __future__ import annotations

import pytest

from shoal.plan.directory import load_plan, read_plan_json
from shoal.plan.latency import LatencyBreakdown
from shoal.planner.journal import Record
from shoal.planner.objective import Evaluation
from shoal.planner.pareto import choose_variants, front, hypervolume
from shoal.planner.pipeline import run_plan
from shoal.planner.settings import CalibrationSettings, PlanRequest, SearchSettings


def _record(i: int, t: float, loss: float, devices: int = 3) -> Record:
    ev = Evaluation(psi=loss + 0.01 * t, loss=loss, latency=LatencyBreakdown((t,), (0.0,), 0.0), delta=0.01,
                    device_losses=(), flops=(1,), memory_bytes=(1,), seconds=0.0)
    shapes = tuple({"w": i} if k < devices else None for k in range(3))
    return Record(i, "bo", (float(i),), shapes, ev)


def test_the_front_keeps_what_nothing_beats_on_both_and_the_variants_cover_it():
    records = [_record(0, 10, 0.5), _record(1, 5, 0.9), _record(2, 12, 0.6), _record(3, 3, 1.5, devices=1),
               _record(4, 20, 0.2), _record(5, 8, 0.7), _record(6, 2, 2.0)]
    assert [r.index for r in front(records)] == [6, 3, 1, 5, 0, 4]   # 2 is beaten by 0 on both
    variants = choose_variants(records, records[0], 4)
    names = [v.name for v in variants]
    assert names[0] == "primary" and {"fastest", "central-only"} <= set(names) and len(variants) == 4
    assert len({v.record.key for v in variants}) == 4
    assert [v.name for v in choose_variants(records, records[0], 2)] == ["primary", "fastest"]


def test_hypervolume_of_a_front_against_a_reference():
    assert hypervolume([(1.0, 1.0)], (2.0, 2.0)) == pytest.approx(1.0)
    assert hypervolume([(1.0, 1.0), (0.5, 1.5)], (2.0, 2.0)) == pytest.approx(1.25)
    assert hypervolume([(3.0, 1.0)], (2.0, 2.0)) == 0.0


@pytest.fixture(scope="module")
def pareto_plan(tiny_digits_teacher, three_devices, three_predictors, tmp_path_factory):
    out = tmp_path_factory.mktemp("pareto")
    request = PlanRequest(model=tiny_digits_teacher, out=str(out), cal_images=128, max_per_split=200,
                          search=SearchSettings("bo", init=4, iterations=4, num_restarts=2, raw_samples=32, pareto=3),
                          calibration=CalibrationSettings(epochs=1, aggregator_epochs=2, feature_copies=1,
                                                          batch_size=64, device_dropout=0.3))
    return out, run_plan(request, predictors=three_predictors, devices=three_devices)


@pytest.mark.slow
def test_pareto_plan_writes_each_variant_as_a_plan_and_a_figure(pareto_plan):
    tmp_path, written = pareto_plan
    assert read_plan_json(tmp_path) == written
    names = [v.name for v in written.variants]
    assert names[0] == "primary" and 2 <= len(names) <= 3 and len(set(names)) == len(names)
    assert (tmp_path / "figures" / "pareto.png").stat().st_size > 1000
    load_plan(tmp_path)   # the primary, with its variants' plan.json hashed
    for v in written.variants[1:]:
        variant = load_plan(tmp_path / v.dir)
        assert "+".join(variant.devices.names) == v.devices and v.top1 is not None
        assert f"{v.dir}/plan.json" in written.files
    fastest = [v for v in written.variants if v.name == "fastest"]   # absent when the primary is the fastest
    assert not fastest or fastest[0].latency_ms == min(v.latency_ms for v in written.variants)


@pytest.mark.slow
def test_the_central_node_serves_the_variant_the_slo_allows(pareto_plan):
    import grpc
    import torch

    from shoal.runtime import shoal_pb2 as pb
    from shoal.runtime import shoal_pb2_grpc as pb_grpc
    from shoal.runtime.central import start_central
    from shoal.runtime.client import ShoalClient
    from shoal.runtime.codec import encode
    from shoal.runtime.worker import start_worker

    root, written = pareto_plan
    plan = load_plan(root)
    from shoal.runtime.variants import load_variants, served_devices

    union = served_devices(load_variants(plan)).names   # a variant may use workers the primary leaves out
    workers = {n: start_worker(plan, n, warmup=1) for n in union[1:]}
    servers = [w[0] for w in workers.values()]
    try:
        served = {v.name for v in written.variants}
        for _, servicer in workers.values():   # each worker loaded the variants it takes part in
            assert set(servicer.variants) <= served - {"primary"}
        targets = {n: w[0].target for n, w in workers.items()}
        x = torch.randn(1, *plan.config.input_shape)
        central, servicer = start_central(plan, targets, warmup=1, connect_timeout=10.0)
        servers.append(central)
        with ShoalClient(central.target) as client:
            assert client.call(pb.PredictRequest(input=encode(x))).variant == "primary"   # no SLO: the plan's own
        central.stop(0)
        central, servicer = start_central(plan, targets, warmup=1, connect_timeout=10.0, slo_ms=1e-3)
        servers.append(central)
        names = [v.name for v in servicer.variants]
        assert names[0] == "primary" and len(names) >= 2
        fastest = min(servicer.variants, key=lambda v: servicer.estimates.predict_ms(v)).name
        with ShoalClient(central.target) as client:   # no variant can meet 1 µs: the fastest, marked late
            reply = client.call(pb.PredictRequest(input=encode(x)))
            assert reply.variant == fastest and reply.late
            servicer.slo_s = 60.0                      # every variant meets it: the most accurate answers
            best = max(servicer.variants, key=lambda v: v.top1 if v.top1 is not None else -1).name
            assert client.call(pb.PredictRequest(input=encode(x))).variant == best
        with grpc.insecure_channel(next(iter(targets.values()))) as channel:
            request = pb.FeaturesRequest(variant="no-such-variant")
            encode(x, request.input)
            with pytest.raises(grpc.RpcError) as info:
                pb_grpc.WorkerStub(channel).Features(request, timeout=5.0)
            assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert "serves no variant 'no-such-variant'" in info.value.details()
    finally:
        for server in servers:
            server.stop(0)


def test_hypervolume_improvement_matches_botorch_and_is_zero_when_dominated():
    import torch

    from shoal.planner.pareto import hypervolume_improvement

    front_points, reference = [(1.0, 1.0), (0.5, 1.8)], (2.0, 2.0)
    new = [(0.5, 0.5), (1.5, 1.5), (0.25, 1.9), (3.0, 0.1)]
    t = torch.tensor([p[0] for p in new], dtype=torch.float64)
    loss = torch.tensor([[p[1] for p in new]], dtype=torch.float64)
    got = hypervolume_improvement(t, loss, front_points, reference)[0].tolist()
    base = hypervolume(front_points, reference)
    expected = [hypervolume([*front_points, p], reference) - base for p in new]
    assert got == pytest.approx(expected) and got[1] == 0.0 and got[3] == 0.0
