"""Janus's latency model and scheduler (§III-B..D, Algorithm 1): which α and split for this request.

Candidate split points (eq. 3): C = {0, N + 1} ∪ {s_i = s_{i-1} + ⌊i/k⌋, s_1 = 1}: dense near the
input, where the tokens shrink fastest, sparse near the output (k = 5 in the paper). s is the number
of layers the device runs: 0 sends the image to the server, N + 1 runs everything on the device.

Per layer, latency is linear in its input tokens on each side, f(x) = a·x + b (§III-C; one fit per
side, measured). For α and s:

    L(s, α) = Σ_{l ≤ s} f_dev(x_{l-1}) + Σ_{l > s} f_srv(x_{l-1}) + bytes(s, α) / B + fixed_ms

with x_l the tokens after layer l (`shoal.models.tokens.counts`), bytes(s, α) what crosses the link
(the image at s = 0; x_s tokens at `token_bytes` each; nothing but the answer at s = N + 1), B the
uplink bandwidth estimated from live transfers, and `fixed_ms` what the paper's model leaves out
and we measure (embedding, head, the call itself).

Algorithm 1: α from the least pruned to the most; the first α whose best split meets the SLA
wins (with the split that is fastest for it); none: the fastest configuration of all. Janus
assumes accuracy falls as α grows. We tried ordering α by the validation accuracy the plan
measures instead: on 1,000 images the differences between small α are noise (84.8% at α = 0,
85.0% at 0.54), and the scheduler then pruned for nothing; the paper's order it is.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from shoal.devices.spec import DeviceSpec
from shoal.errors import ConfigError, DataError
from shoal.plan.document import InputSpec
from shoal.profiling.layers import LayerLatency
from shoal.utils.fields import Fields
from shoal.utils.io import atomic_write_json


def split_candidates(depth: int, k: int = 5) -> tuple[int, ...]:
    """Eq. 3: {0, N + 1} ∪ {1, 1 + ⌊2/k⌋, ...} up to N, increasing."""
    if depth < 1 or k < 1:
        raise ConfigError(f"split candidates need depth >= 1 and k >= 1, got {depth} and {k}")
    points, s, i = {0, depth + 1}, 1, 1
    while s <= depth:
        points.add(s)
        i += 1
        s += i // k
    return tuple(sorted(points))


@dataclass(frozen=True)
class JanusConfig:
    """One α of the plan: its token counts x_0..x_N and the accuracy measured with it."""

    alpha: float
    counts: tuple[int, ...]
    accuracy: float


@dataclass(frozen=True)
class Choice:
    """What the scheduler picked: α, the split s, the predicted latency, and whether it meets the SLA."""

    alpha: float
    split: int
    predicted_ms: float
    meets: bool


@dataclass(frozen=True)
class JanusModel:
    """Everything Algorithm 1 needs, fixed at planning time.

    Attributes:
        configs: One per α of the grid (accuracy measured on the validation split).
        device: Per-layer latency on the device; server: on the server.
        token_bytes: Bytes per token sent (features + size).
        image_bytes: Bytes of the input when the server gets the image (s = 0).
        candidates: Split points (eq. 3).
        fixed_ms: Measured per-request cost outside the layers (embedding, head, the call).
        device_reducing, server_reducing: Per-layer latency of a block that removes tokens (every
            block of a run at α > 0); None: as a plain block (a plan of format 1).
    """

    configs: tuple[JanusConfig, ...]
    device: LayerLatency
    server: LayerLatency
    token_bytes: int
    image_bytes: int
    candidates: tuple[int, ...]
    fixed_ms: float = 0.0
    device_reducing: LayerLatency | None = None
    server_reducing: LayerLatency | None = None

    def __post_init__(self) -> None:
        if not self.configs:
            raise ConfigError("a Janus model needs at least one α")
        depth = len(self.configs[0].counts) - 1
        if any(len(c.counts) != depth + 1 for c in self.configs):
            raise ConfigError("every α must give token counts for the same number of layers")
        if any(b.alpha <= a.alpha for a, b in zip(self.configs, self.configs[1:])):
            raise ConfigError("the α of a Janus model must increase (least pruned first: Algorithm 1's order)")
        if any(not 0 <= s <= depth + 1 for s in self.candidates):
            raise ConfigError(f"split points must be within 0..{depth + 1}, got {list(self.candidates)}")

    @property
    def depth(self) -> int:
        return len(self.configs[0].counts) - 1

    def config(self, alpha: float) -> JanusConfig | None:
        """The configuration of `alpha` (to 1e-6), or None when it is not on the grid."""
        k = self._index.get(round(alpha, 6))
        return None if k is None else self.configs[k]

    def index(self, alpha: float) -> int:
        """The position of `alpha` on the grid (KeyError when it is not on it)."""
        return self._index[round(alpha, 6)]

    @cached_property
    def _index(self) -> dict[float, int]:
        return {round(c.alpha, 6): k for k, c in enumerate(self.configs)}

    @cached_property
    def _parts(self) -> tuple[tuple[tuple[float, float], ...], ...]:
        """Per α (the grid's order), per split s = 0..N+1: (the device's blocks, the server's blocks),
        summed once: the fits are fixed, only the live scales and the bandwidth change per request."""
        out = []
        for c in self.configs:   # block l reads the x_{l-1} tokens; it reduces when x_l < x_{l-1}
            reduces = [after < before for before, after in zip(c.counts[:-1], c.counts[1:])]
            dev = [(self.device_reducing or self.device)(x) if r else self.device(x)
                   for x, r in zip(c.counts[:-1], reduces)]
            srv = [(self.server_reducing or self.server)(x) if r else self.server(x)
                   for x, r in zip(c.counts[:-1], reduces)]
            out.append(tuple((sum(dev[:min(s, self.depth)]), sum(srv[s:])) for s in range(self.depth + 2)))
        return tuple(out)

    def parts_ms(self, config: JanusConfig, split: int) -> tuple[float, float]:
        """(the device's blocks, the server's blocks) of L(s, α), as the per-layer fits predict them."""
        return self._parts[self.index(config.alpha)][split]

    def sent_bytes(self, config: JanusConfig, split: int) -> int:
        """What crosses the link at split s: the image (s = 0), the tokens left after s blocks, nothing
        (s = N + 1: the device answers alone)."""
        return self.image_bytes if split == 0 else 0 if split > self.depth else config.counts[split] * self.token_bytes

    def latency_ms(self, config: JanusConfig, split: int, bandwidth_bps: float, device_scale: float = 1.0,
                   server_scale: float = 1.0) -> float:
        """L(s, α) under `bandwidth_bps` (bits per second); the scales correct each side's fit by what
        its live calls measured (1: as profiled)."""
        device, server = self.parts_ms(config, split)
        return (device * device_scale + server * server_scale + self.sent_bytes(config, split) * 8 / bandwidth_bps * 1e3
                + self.fixed_ms)

    @cached_property
    def _grid(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(device ms, server ms, bytes sent) per α (rows, the grid's order) and split candidate (columns)."""
        cells = [[(*self.parts_ms(c, s), self.sent_bytes(c, s)) for s in self.candidates] for c in self.configs]
        grid = np.array(cells, dtype=np.float64)   # (α, split, 3)
        return grid[..., 0], grid[..., 1], grid[..., 2]

    def choose(self, bandwidth_bps: float, sla_ms: float,
               scales: tuple[np.ndarray, np.ndarray] | None = None) -> Choice:
        """Algorithm 1: the least pruned α whose fastest split meets `sla_ms`, else the fastest of all.
        `scales`: per α (the grid's order), the (device, server) corrections of its fits by what live
        calls measured (None: as profiled). Every L(s, α) at once: the scheduler runs on the device,
        before every request, and a device at a quarter of a core felt the Python loop (~2 ms)."""
        if not (bandwidth_bps > 0 and math.isfinite(bandwidth_bps)):
            raise ConfigError(f"bandwidth must be a positive number of bits per second, got {bandwidth_bps!r}")
        dev, srv, sent = self._grid
        if scales is not None:
            dev, srv = dev * scales[0][:, None], srv * scales[1][:, None]
        total = dev + srv + sent * (8e3 / bandwidth_bps) + self.fixed_ms   # (α, split) ms
        best = total.argmin(axis=1)
        fastest = total[np.arange(len(self.configs)), best]
        meets = np.flatnonzero(fastest <= sla_ms)   # least pruned first: the paper's order
        k = int(meets[0]) if len(meets) else int(fastest.argmin())
        return Choice(self.configs[k].alpha, self.candidates[int(best[k])], float(fastest[k]), bool(len(meets)))


JANUS_FILE = "janus.json"


@dataclass(frozen=True)
class JanusPlan:
    """A Janus plan (`shoal plan --method janus`, file `janus.json`): one device and one server
    sharing the teacher, and what the scheduler needs.

    Attributes:
        teacher: The teacher's source (a timm name, a checkpoint, or the shipped teacher), loaded by both.
        family: Its family fingerprint (checked when loaded).
        device: The device that has the images and runs the first blocks.
        server: The server that runs the rest.
        reduction: "merge" or "prune" (`shoal.models.tokens`).
        model: α grid with validation accuracy and token counts, per-layer latency per side,
            bytes per token and per image, split candidates, fixed cost.
        test_accuracy: Test top-1 per α of the grid (the same order), and the test images' count.
        input: The clients' input format and normalisation.
        profiles: Per side, the leave-one-out errors (ms) of the two latency fits and which was kept.
    """

    teacher: str
    family: str
    device: DeviceSpec
    server: DeviceSpec
    reduction: str
    model: JanusModel
    test_accuracy: tuple[float, ...]
    test_n: int
    input: InputSpec
    profiles: dict[str, dict[str, float | str]]

    def to_dict(self) -> dict[str, Any]:
        m = self.model
        return {
            "format_version": 2, "teacher": self.teacher, "family": self.family,
            "device": self.device.to_dict(), "server": self.server.to_dict(), "reduction": self.reduction,
            "alphas": [c.alpha for c in m.configs], "counts": [list(c.counts) for c in m.configs],
            "val_accuracy": [c.accuracy for c in m.configs], "test_accuracy": list(self.test_accuracy),
            "test_n": self.test_n,
            "latency": {**{side: [fit.a, fit.b, fit.c] for side, fit in (
                ("device", m.device), ("server", m.server), ("device_reducing", m.device_reducing or m.device),
                ("server_reducing", m.server_reducing or m.server))}, "fixed_ms": m.fixed_ms},
            "token_bytes": m.token_bytes, "image_bytes": m.image_bytes, "candidates": list(m.candidates),
            "input": self.input.to_dict(), "profiles": self.profiles}

    @classmethod
    def from_dict(cls, data: Any, where: str = JANUS_FILE) -> JanusPlan:
        """Read janus.json field by field; `DataError` names the first field that does not fit."""
        f = Fields(data, where)
        version = f.raw("format_version", None)
        if version not in (1, 2):
            raise DataError(f"{where} is not a Janus plan this shoal reads (format_version 1 or 2)")
        try:
            alphas, counts = f.floats("alphas"), f.raw("counts")
            accuracy, test = f.floats("val_accuracy"), f.floats("test_accuracy")
            if not isinstance(counts, list) or len(counts) != len(alphas) or len(accuracy) != len(alphas) \
                    or len(test) != len(alphas):
                raise DataError(f"{where}: alphas, counts, val_accuracy and test_accuracy need one entry per α")
            configs = tuple(JanusConfig(a, tuple(int(x) for x in c), acc)
                            for a, c, acc in zip(alphas, counts, accuracy))
            latency = f.obj("latency")
            names = ("device", "server") + (("device_reducing", "server_reducing") if version == 2 else ())
            sides = [LayerLatency(*(float(v) for v in latency.floats(side))) for side in names]
            model = JanusModel(configs, sides[0], sides[1], f.integer("token_bytes"), f.integer("image_bytes"),
                               tuple(int(s) for s in f.raw("candidates")), latency.number("fixed_ms"),
                               *sides[2:])
            latency.done()
            plan = cls(f.text("teacher"), f.text("family"), DeviceSpec.from_dict(f.raw("device")),
                       DeviceSpec.from_dict(f.raw("server")), f.choice("reduction", ("merge", "prune")), model,
                       tuple(test), f.integer("test_n"), f.record("input", InputSpec.read),
                       dict(f.raw("profiles")))
        except (ConfigError, TypeError, ValueError) as exc:
            raise DataError(f"{where}: {exc}") from None
        f.done()
        return plan

    def write(self, root: str | Path) -> Path:
        path = Path(root) / JANUS_FILE
        atomic_write_json(path, self.to_dict())
        return path

    @classmethod
    def read(cls, root: str | Path) -> JanusPlan:
        path = Path(root) / JANUS_FILE
        if not path.is_file():
            raise DataError(f"{root} is not a Janus plan directory: {JANUS_FILE} is missing "
                            "(run `shoal plan --method janus`)")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise DataError(f"{path} is not valid JSON: {exc}") from None
        return cls.from_dict(data, str(path))
