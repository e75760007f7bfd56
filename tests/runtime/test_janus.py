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
    running, servicer = start_janus_server(runner, janus, identity, device="edge")
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
        reply, choice, _ = device.predict(request, lambda: x)
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
        decoded = []
        try:
            reply, choice, _ = device.predict(request, lambda seen=decoded: seen.append(1) or x)
            assert (choice.alpha, choice.split) == fixed and reply.top_k == 5
            assert len(decoded) == (0 if fixed[1] == 0 else 1)   # the image is sent as it is, decoded there
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


# -- a whole Janus plan served as processes: the device answers clients, the server finishes ---------------

TINY = dict(img_size=16, patch_size=4, in_chans=1, num_classes=10, embed_dim=32, depth=3, num_heads=2, mlp_ratio=2.0)


@pytest.fixture(scope="module")
def janus_plan(tmp_path_factory):
    """A Janus plan directory of a tiny checkpoint (17 tokens, 3 blocks), fits made up, nothing measured."""
    import json

    from safetensors.torch import save_file

    from shoal.devices.spec import DeviceSpec
    from shoal.models import load_teacher
    from shoal.plan.document import InputSpec
    from shoal.plan.janus import JanusPlan

    root = tmp_path_factory.mktemp("janus")
    path = root / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in make_vit(**TINY).state_dict().items()}, str(path))
    (root / "tiny.json").write_text(json.dumps({"timm_model": "vit_tiny_patch16_224", "timm_kwargs": TINY}))
    teacher = load_teacher(str(path))
    runner = TokenRunner(teacher.model)
    grid = alpha_grid(runner.depth, runner.tokens)
    configs = tuple(JanusConfig(a, counts(a, runner.depth, runner.tokens), 0.9 - a / 10) for a in grid)
    model = JanusModel(configs, LayerLatency(0.05, 0.2), LayerLatency(0.01, 0.05), token_bytes=66, image_bytes=256,
                       candidates=split_candidates(runner.depth, 2), fixed_ms=0.5)
    plan_dir = root / "plan"
    plan_dir.mkdir()
    JanusPlan(str(path), teacher.config.fingerprint(), DeviceSpec("edge", 64 << 20),
              DeviceSpec("hub", 64 << 20, central=True), "merge", model, tuple(c.accuracy for c in configs), 10,
              InputSpec((0.5,), (0.5,), "uint8", 256), {}).write(plan_dir)
    return plan_dir


def _predict_through(cluster, ca=None, token=None):
    from shoal.runtime.client import ShoalClient

    with ShoalClient(cluster.central_target, ca=ca, server_name="edge", token=token, image_bytes=4 * 256) as client:
        info = client.info()
        prediction = client.predict(torch.randint(0, 256, (2, 1, 16, 16), dtype=torch.uint8), top_k=3,
                                    normalisation=((0.5,), (0.5,)))
        return info, prediction


@pytest.mark.slow
def test_a_janus_plan_serves_as_a_device_and_a_server(janus_plan):
    from shoal.runtime.cluster import LocalCluster
    from shoal.runtime.device import plan_fingerprint

    with LocalCluster(janus_plan, emulate=False, slo_ms=50.0) as cluster:
        assert cluster.janus and cluster.front == "edge" and set(cluster.worker_targets) == {"hub"}
        info, prediction = _predict_through(cluster)
        assert info.plan_fingerprint == plan_fingerprint(janus_plan) and list(info.devices) == ["edge", "hub"]
        assert prediction.labels.shape == (2,) and prediction.top_indices.shape == (2, 3)
        assert prediction.variant.startswith("α ") and " split " in prediction.variant
        assert prediction.timings[0].device == "edge"   # the device's blocks first, then the server's
        with grpc.insecure_channel(cluster.worker_targets["hub"]) as channel:   # the server is a Janus server
            server_info = pb_grpc.JanusStub(channel).Info(pb.InfoRequest(), timeout=5)
        assert server_info.plan_fingerprint == info.plan_fingerprint


