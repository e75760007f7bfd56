"""Janus's split mode: the server finishes what the device started; bad tokens get a precise status."""

from __future__ import annotations

import grpc
import pytest
import torch

from shoal.models.tokens import TokenRunner, alpha_grid, counts
from shoal.plan.janus import JanusConfig, JanusModel, split_candidates
from shoal.profiling.layers import LayerLatency
from shoal.runtime import shoal_pb2 as pb
from shoal.runtime import shoal_pb2_grpc as pb_grpc
from shoal.runtime.central import LiveEstimates
from shoal.runtime.codec import decode, encode
from shoal.runtime.janus import JanusDevice, start_janus_server
from shoal.runtime.worker import Identity
from tests.conftest import make_vit


@pytest.fixture(scope="module")
def server():
    model = make_vit(img_size=16, patch_size=2, in_chans=1, depth=4)   # 65 tokens
    runner = TokenRunner(model)
    grid = alpha_grid(runner.depth, runner.tokens)[::20]
    configs = tuple(JanusConfig(a, counts(a, runner.depth, runner.tokens), 1.0 - a / 10) for a in grid)
    janus = JanusModel(configs, LayerLatency(0.2, 1.0), LayerLatency(0.01, 0.1), token_bytes=98,
                       image_bytes=1024, candidates=split_candidates(runner.depth, 3))
    identity = Identity("f" * 16, "server", "family", (1, 16, 16), 4)
    running, servicer = start_janus_server(runner, janus, identity)
    yield running, runner, janus
    running.stop(0)


def _finish(target: str, request: pb.FinishRequest) -> pb.PredictReply:
    with grpc.insecure_channel(target) as channel:
        return pb_grpc.JanusStub(channel).Finish(request, timeout=10)


def test_the_server_finishes_any_split_as_the_whole_run_would(server):
    running, runner, janus = server
    x = torch.randn(2, 1, 16, 16)
    alpha = janus.configs[-1].alpha
    with torch.no_grad():
        whole = runner(x, alpha)
        for split in (s for s in janus.candidates if 0 < s <= janus.depth):
            tokens, sizes = runner.embed(x)
            tokens, sizes = runner.blocks(tokens, sizes, 0, split, alpha)
            request = pb.FinishRequest(alpha=alpha, split=split, plan_fingerprint="f" * 16, top_k=3)
            encode(tokens.half(), request.tokens)
            encode(sizes[..., 0].half(), request.sizes)
            reply = _finish(running.target, request)
            assert torch.allclose(decode(reply.logits), whole, atol=3e-2) and reply.top_k == 3
    image = pb.PredictRequest()
    encode(x, image.input)
    reply = _finish(running.target, pb.FinishRequest(alpha=alpha, split=0, image=image))
    assert torch.allclose(decode(reply.logits), whole, atol=1e-4)


@pytest.mark.parametrize("change, status, words", [
    (dict(alpha=0.333), grpc.StatusCode.INVALID_ARGUMENT, "not on this plan's grid"),
    (dict(split=9), grpc.StatusCode.INVALID_ARGUMENT, "not one of this plan's split points"),
    (dict(split=5), grpc.StatusCode.INVALID_ARGUMENT, "not one of this plan's split points"),
    (dict(plan_fingerprint="0" * 16), grpc.StatusCode.FAILED_PRECONDITION, "this server runs plan"),
    (dict(drop_token=True), grpc.StatusCode.INVALID_ARGUMENT, "the plan keeps"),
    (dict(bad_sizes=True), grpc.StatusCode.INVALID_ARGUMENT, "sum to 65"),
    (dict(float32=True), grpc.StatusCode.INVALID_ARGUMENT, "float16"),
])
def test_tokens_that_do_not_fit_the_plan_are_refused_and_the_server_stays_up(server, change, status, words):
    running, runner, janus = server
    alpha, split = janus.configs[-1].alpha, 2
    tokens, sizes = runner.embed(torch.randn(1, 1, 16, 16))
    with torch.no_grad():
        tokens, sizes = runner.blocks(tokens, sizes, 0, split, alpha)
    sizes = sizes[..., 0]
    if change.pop("drop_token", False):
        tokens, sizes = tokens[:, :-1], sizes[:, :-1]
    if change.pop("bad_sizes", False):
        sizes = sizes * 2
    dtype = torch.float32 if change.pop("float32", False) else torch.float16
    request = pb.FinishRequest(alpha=alpha, split=split)
    for key, value in change.items():
        setattr(request, key, value)
    encode(tokens.to(dtype), request.tokens)
    encode(sizes.to(dtype), request.sizes)
    with pytest.raises(grpc.RpcError) as info:
        _finish(running.target, request)
    assert info.value.code() == status and words in info.value.details()
    assert _finish(running.target, pb.FinishRequest(alpha=0.0, split=0, image=_image())).top_k == 5   # still up


def _image() -> pb.PredictRequest:
    image = pb.PredictRequest()
    encode(torch.randn(1, 1, 16, 16), image.input)
    return image


def test_the_device_follows_the_bandwidth_it_measures(server):
    running, runner, janus = server
    device = JanusDevice(runner, janus, running.target, sla_ms=1e3, prior_mbps=1e3, fingerprint="f" * 16)
    try:
        x = torch.randn(1, 1, 16, 16)
        request = pb.PredictRequest(top_k=2)
        encode(x, request.input)
        reply, choice, _ = device.predict(request, x)
        assert choice.split == 0 and choice.alpha == 0.0 and reply.top_k == 2   # a fast prior: send the image
        assert device.estimates.throughput["server"]                           # and the transfer was measured
    finally:
        device.close()


def test_bandwidth_is_the_harmonic_mean_of_recent_throughputs():
    est = LiveEstimates(window=3)
    assert est.bandwidth_bps("l", prior_bps=5e6) == 5e6
    for bps in (1e6, 1e6, 1e8):   # one fast outlier hardly moves it
        est.observe_throughput("l", bps)
    assert est.bandwidth_bps("l", 5e6) == pytest.approx(3 / (1 / 1e6 + 1 / 1e6 + 1 / 1e8))
    est.observe_throughput("l", float("inf"))   # nonsense is ignored
    assert len(est.throughput["l"]) == 3


def test_a_fixed_configuration_is_what_the_baselines_send(server):
    running, runner, janus = server
    x = torch.randn(1, 1, 16, 16)
    request = pb.PredictRequest()
    encode(x, request.input)
    for fixed in ((0.0, 0), (janus.configs[-1].alpha, 2), (0.0, janus.depth + 1)):
        device = JanusDevice(runner, janus, running.target, sla_ms=1.0, fixed=fixed)
        try:
            reply, choice, _ = device.predict(request, x)
            assert (choice.alpha, choice.split) == fixed and reply.top_k == 5
            with torch.no_grad():
                assert torch.allclose(decode(reply.logits), runner(x, fixed[0]), atol=3e-2)
        finally:
            device.close()


def test_a_directory_without_a_janus_plan_is_one_line(tmp_path):
    from shoal.errors import DataError
    from shoal.runtime.janus import load_janus

    with pytest.raises(DataError, match="is not a Janus plan directory: janus.json is missing"):
        load_janus(tmp_path)
    (tmp_path / "janus.json").write_text('{"format_version": 1, "teacher": "x"}')
    with pytest.raises(DataError, match="janus.json"):
        load_janus(tmp_path)
