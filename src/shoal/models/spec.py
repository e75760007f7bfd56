"""The sub-model vocabulary: `SubModelSpec` (what one device keeps) and `Policy` (one spec per device).

A spec names teacher units by index, so it says both how big a sub-model is
and which weights it is sliced from (CoFormer's C_n = (l_n, d_n, h_n, D_n),
with the indices that make the partition constraints C2-C4 checkable).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from shoal.errors import ConfigError
from shoal.models.config import TeacherConfig

MIN_WIDTH = 8  # residual channels: the planner never gives a device fewer, the profiler samples no fewer


def _index_tuple(value: Any, field: str, *, allow_empty: bool) -> tuple[int, ...]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise ConfigError(f"SubModelSpec.{field} must be a list of integers, got {value!r}")
    items = tuple(value)
    for item in items:
        if isinstance(item, bool) or not isinstance(item, int):
            raise ConfigError(f"SubModelSpec.{field} must hold integers, got {item!r} in {_short(items)}")
    if not allow_empty and not items:
        raise ConfigError(f"SubModelSpec.{field} must not be empty")
    if any(b <= a for a, b in zip(items, items[1:])):
        raise ConfigError(f"SubModelSpec.{field} must be strictly increasing (no repeats), got {_short(items)}")
    if items and items[0] < 0:
        raise ConfigError(f"SubModelSpec.{field} has a negative index {items[0]}")
    return items


def _short(items: Sequence[Any], limit: int = 12) -> str:
    text = ", ".join(str(i) for i in items[:limit])
    return f"[{text}{', ...' if len(items) > limit else ''}]"


@dataclass(frozen=True)
class SubModelSpec:
    """Which teacher units one sub-model keeps.

    Attributes:
        layers: Teacher block indices kept, increasing (l_n of them).
        channels: Residual (embedding) channel indices kept, increasing (d_n of them).
        heads: Per kept block, the teacher head indices kept (may be empty: the attention
            branch is dropped).
        neurons: Per kept block, the teacher MLP neuron indices kept (may be empty: the MLP
            branch is dropped).
        family: Fingerprint of the teacher family (`TeacherConfig.fingerprint()`), or "" if unbound.
    """

    layers: tuple[int, ...]
    channels: tuple[int, ...]
    heads: tuple[tuple[int, ...], ...]
    neurons: tuple[tuple[int, ...], ...]
    family: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "layers", _index_tuple(self.layers, "layers", allow_empty=True))
        object.__setattr__(self, "channels", _index_tuple(self.channels, "channels", allow_empty=False))
        for name in ("heads", "neurons"):
            value = getattr(self, name)
            if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
                raise ConfigError(f"SubModelSpec.{name} must be a list of index lists, got {value!r}")
            per_layer = tuple(
                _index_tuple(v, f"{name}[{k}]", allow_empty=True) for k, v in enumerate(value))
            if len(per_layer) != len(self.layers):
                raise ConfigError(
                    f"SubModelSpec.{name} has {len(per_layer)} entries but layers keeps "
                    f"{len(self.layers)} blocks {_short(self.layers)}; give one index list per kept block")
            object.__setattr__(self, name, per_layer)
        for k, layer in enumerate(self.layers):
            if not self.heads[k] and not self.neurons[k]:
                raise ConfigError(
                    f"SubModelSpec keeps block {layer} with no heads and no neurons; drop it from layers")
        if not isinstance(self.family, str):
            raise ConfigError(f"SubModelSpec.family must be a string, got {self.family!r}")

    # -- sizes -----------------------------------------------------------------
    @property
    def depth(self) -> int:
        """l_n: number of kept blocks."""
        return len(self.layers)

    @property
    def width(self) -> int:
        """d_n: number of kept residual channels."""
        return len(self.channels)

    @property
    def head_counts(self) -> tuple[int, ...]:
        """h_n^k for each kept block."""
        return tuple(len(h) for h in self.heads)

    @property
    def mlp_widths(self) -> tuple[int, ...]:
        """D_n^k for each kept block."""
        return tuple(len(n) for n in self.neurons)

    def check_against(self, config: TeacherConfig) -> None:
        """Raise `ConfigError` naming the field if the spec does not fit the teacher `config`."""
        fingerprint = config.fingerprint()
        if self.family and self.family != fingerprint:
            raise ConfigError(
                f"SubModelSpec.family={self.family!r} belongs to another teacher family "
                f"(this teacher is {fingerprint!r})")
        self.check_sizes(config.depth, config.embed_dim, config.num_heads, config.mlp_hidden)

    def check_sizes(self, depth: int, width: int, heads: int, neurons: int) -> None:
        """Raise `ConfigError` naming the first index beyond a teacher of these sizes (any family)."""
        for name, limit in (("layers", depth), ("channels", width)):
            items = getattr(self, name)
            if items and items[-1] >= limit:
                raise ConfigError(f"SubModelSpec.{name} index {items[-1]} is out of range (teacher has {limit})")
        for name, limit in (("heads", heads), ("neurons", neurons)):
            for k, items in enumerate(getattr(self, name)):
                if items and items[-1] >= limit:
                    raise ConfigError(
                        f"SubModelSpec.{name}[{k}] index {items[-1]} is out of range (teacher has {limit})")

    def bound_to(self, config: TeacherConfig) -> SubModelSpec:
        """This spec, checked against `config` and stamped with its family."""
        self.check_against(config)
        return SubModelSpec(self.layers, self.channels, self.heads, self.neurons, config.fingerprint())

    # -- serialisation -----------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "family": self.family,
            "layers": list(self.layers),
            "channels": list(self.channels),
            "heads": [list(h) for h in self.heads],
            "neurons": [list(n) for n in self.neurons],
        }

    @classmethod
    def from_dict(cls, data: Any) -> SubModelSpec:
        if not isinstance(data, dict):
            raise ConfigError(f"a SubModelSpec must be a JSON object, got {type(data).__name__}")
        missing = [k for k in ("layers", "channels", "heads", "neurons") if k not in data]
        if missing:
            raise ConfigError(f"SubModelSpec is missing field(s) {missing}")
        unknown = sorted(set(data) - {"layers", "channels", "heads", "neurons", "family"})
        if unknown:
            raise ConfigError(f"SubModelSpec has unknown field(s) {unknown}")
        return cls(data["layers"], data["channels"], data["heads"], data["neurons"], data.get("family", ""))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> SubModelSpec:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"SubModelSpec is not valid JSON: {exc}") from None
        return cls.from_dict(data)

    def describe(self) -> str:
        """One line: l, d, mean heads, mean MLP width."""
        mean_h = sum(self.head_counts) / max(self.depth, 1)
        mean_d = sum(self.mlp_widths) / max(self.depth, 1)
        return f"l={self.depth} d={self.width} h̄={mean_h:.1f} D̄={mean_d:.0f}"

    @classmethod
    def full(cls, config: TeacherConfig) -> SubModelSpec:
        """The spec that keeps everything: its sub-model is the teacher."""
        return cls(
            layers=tuple(range(config.depth)),
            channels=tuple(range(config.embed_dim)),
            heads=tuple(tuple(range(config.num_heads)) for _ in range(config.depth)),
            neurons=tuple(tuple(range(config.mlp_hidden)) for _ in range(config.depth)),
            family=config.fingerprint(),
        )


@dataclass(frozen=True)
class Policy:
    """A decomposition policy: one sub-model spec per device, in device order.

    Attributes:
        devices: Device names, unique, in the order of `specs`.
        specs: One `SubModelSpec` per device.
        shared_channels: Residual channels may be kept by several sub-models (C2 relaxed; heads
            and neurons stay partitioned): the balanced split, where every device keeps every
            channel and the work of each block is divided, not pruned.
        shared_units: Heads and MLP neurons may be kept by several sub-models too (C3-C4 relaxed;
            implies `shared_channels`): DeViT and ED-ViT, where each sub-model is pruned from the
            teacher for its own classes and two of them may keep the same unit.
    """

    devices: tuple[str, ...]
    specs: tuple[SubModelSpec, ...]
    shared_channels: bool = False
    shared_units: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "devices", tuple(self.devices))
        object.__setattr__(self, "specs", tuple(self.specs))
        if not self.devices:
            raise ConfigError("Policy.devices must name at least one device")
        if len(self.devices) != len(self.specs):
            raise ConfigError(
                f"Policy has {len(self.devices)} devices {list(self.devices)} but {len(self.specs)} specs")
        if len(set(self.devices)) != len(self.devices):
            raise ConfigError(f"Policy.devices has repeated names: {list(self.devices)}")
        for name, spec in zip(self.devices, self.specs):
            if not isinstance(spec, SubModelSpec):
                raise ConfigError(f"Policy spec for device {name!r} is a {type(spec).__name__}, not a SubModelSpec")
        if self.shared_units and not self.shared_channels:
            raise ConfigError("Policy.shared_units implies shared_channels (a shared head reads shared channels)")

    def __len__(self) -> int:
        return len(self.specs)

    def spec_for(self, device: str) -> SubModelSpec:
        try:
            return self.specs[self.devices.index(device)]
        except ValueError:
            raise ConfigError(f"Policy has no device {device!r}; it has {list(self.devices)}") from None

    def check_against(self, config: TeacherConfig) -> None:
        """Check every spec against the teacher and the partition constraints C1-C4."""
        for name, spec in zip(self.devices, self.specs):
            try:
                spec.check_against(config)
            except ConfigError as exc:
                raise ConfigError(f"device {name!r}: {exc}") from None
        check_disjoint(self)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"devices": {name: spec.to_dict() for name, spec in zip(self.devices, self.specs)}}
        if self.shared_channels:   # written only when set: older policies read unchanged
            out["shared_channels"] = True
        if self.shared_units:
            out["shared_units"] = True
        return out

    @classmethod
    def from_dict(cls, data: Any) -> Policy:
        if not isinstance(data, dict) or not isinstance(data.get("devices"), dict):
            raise ConfigError("a Policy must be a JSON object {\"devices\": {name: spec, ...}}")
        unknown = sorted(set(data) - {"devices", "shared_channels", "shared_units"})
        if unknown:
            raise ConfigError(f"a Policy has no field(s) {unknown}")
        shared, units = data.get("shared_channels", False), data.get("shared_units", False)
        for key, value in (("shared_channels", shared), ("shared_units", units)):
            if not isinstance(value, bool):
                raise ConfigError(f"Policy.{key} must be true or false, got {value!r}")
        names, specs = [], []
        for name, spec in data["devices"].items():
            try:
                specs.append(SubModelSpec.from_dict(spec))
            except ConfigError as exc:
                raise ConfigError(f"device {name!r}: {exc}") from None
            names.append(name)
        return cls(tuple(names), tuple(specs), shared, units)

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, text: str) -> Policy:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"Policy is not valid JSON: {exc}") from None
        return cls.from_dict(data)


def check_disjoint(policy: Policy) -> None:
    """Raise `ConfigError` if two sub-models share a channel (unless the policy shares channels),
    or a head or neuron of one block (unless it shares units)."""
    if policy.shared_units:
        return
    seen_channels: dict[int, str] = {}
    seen_units: dict[tuple[str, int, int], str] = {}
    for name, spec in zip(policy.devices, policy.specs):
        for c in () if policy.shared_channels else spec.channels:
            if c in seen_channels:
                raise ConfigError(f"C2: channel {c} is given to both {seen_channels[c]!r} and {name!r}")
            seen_channels[c] = name
        for block, heads, neurons in zip(spec.layers, spec.heads, spec.neurons):
            for kind, units in (("head", heads), ("neuron", neurons)):
                for u in units:
                    key = (kind, block, u)
                    if key in seen_units:
                        raise ConfigError(
                            f"{'C3' if kind == 'head' else 'C4'}: {kind} {u} of block {block} is given to both "
                            f"{seen_units[key]!r} and {name!r}")
                    seen_units[key] = name
