"""Who may talk to a server: TLS (grpc's own credentials), bearer tokens, peer identity, rate limits.

- **TLS** on every server (`TlsFiles`: certificate, key, CA; `shoal certs` makes them). A
  worker requires a client certificate (mutual TLS) and answers only a peer whose
  certificate names the plan's central node; the central node's clients authenticate
  with a token instead. Channels verify the server's certificate against the CA and
  its name against the *device name* (`grpc.ssl_target_name_override`), so the address
  may change without re-issuing certificates, and a process that takes a dead worker's
  port cannot pass for it without that device's key.
- **Tokens**: `<plan fingerprint>.<secret>`, read from a file (`--token-file`) or
  `$SHOAL_TOKEN`, never from the command line, never logged (`Token.__repr__` hides it),
  compared in constant time (`hmac.compare_digest`). A token of another plan is
  PERMISSION_DENIED, a missing or wrong one UNAUTHENTICATED.
- **Rate limit** per client identity (its certificate name, else its IP address): a token
  bucket; beyond it RESOURCE_EXHAUSTED. Concurrency is bounded by the server itself
  (`maximum_concurrent_rpcs`, also RESOURCE_EXHAUSTED): nothing queues without bound.

`Guard` is one server interceptor doing the three checks for the methods it guards. A server
listens in one of two ways, each in one place: `Security.for_clients` (a central node, a Janus
device: token and rate limit) and `Security.for_peer` (a worker, a Janus server: mutual TLS with
the one peer that may call it).
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import os
import secrets
import stat
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from shoal.errors import ConfigError

logger = logging.getLogger(__name__)

TOKEN_ENV = "SHOAL_TOKEN"
CA_FILE = "ca.crt"
TOKEN_FILE = "client.token"


def _read_private(path: Path, what: str) -> bytes:
    """A key or token file, refused when others may read it (they could impersonate its owner)."""
    if not path.is_file():
        raise ConfigError(f"{what} {path} does not exist")
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise ConfigError(f"{what} {path} is readable by others (mode {mode:o}); `chmod 600 {path}`")
    return path.read_bytes()


class Token:
    """A bearer token `<plan fingerprint>.<secret>`; its repr never shows the secret."""

    def __init__(self, value: str) -> None:
        value = value.strip()
        plan, dot, secret = value.partition(".")
        if not dot or not plan or len(secret) < 16:
            raise ConfigError("a shoal token looks like <plan fingerprint>.<secret of 16+ characters>; "
                              "`shoal certs` writes one")
        self._value = value
        self.plan = plan

    @classmethod
    def new(cls, plan_fingerprint: str) -> Token:
        return cls(f"{plan_fingerprint}.{secrets.token_urlsafe(32)}")

    @classmethod
    def load(cls, path: str | Path | None) -> Token | None:
        """From `path` (owner-only permissions), else `$SHOAL_TOKEN`, else None."""
        if path is not None:
            return cls(_read_private(Path(path), "token file").decode())
        value = os.environ.get(TOKEN_ENV)
        return cls(value) if value else None

    @property
    def value(self) -> str:
        return self._value

    def metadata(self) -> tuple[tuple[str, str]]:
        return (("authorization", f"Bearer {self._value}"),)

    def matches(self, presented: str) -> bool:
        return hmac.compare_digest(self._value.encode(), presented.encode())

    def __repr__(self) -> str:
        return f"Token(plan={self.plan!r}, secret=***)"


@dataclass(frozen=True)
class TlsFiles:
    """A device's certificate and key and the CA that signed the plan's certificates."""

    cert: Path
    key: Path
    ca: Path

    @classmethod
    def from_dir(cls, directory: str | Path, name: str) -> TlsFiles:
        """`<dir>/<name>.crt`, `<dir>/<name>.key` and `<dir>/ca.crt` (the layout `shoal certs` writes)."""
        d = Path(directory)
        files = cls(d / f"{name}.crt", d / f"{name}.key", d / CA_FILE)
        missing = [str(p) for p in (files.cert, files.key, files.ca) if not p.is_file()]
        if missing:
            raise ConfigError(f"TLS files missing: {', '.join(missing)}; create them with `shoal certs`")
        return files

    def _load(self) -> tuple[bytes, bytes, bytes]:
        return self.cert.read_bytes(), _read_private(self.key, "private key"), self.ca.read_bytes()

    def server_credentials(self, require_client_cert: bool) -> grpc.ServerCredentials:
        cert, key, ca = self._load()
        return grpc.ssl_server_credentials([(key, cert)], root_certificates=ca,
                                           require_client_auth=require_client_cert)

    def channel_credentials(self) -> grpc.ChannelCredentials:
        """Mutual TLS: verify the server against the CA and present this device's certificate."""
        cert, key, ca = self._load()
        return grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)


