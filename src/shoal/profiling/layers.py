"""Per-layer latency against the number of tokens (Janus §III-C), on a device under its CPU limit.

Janus models one transformer layer's latency as linear in its input tokens, f(x) = a·x + b, one fit
per side (device, server), from layers timed at random token counts. Attention also has a term in
x² (the x × x score matrix), which the line ignores; `fit_layers` fits both the line and the line
plus that term, compares them by leave-one-out error on the same measurements, and keeps the
better (with both errors, so the choice is on record). All blocks of a ViT are the same, so one
block is timed, twice: as timm runs it (every block of an α = 0 run) and removing a token (every
block of a run at α > 0 removes at least one: eq. 1 gives the last layer ⌊2⁰⌋ = 1), because on a
small model what the reduction itself costs outweighs what the fewer tokens save.

    profile_layers(source, device_spec, token_counts)   # in a child under the device's limit
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from shoal.devices.child import LimitedChild, child_main
from shoal.devices.emulation import CpuLimit
from shoal.devices.spec import DeviceSpec
from shoal.errors import ConfigError, RuntimeServiceError
from shoal.models.tokens import TokenRunner
from shoal.profiling.timing import measure_latency


@dataclass(frozen=True)
class LayerLatency:
    """Latency of one layer as a function of its input tokens: a·x + c·x² + b ms (Janus's line has
    c = 0; `fit_layers` keeps the x² term of attention where it predicts better)."""

    a: float
    b: float
    c: float = 0.0

    def __call__(self, tokens: int) -> float:
        return self.a * tokens + self.c * tokens * tokens + self.b

    @classmethod
    def fit(cls, tokens: Sequence[int], ms: Sequence[float], quadratic: bool = False) -> LayerLatency:
        """Least squares over measured (tokens, ms) pairs."""
        n = len(tokens)
        if n < (3 if quadratic else 2) or len(set(tokens)) < (3 if quadratic else 2) or len(ms) != n:
            raise ConfigError("a per-layer latency fit needs measurements at two token counts or more "
                              "(three with the x² term)")
        x = torch.tensor([float(t) for t in tokens], dtype=torch.float64)
        columns = [x, torch.ones_like(x)] + ([x * x] if quadratic else [])
        solution = torch.linalg.lstsq(torch.stack(columns, dim=1), torch.tensor(list(ms), dtype=torch.float64)[:, None])
        coef = solution.solution[:, 0].tolist()
        return cls(coef[0], coef[1], coef[2] if quadratic else 0.0)


@dataclass(frozen=True)
class LayerProfile:
    """Timed (tokens, ms) of one block, the fits, their leave-one-out mean absolute errors, the choice."""

    samples: tuple[tuple[int, float], ...]
    linear: LayerLatency
    quadratic: LayerLatency
    loo_ms: dict[str, float]
    chosen: str

    @property
    def model(self) -> LayerLatency:
        return self.linear if self.chosen == "linear" else self.quadratic


class _BlockAt(nn.Module):
    """One block on (1, 1, T, d) random input (what `measure_latency` feeds), as (1, T, d): as timm
    runs it, or (`reduction`) as a reducing run does, removing one token from tokens that stand for
    two originals each (merging's proportional attention on)."""

    def __init__(self, model: Any, reduction: str | None = None) -> None:
        super().__init__()
        self.model = model
        self.runner = TokenRunner(model, reduction) if reduction else None   # type: ignore[arg-type]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.runner is None:
            out: torch.Tensor = self.model.blocks[0](x[0])
            return out
        tokens = x[0]
        return self.runner.block(0, tokens, torch.full_like(tokens[..., :1], 2.0), 1)[0]


def time_layers(model: Any, token_counts: Sequence[int], *, repeats: int = 20, warmup: int = 5,
                threads: int = 1, reduction: str | None = None) -> list[tuple[int, float]]:
    """Median ms of the first block of `model` at each token count (this process, as it is limited),
    as timm runs it, or (`reduction`: "merge" or "prune") as a block that removes a token runs."""
    block = _BlockAt(model, reduction).eval()
    width = int(model.embed_dim)
    return [(int(t), measure_latency(block, (1, 1, int(t), width), repeats=repeats, warmup=warmup,
                                     threads=threads).median_ms) for t in token_counts]


def fit_layers(samples: Sequence[tuple[int, float]]) -> LayerProfile:
    """Both fits and the leave-one-out choice (needs 4 distinct token counts or more)."""
    if len({t for t, _ in samples}) < 4:
        raise ConfigError("profiling layers needs at least 4 distinct token counts")
    errors = {}
    for kind in ("linear", "quadratic"):
        total = 0.0
        for i in range(len(samples)):
            rest = [s for j, s in enumerate(samples) if j != i]
            fit = LayerLatency.fit([t for t, _ in rest], [m for _, m in rest], quadratic=kind == "quadratic")
            total += abs(fit(samples[i][0]) - samples[i][1])
        errors[kind] = total / len(samples)
    tokens, ms = zip(*samples)
    return LayerProfile(tuple(samples), LayerLatency.fit(tokens, ms), LayerLatency.fit(tokens, ms, quadratic=True),
                        errors, min(errors, key=lambda k: errors[k]))


def profile_layers(source: str, device: DeviceSpec | None, token_counts: Sequence[int], *, repeats: int = 20,
                   timeout: float = 600.0, reduction: str = "merge") -> tuple[LayerProfile, LayerProfile]:
    """Time one block of the teacher `source` in a child under `device`'s CPU limit, and fit: as timm
    runs it (what an unreduced run costs) and removing a token by `reduction` (what every block of a
    reducing run costs: the hook, the matching or the class attention, the gather, and merging's
    attention bias). Returns (plain, reducing)."""
    command = [sys.executable, "-m", "shoal.profiling.layers", "--source", source, "--repeats", str(repeats),
               "--threads", str(device.threads if device is not None else 1), "--reduction", reduction,
               "--tokens", ",".join(str(int(t)) for t in token_counts)]
    limit = device.cpu_limit if device is not None else CpuLimit()
    with LimitedChild(command, limit, who="the layer timing", strict=False, stdin=subprocess.PIPE, text=True) as child:
        try:
            out, err = child.proc.communicate("go\n", timeout=timeout)
        except subprocess.TimeoutExpired:
            raise RuntimeServiceError(f"timing the layers took more than {timeout:.0f} s") from None
    if child.proc.returncode != 0:
        raise RuntimeServiceError(f"cannot time the layers of {source!r}: "
                                  f"{(err.strip().splitlines() or ['(no output)'])[-1]}")
    measured = json.loads(out.strip().splitlines()[-1])
    plain, reducing = ([(int(t), float(ms)) for t, ms in measured[kind]] for kind in ("plain", "reducing"))
    return fit_layers(plain), fit_layers(reducing)


def _main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="time one block per token count (child of profile_layers)")
    parser.add_argument("--source", required=True)
    parser.add_argument("--tokens", required=True)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--reduction", default="merge")
    args = parser.parse_args(argv)
    from shoal.models import DEFAULT_TEACHER, load_teacher

    teacher = load_teacher(None if args.source == DEFAULT_TEACHER else args.source)
    sys.stdin.readline()   # the parent applies the CPU limit, then says go
    tokens = [int(t) for t in args.tokens.split(",")]
    print(json.dumps({kind: time_layers(teacher.model, tokens, repeats=args.repeats, threads=args.threads,
                                        reduction=reduction)
                      for kind, reduction in (("plain", None), ("reducing", args.reduction))}))


if __name__ == "__main__":
    child_main(_main)
