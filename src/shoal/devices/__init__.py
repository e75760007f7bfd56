"""Devices: their description (`DeviceSpec`, YAML sets), this machine's probe, CPU-quota
emulation, the timing loop, and the profiling runner that fills a latency dataset."""

from __future__ import annotations

from shoal.devices.emulation import CpuLimit, apply_cpu_limit, quota_unavailable_reason, remove_cgroup
from shoal.devices.probe import DeviceProbe, probe_device
from shoal.devices.spec import DEFAULT_DEVICE_SET, DeviceSet, DeviceSpec, default_device_set, load_device_set
from shoal.devices.timing import LatencyStats, measure_latency, peak_memory_bytes

__all__ = [
    "DEFAULT_DEVICE_SET", "CpuLimit", "DeviceProbe", "DeviceSet", "DeviceSpec", "LatencyStats", "apply_cpu_limit",
    "default_device_set", "load_device_set", "measure_latency", "peak_memory_bytes", "probe_device",
    "quota_unavailable_reason", "remove_cgroup",
]
