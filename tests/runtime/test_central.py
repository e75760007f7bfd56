from __future__ import annotations

import time

import grpc
import pytest
import torch

from shoal.errors import ConfigError
from shoal.runtime import shoal_pb2 as pb
from shoal.runtime.central import start_central
from shoal.runtime.client import ShoalClient
from shoal.runtime.codec import encode
from shoal.runtime.links import parse_workers
from shoal.runtime.status import RemoteError
from shoal.runtime.worker import Fault, start_worker
from tests.runtime.conftest import reference_logits


def test_prediction_equals_the_aggregator_on_all_devices(plan, in_process):
    cluster = in_process()
    x = torch.randn(4, *plan.config.input_shape)
    with ShoalClient(cluster.central.target) as client:
        p = client.predict(x, top_k=3)
    expected = reference_logits(plan, x)
    assert torch.allclose(p.logits, expected, atol=1e-5)
    assert p.top_indices.shape == (4, 3) and torch.equal(p.labels, expected.argmax(-1))
    assert torch.all(p.top_probs[:, :-1] >= p.top_probs[:, 1:])
    assert [t.device for t in p.timings] == ["hub", "edge-a", "edge-b"]
    assert all(t.ok and t.compute_ms > 0 for t in p.timings)
    assert all(t.round_trip_ms >= t.compute_ms for t in p.timings)
    assert not p.degraded and p.missing == () and p.aggregation_ms > 0 and p.server_ms > p.aggregation_ms


def test_single_image_and_info(plan, in_process):
    cluster = in_process()
    with ShoalClient(cluster.central.target) as client:
        info = client.info()
        p = client.predict(torch.randn(*plan.config.input_shape), top_k=99)
    assert info.role == "central" and list(info.devices) == ["hub", "edge-a", "edge-b"] and info.ready
    assert p.logits.shape == (1, 5) and p.top_indices.shape == (1, 5)  # top-k clipped to the classes


def test_bad_input_at_the_central_node_is_invalid_argument(plan, in_process):
    cluster = in_process()
    with ShoalClient(cluster.central.target) as client:
        for bad in (torch.zeros(1, 1, 16, 16), torch.zeros(2, 3, 8, 8)):
            with pytest.raises(RemoteError) as excinfo:
                client.predict(bad)
            assert excinfo.value.code == grpc.StatusCode.INVALID_ARGUMENT and "expected images" in excinfo.value.details
        with pytest.raises(RemoteError) as excinfo:
            client.call(pb.PredictRequest(input=pb.Tensor(data=b"\0" * 8, dtype="int64", shape=[1])))
        assert excinfo.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert client.predict(torch.zeros(1, *plan.config.input_shape)).logits.shape == (1, 5)


def test_a_down_worker_is_unavailable_naming_it(plan, in_process):
    cluster = in_process(deadline_ms=3000)
    cluster.workers["edge-b"][0].stop(0)
    with ShoalClient(cluster.central.target) as client:
        t0 = time.monotonic()
        with pytest.raises(RemoteError) as excinfo:
            client.predict(torch.zeros(1, *plan.config.input_shape))
        elapsed = time.monotonic() - t0
    assert excinfo.value.code == grpc.StatusCode.UNAVAILABLE
    assert "'edge-b'" in excinfo.value.details and "'edge-a'" not in excinfo.value.details
    assert elapsed < 3.0  # fails fast: a refused connection does not wait for the deadline


def test_a_slow_worker_misses_the_deadline_naming_it_and_nothing_hangs(plan, in_process):
    cluster = in_process(deadline_ms=300, faults={"edge-a": Fault(delay_ms=4000)})
    with ShoalClient(cluster.central.target) as client:
        t0 = time.monotonic()
        with pytest.raises(RemoteError) as excinfo:
            client.predict(torch.zeros(1, *plan.config.input_shape))
        elapsed = time.monotonic() - t0
        assert excinfo.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
        assert "device 'edge-a'" in excinfo.value.details and "300 ms deadline" in excinfo.value.details
        assert elapsed < 3.5  # answered at the deadline, long before the worker would have
        # the central node stays up: the next call fails the same way, it does not hang
        with pytest.raises(RemoteError):
            client.predict(torch.zeros(1, *plan.config.input_shape))


