"""Timing one model at batch 1, robustly, and measuring its peak memory.

`measure_latency` is the one timing loop of shoal: the profiler, `shoal
measure`, the runtime and the benchmarks all use it, so their numbers mean
the same thing (median of per-call wall times under `torch.inference_mode`
with a fixed number of intra-op threads and the garbage collector paused).
"""

from __future__ import annotations

import gc
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn as nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from shoal.errors import ConfigError
from shoal.utils.stats import quantile
from shoal.utils.threads import torch_threads


@dataclass(frozen=True)
class LatencyStats:
    """Per-call latency of `n` timed calls: the one statistics record of shoal, for a shape the
    profiler times, a teacher `shoal bench` times alone, one runtime call and a served request.

    Attributes:
        median_ms: Median wall time of one call (the robust statistic predictors learn).
        p10_ms: 10th percentile.
        p90_ms: 90th percentile.
        mean_ms: Mean (sensitive to interruptions; for reference).
        min_ms: Fastest call.
        n: Number of timed calls.
        warmup: Untimed calls before them.
        threads: Torch intra-op threads during the calls (None: not a timing loop of a model).
        device: "cpu" or "cuda" (None: as for threads).
        cpu_ms: Mean CPU time of this process per timed call. Wall / CPU near 1 (or near
            1/quota under a CPU quota) means the calls ran undisturbed; higher means the
            machine was busy and the process waited for a core.
        p95_ms: 95th percentile (None in measurements written before it was kept).

    Quantiles are numpy's linear rule (`shoal.utils.stats.quantile`).
    """

    median_ms: float
    p10_ms: float
    p90_ms: float
    mean_ms: float
    min_ms: float
    n: int
    warmup: int = 0
    threads: int | None = None
    device: str | None = None
    cpu_ms: float | None = None
    p95_ms: float | None = None

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ConfigError(f"LatencyStats.n must be at least 1, got {self.n!r}")
        if not (0 <= self.min_ms <= self.p10_ms <= self.median_ms <= self.p90_ms):
            raise ConfigError(
                f"LatencyStats must satisfy 0 <= min <= p10 <= median <= p90, got min={self.min_ms!r} "
                f"p10={self.p10_ms!r} median={self.median_ms!r} p90={self.p90_ms!r}")

    @property
    def spread(self) -> float:
        """(p90 - p10) / median: the relative spread of single calls."""
        return (self.p90_ms - self.p10_ms) / self.median_ms if self.median_ms > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_times(cls, times_ms: Sequence[float], *, warmup: int = 0, threads: int | None = None,
                   device: str | None = None, cpu_ms: float | None = None) -> LatencyStats:
        """Statistics of raw per-call times (ms)."""
        if not times_ms:
            raise ConfigError("no timed calls to summarise")
        ordered = sorted(float(t) for t in times_ms)
        return cls(
            median_ms=quantile(ordered, 0.5), p10_ms=quantile(ordered, 0.1), p90_ms=quantile(ordered, 0.9),
            mean_ms=sum(ordered) / len(ordered), min_ms=ordered[0], n=len(ordered), warmup=warmup,
            threads=threads, device=device, cpu_ms=cpu_ms, p95_ms=quantile(ordered, 0.95))


Example = Sequence[int] | torch.Tensor | list[torch.Tensor]


def _inputs(example: Example, dev: torch.device) -> list[torch.Tensor]:
    """The inputs to time on, cycled: given tensors (a text model's texts, each at its own length), one
    given tensor, or random images of a shape."""
    if isinstance(example, torch.Tensor):
        return [example.to(dev)]
    if example and isinstance(example[0], torch.Tensor):
        return [t.to(dev) for t in example]   # type: ignore[union-attr]
    return [torch.randn(_batch_shape(example), device=dev)]   # type: ignore[arg-type]


def _batch_shape(input_shape: Sequence[int]) -> tuple[int, ...]:
    shape = tuple(int(s) for s in input_shape)
    if len(shape) == 3:
        shape = (1, *shape)
    if len(shape) != 4 or min(shape) < 1:
        raise ConfigError(f"input_shape must be (C, H, W) or (B, C, H, W) with positive sizes, got {input_shape!r}")
    return shape


MIN_TIMED = 5   # timed calls a time budget never cuts below


