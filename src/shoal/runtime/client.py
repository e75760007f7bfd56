"""A small client of the central node: `ShoalClient(target).predict(images) -> Prediction`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import torch

from shoal.data.text import TOKENS_FORMAT
from shoal.errors import ConfigError
from shoal.runtime import shoal_pb2 as pb
from shoal.runtime import shoal_pb2_grpc as pb_grpc
from shoal.runtime.codec import decode, encode_input
from shoal.runtime.device import DEFAULT_MAX_BATCH
from shoal.runtime.security import Token, client_credentials, name_override
from shoal.runtime.status import channel_options, error_from_rpc


@dataclass(frozen=True)
class DeviceTiming:
    """One device's part of one request (milliseconds).

    Attributes:
        device: Device name.
        compute_ms: Sub-model forward on the device.
        queue_ms: Waiting for the device.
        round_trip_ms: Issue to reply, seen by the central node (its own device: compute + queue).
        transfer_ms: round_trip - compute - queue - decode: network and serialisation.
        ok: Whether the device answered.
        error: Why not, when not.
    """

    device: str
    compute_ms: float
    queue_ms: float
    round_trip_ms: float
    transfer_ms: float
    ok: bool
    error: str = ""


@dataclass(frozen=True)
class Prediction:
    """The central node's answer for a batch.

    Attributes:
        logits: (B, num_classes).
        top_indices: (B, k) class indices, most probable first.
        top_probs: (B, k) softmax probabilities.
        timings: Per device, plan order (central first).
        aggregation_ms: Aggregator + softmax/top-k on the central node.
        server_ms: Central node time from receipt to reply.
        degraded: Some devices did not answer (the central node runs with --degrade).
        missing: Those devices.
        request_id: Echoed id.
        expected_accuracy: Test top-1 the plan measured for the devices that answered (None: unknown).
        late: Answered after the central node's --slo-ms.
        variant: The plan variant that answered ("primary" unless a --pareto plan is served).
    """

    logits: torch.Tensor
    top_indices: torch.Tensor
    top_probs: torch.Tensor
    timings: tuple[DeviceTiming, ...]
    aggregation_ms: float
    server_ms: float
    degraded: bool
    missing: tuple[str, ...]
    request_id: int
    expected_accuracy: float | None = None
    late: bool = False
    variant: str = "primary"

    @property
    def labels(self) -> torch.Tensor:
        """(B,) the top-1 class of each image."""
        return self.top_indices[:, 0]

    @property
    def slowest_compute_ms(self) -> float:
        """The largest device compute time of this request (the parallel critical path's compute)."""
        return max((t.compute_ms for t in self.timings if t.ok), default=0.0)

    @classmethod
    def from_reply(cls, reply: pb.PredictReply) -> Prediction:
        logits = decode(reply.logits, what="logits", dtypes=("float32",), ndim=2).clone()
        k = max(1, int(reply.top_k))
        return cls(
            logits=logits,
            top_indices=torch.tensor(list(reply.top_indices), dtype=torch.long).reshape(-1, k),
            top_probs=torch.tensor(list(reply.top_probs), dtype=torch.float32).reshape(-1, k),
            timings=tuple(DeviceTiming(t.device, t.compute_ms, t.queue_ms, t.round_trip_ms, t.transfer_ms, t.ok,
                                       t.error) for t in reply.timings),
            aggregation_ms=reply.aggregation_ms, server_ms=reply.total_ms, degraded=reply.degraded,
            missing=tuple(reply.missing), request_id=int(reply.request_id),
            expected_accuracy=reply.expected_accuracy if reply.HasField("expected_accuracy") else None,
            late=reply.late, variant=reply.variant or "primary")


class ShoalClient:
    """Calls a central node over one reused channel (thread-safe; use as a context manager).

    Args:
        target: host:port of the central node.
        timeout_s: Deadline of every call.
        max_batch: Largest batch this client sends (sizes the message limit).
        image_bytes: Bytes of one image as sent (float32 C*H*W); sizes the message limit.
        ca: The plan's CA certificate: connect with TLS and verify the central node (None: plaintext).
        server_name: The name its certificate must carry (the central device's name; None: the
            target's host).
        token: Bearer token sent with every Predict (None: none).
    """

    def __init__(self, target: str, *, timeout_s: float = 10.0, max_batch: int = DEFAULT_MAX_BATCH,
                 image_bytes: int = 3 * 224 * 224 * 4, ca: str | Path | None = None, server_name: str | None = None,
                 token: Token | None = None) -> None:
        if timeout_s <= 0:
            raise ConfigError(f"timeout_s must be positive, got {timeout_s!r}")
        self.target = target
        self.timeout_s = timeout_s
        self._metadata = token.metadata() if token is not None else None
        limit = 2 * max_batch * image_bytes + (1 << 16)
        options = channel_options(limit)
        if ca is not None:
            self._channel = grpc.secure_channel(target, client_credentials(ca),
                                                options=options + (name_override(server_name) if server_name else []))
        else:
            self._channel = grpc.insecure_channel(target, options=options)
        self._stub = pb_grpc.CentralStub(self._channel)

    def predict(self, images: torch.Tensor, *, top_k: int = 5, request_id: int = 0,
                timeout_s: float | None = None, input_format: str = "float32",
                normalisation: tuple[Sequence[float], Sequence[float]] | None = None) -> Prediction:
        """Classify `images` (B, C, H, W) or one image (C, H, W); a text plan's (B, 2, L) or (2, L) token
        ids and mask (`input_format="tokens"`; `shoal.data.text.tokenize` makes them, `predict_texts`
        tokenises for you).

        Args:
            images: Normalised float images, or uint8 pixels (then sent as "uint8" unless
                `input_format` says "png" or "jpeg"); or token ids and mask.
            input_format: "float32", "uint8", "png" or "jpeg": what travels (compact formats
                are normalised by every device; float images are turned back into pixels with
                `normalisation`, the plan's (mean, std)); "tokens" for a text plan (int32 ids and mask,
                cut to the longest text).

        Raises:
            RemoteError: the central node refused or failed the call (status code and device named).
        """
        one = 2 if input_format == TOKENS_FORMAT else 3
        x = images.unsqueeze(0) if images.dim() == one else images
        request = pb.PredictRequest(top_k=top_k, request_id=request_id)
        if x.dtype == torch.uint8 and input_format == "float32":
            input_format = "uint8"
        encode_input(x, input_format, request, normalisation)
        return Prediction.from_reply(self.call(request, timeout_s))

    def predict_texts(self, texts: Sequence[str], tokenizer: Any, max_length: int, *, top_k: int = 2,
                      timeout_s: float | None = None) -> Prediction:
        """Classify texts with a text plan: tokenised here, once (the plan's teacher's tokenizer, cut at
        the plan's `max_length` tokens), then sent as token ids and mask."""
        from shoal.data.text import tokenize

        return self.predict(tokenize(tokenizer, texts, max_length), top_k=top_k, timeout_s=timeout_s,
                            input_format=TOKENS_FORMAT)

    def call(self, request: pb.PredictRequest, timeout_s: float | None = None) -> pb.PredictReply:
        """Send a prepared request (bench: encode once, send many times)."""
        try:
            return self._stub.Predict(request, timeout=timeout_s or self.timeout_s, metadata=self._metadata)
        except grpc.RpcError as exc:
            raise error_from_rpc(exc) from None

    def info(self, timeout_s: float = 5.0) -> pb.InfoReply:
        """The central node's plan fingerprint, devices and input shape."""
        try:
            return self._stub.Info(pb.InfoRequest(), timeout=timeout_s, wait_for_ready=True)
        except grpc.RpcError as exc:
            raise error_from_rpc(exc) from None

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> ShoalClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