def test_the_clients_own_deadline_is_honoured_with_the_device_named(plan, in_process):
    cluster = in_process(deadline_ms=10_000, faults={"edge-b": Fault(delay_ms=4000)})
    with ShoalClient(cluster.central.target, timeout_s=0.8) as client:
        with pytest.raises(RemoteError) as excinfo:
            client.predict(torch.zeros(1, *plan.config.input_shape))
    assert excinfo.value.code == grpc.StatusCode.DEADLINE_EXCEEDED and "'edge-b'" in excinfo.value.details


def test_degrade_answers_from_the_devices_that_replied(plan, in_process):
    cluster = in_process(deadline_ms=300, degrade=True, faults={"edge-a": Fault(delay_ms=4000)})
    cluster.workers["edge-b"][0].stop(0)
    x = torch.randn(2, *plan.config.input_shape)
    with ShoalClient(cluster.central.target) as client:
        p = client.predict(x)
    assert p.degraded and set(p.missing) == {"edge-a", "edge-b"}
    timings = {t.device: t for t in p.timings}
    assert timings["hub"].ok and not timings["edge-a"].ok and "deadline" in timings["edge-a"].error
    assert "unavailable" in timings["edge-b"].error
    expected = reference_logits(plan, x, present=torch.tensor([1.0, 0.0, 0.0]))
    assert torch.allclose(p.logits, expected, atol=1e-5)


def test_startup_refuses_a_worker_serving_another_plan(plan, other_plan_dir, in_process):
    from shoal.plan.directory import load_plan

    cluster = in_process(central=False, target_plan=load_plan(other_plan_dir))
    with pytest.raises(RemoteError) as excinfo:
        start_central(plan, cluster.targets, connect_timeout=10.0, warmup=1)
    assert excinfo.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert "does not serve device 'edge-a' of this plan: plan" in excinfo.value.details


def test_startup_refuses_swapped_workers(plan, in_process):
    cluster = in_process(central=False)
    swapped = {"edge-a": cluster.targets["edge-b"], "edge-b": cluster.targets["edge-a"]}
    with pytest.raises(RemoteError, match="device 'edge-b' .expected 'edge-a'"):
        start_central(plan, swapped, connect_timeout=10.0, warmup=1)


def test_startup_gives_up_on_an_absent_worker(plan):
    running, _ = start_worker(plan, "edge-a", warmup=1)
    try:
        with pytest.raises(RemoteError) as excinfo:
            start_central(plan, {"edge-a": running.target, "edge-b": "127.0.0.1:1"}, connect_timeout=1.0, warmup=1)
        assert excinfo.value.code == grpc.StatusCode.UNAVAILABLE and "'edge-b'" in excinfo.value.details
    finally:
        running.stop(0)


def test_workers_must_name_every_worker_device(plan):
    with pytest.raises(ConfigError, match=r"missing \['edge-b'\], unknown \['edge-c'\]"):
        start_central(plan, {"edge-a": "127.0.0.1:1", "edge-c": "127.0.0.1:2"})


@pytest.mark.parametrize("text, match", [
    ("edge-a", "must look like name=host:port"), ("edge-a=host", "must look like"),
    ("a=h:1,a=h:2", "twice"),
])
def test_parse_workers_rejects(text, match):
    with pytest.raises(ConfigError, match=match):
        parse_workers(text)


def test_parse_workers():
    assert parse_workers("a=127.0.0.1:5,b=[::1]:6") == {"a": "127.0.0.1:5", "b": "[::1]:6"}
    assert parse_workers(" , ") == {}  # a central-only plan has no workers


def test_an_empty_worker_list_is_refused_for_a_plan_with_workers(plan):
    with pytest.raises(ConfigError, match=r"missing \['edge-a', 'edge-b'\]"):
        start_central(plan, parse_workers(""))


