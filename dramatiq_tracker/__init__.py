"""dramatiq-tracker: track in-flight Dramatiq messages per worker and deliver a
dead worker's orphans again within seconds, exactly once."""

from __future__ import annotations

from ._version import __version__
from .errors import ConfigurationError, TrackerError, TrackerNotConfigured
from .keys import Keys, namespaced_key
from .middleware import Tracker, TrackerMiddleware
from .orphans import LockCleaner, Orphan, RecoveredOrphan, RecoveryReport
from .recorder import RECOVERIES_OPTION
from .tracking import find_tracker, recover

__all__ = [
    "__version__",
    # Middleware
    "Tracker",
    "TrackerMiddleware",
    # Recovery
    "LockCleaner",
    "Orphan",
    "RecoveredOrphan",
    "RecoveryReport",
    "RECOVERIES_OPTION",
    "find_tracker",
    "recover",
    # Keys
    "Keys",
    "namespaced_key",
    # Errors
    "ConfigurationError",
    "TrackerError",
    "TrackerNotConfigured",
]
