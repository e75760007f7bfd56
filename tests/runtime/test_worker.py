from __future__ import annotations

import threading
import time

import grpc
import pytest
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc

from shoal.errors import ConfigError
from shoal.models import pooled_features
from shoal.runtime import shoal_pb2 as pb
from shoal.runtime import shoal_pb2_grpc as pb_grpc
from shoal.runtime.codec import decode, encode
from shoal.runtime.device import SubModelRunner
from shoal.runtime.server import start_server
from shoal.runtime.status import WORKER_SERVICE
from shoal.runtime.worker import FAULT_ENV, Fault, Identity, WorkerServicer, start_worker


@pytest.fixture
def worker(plan):
    running, servicer = start_worker(plan, "edge-a", warmup=1, max_batch=4)
    channel = grpc.insecure_channel(running.target, options=[("grpc.max_send_message_length", 8 << 20)])
    yield running, servicer, pb_grpc.WorkerStub(channel)
    channel.close()
    running.stop(0)


def _request(x: torch.Tensor, **fields) -> pb.FeaturesRequest:
    request = pb.FeaturesRequest(request_id=7, **fields)
    encode(x, request.input)
    return request


def test_features_are_the_pooled_features_of_the_sub_model(plan, worker):
    _, servicer, stub = worker
    x = torch.randn(3, *plan.config.input_shape)
    reply = stub.Features(_request(x, plan_fingerprint=servicer.identity.plan_fingerprint, device="edge-a"),
                          timeout=10)
    with torch.inference_mode():
        expected = pooled_features(plan.build_submodel("edge-a"), x)
    assert reply.request_id == 7 and reply.device == "edge-a"
    assert torch.equal(decode(reply.features), expected)
    assert reply.compute_ms > 0 and reply.queue_ms >= 0


def test_info_names_plan_device_and_width(plan, worker):
    _, servicer, stub = worker
    info = stub.Info(pb.InfoRequest(), timeout=5)
    assert (info.plan_fingerprint, info.device, info.role, info.ready) == (
        servicer.identity.plan_fingerprint, "edge-a", "worker", True)
    assert info.feature_width == plan.spec("edge-a").width and list(info.input_shape) == [3, 16, 16]


def _bad_tensors(shape):
    c, h, w = shape
    return {
        "wrong shape": (pb.Tensor(data=b"\0" * 4 * c * 8 * 8, dtype="float32", shape=[1, c, 8, 8]),
                        "expected images of shape"),
        "wrong dtype": (pb.Tensor(data=b"\0" * 8 * c * h * w, dtype="float64", shape=[1, c, h, w]),
                        "dtype 'float64' is not accepted"),
        "unknown dtype": (pb.Tensor(data=b"\0" * 4, dtype="pickle", shape=[1]), "unknown dtype"),
        "empty": (pb.Tensor(data=b"", dtype="float32", shape=[0, c, h, w]), "empty tensor"),
        "missing input": (pb.Tensor(), "unknown dtype ''"),
        "bytes mismatch": (pb.Tensor(data=b"\0" * 10, dtype="float32", shape=[1, c, h, w]), "needs"),
        "batch over the limit": (pb.Tensor(data=b"\0" * 4 * 5 * c * h * w, dtype="float32", shape=[5, c, h, w]),
                                 "exceed the limit"),
    }


@pytest.mark.parametrize("case", list(_bad_tensors((3, 16, 16))))
def test_bad_input_is_invalid_argument_and_the_worker_stays_up(plan, worker, case):
    _, _, stub = worker
    tensor, match = _bad_tensors(plan.config.input_shape)[case]
    with pytest.raises(grpc.RpcError) as excinfo:
        stub.Features(pb.FeaturesRequest(input=tensor), timeout=5)
    assert excinfo.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert match in excinfo.value.details() and "edge-a" in excinfo.value.details()
    assert stub.Features(_request(torch.zeros(1, *plan.config.input_shape)), timeout=5).features.shape == [1, 16]


def test_oversized_message_is_refused_by_grpc_and_the_worker_stays_up(plan, worker):
    _, _, stub = worker
    huge = pb.Tensor(data=b"\0" * (4 << 20), dtype="float32", shape=[1 << 20])
    with pytest.raises(grpc.RpcError) as excinfo:
        stub.Features(pb.FeaturesRequest(input=huge), timeout=5)
    assert excinfo.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert stub.Features(_request(torch.zeros(1, *plan.config.input_shape)), timeout=5).device == "edge-a"