@pytest.mark.parametrize("fmt", ["uint8", "png", "jpeg"])
def test_compact_inputs_are_normalised_by_every_device(plan, in_process, fmt):
    """uint8 pixels / PNG / JPEG: the central node fans the bytes out as sent, each device applies the
    plan's normalisation; lossless formats answer exactly as the float32 input they stand for."""
    from shoal.data.imagecodec import normalise

    cluster = in_process()
    mean, std = plan.document.input.mean, plan.document.input.std
    pixels = (torch.rand(2, *plan.config.input_shape) * 255).round().to(torch.uint8)
    expected = reference_logits(plan, normalise(pixels, mean, std))
    with ShoalClient(cluster.central.target) as client:
        p = client.predict(pixels, top_k=1, input_format=fmt)
        assert all(t.ok for t in p.timings)
        if fmt == "jpeg":   # lossy: close, not equal
            assert (p.logits - expected).abs().max() < 0.5
        else:
            assert torch.allclose(p.logits, expected, atol=1e-5)
        # normalised float images are turned back into the same pixels on the client
        again = client.predict(normalise(pixels, mean, std), top_k=1, input_format=fmt, normalisation=(mean, std))
        assert torch.allclose(again.logits, p.logits, atol=1e-5)


def _images(fmt: str, data: list[bytes]) -> pb.PredictRequest:
    return pb.PredictRequest(images=pb.EncodedImages(format=fmt, images=data))


