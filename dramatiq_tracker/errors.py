"""Errors raised by dramatiq-tracker."""

from __future__ import annotations

from dramatiq.errors import DramatiqError


class TrackerError(DramatiqError):
    """Base class for every error raised by dramatiq-tracker."""

    def __init__(self, message: str) -> None:
        super().__init__(message)  # type: ignore[no-untyped-call]


class ConfigurationError(TrackerError, ValueError):
    """Raised when a setting of the tracker is invalid.

    Parameters:
      setting(str): The name of the offending setting.
      message(str): What is wrong with it.
    """

    def __init__(self, setting: str, message: str) -> None:
        super().__init__("%s: %s" % (setting, message))
        self.setting = setting


class TrackerNotConfigured(TrackerError):
    """Raised when an API needs a TrackerMiddleware that the broker lacks."""
