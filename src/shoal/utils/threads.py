"""How many CPU threads torch's intra-op parallelism uses, for one block of code."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from shoal.errors import ConfigError


@contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """Run the block with `torch.set_num_threads(threads)`, then restore the previous count.

    One thread is right for loops of many tiny operations (a 70k-parameter aggregator, a
    small predictor): splitting a (128, 352) matmul over cores costs more in synchronisation
    than it saves, and on a busy 2-core machine the spinning threads made each step 7x slower.
    """
    if threads < 1:
        raise ConfigError(f"threads must be at least 1, got {threads}")
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
