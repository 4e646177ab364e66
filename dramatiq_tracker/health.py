"""Log a tracker Redis outage once, not once per message or per thread."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from dramatiq.logging import get_logger


class ConnectionHealth:
    """Shared by every thread of a tracker that talks to its Redis.

    The first failure of an outage logs a warning; the first success after
    it logs how long the outage lasted and asks for a resynchronisation.
    """

    def __init__(self) -> None:
        self.logger = get_logger(__name__, type(self))
        self._lock = threading.Lock()
        self._down_since: float | None = None
        self._last_try = 0.0
        #: When the last outage ended (time.monotonic()), or None.
        self.reconnected_at: float | None = None
        #: Called, without arguments, when an outage ends.
        self.on_reconnect: list[Callable[[], None]] = []

    @property
    def is_down(self) -> bool:
        return self._down_since is not None

    def should_try(self) -> bool:
        """Whether a caller on a hot path should try Redis now: always when it is up,
        about once a second during an outage (so that an outage costs no time per message)."""
        if self._down_since is None:
            return True
        now = time.monotonic()
        with self._lock:
            if now - self._last_try < 1.0:
                return False
            self._last_try = now
        return True

    def failed(self, operation: str, error: BaseException) -> None:
        """Report a failed Redis operation."""
        with self._lock:
            first = self._down_since is None
            if first:
                self._down_since = time.monotonic()
        if first:
            self.logger.warning(
                "Tracker Redis is unreachable (%s failed: %s). Messages keep being processed; "
                "tracking resumes when it is back.",
                operation,
                error,
            )
        else:
            self.logger.debug("Tracker Redis still unreachable (%s failed: %s).", operation, error)

    def succeeded(self, started: float) -> bool:
        """Report a successful Redis operation.

        Parameters:
          started(float): When the operation began (``time.monotonic()``).  A success
            that began before the outage was noticed says nothing about its end.

        Returns:
          bool: True when this success ends an outage.
        """
        with self._lock:
            since = self._down_since
            if since is None or started < since:
                return False
            self._down_since = None
        self.reconnected_at = time.monotonic()
        self.logger.info("Tracker Redis is reachable again after %d ms.", (self.reconnected_at - since) * 1000)
        for callback in self.on_reconnect:
            callback()
        return True

    def settled_for(self, seconds: float) -> bool:
        """True when the tracker's Redis is up and has been for at least ``seconds`` since the last outage."""
        if self._down_since is not None:
            return False
        return self.reconnected_at is None or time.monotonic() - self.reconnected_at >= seconds
