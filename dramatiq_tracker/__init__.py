"""dramatiq-tracker: track in-flight Dramatiq messages per worker and deliver a
dead worker's orphans again within seconds, exactly once."""

from __future__ import annotations

from ._version import __version__
from .errors import ConfigurationError, DuplicateMessage, TrackerError, TrackerNotConfigured, UniqueKeyError
from .events import TrackerEvent
from .keys import Keys, namespaced_key
from .middleware import Tracker, TrackerMiddleware, find_tracker, recover
from .options import ATTEMPT_OPTION, RECOVERIES_OPTION
from .orphans import LockCleaner, Orphan, RecoveryReport
from .store import LockInfo
from .unique import UNTIL_EXECUTED, UNTIL_EXECUTING, UNTIL_EXPIRED, WHILE_EXECUTING

__all__ = [
    "__version__",
    # Middleware
    "Tracker",
    "TrackerMiddleware",
    # Recovery
    "LockCleaner",
    "Orphan",
    "RecoveryReport",
    "ATTEMPT_OPTION",
    "RECOVERIES_OPTION",
    "find_tracker",
    "recover",
    # Events
    "TrackerEvent",
    # Uniqueness
    "LockInfo",
    "UNTIL_EXECUTED",
    "UNTIL_EXECUTING",
    "UNTIL_EXPIRED",
    "WHILE_EXECUTING",
    # Keys
    "Keys",
    "namespaced_key",
    # Errors
    "ConfigurationError",
    "DuplicateMessage",
    "TrackerError",
    "TrackerNotConfigured",
    "UniqueKeyError",
]
