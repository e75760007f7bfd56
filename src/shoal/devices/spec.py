"""`DeviceSpec` and device sets (YAML).

A device set names every device that takes part in a plan, its budgets, its
link to the central node and where its latency profile lives. One device is
the central node: it runs a sub-model too, and aggregates.

    devices:
      - name: hub
        central: true
        memory_mb: 512          # C6: weights + activations must fit
        compute_mflops: null    # C5: FLOPs per inference (optional)
        link_mbps: 1000         # rate of the link to the central node
        link_latency_ms: 0.05
        profile: profiles/hub   # directory written by `shoal profile`
        cpu_quota: 1.0          # emulation: fraction of one core (cgroup quota)
        cpus: [0]               # emulation: cores the process is pinned to
        threads: 1
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import yaml

from shoal.devices.emulation import CpuLimit
from shoal.errors import ConfigError

MIB = 1 << 20


ACCELERATORS = ("cpu", "cuda")


@dataclass(frozen=True)
class DeviceSpec:
    """One device of a plan.

    Attributes:
        name: Unique name (letters, digits, '-', '_').
        memory_bytes: Memory budget for the sub-model (weights + activations), C6.
        compute_flops: Optional FLOPs budget per inference, C5.
        link_mbps: Link rate to the central node in Mbit/s (ignored for the central node).
        link_latency_ms: One-way link latency to the central node in ms.
        profile: Directory of this device's `shoal profile` output (None: use `catalog`).
        central: Whether this device is the central (aggregating) node.
        cpu_quota: Emulation: share of one core the device's process may use (cgroup quota).
        cpus: Emulation: cores the device's process is pinned to.
        threads: Torch intra-op threads the device uses.
        catalog: Name of a catalog board for an analytic estimate when no profile exists.
        accelerator: Where the device runs its sub-model: "cpu" or "cuda" (its profile is then
            a CUDA profile; `shoal serve` puts the sub-model on the GPU).
    """

    name: str
    memory_bytes: int
    compute_flops: int | None = None
    link_mbps: float = 100.0
    link_latency_ms: float = 0.0
    profile: str | None = None
    central: bool = False
    cpu_quota: float | None = None
    cpus: tuple[int, ...] | None = None
    threads: int = 1
    catalog: str | None = None
    accelerator: str = "cpu"

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name or not all(c.isalnum() or c in "-_" for c in self.name):
            raise ConfigError(f"device name must be letters, digits, '-' or '_', got {self.name!r}")
        where = f"device {self.name!r}"
        _positive_int(self.memory_bytes, f"{where}: memory_bytes")
        if self.compute_flops is not None:
            _positive_int(self.compute_flops, f"{where}: compute_flops")
        _positive_number(self.link_mbps, f"{where}: link_mbps")
        _number(self.link_latency_ms, f"{where}: link_latency_ms", minimum=0.0)
        if self.cpu_quota is not None:
            _number(self.cpu_quota, f"{where}: cpu_quota", minimum=0.01)
        if self.cpus is not None:
            cpus = tuple(self.cpus)
            if not cpus or any(isinstance(c, bool) or not isinstance(c, int) or c < 0 for c in cpus):
                raise ConfigError(f"{where}: cpus must be a non-empty list of core numbers, got {list(cpus)!r}")
            object.__setattr__(self, "cpus", cpus)
        _positive_int(self.threads, f"{where}: threads")
        if self.accelerator not in ACCELERATORS:
            raise ConfigError(f"{where}: accelerator must be one of {list(ACCELERATORS)}, got {self.accelerator!r}")
        if not isinstance(self.central, bool):
            raise ConfigError(f"{where}: central must be true or false, got {self.central!r}")
        if self.catalog is not None:
            from shoal.devices.catalog import board

            try:
                board(str(self.catalog))
            except ConfigError as exc:
                raise ConfigError(f"{where}: catalog: {exc}") from None

    @property
    def cpu_limit(self) -> CpuLimit:
        """The emulation limit its process runs under (its cgroup quota and pinned cores)."""
        return CpuLimit(self.cpu_quota, self.cpus)

    def fits(self, memory_bytes: int, flops: int) -> bool:
        """Whether a sub-model of this memory (weights + activations) and these FLOPs per inference
        meets the device's budgets (CoFormer C5-C6)."""
        return memory_bytes <= self.memory_bytes and (self.compute_flops is None or flops <= self.compute_flops)

    def transfer_ms(self, payload_bytes: int) -> float:
        """t2 (CoFormer eq. 5): link latency + bytes / rate. Zero for the central node."""
        if self.central:
            return 0.0
        return self.link_latency_ms + payload_bytes * 8 / (self.link_mbps * 1e6) * 1e3

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["cpus"] = list(self.cpus) if self.cpus is not None else None
        if self.accelerator == "cpu":   # as every device set and plan before accelerators wrote it
            del data["accelerator"]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DeviceSpec:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"device {data.get('name')!r}: unknown field(s) {unknown}")
        return cls(**data)


