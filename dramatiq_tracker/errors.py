"""Errors raised by dramatiq-tracker."""

from __future__ import annotations

from dramatiq.errors import DramatiqError
from dramatiq.middleware import MiddlewareError


class TrackerError(DramatiqError):
    """Base class for every error raised by dramatiq-tracker."""

    def __init__(self, message: str) -> None:
        super().__init__(message)  # type: ignore[no-untyped-call]


class ConfigurationError(TrackerError, MiddlewareError, ValueError):
    """Raised when a setting of the tracker, or a tracker option of an actor or
    message, is invalid.  As a ``MiddlewareError`` it reaches the caller of
    ``@dramatiq.actor`` or ``send()`` instead of being logged by Dramatiq.

    Parameters:
      setting(str): The name of the offending setting or option.
      message(str): What is wrong with it.
    """

    def __init__(self, setting: str, message: str) -> None:
        super().__init__("%s: %s" % (setting, message))
        self.setting = setting


class TrackerNotConfigured(TrackerError):
    """Raised when an API needs a TrackerMiddleware that the broker lacks."""


class DuplicateMessage(TrackerError, MiddlewareError):
    """Raised by ``send()`` when a unique actor's message duplicates one that holds its lock.

    Parameters:
      message_id(str): The refused message.
      digest(str): The uniqueness digest both messages share.
      owner(str): The message id that holds the lock.
    """

    def __init__(self, message_id: str, digest: str, owner: str) -> None:
        super().__init__(
            "Message %r duplicates message %r, which holds uniqueness lock %s." % (message_id, owner, digest)
        )
        self.message_id = message_id
        self.digest = digest
        self.owner = owner


class UniqueKeyError(TrackerError, MiddlewareError):
    """Raised by ``send()`` when a message's uniqueness key cannot be computed."""


class RecoveryTakenOver(TrackerError):
    """Raised inside a sweeper whose claim on a dead worker's recovery another sweeper took over
    (it stalled past ``takeover_after``): it must do nothing more for that worker.

    Parameters:
      worker_id(str): The dead worker.
    """

    def __init__(self, worker_id: str) -> None:
        super().__init__("The recovery of worker %r was taken over by another sweeper." % worker_id)
        self.worker_id = worker_id
