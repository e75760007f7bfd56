"""What one runtime call costs a device beyond its compute: the gRPC round trip, measured.

The planner's t2 (and the central node's share of t3) must include the fixed
software cost of a call, which on small devices and small models is of the
same order as the compute itself (~1 ms for Python gRPC on loopback here).
`measure_rpc` starts an echo worker (the real `shoal.v1.Worker` protocol and
tensor codec, zero features instead of a model) as a child process under the
device's CPU limit, calls it with an input of the teacher's shape, and times
the round trips. `shoal profile` records the result in the device profile.

    python -m shoal.runtime.overhead --width D --input C,H,W     (the echo worker; internal)
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections.abc import Sequence

import grpc
import torch

from shoal.devices.child import LimitedChild
from shoal.devices.emulation import CpuLimit
from shoal.errors import PlatformError, RuntimeServiceError
from shoal.profiling.timing import LatencyStats
from shoal.runtime import shoal_pb2 as pb
from shoal.runtime import shoal_pb2_grpc as pb_grpc
from shoal.runtime.codec import decode, encode, image_message_bytes
from shoal.runtime.server import LISTENING_PREFIX, announce, start_server, wait_for_shutdown
from shoal.runtime.status import WORKER_SERVICE, channel_options


class _EchoWorker(pb_grpc.WorkerServicer):
    """Decodes the input and answers zero features: the protocol's cost without a model."""

    def __init__(self, width: int) -> None:
        self.width = width

    def Features(self, request: pb.FeaturesRequest, context: grpc.ServicerContext) -> pb.FeaturesReply:  # noqa: N802
        x = decode(request.input, what="input")   # images (B, C, H, W) or a text's (B, 2, L) ids and mask
        reply = pb.FeaturesReply(request_id=request.request_id, device="probe")
        encode(torch.zeros(x.shape[0], self.width), reply.features)
        return reply


def measure_rpc(limit: CpuLimit, input_shape: Sequence[int], feature_width: int, *, calls: int = 200,
                warmup: int = 30, timeout_s: float = 60.0) -> LatencyStats:
    """Time batch-1 round trips to an echo worker running under `limit`.

    Args:
        limit: The device's CPU limit (the echo worker runs under it, like the real worker).
        input_shape: (C, H, W) of one image, or a text family's (2, L): int32 ids and mask of L tokens.
        feature_width: Width of the features it answers (the device's d_n, or the teacher's d).
        calls: Timed calls.
        warmup: Untimed calls first.
        timeout_s: How long the echo worker may take to start.
    """
    shape = [int(s) for s in input_shape]
    command = [sys.executable, "-m", "shoal.runtime.overhead", "--width", str(feature_width),
               "--input", ",".join(map(str, shape))]
    with LimitedChild(command, limit, who="the call-overhead probe's echo worker", stderr=subprocess.DEVNULL) as child:
        try:
            target = child.read_line(LISTENING_PREFIX, time.monotonic() + timeout_s)
        except PlatformError as exc:
            raise RuntimeServiceError(str(exc)) from None
        max_bytes = image_message_bytes(tuple(shape), 1)
        with grpc.insecure_channel(target, options=channel_options(max_bytes)) as channel:
            stub = pb_grpc.WorkerStub(channel)
            request = pb.FeaturesRequest(request_id=1)
            text = len(shape) == 2   # what a text plan's client sends: int32 ids and mask
            encode(torch.ones(1, *shape, dtype=torch.int32) if text else torch.randn(1, *shape), request.input)
            times = []
            for i in range(warmup + calls):
                start = time.perf_counter()
                stub.Features(request, timeout=10.0)
                if i >= warmup:
                    times.append((time.perf_counter() - start) * 1e3)
    return LatencyStats.from_times(times, warmup=warmup)


def _main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="shoal's RPC probe echo worker (internal)")
    parser.add_argument("--width", type=int, required=True)
    parser.add_argument("--input", required=True, help="C,H,W")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    shape = tuple(int(s) for s in args.input.split(","))
    running = start_server(lambda s: pb_grpc.add_WorkerServicer_to_server(_EchoWorker(args.width), s),
                           WORKER_SERVICE, max_message_bytes=image_message_bytes(shape, 1), threads=4)
    running.set_serving(True)
    announce(running)
    wait_for_shutdown(running, grace=1.0, watch_parent=True)
    os._exit(0)


if __name__ == "__main__":
    _main()
