"""Device sets with profiles: the packaged default set, and profiling whatever of a set lacks one.

`ensure_profiles` lives in `shoal.predictors.resolve` (it trains predictors);
it is re-exported here for the planner, imported lazily so that
`shoal.devices` does not import `shoal.predictors` at load time.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from shoal.devices.spec import DEFAULT_DEVICE_SET, DeviceSet, default_device_set

if TYPE_CHECKING:
    from shoal.models.config import ViTConfig
    from shoal.models.teacher import Teacher

__all__ = ["DEFAULT_DEVICE_SET", "default_device_set", "ensure_profiles"]


def ensure_profiles(devices: DeviceSet, teacher: ViTConfig | Teacher, *, samples: int | None = None,
                    workdir: str | Path | None = None, **kwargs: Any) -> DeviceSet:
    """Profile every device of `devices` lacking a valid profile; see `shoal.predictors.resolve.ensure_profiles`."""
    from shoal.predictors.resolve import DEVICE_SET_SAMPLES
    from shoal.predictors.resolve import ensure_profiles as _ensure

    return _ensure(devices, teacher, samples=samples or DEVICE_SET_SAMPLES, workdir=workdir, **kwargs)
