"""Where models compute: a CUDA device that is not there is one line, before any work."""

from __future__ import annotations

import pytest
import torch

from shoal.errors import PlatformError
from shoal.utils.accel import compute_device, device_of

NO_CUDA = not torch.cuda.is_available()


def test_cpu_is_always_there_and_modules_report_their_device():
    assert compute_device("cpu") == torch.device("cpu")
    assert device_of(torch.nn.Linear(2, 2)) == torch.device("cpu")
    assert device_of(torch.nn.Identity()) == torch.device("cpu")   # no parameters: the host


@pytest.mark.skipif(not NO_CUDA, reason="a CUDA device is visible")
def test_cuda_without_a_gpu_is_one_line():
    with pytest.raises(PlatformError, match=r"--device cuda: no CUDA device is visible here") as info:
        compute_device("cuda")
    assert "\n" not in str(info.value)


def test_other_devices_are_refused():
    with pytest.raises(PlatformError, match="only cpu and cuda"):
        compute_device("meta")