@pytest.mark.parametrize("fields, match", [
    ({"plan_fingerprint": "0123456789abcdef"}, "the request is for plan 0123456789abcdef"),
    ({"device": "edge-b"}, "this worker serves device 'edge-a', the request is for 'edge-b'"),
])
def test_request_for_another_plan_or_device_is_failed_precondition(plan, worker, fields, match):
    _, _, stub = worker
    with pytest.raises(grpc.RpcError) as excinfo:
        stub.Features(_request(torch.zeros(1, *plan.config.input_shape), **fields), timeout=5)
    assert excinfo.value.code() == grpc.StatusCode.FAILED_PRECONDITION and match in excinfo.value.details()


def test_request_before_warm_up_is_unavailable_and_health_not_serving(plan):
    identity = Identity.of(plan, "edge-b")
    servicer = WorkerServicer(SubModelRunner(plan.build_submodel("edge-b"), plan.config, "edge-b"),
                              identity)
    running = start_server(lambda s: pb_grpc.add_WorkerServicer_to_server(servicer, s), WORKER_SERVICE)
    channel = grpc.insecure_channel(running.target)
    try:
        health = health_pb2_grpc.HealthStub(channel)
        check = health_pb2.HealthCheckRequest(service=WORKER_SERVICE)
        assert health.Check(check, timeout=5).status == health_pb2.HealthCheckResponse.NOT_SERVING
        stub = pb_grpc.WorkerStub(channel)
        with pytest.raises(grpc.RpcError) as excinfo:
            stub.Features(_request(torch.zeros(1, *plan.config.input_shape)), timeout=5)
        assert excinfo.value.code() == grpc.StatusCode.UNAVAILABLE and "warming up" in excinfo.value.details()
        assert stub.Info(pb.InfoRequest(), timeout=5).ready is False
        servicer.runner.warm_up(1)
        servicer.ready.set()
        running.set_serving(True)
        assert health.Check(check, timeout=5).status == health_pb2.HealthCheckResponse.SERVING
        assert stub.Features(_request(torch.zeros(1, *plan.config.input_shape)), timeout=5).device == "edge-b"
    finally:
        channel.close()
        running.stop(0)


def test_graceful_shutdown_finishes_in_flight_calls_and_refuses_new_ones(plan):
    running, _ = start_worker(plan, "edge-a", warmup=1, fault=Fault(delay_ms=600))
    channel = grpc.insecure_channel(running.target)
    stub = pb_grpc.WorkerStub(channel)
    try:
        in_flight = stub.Features.future(_request(torch.zeros(1, *plan.config.input_shape)), timeout=10)
        time.sleep(0.2)  # the call is inside the handler
        stopper = threading.Thread(target=running.stop, args=(5.0,))
        stopper.start()
        time.sleep(0.1)
        with pytest.raises(grpc.RpcError) as excinfo:
            stub.Features(_request(torch.zeros(1, *plan.config.input_shape)), timeout=5)
        assert excinfo.value.code() == grpc.StatusCode.UNAVAILABLE
        assert in_flight.result(timeout=10).device == "edge-a"
        stopper.join(10)
    finally:
        channel.close()
        running.stop(0)


def test_central_device_cannot_be_served_as_a_worker(plan):
    with pytest.raises(ConfigError, match="central node"):
        start_worker(plan, "hub")


def test_fault_from_env(monkeypatch):
    monkeypatch.setenv(FAULT_ENV, "delay_ms=250")
    assert Fault.from_env() == Fault(delay_ms=250.0)
    monkeypatch.setenv(FAULT_ENV, "crash=1")
    with pytest.raises(ConfigError, match="unknown field"):
        Fault.from_env()
    monkeypatch.delenv(FAULT_ENV)
    assert Fault.from_env() is None


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is visible")
def test_a_cuda_device_without_a_gpu_is_refused_in_one_line(plan):
    from shoal.errors import PlatformError

    with pytest.raises(PlatformError, match=r"no CUDA device is visible here") as info:
        start_worker(plan, "edge-a", accelerator="cuda")
    assert "\n" not in str(info.value)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_worker_on_cuda_answers_what_the_cpu_answers(plan):
    x = torch.randn(3, *plan.config.input_shape)
    on_cpu = SubModelRunner(plan.build_submodel("edge-a"), plan.config, "edge-a")(x)
    on_gpu = SubModelRunner(plan.build_submodel("edge-a"), plan.config, "edge-a", "cuda")(x)
    assert on_gpu.features.device.type == "cpu"   # features leave on the host, ready to encode
    torch.testing.assert_close(on_gpu.features, on_cpu.features, rtol=1e-3, atol=1e-3)
