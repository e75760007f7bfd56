"""Devices: their description (`DeviceSpec`, YAML sets), the catalog of boards one may not
have at hand, and CPU-quota emulation of a slower device on this machine. Measuring a device
is `shoal.profiling`."""

from __future__ import annotations

from shoal.devices.emulation import CpuLimit, apply_cpu_limit, quota_unavailable_reason, remove_cgroup
from shoal.devices.spec import DEFAULT_DEVICE_SET, DeviceSet, DeviceSpec, default_device_set, load_device_set

__all__ = [
    "DEFAULT_DEVICE_SET", "CpuLimit", "DeviceSet", "DeviceSpec", "apply_cpu_limit", "default_device_set",
    "load_device_set", "quota_unavailable_reason", "remove_cgroup",
]
