"""dramatiq-tracker: track in-flight Dramatiq messages per worker and deliver a
dead worker's orphans again within seconds, exactly once.

The public names are loaded when first used (PEP 562): importing the package,
as pytest does for the plugin of every environment it runs in, costs nothing
until one of them is.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._lazy import lazy_attribute
from ._version import __version__

if TYPE_CHECKING:
    from .errors import ConfigurationError, DuplicateMessage, TrackerError, TrackerNotConfigured, UniqueKeyError
    from .events import TrackerEvent
    from .keys import Keys, namespaced_key
    from .middleware import Tracker, TrackerMiddleware, find_tracker, recover
    from .options import ATTEMPT_OPTION, RECOVERIES_OPTION
    from .orphans import LockCleaner, Orphan, RecoveryReport
    from .records import LockInfo
    from .unique import UNTIL_EXECUTED, UNTIL_EXECUTING, UNTIL_EXPIRED, WHILE_EXECUTING

#: Each public name, and the module that defines it.
_PUBLIC = {
    "Tracker": ".middleware",
    "TrackerMiddleware": ".middleware",
    "find_tracker": ".middleware",
    "recover": ".middleware",
    "LockCleaner": ".orphans",
    "Orphan": ".orphans",
    "RecoveryReport": ".orphans",
    "ATTEMPT_OPTION": ".options",
    "RECOVERIES_OPTION": ".options",
    "TrackerEvent": ".events",
    "LockInfo": ".records",
    "UNTIL_EXECUTED": ".unique",
    "UNTIL_EXECUTING": ".unique",
    "UNTIL_EXPIRED": ".unique",
    "WHILE_EXECUTING": ".unique",
    "Keys": ".keys",
    "namespaced_key": ".keys",
    "ConfigurationError": ".errors",
    "DuplicateMessage": ".errors",
    "TrackerError": ".errors",
    "TrackerNotConfigured": ".errors",
    "UniqueKeyError": ".errors",
}


def __getattr__(name: str) -> Any:
    value = lazy_attribute(__name__, _PUBLIC, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_PUBLIC])


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
