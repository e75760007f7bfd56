"""shoal: split a vision transformer across edge devices and serve it in parallel."""

from __future__ import annotations

__version__ = "0.1.0"

from shoal.errors import ShoalError

__all__ = ["ShoalError", "__version__"]
