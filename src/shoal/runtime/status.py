"""gRPC status codes as shoal errors, and the options every channel and server shares."""

from __future__ import annotations

from typing import Any

import grpc

from shoal.errors import RuntimeServiceError

WORKER_SERVICE = "shoal.v1.Worker"
CENTRAL_SERVICE = "shoal.v1.Central"
JANUS_SERVICE = "shoal.v1.Janus"

# A restarted worker is found again within ~2 s instead of gRPC's default 120 s backoff.
_RECONNECT = [("grpc.initial_reconnect_backoff_ms", 100), ("grpc.min_reconnect_backoff_ms", 100),
              ("grpc.max_reconnect_backoff_ms", 2000)]


class RemoteError(RuntimeServiceError):
    """A call failed with a gRPC status.

    Attributes:
        code: The status code (e.g. `grpc.StatusCode.UNAVAILABLE`).
        details: The server's (or gRPC's) message.
        device: The device the failure is about, when known.
    """

    def __init__(self, code: grpc.StatusCode, details: str, device: str | None = None) -> None:
        self.code = code
        self.details = details
        self.device = device
        super().__init__(f"{code.name}: {details}")


def error_from_rpc(exc: grpc.RpcError, device: str | None = None) -> RemoteError:
    """The `RemoteError` of a failed call (a `grpc.RpcError` that is also a `grpc.Call`)."""
    code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
    details = exc.details() if hasattr(exc, "details") else str(exc)
    return RemoteError(code or grpc.StatusCode.UNKNOWN, details or "(no details)", device)


def channel_options(max_message_bytes: int) -> list[tuple[str, Any]]:
    """Options of a client channel: message limits and a quick reconnect."""
    return [("grpc.max_send_message_length", max_message_bytes),
            ("grpc.max_receive_message_length", max_message_bytes), *_RECONNECT]


def server_options(max_message_bytes: int) -> list[tuple[str, Any]]:
    """Options of a server: message limits; no port sharing (a busy port is an error, not a split)."""
    return [("grpc.max_send_message_length", max_message_bytes),
            ("grpc.max_receive_message_length", max_message_bytes), ("grpc.so_reuseport", 0)]