def test_bad_compact_inputs_are_one_precise_status_and_the_server_stays_up(plan, in_process):
    import struct
    import zlib

    from shoal.data.imagecodec import PNG_SIGNATURE, encode_image

    cluster = in_process()
    c, h, w = plan.config.input_shape
    good = torch.randint(0, 256, (c, h, w), dtype=torch.uint8)
    jpeg, png = encode_image(good, "jpeg"), encode_image(good, "png")

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    bomb = (PNG_SIGNATURE + chunk(b"IHDR", struct.pack(">IIBBBBB", 60000, 60000, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 200_000)) + chunk(b"IEND", b""))
    bigger = encode_image(torch.zeros(c, h * 2, w * 2, dtype=torch.uint8), "png")
    cases = [
        (_images("jpeg", [jpeg[:len(jpeg) // 2]]), "corrupt or truncated JPEG"),
        (_images("png", [png[:len(png) // 2]]), "corrupt or truncated PNG"),
        (_images("png", [bomb]), "the PNG is 60000x60000; this plan takes 16x16"),
        (_images("png", [bigger]), "the PNG is 32x32; this plan takes 16x16"),
        (_images("jpeg", [b"\xff\xd8" + b"\0" * 100_000]), "encoded bytes exceed the limit"),
        (_images("gif", [png]), "image format 'gif' is not one of png, jpeg"),
        (_images("png", [jpeg]), "not a PNG"),
        (_images("png", [png] * 65), "batch of 65 images"),
        (pb.PredictRequest(input=pb.Tensor(data=bytes(c * h * w), dtype="uint8", shape=[1, c, h + 1, w])),
         "bytes"),
    ]
    with ShoalClient(cluster.central.target, image_bytes=4 * c * h * w * 200) as client:
        for request, message in cases:
            with pytest.raises(RemoteError) as excinfo:
                client.call(request)
            assert excinfo.value.code == grpc.StatusCode.INVALID_ARGUMENT, message
            assert message in excinfo.value.details
        assert client.predict(good, input_format="png").logits.shape == (1, 5)   # still serving


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_central_node_on_cuda_aggregates_there_and_answers_what_the_cpu_answers(plan, in_process):
    cluster = in_process(central=False)
    server, servicer = start_central(plan, cluster.targets, accelerator="cuda", connect_timeout=10.0, warmup=2)
    cluster.central, cluster.servicer = server, servicer
    assert next(servicer.variants[0].aggregator.parameters()).device.type == "cuda"
    x = torch.randn(2, *plan.config.input_shape)
    with ShoalClient(server.target) as client:
        p = client.predict(x, top_k=1)
    torch.testing.assert_close(p.logits, reference_logits(plan, x), rtol=1e-3, atol=1e-3)


def test_non_finite_and_overflowing_inputs_are_refused_and_no_reply_is_ok_with_nan(plan, in_process):
    """A finite 1e20 used to come back as NaN logits with status OK."""
    cluster = in_process()
    shape = plan.config.input_shape
    with ShoalClient(cluster.central.target) as client:
        for value, message in ((float("nan"), "NaN or infinite"), (float("inf"), "NaN or infinite"),
                               (1e20, "values beyond"), (-3e4, "values beyond")):
            x = torch.zeros(1, *shape)
            x[0, 0, 0, 0] = value
            with pytest.raises(RemoteError) as info:
                client.predict(x)
            assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT and message in info.value.details
        assert torch.isfinite(client.predict(torch.full((1, *shape), 9e3)).logits).all()   # large but fine


def _health(target: str) -> str:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(target) as channel:
        status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service="shoal.v1.Central"),
                                                           timeout=2.0).status
    return health_pb2.HealthCheckResponse.ServingStatus.Name(status)


def _eventually(check, timeout: float = 10.0) -> bool:
    until = time.monotonic() + timeout
    while time.monotonic() < until:
        if check():
            return True
        time.sleep(0.05)
    return False


def test_an_impostor_on_a_dead_workers_port_gets_no_image_and_health_tells_the_truth(plan, in_process):
    """Issue 12: a process that took a dead worker's port used to receive the users' images and set the answer.
    Now the central node re-checks identity on every reconnection, does not call an unverified worker, and
    reports NOT_SERVING meanwhile; the real worker back on the port restores SERVING."""
    cluster = in_process()
    target = cluster.central.target
    x = torch.randn(1, *plan.config.input_shape)
    assert _health(target) == "SERVING"
    server, _ = cluster.workers["edge-a"]
    port = server.port
    server.stop(0)
    assert _eventually(lambda: _health(target) == "NOT_SERVING")
    impostor, impostor_servicer = start_worker(plan, "edge-b", port=port, warmup=1)   # another device's sub-model
    cluster.extra.append(impostor)
    seen = []

    class Counting:
        def __init__(self, runner):
            self.runner, self.feature_width = runner, runner.feature_width

        def __call__(self, batch):
            seen.append(batch)
            return self.runner(batch)

    impostor_servicer.runner = Counting(impostor_servicer.runner)
    with ShoalClient(target) as client:
        for _ in range(5):
            with pytest.raises(RemoteError) as info:
                client.predict(x)
            assert info.value.code in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.UNAVAILABLE)
            time.sleep(0.2)
        assert "does not serve device 'edge-a'" in info.value.details
        assert seen == [] and _health(target) == "NOT_SERVING"
        impostor.stop(0)
        real, _ = start_worker(plan, "edge-a", port=port, warmup=1)
        cluster.extra.append(real)
        assert _eventually(lambda: _health(target) == "SERVING", timeout=15.0)
        assert torch.allclose(client.predict(x).logits, reference_logits(plan, x), atol=1e-5)


def test_one_stall_does_not_demote_a_worker_but_a_streak_does_and_a_hit_restores_it():
    from shoal.runtime.central import MissTracker

    t = MissTracker(misses=3, backoff_s=2.0)
    t.record(False, now=0.0)
    t.record(True, now=0.1)
    assert not t.demoted(now=0.2)                       # a single 2-second stall changes nothing
    for k in range(3):
        t.record(False, now=1.0 + k)
    assert t.demoted(now=3.5) and not t.demoted(now=5.1)   # demoted for 2 s, then on trial
    t.record(False, on_trial=True, now=5.2)             # the trial fails: demoted again, for twice as long
    assert t.demoted(now=9.0) and not t.demoted(now=9.3)
    t.record(False, on_trial=False, now=6.0)            # misses while demoted (not waited for) count nothing
    t.record(True, on_trial=False, now=9.4)             # back in time although not waited for: restored
    assert not t.demoted(now=9.5) and t.streak == 0


def test_with_an_slo_the_answer_comes_from_the_devices_back_in_time_and_says_its_worth(plan, in_process):
    cluster = in_process(central=False, faults={"edge-b": Fault(delay_ms=400)})
    server, servicer = start_central(plan, cluster.targets, warmup=1, connect_timeout=10.0, slo_ms=150.0)
    cluster.central, cluster.servicer = server, servicer
    worth = {("hub", "edge-a"): 0.9, ("hub", "edge-a", "edge-b"): 0.95}
    servicer.variants[0].expected = lambda present: worth.get(tuple(present))
    x = torch.randn(1, *plan.config.input_shape)
    with ShoalClient(server.target) as client:
        replies = [client.predict(x) for _ in range(5)]
        for p in replies:
            assert p.degraded and p.missing == ("edge-b",)
        errors = [next(t.error for t in p.timings if t.device == "edge-b") for p in replies]
        assert "within the 150 ms SLO" in errors[0] and "demoted" in errors[-1]   # after three misses in a row
        raw = client.call(pb.PredictRequest(input=encode(x)))
        assert raw.expected_accuracy == pytest.approx(0.9) and raw.HasField("expected_accuracy")
        servicer.min_accuracy = 0.92
        with pytest.raises(RemoteError) as info:
            client.predict(x)
        assert info.value.code == grpc.StatusCode.UNAVAILABLE
        assert "without edge-b the plan answers at 90.0% top-1, below --min-accuracy 92.0%" in info.value.details
        servicer.variants[0].expected = lambda present: None
        with pytest.raises(RemoteError, match="an unmeasured accuracy"):
            client.predict(x)


def test_a_variant_is_judged_by_its_tail_but_one_stall_is_ignored():
    from shoal.runtime.central import LiveEstimates, VariantServing

    v = VariantServing("v", None, None, (), (), predicted={"hub": (2.0, 0.0)}, fixed_ms=0.0)  # type: ignore[arg-type]
    est = LiveEstimates(window=9)
    assert est.predict_ms(v) == 2.0                       # nothing measured yet: the plan's prediction
    for ratio in (1.0,) * 8 + (1000.0,):                  # one 2-second stall among nine calls
        est.observe_total("v", 2.0 * ratio, 2.0)
    assert est.predict_ms(v) == 2.0
    for ratio in (1.0,) * 6 + (3.0, 3.0, 3.0):            # one call in three is 3x slow: its tail counts
        est.observe_total("v", 2.0 * ratio, 2.0)
    assert est.predict_ms(v) == 6.0 and est.predict_ms(v, scaled=False) == 2.0


def test_an_idle_probe_refreshes_unused_workers_and_takes_back_one_that_recovered(plan, in_process):
    cluster = in_process(central=False, faults={"edge-b": Fault(delay_ms=400)})
    server, servicer = start_central(plan, cluster.targets, warmup=1, connect_timeout=10.0, slo_ms=150.0,
                                     probe_every_s=None)   # the test probes by hand
    cluster.central, cluster.servicer = server, servicer
    x = torch.randn(1, *plan.config.input_shape)
    assert servicer.probe(stale_s=0.0) == {}   # nothing to send yet: probes reuse a client's input
    with ShoalClient(server.target) as client:
        for _ in range(4):
            assert client.predict(x).missing == ("edge-b",)
        assert servicer.trackers["edge-b"].demoted()
        # edge-a answered within the minute: not stale; edge-b never did: probed, and it answers, but
        # 400 ms late for a 150 ms SLO, so it stays demoted
        assert servicer.probe(stale_s=60.0) == {"edge-b": True} and servicer.trackers["edge-b"].demoted()
        seen = len(servicer.estimates.transfer["edge-a"])
        assert servicer.probe(stale_s=0.0) == {"edge-a": True, "edge-b": True}
        assert len(servicer.estimates.transfer["edge-a"]) == min(seen + 1, servicer.estimates.window)
        cluster.workers["edge-b"][1].fault = None       # it recovers: the next probe takes it back
        assert servicer.probe(stale_s=0.0)["edge-b"] and not servicer.trackers["edge-b"].demoted()
        reply = client.predict(x)
        assert not reply.degraded and reply.missing == ()


def test_a_plan_measures_what_every_subset_of_devices_is_worth(plan):
    """An even plan records no accuracy; the expected worth of any subset is then unknown, not guessed."""
    assert plan.document.accuracy is None
