"""TLS, tokens, peer identity, limits and the plan signature (issue 12): each bad case is one precise status."""

from __future__ import annotations

import datetime as dt
import os
import shutil
import threading
from pathlib import Path

import grpc
import pytest
import torch

from shoal.errors import ConfigError
from shoal.runtime import shoal_pb2 as pb
from shoal.runtime import shoal_pb2_grpc as pb_grpc
from shoal.runtime.central import start_central
from shoal.runtime.client import ShoalClient
from shoal.runtime.codec import encode
from shoal.runtime.device import plan_fingerprint
from shoal.runtime.pki import issue
from shoal.runtime.security import (
    TOKEN_FILE,
    Guard,
    GuardPolicy,
    RateLimiter,
    Security,
    TlsFiles,
    Token,
    check_bind,
    name_override,
)
from shoal.runtime.status import RemoteError
from shoal.runtime.worker import Fault, start_worker
from tests.runtime.conftest import WORKERS, reference_logits


@pytest.fixture(scope="module")
def keys(plan_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("keys") / "tls"
    issue(plan_dir, ["hub", *WORKERS], out, plan_fingerprint(plan_dir))
    return out


@pytest.fixture(scope="module")
def other_keys(plan_dir, tmp_path_factory) -> Path:
    """Another CA's material for the same plan."""
    out = tmp_path_factory.mktemp("other-keys") / "tls"
    issue(plan_dir, ["hub", *WORKERS], out, plan_fingerprint(plan_dir))
    return out


@pytest.fixture
def secure(plan, keys):
    """Workers and central node with mutual TLS and a token, in this process."""
    security = Security(keys, keys / TOKEN_FILE)
    servers = []
    try:
        workers = {n: start_worker(plan, n, warmup=1, security=security) for n in WORKERS}
        servers += [w[0] for w in workers.values()]
        central, servicer = start_central(plan, {n: w[0].target for n, w in workers.items()}, warmup=1,
                                          connect_timeout=10.0, security=security)
        servers.append(central)
        yield central, workers
    finally:
        for server in servers:
            server.stop(0)


def _client(target: str, keys: Path, token: Token | None, **kw) -> ShoalClient:
    return ShoalClient(target, ca=keys / "ca.crt", server_name="hub", token=token, timeout_s=5.0, **kw)


def test_tls_and_the_token_serve_the_same_answer(plan, keys, secure):
    central, _ = secure
    x = torch.randn(2, *plan.config.input_shape)
    with _client(central.target, keys, Token.load(keys / TOKEN_FILE)) as client:
        p = client.predict(x, top_k=1)
    assert torch.allclose(p.logits, reference_logits(plan, x), atol=1e-5)


def test_a_missing_wrong_or_other_plans_token_is_refused(plan, keys, secure):
    central, _ = secure
    x = torch.randn(1, *plan.config.input_shape)
    fingerprint = plan_fingerprint(plan.root)
    cases = [(None, grpc.StatusCode.UNAUTHENTICATED, "missing bearer token"),
             (Token(f"{fingerprint}.{'x' * 40}"), grpc.StatusCode.UNAUTHENTICATED, "wrong bearer token"),
             (Token(f"0123456789abcdef.{'y' * 40}"), grpc.StatusCode.PERMISSION_DENIED, "another plan")]
    for token, code, message in cases:
        with _client(central.target, keys, token) as client:
            with pytest.raises(RemoteError) as info:
                client.predict(x)
        assert info.value.code == code and message in info.value.details
    with _client(central.target, keys, Token.load(keys / TOKEN_FILE)) as client:   # still serving
        assert client.predict(x).logits.shape == (1, 5)


def test_plaintext_and_foreign_ca_clients_fail_fast_and_do_not_hang(plan, keys, other_keys, secure):
    central, _ = secure
    x = torch.randn(1, *plan.config.input_shape)
    token = Token.load(keys / TOKEN_FILE)
    for client in (ShoalClient(central.target, token=token, timeout_s=3.0),          # plaintext to TLS
                   _client(central.target, other_keys, token)):                      # another CA
        with client, pytest.raises(RemoteError) as info:
            client.predict(x)
        assert info.value.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


def test_a_tls_client_to_a_plaintext_server_fails_fast(plan, keys, in_process):
    cluster = in_process()
    with _client(cluster.central.target, keys, None) as client, pytest.raises(RemoteError) as info:
        client.predict(torch.randn(1, *plan.config.input_shape))
    assert info.value.code == grpc.StatusCode.UNAVAILABLE


def test_a_worker_answers_only_the_central_node(plan, keys, other_keys, secure):
    _, workers = secure
    target = workers["edge-b"][0].target
    request = pb.FeaturesRequest(device="edge-b")
    encode(torch.randn(1, *plan.config.input_shape), request.input)

    def call(tls: TlsFiles | None) -> RemoteError | pb.FeaturesReply:
        creds = tls.channel_credentials() if tls else grpc.ssl_channel_credentials((keys / "ca.crt").read_bytes())
        with grpc.secure_channel(target, creds, options=name_override("edge-b")) as channel:
            try:
                return pb_grpc.WorkerStub(channel).Features(request, timeout=5.0)
            except grpc.RpcError as exc:
                return RemoteError(exc.code(), exc.details() or "")

    as_edge_a = call(TlsFiles.from_dir(keys, "edge-a"))   # a valid certificate of the plan, not the central's
    assert isinstance(as_edge_a, RemoteError) and as_edge_a.code == grpc.StatusCode.PERMISSION_DENIED
    assert "only hub may call" in as_edge_a.details and "'edge-a'" in as_edge_a.details
    no_cert = call(None)
    assert isinstance(no_cert, RemoteError) and no_cert.code == grpc.StatusCode.UNAVAILABLE
    foreign = call(TlsFiles.from_dir(other_keys, "hub"))   # the right name from another CA
    assert isinstance(foreign, RemoteError) and foreign.code == grpc.StatusCode.UNAVAILABLE
    assert isinstance(call(TlsFiles.from_dir(keys, "hub")), pb.FeaturesReply)


def test_an_expired_or_not_yet_valid_certificate_is_refused(plan, plan_dir, tmp_path):
    """The same CA layout three times, only the validity differs: now works, past and future do not."""
    now = dt.datetime.now(dt.timezone.utc)
    request = pb.FeaturesRequest(device="edge-a")
    encode(torch.randn(1, *plan.config.input_shape), request.input)
    outcomes = {}
    for label, start in (("valid", now), ("expired", now - dt.timedelta(days=30)),
                         ("not yet valid", now + dt.timedelta(days=30))):
        dated = tmp_path / label.replace(" ", "-")
        issue(plan_dir, ["hub", *WORKERS], dated, plan_fingerprint(plan_dir), days=1, now=start)
        worker, _ = start_worker(plan, "edge-a", warmup=1, security=Security(dated))
        try:
            creds = TlsFiles.from_dir(dated, "hub").channel_credentials()
            with grpc.secure_channel(worker.target, creds, options=name_override("edge-a")) as channel:
                try:
                    pb_grpc.WorkerStub(channel).Features(request, timeout=5.0)
                    outcomes[label] = "ok"
                except grpc.RpcError as exc:
                    outcomes[label] = exc.code().name
        finally:
            worker.stop(0)
    assert outcomes == {"valid": "ok", "expired": "UNAVAILABLE", "not yet valid": "UNAVAILABLE"}


def test_key_files_readable_by_others_are_refused(keys, tmp_path):
    loose = tmp_path / "loose"
    shutil.copytree(keys, loose)
    os.chmod(loose / "edge-a.key", 0o644)
    with pytest.raises(ConfigError, match=r"edge-a.key is readable by others \(mode 644\); `chmod 600"):
        TlsFiles.from_dir(loose, "edge-a").server_credentials(True)
    os.chmod(loose / TOKEN_FILE, 0o640)
    with pytest.raises(ConfigError, match="token file .* is readable by others"):
        Token.load(loose / TOKEN_FILE)


def test_the_token_never_shows_itself():
    token = Token.new("abcdef0123456789")
    assert token.value not in repr(token) and "***" in repr(token) and token.plan == "abcdef0123456789"
    with pytest.raises(ConfigError, match="looks like <plan fingerprint>"):
        Token("no-dot")


def test_binding_beyond_loopback_without_tls_needs_insecure(plan, keys):
    for host in ("127.0.0.1", "::1", "localhost"):
        check_bind(host, None, False)
    with pytest.raises(ConfigError, match="without TLS .* pass --insecure"):
        check_bind("0.0.0.0", None, False)
    with pytest.raises(ConfigError, match="pass --insecure"):
        start_worker(plan, "edge-a", host="0.0.0.0", warmup=1)
    check_bind("0.0.0.0", TlsFiles.from_dir(keys, "edge-a"), False)
    check_bind("0.0.0.0", None, True)


def test_a_tampered_plan_is_refused_by_its_signature(plan_dir, keys, tmp_path):
    from shoal.plan.directory import load_plan

    copy = tmp_path / "plan"
    shutil.copytree(plan_dir, copy)
    (copy / "plan.json").write_text((copy / "plan.json").read_text() + " ")   # valid JSON, other bytes
    with pytest.raises(ConfigError, match="is not the plan the CA signed"):
        start_worker(load_plan(copy), "edge-a", warmup=1, security=Security(keys))


def test_rate_limit_per_client_identity():
    limiter = RateLimiter(rate=2.0, burst=3)
    assert [limiter.allow("a", now=0.0) for _ in range(4)] == [True, True, True, False]
    assert limiter.allow("b", now=0.0)                  # another client has its own bucket
    assert limiter.allow("a", now=0.5) and not limiter.allow("a", now=0.5)   # refills at 2/s


def test_the_central_node_rate_limits_a_client_and_serves_the_others(plan, in_process):
    cluster = in_process(central=False)
    central, servicer = start_central(plan, cluster.targets, warmup=1, connect_timeout=10.0,
                                      security=Security(rate=1.0))
    cluster.central, cluster.servicer = central, servicer
    x = torch.randn(1, *plan.config.input_shape)
    codes = []
    with ShoalClient(central.target) as client:
        for _ in range(Guard(GuardPolicy(frozenset())).policy.burst + 5):
            try:
                client.predict(x)
                codes.append("ok")
            except RemoteError as exc:
                codes.append(exc.code.name)
    assert codes[0] == "ok" and "RESOURCE_EXHAUSTED" in codes


def test_a_flood_beyond_the_concurrency_bound_is_resource_exhausted_and_the_rest_served(plan):
    worker, _ = start_worker(plan, "edge-a", warmup=1, fault=Fault(delay_ms=300))
    request = pb.FeaturesRequest(device="edge-a")
    encode(torch.randn(1, *plan.config.input_shape), request.input)
    outcomes: list[str] = []
    lock = threading.Lock()
    try:
        with grpc.insecure_channel(worker.target) as channel:
            stub = pb_grpc.WorkerStub(channel)
            futures = [stub.Features.future(request, timeout=60.0) for _ in range(80)]
            for future in futures:
                try:
                    future.result()
                    outcome = "ok"
                except grpc.RpcError as exc:
                    outcome = exc.code().name
                with lock:
                    outcomes.append(outcome)
    finally:
        worker.stop(0)
    assert outcomes.count("RESOURCE_EXHAUSTED") >= 80 - 64 and outcomes.count("ok") >= 1
    assert set(outcomes) <= {"ok", "RESOURCE_EXHAUSTED"}