@pytest.mark.slow
def test_a_janus_plan_with_keys_takes_only_its_device_and_its_token(janus_plan, tmp_path):
    from shoal.runtime.cluster import LocalCluster
    from shoal.runtime.device import plan_fingerprint
    from shoal.runtime.pki import issue
    from shoal.runtime.security import Security, Token
    from shoal.runtime.status import RemoteError

    keys = tmp_path / "keys"
    issue(janus_plan, ["hub", "edge"], keys, plan_fingerprint(janus_plan))
    token = Token.load(keys / "client.token")
    with LocalCluster(janus_plan, emulate=False, security=Security(keys, keys / "client.token")) as cluster:
        _, prediction = _predict_through(cluster, ca=keys / "ca.crt", token=token)
        assert prediction.labels.shape == (2,)
        with pytest.raises(RemoteError, match="UNAUTHENTICATED"):   # no token
            _predict_through(cluster, ca=keys / "ca.crt")
        # the server answers the plan's device only: TLS with another device's certificate is refused
        from shoal.runtime.security import TlsFiles, name_override

        hub = TlsFiles.from_dir(keys, "hub")
        with grpc.secure_channel(cluster.worker_targets["hub"], hub.channel_credentials(),
                                 options=name_override("hub")) as channel:
            with pytest.raises(grpc.RpcError) as err:
                pb_grpc.JanusStub(channel).Info(pb.InfoRequest(), timeout=5)
            assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED and "only edge" in err.value.details()


def test_a_janus_plan_changed_after_certs_is_refused(janus_plan, tmp_path):
    import shutil

    from shoal.errors import ConfigError
    from shoal.runtime.device import plan_fingerprint
    from shoal.runtime.pki import check_signature, issue

    plan = tmp_path / "plan"
    shutil.copytree(janus_plan, plan)
    issue(plan, ["hub", "edge"], tmp_path / "keys", plan_fingerprint(plan))
    check_signature(tmp_path / "keys", plan)   # janus.json is what the CA signed
    (plan / "janus.json").write_text((plan / "janus.json").read_text().replace('"test_n": 10', '"test_n": 11'))
    with pytest.raises(ConfigError, match="janus.json is not the plan the CA signed"):
        check_signature(tmp_path / "keys", plan)


@pytest.mark.slow
def test_shoal_bench_runs_a_janus_plan_beside_the_teacher_on_the_device(janus_plan):
    from shoal.runtime.bench import run_bench

    result = run_bench(janus_plan, requests=20, warmup=3, emulate=False, input_format="uint8", sla_ms=100.0,
                       teacher_repeats=10)
    assert result.latency.median_ms > 0 and not result.errors
    assert [d.device for d in result.devices][0] == "edge" and result.teacher["device"] == "edge"
    assert all(k.startswith("α ") for k in result.answers)   # every answer names its α and split


def test_a_fixed_configuration_outside_the_plan_is_one_line(janus_plan):
    from shoal.errors import ConfigError
    from shoal.runtime.janus import load_janus, start_janus_device

    plan, runner, identity = load_janus(janus_plan, "device")
    for fixed in ((0.013, 1), (0.0, plan.model.depth + 2)):
        with pytest.raises(ConfigError, match="is not a configuration of this plan"):
            start_janus_device(plan, runner, identity, "127.0.0.1:1", fixed=fixed)


def test_each_alpha_is_corrected_by_its_own_measurements(server):
    """A pruned configuration that measures slower than its fit must not make the unpruned one look slow."""
    running, runner, janus = server
    device = JanusDevice(runner, janus, running.target, sla_ms=1e3)
    try:
        pruned = len(janus.configs) - 1   # the grid's last α; the first is α = 0
        for _ in range(5):
            device.estimates.observe("device", 40.0, 10.0, None)              # 4x, any α
            device.estimates.observe(f"device α{pruned}", 40.0, 10.0, None)   # 4x, that α
            device.estimates.observe("device α0", 10.0, 10.0, None)           # as predicted
        dev, srv = device.scales()
        assert dev[-1] == pytest.approx(4.0) and dev[0] == pytest.approx(1.0)
        assert dev[1] == pytest.approx(4.0)          # never measured: the side's ratio
        assert (srv == 1.0).all()                    # the server: nothing measured yet
        device.estimates.last["device α0"] -= 10 * device.STALE_S   # not chosen for a while:
        assert device.scales()[0][0] == pytest.approx(4.0)         # judged by the side's ratio again
        x = torch.randn(1, 1, 16, 16)
        request = pb.PredictRequest()
        encode(x, request.input)
        _, choice, _ = device.predict(request, lambda: x)   # and the keys it writes are the ones it reads
        side = "server" if choice.split == 0 else "device"
        assert f"{side} α{janus.index(choice.alpha)}" in device.estimates.ratio
    finally:
        device.close()
