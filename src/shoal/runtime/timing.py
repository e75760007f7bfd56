"""The teacher-alone baseline of `shoal bench`, timed on the central device's share of this machine.

The baseline runs in a child process (`python -m shoal.runtime.timing`) that
the parent puts under the central device's CPU limit before the child starts
timing (it waits for "go" on stdin), so the teacher is measured on exactly the
share of the machine the central node serves on, without limiting the parent.
The child times with the profiler's loop (`shoal.profiling.timing.measure_latency`).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

import torch

from shoal.devices.child import LimitedChild, child_main
from shoal.devices.emulation import CpuLimit
from shoal.devices.spec import DeviceSpec
from shoal.errors import RuntimeServiceError
from shoal.profiling.timing import measure_latency


def time_teacher(source: str, input_shape: Sequence[int], *, repeats: int, warmup: int, threads: int,
                 limit: DeviceSpec | None, data: str | None = None, timeout: float = 600.0,
                 random_classes: int | None = None) -> dict[str, Any]:
    """Batch-1 latency (and test accuracy, when test data resolves) of the teacher, in a limited child process.

    `random_classes`: the plan's teacher had random weights; the child creates the same
    architecture with a head of that many classes, times it and scores nothing.

    Returns:
        {"latency": LatencyStats dict, "top1": float | None, "n": int, "warning": str | None}.

    Raises:
        RuntimeServiceError: the teacher cannot be loaded or the child fails (message has its stderr).
    """
    command = [sys.executable, "-m", "shoal.runtime.timing", "--source", source, "--threads", str(threads),
               "--repeats", str(repeats), "--warmup", str(warmup), "--shape", ",".join(map(str, input_shape))]
    if random_classes is not None:
        command += ["--random-classes", str(random_classes)]
    elif data:
        command += ["--data", data]
    with LimitedChild(command, limit.cpu_limit if limit is not None else CpuLimit(), who="the teacher's timing",
                      strict=False, stdin=subprocess.PIPE, text=True) as child:
        try:
            out, err = child.proc.communicate("go\n", timeout=timeout)
        except subprocess.TimeoutExpired:
            raise RuntimeServiceError(f"timing the teacher took more than {timeout:.0f} s") from None
        warning = child.warning
    if child.proc.returncode != 0:
        reason = (err.strip().splitlines() or ["(no output)"])[-1]
        raise RuntimeServiceError(f"cannot time the teacher {source!r}: {reason}")
    result = json.loads(out.strip().splitlines()[-1])
    result["warning"] = warning
    return result


def _main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="time a teacher (child process of `shoal bench`)")
    parser.add_argument("--source", required=True)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--shape", required=True)
    parser.add_argument("--data", default=None)
    parser.add_argument("--random-classes", type=int, default=None)
    args = parser.parse_args(argv)
    from shoal.models import DEFAULT_TEACHER, load_teacher
    from shoal.models.surgery import example_input
    from shoal.runtime.device import set_torch_threads
    from shoal.runtime.evaldata import accuracy, resolve_test_data

    set_torch_threads(args.threads)
    if args.random_classes is not None:
        teacher = load_teacher(args.source, pretrained=False, model_kwargs={"num_classes": args.random_classes})
    else:
        teacher = load_teacher(None if args.source == DEFAULT_TEACHER else args.source)
    shape = tuple(int(s) for s in args.shape.split(","))
    test = None
    if args.random_classes is None:
        test, _ = resolve_test_data(teacher.config, args.source, args.data)
    example: tuple[int, ...] | list[torch.Tensor] = shape
    if teacher.is_text:   # one text at a time, each at its own length: the test texts the bench sends
        texts = test.images[:args.repeats] if test is not None else example_input(teacher.config, args.repeats)
        example = [t[None] for t in texts]
    sys.stdin.readline()  # the parent applies the CPU limit, then says go
    stats = measure_latency(teacher.model, example, repeats=args.repeats, warmup=args.warmup, threads=args.threads)
    with torch.inference_mode():
        top1 = accuracy(lambda b: teacher.model(b), test) if test is not None else None
    print(json.dumps({"latency": stats.to_dict(), "top1": top1, "n": len(test) if test is not None else 0}))


if __name__ == "__main__":
    child_main(_main)
