"""What every serving process does with its device: identity, CPU limit, threads, the sub-model.

A worker and the central node both run one sub-model of a plan. `SubModelRunner`
owns it: one inference at a time (a device has one compute unit; concurrent
requests queue and the wait is reported as `queue_ms`), under
`torch.inference_mode`, timed.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from shoal.devices.child import apply_limit
from shoal.devices.emulation import remove_cgroup
from shoal.devices.spec import DeviceSpec
from shoal.errors import ConfigError
from shoal.models.config import TeacherConfig
from shoal.models.surgery import example_input, pooled_features, width_of
from shoal.plan.directory import plan_document_file

logger = logging.getLogger(__name__)

DEFAULT_MAX_BATCH = 64


def plan_fingerprint(plan_dir: str | Path) -> str:
    """A short id of one plan: sha256 of its plan.json, which lists the sha256 of every other file
    (of its janus.json for a Janus plan)."""
    return hashlib.sha256(plan_document_file(plan_dir).read_bytes()).hexdigest()[:16]


def apply_device_limit(device: DeviceSpec, pid: int | None = None) -> tuple[Path | None, str | None]:
    """Put `pid` (default: this process) under its device's CPU limit, as far as this machine allows.

    Returns:
        (cgroup created or None, a warning line when the quota had to be skipped).
    """
    return apply_limit(device.cpu_limit, pid, who=f"device {device.name!r}", strict=False)


@contextmanager
def device_process(device: DeviceSpec, *, emulate: bool, threads: int | None) -> Iterator[None]:
    """Run this process as `device`: its CPU limit (when `emulate`) and torch threads; undone on exit."""
    group = None
    if emulate:
        group, warning = apply_device_limit(device)
        if warning:
            logger.warning(warning)
    try:
        set_torch_threads(threads or device.threads)
        yield
    finally:
        remove_cgroup(group)


def set_torch_threads(threads: int) -> None:
    """Set torch's intra-op threads (the device's threads) and one inter-op thread, once per process."""
    if threads < 1:
        raise ConfigError(f"threads must be at least 1, got {threads}")
    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set, or parallel work already ran in this process
        pass


@dataclass(frozen=True)
class Timed:
    """Output of one sub-model call.

    Attributes:
        features: (B, d_n) pooled features.
        queue_ms: Time waiting for the device (earlier requests).
        compute_ms: Forward time.
    """

    features: torch.Tensor
    queue_ms: float
    compute_ms: float


class SubModelRunner:
    """One device's sub-model: pooled features of a batch, one call at a time.

    Args:
        model: The sub-model (eval mode).
        config: Its teacher family (what an input looks like: warm-up runs one).
        name: Device name (messages).
        compute: Where it runs (cpu, cuda): inputs arrive and features leave on the host, and
            `compute_ms` includes the copies (what a caller waits for).
    """

    def __init__(self, model: nn.Module, config: TeacherConfig, name: str,
                 compute: torch.device | str = "cpu") -> None:
        self.compute = torch.device(compute)
        self.model = model.to(self.compute).eval()
        self.config = config
        self.name = name
        self.feature_width = width_of(model)
        self._lock = threading.Lock()
        for p in self.model.parameters():
            p.requires_grad_(False)

    def __call__(self, x: torch.Tensor) -> Timed:
        """Pooled features of `x` (B, C, H, W), or a text plan's (B, 2, L) -> (B, d_n), with queue and compute times."""
        t0 = time.perf_counter()
        with self._lock:
            t1 = time.perf_counter()
            with torch.inference_mode():
                features = pooled_features(self.model, x.to(self.compute)).cpu()   # .cpu() waits for the GPU
            t2 = time.perf_counter()
        return Timed(features, (t1 - t0) * 1e3, (t2 - t1) * 1e3)

    def warm_up(self, iterations: int = 10, batch: int = 1) -> float:
        """Run `iterations` forwards on an input of the family (allocator, kernels, caches); the last one's ms."""
        x = example_input(self.config, batch)
        ms = 0.0
        for _ in range(max(1, iterations)):
            ms = self(x).compute_ms
        return ms