def client_credentials(ca: str | Path) -> grpc.ChannelCredentials:
    """A client of the central node: verify it against the CA (the token authenticates the client)."""
    return grpc.ssl_channel_credentials(root_certificates=Path(ca).read_bytes())


def name_override(name: str) -> list[tuple[str, Any]]:
    """Channel options checking the server's certificate against a device name, not the address."""
    return [("grpc.ssl_target_name_override", name), ("grpc.default_authority", name)]


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(host: str, tls: TlsFiles | None, insecure: bool) -> None:
    """Refuse to expose a server beyond this machine without TLS, unless the user says --insecure."""
    if tls is None and not insecure and not is_loopback(host):
        raise ConfigError(f"listening on {host} without TLS lets anyone on that network use this server; "
                          "give --tls-dir (keys from `shoal certs`) or pass --insecure if you mean it")
    if tls is None and insecure and not is_loopback(host):
        logger.warning("listening on %s without TLS or authentication (--insecure)", host)


class RateLimiter:
    """Token buckets per client identity: `rate` calls per second, bursts of `burst`; bounded memory."""

    def __init__(self, rate: float, burst: int, max_clients: int = 10_000) -> None:
        if rate <= 0 or burst < 1:
            raise ConfigError(f"rate limit must be positive with a burst of at least 1, got {rate}, {burst}")
        self.rate, self.burst, self.max_clients = rate, burst, max_clients
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._lock = threading.Lock()

    def allow(self, identity: str, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        with self._lock:
            level, last = self._buckets.pop(identity, (float(self.burst), now))
            level = min(float(self.burst), level + (now - last) * self.rate)
            allowed = level >= 1.0
            self._buckets[identity] = (level - 1.0 if allowed else level, now)
            while len(self._buckets) > self.max_clients:
                self._buckets.popitem(last=False)
            return allowed


def peer_identity(context: grpc.ServicerContext) -> tuple[str | None, str]:
    """(certificate common name or None, identity for rate limiting: that name, else the peer's IP)."""
    auth = context.auth_context() or {}
    names = auth.get("x509_common_name") or []
    name = names[0].decode() if names else None
    peer = context.peer() or ""
    host = peer.split(":", 1)[1].rsplit(":", 1)[0] if ":" in peer else peer   # "ipv4:1.2.3.4:5678"
    return name, name or host


@dataclass(frozen=True)
class GuardPolicy:
    """What `Guard` checks on its methods.

    Attributes:
        methods: Full method names guarded ("/shoal.v1.Central/Predict").
        token: The expected bearer token (None: no token needed).
        plan: This server's plan fingerprint (a token of another plan is PERMISSION_DENIED).
        peers: Certificate names allowed to call (empty: any); needs mutual TLS.
        rate: Calls per second per client identity (None: unlimited).
        burst: Bucket size of the rate limit.
    """

    methods: frozenset[str]
    token: Token | None = None
    plan: str = ""
    peers: frozenset[str] = frozenset()
    rate: float | None = None
    burst: int = 50


class Guard(grpc.ServerInterceptor):
    """Token, peer-certificate and rate checks before a guarded unary method runs."""

    def __init__(self, policy: GuardPolicy) -> None:
        self.policy = policy
        self.limiter = RateLimiter(policy.rate, policy.burst) if policy.rate else None

    def intercept_service(self, continuation: Callable[[Any], Any], details: Any) -> Any:
        handler = continuation(details)
        if handler is None or details.method not in self.policy.methods or handler.unary_unary is None:
            return handler
        inner = handler.unary_unary
        metadata = tuple(details.invocation_metadata or ())

        def guarded(request: Any, context: grpc.ServicerContext) -> Any:
            self.check(metadata, context)
            return inner(request, context)

        return grpc.unary_unary_rpc_method_handler(guarded, request_deserializer=handler.request_deserializer,
                                                   response_serializer=handler.response_serializer)

    def check(self, metadata: Sequence[tuple[str, Any]], context: grpc.ServicerContext) -> None:
        """Abort the call (UNAUTHENTICATED, PERMISSION_DENIED, RESOURCE_EXHAUSTED) unless it may run."""
        policy = self.policy
        name, identity = peer_identity(context)
        if policy.peers and name not in policy.peers:
            context.abort(grpc.StatusCode.PERMISSION_DENIED,
                          f"only {', '.join(sorted(policy.peers))} may call this server"
                          + (f"; the caller's certificate names {name!r}" if name else
                             "; the caller presented no certificate"))
        if policy.token is not None:
            presented = next((str(v) for k, v in metadata if k == "authorization"), "")
            if not presented.startswith("Bearer ") or not presented[7:].strip():
                context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing bearer token (authorization metadata)")
            value = presented[7:].strip()
            if value.partition(".")[0] != policy.plan:
                context.abort(grpc.StatusCode.PERMISSION_DENIED, "the token is for another plan")
            if not policy.token.matches(value):
                context.abort(grpc.StatusCode.UNAUTHENTICATED, "wrong bearer token")
        if self.limiter is not None and not self.limiter.allow(identity):
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                          f"rate limit of {policy.rate:g} calls/s for {identity} exceeded; slow down")


