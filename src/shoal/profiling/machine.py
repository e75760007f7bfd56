"""What this machine is: CPU model, cores, RAM, CUDA device, library versions.

A profile records the probe of the machine it was measured on, so a reader
can tell which hardware (and which torch) a latency predictor speaks for.
"""

from __future__ import annotations

import os
import platform
import socket
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch

from shoal.errors import ConfigError
from shoal.profiling.settings import DeviceKind
from shoal.utils.accel import compute_device


@dataclass(frozen=True)
class DeviceProbe:
    """A description of the machine a measurement was taken on.

    Attributes:
        hostname: Network name of the machine.
        cpu_model: CPU model string ("unknown" if the OS does not say).
        logical_cpus: Logical CPUs of the machine (hyper-threads included).
        physical_cores: Physical cores (equal to `logical_cpus` where the OS does not say).
        cpus_allowed: Cores this process may run on (its affinity).
        threads: Torch intra-op threads used for the measurements.
        memory_bytes: Total RAM.
        device: Where inference ran: "cpu" or "cuda".
        cuda_device: Name of the CUDA device, if one is used or present.
        cuda_memory_bytes: Memory of that CUDA device.
        torch_version: `torch.__version__`.
        python_version: `platform.python_version()`.
        platform: `platform.platform()`.
    """

    hostname: str
    cpu_model: str
    logical_cpus: int
    physical_cores: int
    cpus_allowed: tuple[int, ...]
    threads: int
    memory_bytes: int
    device: DeviceKind
    cuda_device: str | None
    cuda_memory_bytes: int | None
    torch_version: str
    python_version: str
    platform: str

    def __post_init__(self) -> None:
        for name in ("logical_cpus", "physical_cores", "threads"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"DeviceProbe.{name} must be a positive integer, got {value!r}")
        if self.device not in ("cpu", "cuda"):
            raise ConfigError(f"DeviceProbe.device must be 'cpu' or 'cuda', got {self.device!r}")
        object.__setattr__(self, "cpus_allowed", tuple(int(c) for c in self.cpus_allowed))

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["cpus_allowed"] = list(self.cpus_allowed)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DeviceProbe:
        known = {f.name for f in fields(cls)}
        missing = sorted(known - set(data))
        if missing:
            raise ConfigError(f"device probe is missing field(s) {missing}")
        return cls(**{k: data[k] for k in known})

    def describe(self) -> str:
        """One line, e.g. 'AMD EPYC, 2 cores, 23.5 GiB, torch 2.4.1, 1 thread on cpu'."""
        where = f"cuda ({self.cuda_device})" if self.device == "cuda" else "cpu"
        return (f"{self.cpu_model}, {self.physical_cores} cores, {self.memory_bytes / 2**30:.1f} GiB, "
                f"torch {self.torch_version}, {self.threads} thread{'s' * (self.threads > 1)} on {where}")


def probe_device(threads: int | None = None, device: DeviceKind = "cpu") -> DeviceProbe:
    """Probe this machine.

    Args:
        threads: Torch threads the measurements use (default: torch's current setting).
        device: "cpu" or "cuda".

    Raises:
        PlatformError: "cuda" was asked for but no CUDA device is visible.
    """
    compute_device(device)
    cpu_model, physical = _cpuinfo()
    cuda_name, cuda_memory = None, None
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        cuda_name, cuda_memory = str(props.name), int(props.total_memory)
    logical = os.cpu_count() or 1
    return DeviceProbe(
        hostname=socket.gethostname(),
        cpu_model=cpu_model or platform.processor() or "unknown",
        logical_cpus=logical,
        physical_cores=physical or logical,
        cpus_allowed=tuple(sorted(os.sched_getaffinity(0))),
        threads=threads if threads is not None else torch.get_num_threads(),
        memory_bytes=_total_memory(),
        device=device,
        cuda_device=cuda_name,
        cuda_memory_bytes=cuda_memory,
        torch_version=torch.__version__,
        python_version=platform.python_version(),
        platform=platform.platform(),
    )


def _cpuinfo() -> tuple[str, int | None]:
    """(model name, physical core count) from /proc/cpuinfo; ("", None) where it is unreadable."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "", None
    model, cores, physical_id = "", set(), "0"
    for line in text.splitlines():
        key, _, value = (part.strip() for part in line.partition(":"))
        if key == "model name" and not model:
            model = value
        elif key == "physical id":
            physical_id = value
        elif key == "core id":
            cores.add((physical_id, value))
    return model, len(cores) or None


def _total_memory() -> int:
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return 0
