"""Where models compute: the CPU or a CUDA device.

shoal's rule (ADR 011): data lives on the host; a module lives on its compute device; whoever
calls a module moves the batch to the module's device (`device_of`) and brings the result back
to the host when it outlives the call. The same code then runs on either, and the same seeds
draw the same batches (every random number is drawn on the host).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from shoal.errors import PlatformError


def compute_device(name: str | torch.device) -> torch.device:
    """The torch device `name` ("cpu", "cuda", "cuda:N"), refused in one line where it is absent."""
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise PlatformError(f"--device {name}: no CUDA device is visible here (torch {torch.__version__}, "
                                f"built with CUDA {torch.version.cuda or 'none'}); plan with --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise PlatformError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif device.type != "cpu":
        raise PlatformError(f"--device {name}: only cpu and cuda are supported")
    return device


def device_of(module: nn.Module) -> torch.device:
    """The device of a module's parameters (the CPU for a module without any)."""
    for p in module.parameters():
        return p.device
    return torch.device("cpu")


PRECISIONS = ("fp32", "bf16")


def autocast(device: torch.device | str, precision: str) -> torch.autocast:
    """Mixed precision for forward passes on `device`: bf16 autocast, or off ("fp32").

    On a CPU with AMX or AVX-512 BF16 (Sapphire Rapids and later), bf16 runs a DeiT-S
    forward about 3× faster than fp32; elsewhere it may be slower. Where it is used is
    decided by measurement (ADR 012), never by default.
    """
    if precision not in PRECISIONS:
        raise PlatformError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    kind = torch.device(device).type
    return torch.autocast(kind, dtype=torch.bfloat16, enabled=precision == "bf16")