@dataclass(frozen=True)
class Listener:
    """How one server listens (`Security.for_clients`, `Security.for_peer`).

    Attributes:
        tls: Its device's TLS files (None: plaintext); also what it calls others with.
        credentials: For `start_server` (None: plaintext).
        interceptors: For `start_server` (the `Guard`, when there is something to check).
    """

    tls: TlsFiles | None
    credentials: grpc.ServerCredentials | None
    interceptors: tuple[grpc.ServerInterceptor, ...]

    def channel_credentials(self) -> grpc.ChannelCredentials | None:
        """Credentials to call another device of the plan with this device's certificate."""
        return self.tls.channel_credentials() if self.tls is not None else None


@dataclass(frozen=True)
class Security:
    """How a process of the runtime secures itself and its calls (the `--tls-dir`, `--token-file`,
    `--insecure` and `--rate-limit` options).

    Attributes:
        tls_dir: Folder of `shoal certs` output (None: plaintext, loopback only unless `insecure`).
        token_file: The central node's bearer token (None: `$SHOAL_TOKEN`, else no token needed
            by a central node; clients send it when they have one).
        insecure: Allow plaintext on a non-loopback address.
        rate: Calls per second per client identity at the central node (None: unlimited).
    """

    tls_dir: Path | None = None
    token_file: Path | None = None
    insecure: bool = False
    rate: float | None = None

    def tls(self, device: str) -> TlsFiles | None:
        return TlsFiles.from_dir(self.tls_dir, device) if self.tls_dir is not None else None

    def token(self) -> Token | None:
        return Token.load(self.token_file)

    @property
    def ca(self) -> Path | None:
        return self.tls_dir / CA_FILE if self.tls_dir is not None else None

    def for_clients(self, device: str, host: str, plan: str, methods: Sequence[str]) -> Listener:
        """How a server that clients call listens (a central node, a Janus device): TLS with `device`'s
        certificate (clients need none), the bearer token of plan `plan` and the rate limit on `methods`.

        Raises:
            ConfigError: plaintext beyond loopback without `insecure`, unreadable TLS files, or a
                token of another plan.
        """
        tls = self.tls(device)
        check_bind(host, tls, self.insecure)
        token = self.token()
        if token is not None and token.plan != plan:
            raise ConfigError(f"the token is for plan {token.plan}, this is plan {plan}; "
                              "use the client.token `shoal certs` wrote for this plan")
        guard = Guard(GuardPolicy(frozenset(methods), token=token, plan=plan, rate=self.rate))
        return Listener(tls, tls.server_credentials(require_client_cert=False) if tls else None,
                        (guard,) if token is not None or self.rate else ())

    def for_peer(self, device: str, host: str, peer: str, methods: Sequence[str]) -> Listener:
        """How a server that one peer calls listens (a worker: its central node; a Janus server: its
        device): with TLS, mutual, and `methods` answer only a certificate naming `peer`.

        Raises:
            ConfigError: plaintext beyond loopback without `insecure`, or unreadable TLS files.
        """
        tls = self.tls(device)
        check_bind(host, tls, self.insecure)
        guard = Guard(GuardPolicy(frozenset(methods), peers=frozenset({peer})))
        return Listener(tls, tls.server_credentials(require_client_cert=True) if tls else None,
                        (guard,) if tls else ())

    def args(self, central: bool) -> list[str]:
        """The same settings as `shoal serve central|worker` options (for child processes)."""
        out: list[str] = []
        if self.tls_dir is not None:
            out += ["--tls-dir", str(self.tls_dir)]
        if self.insecure:
            out += ["--insecure"]
        if central and self.token_file is not None:
            out += ["--token-file", str(self.token_file)]
        if central and self.rate is not None:
            out += ["--rate-limit", f"{self.rate:g}"]
        return out