def measure_latency(
    model: nn.Module,
    input_shape: Example,
    *,
    repeats: int = 30,
    warmup: int = 5,
    threads: int = 1,
    device: str | torch.device = "cpu",
    budget_ms: float | None = None,
) -> LatencyStats:
    """Time `model` on random input of `input_shape`, one call at a time.

    Args:
        model: Any module taking one image tensor; it is moved to `device` and put in eval mode.
        input_shape: (B, C, H, W), or (C, H, W) for batch 1; or the input itself (a text model's
            ids and mask, `shoal.models.surgery.example_input`), or several, timed in turn.
        repeats: Timed calls (the median of them is the statistic).
        warmup: Untimed calls first (allocator, caches, lazy kernels).
        threads: Torch intra-op threads for the calls; restored afterwards.
        device: "cpu" or "cuda" (CUDA calls are synchronised around each timed call).
        budget_ms: Wall time after which warm-up and timing stop early (None: no limit); at
            least one warm-up and `MIN_TIMED` timed calls are always made. A real-scale sub-model
            under a small CPU quota takes a third of a second per call: 30 calls of each of
            hundreds of shapes would take hours.

    Returns:
        `LatencyStats` of the per-call wall times.
    """
    if repeats < 1 or warmup < 0 or threads < 1:
        raise ConfigError(f"need repeats >= 1, warmup >= 0, threads >= 1; got {repeats}, {warmup}, {threads}")
    dev = torch.device(device)
    model = model.to(dev).eval()
    xs = _inputs(input_shape, dev)
    sync: Callable[[], None] = torch.cuda.synchronize if dev.type == "cuda" else _no_sync
    gc_was_enabled = gc.isenabled()
    times: list[float] = []
    try:
        with torch_threads(threads), torch.inference_mode():
            began = time.perf_counter_ns()
            for i in range(warmup):
                model(xs[i % len(xs)])
                if budget_ms is not None and (time.perf_counter_ns() - began) / 1e6 > budget_ms / 4:
                    warmup = i + 1   # what was made (a quarter of the budget at most, past the first)
                    break
            sync()
            gc.disable()  # no collection pauses inside the timed calls (a full collect costs ~0.1 s)
            cpu_start = time.process_time_ns()
            for i in range(repeats):
                start = time.perf_counter_ns()
                model(xs[i % len(xs)])
                sync()
                times.append((time.perf_counter_ns() - start) / 1e6)
                if budget_ms is not None and i + 1 >= MIN_TIMED and (start - began) / 1e6 + times[-1] > budget_ms:
                    break
            cpu_ms = (time.process_time_ns() - cpu_start) / 1e6 / len(times)
    finally:
        if gc_was_enabled:
            gc.enable()
    return LatencyStats.from_times(times, warmup=warmup, threads=threads, device=dev.type, cpu_ms=round(cpu_ms, 4))


def _no_sync() -> None:
    """CPU calls are synchronous."""


class _LiveBytes(TorchDispatchMode):  # type: ignore[no-untyped-call]
    """Counts the bytes of tensor storages created inside the mode and still alive; keeps the peak."""

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.live = 0
        self.peak = 0
        self._seen: set[int] = set()

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for item in tree_flatten(out)[0]:
            if isinstance(item, torch.Tensor):
                self._track(item.untyped_storage())
        return out

    def _track(self, storage: torch.UntypedStorage) -> None:
        key, size = storage.data_ptr(), storage.nbytes()
        if size == 0 or key in self._seen:
            return
        self._seen.add(key)
        self.live += size
        self.peak = max(self.peak, self.live)
        weakref.finalize(storage, self._release, key, size)

    def _release(self, key: int, size: int) -> None:
        self.live -= size
        self._seen.discard(key)


def peak_memory_bytes(model: nn.Module, input_shape: Example, device: str | torch.device = "cpu"
                      ) -> tuple[int, int]:
    """Memory of one inference: (weight bytes, peak bytes of live activations).

    On CUDA the activation peak is the allocator's peak above the weights; on
    CPU it is counted op by op (every tensor storage an op creates, until it is
    freed), which is exact for torch's own allocations and ignores the
    allocator's caching.

    Args:
        model: The model (moved to `device`).
        input_shape: (B, C, H, W), or (C, H, W) for batch 1; or the input itself.
        device: "cpu" or "cuda".
    """
    dev = torch.device(device)
    model = model.to(dev).eval()
    weights = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    x = _inputs(input_shape, dev)[0]
    with torch.inference_mode():
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
            torch.cuda.reset_peak_memory_stats(dev)
            base = torch.cuda.memory_allocated(dev)
            model(x)
            torch.cuda.synchronize(dev)
            return weights, int(torch.cuda.max_memory_allocated(dev) - base)
        with _LiveBytes() as tracker:
            model(x)
    return weights, tracker.peak
