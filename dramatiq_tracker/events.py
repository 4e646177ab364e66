"""What the tracker did and why: one event per recovery, quarantine, released lock,
zombie or suppressed duplicate, logged, appended to a capped Redis stream, and
passed to the application's callbacks.

The log line and the stream entry come from the same :class:`TrackerEvent`, so
they always say the same thing.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import redis
from dramatiq.logging import get_logger

if TYPE_CHECKING:
    from .health import ConnectionHealth
    from .store import TrackerStore

#: A dead worker's orphan was delivered again.
RECOVERED = "recovered"
#: A worker was found dead.
WORKER_DEAD = "worker-dead"
#: A message was recovered more than max_recoveries times and was dead-lettered instead.
QUARANTINED = "quarantined"
#: A uniqueness lock an orphan owned was released, or passed to its next attempt.
LOCK_RELEASED = "lock-released"
#: A lock cleaner raised.
LOCK_CLEANER_FAILED = "lock-cleaner-failed"
#: This worker learned that it had been declared dead while alive.
ZOMBIE_DETECTED = "zombie-detected"
#: A zombie finished a message that had been recovered for delivery elsewhere.
ZOMBIE_COMPLETION = "zombie-completion"
#: A zombie's still-running copy was aborted with dramatiq-abort.
ZOMBIE_ABORTED = "zombie-aborted"
#: A delivery of a message running elsewhere was put off instead of run twice at once.
DUPLICATE_DEFERRED = "duplicate-deferred"
#: A put-off duplicate was dropped: the copy it waited for completed.
DUPLICATE_DROPPED = "duplicate-dropped"
#: An orphan with a pending cancel or abort request was not delivered again.
ABORT_HONOURED = "abort-honoured"

_LEVELS = {
    RECOVERED: logging.WARNING,
    WORKER_DEAD: logging.INFO,
    QUARANTINED: logging.WARNING,
    LOCK_RELEASED: logging.INFO,
    LOCK_CLEANER_FAILED: logging.WARNING,
    ZOMBIE_DETECTED: logging.ERROR,
    ZOMBIE_COMPLETION: logging.WARNING,
    ZOMBIE_ABORTED: logging.WARNING,
    DUPLICATE_DEFERRED: logging.WARNING,
    DUPLICATE_DROPPED: logging.INFO,
    ABORT_HONOURED: logging.WARNING,
}

#: Who reports events from this process, when it is not a tracked worker (a producer, a CLI).
_PROCESS = "%s:%d" % (socket.gethostname(), os.getpid())


@dataclasses.dataclass(frozen=True)
class TrackerEvent:
    """Something the tracker did, who did it, to what, and why.

    Parameters:
      kind(str): One of the kinds in :mod:`dramatiq_tracker.events` (``"recovered"``, ...).
      text(str): The human sentence, the same as the log line.
      message_id(str): The message concerned, or "".
      actor_name(str)
      queue_name(str)
      worker_id(str): The worker concerned (the dead one, the zombie), or "".
      reporter(str): The worker id (or host:pid) that did it.
      recoveries(int): The message's recovery count.
      at(int): When, in ms since the epoch (the reporter's clock).
      details(dict[str, str]): More facts, kind-specific.
    """

    kind: str
    text: str
    message_id: str = ""
    actor_name: str = ""
    queue_name: str = ""
    worker_id: str = ""
    reporter: str = ""
    recoveries: int = 0
    at: int = 0
    details: Mapping[str, str] = dataclasses.field(default_factory=dict)

    @property
    def level(self) -> int:
        return _LEVELS.get(self.kind, logging.INFO)

    def to_fields(self) -> dict[str, str]:
        """The stream entry's fields."""
        fields = {
            "kind": self.kind,
            "text": self.text,
            "message_id": self.message_id,
            "actor_name": self.actor_name,
            "queue_name": self.queue_name,
            "worker_id": self.worker_id,
            "reporter": self.reporter,
            "recoveries": str(self.recoveries),
            "at": str(self.at),
        }
        fields.update({"detail." + name: str(value) for name, value in self.details.items()})
        return fields

    @classmethod
    def from_fields(cls, fields: Mapping[str, str]) -> TrackerEvent:
        """Read a stream entry back; unknown or missing fields get defaults."""

        def number(name: str) -> int:
            try:
                return int(fields.get(name, "0"))
            except ValueError:
                return 0

        return cls(
            kind=fields.get("kind", ""),
            text=fields.get("text", ""),
            message_id=fields.get("message_id", ""),
            actor_name=fields.get("actor_name", ""),
            queue_name=fields.get("queue_name", ""),
            worker_id=fields.get("worker_id", ""),
            reporter=fields.get("reporter", ""),
            recoveries=number("recoveries"),
            at=number("at"),
            details={k[len("detail.") :]: v for k, v in fields.items() if k.startswith("detail.")},
        )


#: An event callback: called with each event, in the thread that emitted it.
EventCallback = Callable[[TrackerEvent], None]


class Events:
    """Emit tracker events: log, stream, callbacks.

    Parameters:
      store(callable): Returns the tracker's store.
      health(ConnectionHealth)
      maxlen(int): The approximate length the stream is capped at.
      reporter(callable): Returns who reports (this worker's id).
    """

    def __init__(
        self,
        store: Callable[[], TrackerStore],
        health: ConnectionHealth,
        maxlen: int,
        reporter: Callable[[], str | None],
    ) -> None:
        self.logger = get_logger(__name__, type(self))
        self._store = store
        self.health = health
        self.maxlen = maxlen
        self._reporter = reporter
        self._callbacks: list[EventCallback] = []
        self._lock = threading.Lock()

    def subscribe(self, callback: EventCallback) -> None:
        """Call ``callback`` with every event this process emits."""
        with self._lock:
            self._callbacks = [*self._callbacks, callback]

    def emit(self, kind: str, text: str, *args: Any, **fields: Any) -> TrackerEvent:
        """Log an event, append it to the stream and pass it to the callbacks.

        Parameters:
          kind(str)
          text(str): A %-format, formatted with ``args`` once, for the log and the stream alike.
          **fields: The other :class:`TrackerEvent` fields.
        """
        event = TrackerEvent(
            kind=kind,
            text=text % args if args else text,
            reporter=self._reporter() or _PROCESS,
            at=int(time.time() * 1000),
            **fields,
        )
        self.logger.log(event.level, "%s", event.text)
        if self.health.should_try():
            started = time.monotonic()
            try:
                self._store().append_event(event.to_fields(), self.maxlen)
            except redis.RedisError as e:
                self.health.failed("appending a tracker event", e)
            else:
                self.health.succeeded(started)
        for callback in self._callbacks:
            try:
                callback(event)
            except Exception:
                self.logger.exception("Event callback %r failed on %s event.", callback, kind)
        return event
