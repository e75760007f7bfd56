"""A gRPC server with the standard health service, readiness and graceful shutdown.

Workers and the central node share this: the server listens first with health
NOT_SERVING, the owner warms up and flips it to SERVING; SIGTERM/SIGINT flips
it back, stops accepting calls and lets in-flight calls finish within `grace`.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from concurrent import futures
from dataclasses import dataclass, field

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from shoal.errors import RuntimeServiceError
from shoal.runtime.status import server_options

LISTENING_PREFIX = "SHOAL_LISTENING"


@dataclass
class RunningServer:
    """A started server.

    Attributes:
        server: The gRPC server.
        health: Its health servicer (status of "" and of `service`).
        service: Full name of the main service ("shoal.v1.Worker" or "shoal.v1.Central").
        host: Bound host.
        port: Bound port (the real one when 0 was asked).
    """

    server: grpc.Server
    health: health.HealthServicer
    service: str
    host: str
    port: int
    pool: futures.ThreadPoolExecutor
    _stopped: threading.Event = field(default_factory=threading.Event)

    @property
    def target(self) -> str:
        return f"{self.host}:{self.port}"

    def set_serving(self, serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ("", self.service):
            self.health.set(name, status)

    def stop(self, grace: float = 5.0) -> None:
        """Refuse new calls, finish in-flight ones within `grace` seconds, then close (idempotent)."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        self.health.enter_graceful_shutdown()
        self.server.stop(grace).wait(grace + 1.0)
        self.pool.shutdown(wait=True, cancel_futures=True)  # gRPC does not own the handler threads


def start_server(
    register: Callable[[grpc.Server], None],
    service: str,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    max_message_bytes: int = 4 << 20,
    threads: int = 8,
    max_concurrent: int = 64,
    credentials: grpc.ServerCredentials | None = None,
    interceptors: Sequence[grpc.ServerInterceptor] = (),
) -> RunningServer:
    """Create, bind and start a server whose health is NOT_SERVING until `set_serving(True)`.

    Args:
        register: Adds the servicers (e.g. `lambda s: add_WorkerServicer_to_server(w, s)`).
        service: Full service name reported by the health service.
        host: Interface to bind (127.0.0.1 unless the device must be reached from elsewhere).
        port: Port; 0 picks a free one.
        max_message_bytes: Largest message sent or received.
        threads: Handler threads (created once, reused by every call).
        max_concurrent: Calls in progress beyond which gRPC answers RESOURCE_EXHAUSTED.
        credentials: TLS credentials (`shoal.runtime.security.TlsFiles`); None: plaintext.
        interceptors: Server interceptors (`shoal.runtime.security.Guard`).

    Raises:
        RuntimeServiceError: the address cannot be bound.
    """
    pool = futures.ThreadPoolExecutor(max_workers=threads, thread_name_prefix="shoal-rpc")
    server = grpc.server(pool, options=server_options(max_message_bytes), maximum_concurrent_rpcs=max_concurrent,
                         interceptors=list(interceptors))
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    register(server)
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        bound = (server.add_secure_port(address, credentials) if credentials is not None
                 else server.add_insecure_port(address))
    except RuntimeError as exc:
        bound, reason = 0, str(exc)
    else:
        reason = "the port is in use or the address is not local"
    if not bound:
        pool.shutdown(wait=False)
        raise RuntimeServiceError(f"cannot listen on {address}: {reason}; pick another --port (0: any free port)")
    running = RunningServer(server, health_servicer, service, host, bound, pool)
    running.set_serving(False)
    server.start()
    return running


def announce(running: RunningServer) -> None:
    """Tell a supervising process where we listen: one machine-readable line on stdout."""
    sys.stdout.write(f"{LISTENING_PREFIX} {running.target}\n")
    sys.stdout.flush()


def wait_for_shutdown(running: RunningServer, *, grace: float = 5.0, watch_parent: bool = False,
                      on_stop: Callable[[], None] | None = None) -> None:
    """Block until SIGTERM/SIGINT (or, with `watch_parent`, the parent process exits), then stop gracefully.

    Must run in the main thread (signal handlers).
    """
    stop = threading.Event()
    parent = os.getppid()

    def handler(signum: int, frame: object) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        while not stop.wait(0.5):
            if watch_parent and os.getppid() != parent:  # orphaned: the supervisor died without stopping us
                break
        running.set_serving(False)
        if on_stop is not None:
            on_stop()
        running.stop(grace)
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
