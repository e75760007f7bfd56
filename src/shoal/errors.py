"""The one exception hierarchy of shoal.

Every error a user can cause is a `ShoalError` whose message says what was
wrong and what to do. The CLI prints it as one red line and exits 1
(`SHOAL_DEBUG=1` shows the traceback).
"""

from __future__ import annotations


class ShoalError(Exception):
    """Base class of every error shoal raises on purpose."""


class ConfigError(ShoalError, ValueError):
    """A spec, policy, device file or option has a bad value."""


class ModelError(ShoalError):
    """A teacher cannot be loaded, or its architecture is not supported."""


class DataError(ShoalError):
    """A dataset or artifact file is missing, corrupt or does not match."""


class InfeasibleError(ShoalError):
    """No decomposition can meet the devices' budgets."""


class PlatformError(ShoalError):
    """This machine cannot do what was asked (e.g. CPU-quota emulation), or a child process
    shoal started to measure a device failed."""


class RuntimeServiceError(ShoalError):
    """A worker or the central node failed, timed out or refused a request."""