def _number(value: Any, where: str, minimum: float | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{where} must be a number, got {value!r}")
    if minimum is not None and value < minimum:
        raise ConfigError(f"{where} must be at least {minimum}, got {value!r}")


def _positive_number(value: Any, where: str) -> None:
    _number(value, where)
    if value <= 0:
        raise ConfigError(f"{where} must be positive, got {value!r}")


def _positive_int(value: Any, where: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"{where} must be a positive integer, got {value!r}")


@dataclass(frozen=True)
class DeviceSet:
    """The devices of a plan, the central node among them.

    Attributes:
        devices: Device specs in plan order (the central node first).
        source: Where the set was read from (for messages; not part of equality).
    """

    devices: tuple[DeviceSpec, ...]
    source: str = field(default="<memory>", compare=False)

    def __post_init__(self) -> None:
        devices = tuple(self.devices)
        if not devices:
            raise ConfigError(f"{self.source}: a device set needs at least one device")
        names = [d.name for d in devices]
        if len(set(names)) != len(names):
            raise ConfigError(f"{self.source}: device names repeat: {names}")
        central = [d.name for d in devices if d.central]
        if len(central) != 1:
            raise ConfigError(f"{self.source}: exactly one device must have central: true, found {central or 'none'}")
        # the central node first: it is device 0 of every policy
        devices = tuple(sorted(devices, key=lambda d: not d.central))
        object.__setattr__(self, "devices", devices)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(d.name for d in self.devices)

    @property
    def central(self) -> DeviceSpec:
        return self.devices[0]

    def __len__(self) -> int:
        return len(self.devices)

    def __getitem__(self, name: str) -> DeviceSpec:
        for device in self.devices:
            if device.name == name:
                return device
        raise ConfigError(f"{self.source}: no device {name!r}; devices are {list(self.names)}")

    def to_dict(self) -> dict[str, Any]:
        return {"devices": [d.to_dict() for d in self.devices]}


_YAML_FIELDS = {
    "name": "name", "central": "central", "memory_mb": None, "memory_bytes": "memory_bytes",
    "compute_mflops": None, "compute_flops": "compute_flops", "link_mbps": "link_mbps",
    "link_latency_ms": "link_latency_ms", "profile": "profile", "cpu_quota": "cpu_quota", "cpus": "cpus",
    "threads": "threads", "catalog": "catalog", "accelerator": "accelerator",
}


def device_from_yaml(entry: Any, where: str, base: Path | None = None) -> DeviceSpec:
    """One device entry of a YAML device set; `where` prefixes error messages."""
    if not isinstance(entry, dict):
        raise ConfigError(f"{where} must be a mapping of fields, got {entry!r}")
    unknown = sorted(set(entry) - set(_YAML_FIELDS))
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {unknown}; known fields are {sorted(_YAML_FIELDS)}")
    if "name" not in entry:
        raise ConfigError(f"{where}: missing field 'name'")
    data = {v: entry[k] for k, v in _YAML_FIELDS.items() if v and k in entry}
    if "memory_mb" in entry:
        _positive_number(entry["memory_mb"], f"{where}.memory_mb")
        data["memory_bytes"] = int(entry["memory_mb"] * MIB)
    if "memory_bytes" not in data:
        raise ConfigError(f"{where}: missing field 'memory_mb' (the device's memory budget)")
    if entry.get("compute_mflops") is not None:
        _positive_number(entry["compute_mflops"], f"{where}.compute_mflops")
        data["compute_flops"] = int(entry["compute_mflops"] * 1e6)
    for key in ("link_mbps", "link_latency_ms", "cpu_quota"):
        if isinstance(data.get(key), int) and not isinstance(data.get(key), bool):
            data[key] = float(data[key])
    if data.get("profile") is not None:
        profile = Path(str(data["profile"]))
        if base is not None and not profile.is_absolute():
            profile = base / profile
        data["profile"] = str(profile)
    try:
        return DeviceSpec(**data)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    except TypeError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def load_device_set(path: str | Path, *, base: str | Path | None = None) -> DeviceSet:
    """Read and validate a YAML device set; errors name the file, the entry and the field.

    Args:
        path: The YAML file.
        base: Directory relative `profile:` paths resolve against (default: the YAML file's own
            directory, so a set and its profiles can travel together).
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"device file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}".splitlines()[0]) from None
    if not isinstance(data, dict) or not isinstance(data.get("devices"), list):
        raise ConfigError(f"{path} must hold a mapping with a 'devices:' list")
    root = Path(base) if base is not None else path.parent
    devices = [device_from_yaml(e, f"{path.name}: devices[{i}]", root)
               for i, e in enumerate(data["devices"])]
    return DeviceSet(tuple(devices), source=str(path))


DEFAULT_DEVICE_SET = Path(__file__).with_name("default.yaml")


DEFAULT_SET_TEACHER_BYTES = 11_248_936   # weights + activations of the shipped digits teacher (default.yaml's scale)


def default_device_set(workdir: str | Path | None = None, family: str | None = None,
                       teacher_bytes: int | None = None) -> DeviceSet:
    """The packaged default set: three emulated devices on this machine (see default.yaml).

    Its relative profile paths (`.shoal/profiles/<name>`) resolve against `workdir`
    (default: the current working directory), not against the installed package.
    With `family` (a teacher family's fingerprint) they become `.shoal/profiles/<family>/<name>`,
    so the profiles of several teachers (digits, Fashion-MNIST) live side by side instead of
    each plan measuring the devices again for its own teacher.
    With `teacher_bytes` (a larger teacher's weights + activations) the memory budgets grow in
    proportion, so they keep meaning what they mean for the digits teacher: the hub holds the
    teacher several times over, each edge device only a part of it.
    """
    base = Path(workdir) if workdir is not None else Path.cwd()
    devices = load_device_set(DEFAULT_DEVICE_SET, base=base)
    if family is None:
        return devices
    scale = max(1.0, (teacher_bytes or 0) / DEFAULT_SET_TEACHER_BYTES)
    moved = []
    for d in devices.devices:
        path = Path(d.profile) if d.profile is not None else base / ".shoal" / "profiles" / d.name
        moved.append(replace(d, profile=str(path.parent / family / path.name),
                             memory_bytes=int(d.memory_bytes * scale)))
    return DeviceSet(tuple(moved), source=devices.source)


def device_set_to_yaml(devices: Sequence[DeviceSpec]) -> str:
    """The YAML text of a device set (round-trips through `load_device_set`)."""
    entries = []
    for d in devices:
        entry: dict[str, Any] = {"name": d.name, "central": d.central, "memory_mb": d.memory_bytes / MIB,
                                 "link_mbps": d.link_mbps, "link_latency_ms": d.link_latency_ms}
        if d.compute_flops is not None:
            entry["compute_mflops"] = d.compute_flops / 1e6
        for key in ("profile", "cpu_quota", "catalog"):
            if getattr(d, key) is not None:
                entry[key] = getattr(d, key)
        if d.cpus is not None:
            entry["cpus"] = list(d.cpus)
        entry["threads"] = d.threads
        entries.append(entry)
    return yaml.safe_dump({"devices": entries}, sort_keys=False)
