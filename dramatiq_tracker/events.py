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
from collections.abc import Callable, Mapping, Sequence
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
#: A copy a worker fetched before it was declared dead was not run: its message was delivered again elsewhere.
STALE_SKIPPED = "stale-copy-skipped"
#: A put-off duplicate was dead-lettered: the copy it waited for failed (its nack may not have reached the broker).
DUPLICATE_DEAD_LETTERED = "duplicate-dead-lettered"
#: A put-off duplicate could not be enqueued again: it was dead-lettered rather than run beside its twin.
DEFERRAL_FAILED = "deferral-failed"
#: A start that must be decided before it runs could not be (the tracker's Redis did not answer): put off.
START_PUT_OFF = "start-put-off"
#: A dead worker the tracker's Redis had forgotten was found from its broker's records.
WORKER_ADOPTED = "worker-adopted"
#: An operator deleted a uniqueness lock (``dramatiq-tracker unlock``, the dashboard).
LOCK_DELETED = "lock-deleted"
#: An operator asked for a message to be cancelled or aborted (``details["mode"]``).
ABORT_REQUESTED = "abort-requested"

#: Every event kind, for the exporter and the docs.
KINDS = (
    RECOVERED,
    WORKER_DEAD,
    QUARANTINED,
    LOCK_RELEASED,
    LOCK_CLEANER_FAILED,
    ZOMBIE_DETECTED,
    ZOMBIE_COMPLETION,
    ZOMBIE_ABORTED,
    DUPLICATE_DEFERRED,
    DUPLICATE_DROPPED,
    ABORT_HONOURED,
    STALE_SKIPPED,
    DUPLICATE_DEAD_LETTERED,
    DEFERRAL_FAILED,
    START_PUT_OFF,
    WORKER_ADOPTED,
    LOCK_DELETED,
    ABORT_REQUESTED,
)

_LEVELS = {
    RECOVERED: logging.WARNING,
    WORKER_DEAD: logging.WARNING,
    QUARANTINED: logging.WARNING,
    LOCK_RELEASED: logging.INFO,
    LOCK_CLEANER_FAILED: logging.WARNING,
    ZOMBIE_DETECTED: logging.ERROR,
    ZOMBIE_COMPLETION: logging.WARNING,
    ZOMBIE_ABORTED: logging.WARNING,
    DUPLICATE_DEFERRED: logging.WARNING,
    DUPLICATE_DROPPED: logging.INFO,
    ABORT_HONOURED: logging.WARNING,
    STALE_SKIPPED: logging.WARNING,
    DUPLICATE_DEAD_LETTERED: logging.WARNING,
    DEFERRAL_FAILED: logging.ERROR,
    START_PUT_OFF: logging.WARNING,
    WORKER_ADOPTED: logging.WARNING,
    LOCK_DELETED: logging.WARNING,
    ABORT_REQUESTED: logging.WARNING,
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
      id(str): Its stream entry id, when it was read from Redis; "" otherwise.
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
    id: str = ""

    @property
    def level(self) -> int:
        return _LEVELS.get(self.kind, logging.INFO)

    def to_fields(self) -> dict[str, str]:
        """The stream entry's fields; empty ones are left out."""
        fields = {
            "kind": self.kind,
            "text": self.text,
            "message_id": self.message_id,
            "actor_name": self.actor_name,
            "queue_name": self.queue_name,
            "worker_id": self.worker_id,
            "reporter": self.reporter,
            "recoveries": str(self.recoveries) if self.recoveries else "",
            "at": str(self.at),
        }
        fields.update({"detail." + name: str(value) for name, value in self.details.items()})
        return {name: value for name, value in fields.items() if value}

    @classmethod
    def from_fields(cls, fields: Mapping[str, str], entry_id: str = "") -> TrackerEvent:
        """Read a stream entry back (with its id); unknown or missing fields get defaults."""

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
            id=entry_id,
        )


#: An event callback: called with each event, in the thread that emitted it.
EventCallback = Callable[[TrackerEvent], None]


@dataclasses.dataclass(frozen=True)
class EventSpec:
    """An event to emit: its kind, its text (already formatted), and its other fields.

    Parameters:
      kind(str)
      text(str)
      fields(dict): Other :class:`TrackerEvent` fields (``message_id``, ``worker_id``, ...).
      details(dict[str, str])
      log_level(int|None): The level it is logged at, when not its kind's own (a caller that
        logs a summary logs the events it sums up at debug).
    """

    kind: str
    text: str
    fields: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    details: Mapping[str, str] = dataclasses.field(default_factory=dict)
    log_level: int | None = None


class EventCallbacks:
    """The application's event callbacks; they may be subscribed before the tracker is bound to a broker."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.callbacks: tuple[EventCallback, ...] = ()

    def subscribe(self, callback: EventCallback) -> None:
        with self._lock:
            self.callbacks = (*self.callbacks, callback)


class Events:
    """Emit tracker events: log, stream (with the counters), callbacks.

    Parameters:
      store(TrackerStore)
      health(ConnectionHealth)
      maxlen(int): The approximate length the stream is capped at.
      callbacks(EventCallbacks)
    """

    def __init__(self, store: TrackerStore, health: ConnectionHealth, maxlen: int, callbacks: EventCallbacks) -> None:
        self.logger = get_logger(__name__, type(self))
        self.store = store
        self.health = health
        self.maxlen = maxlen
        self.callbacks = callbacks
        #: Who reports this process's events: its worker id while it runs one, else host:pid.
        self.reporter = _PROCESS

    def emit(self, kind: str, text: str, *args: Any, **fields: Any) -> None:
        """Log an event, append it to the stream and pass it to the callbacks.

        Parameters:
          kind(str)
          text(str): A %-format, formatted with ``args`` once, for the log and the stream alike.
          **fields: The other :class:`TrackerEvent` fields.
        """
        details = fields.pop("details", {})
        self.emit_many([EventSpec(kind, text % args if args else text, fields, details)])

    def emit_many(self, specs: Sequence[EventSpec]) -> list[TrackerEvent]:
        """Emit events in one round trip to the stream.

        Returns:
          list[TrackerEvent]: The events, when callbacks are subscribed (else they are not built).
        """
        if not specs:
            return []
        at = int(time.time() * 1000)
        logger = self.logger
        for spec in specs:
            level = spec.log_level if spec.log_level is not None else _LEVELS.get(spec.kind, logging.INFO)
            if logger.isEnabledFor(level):
                logger.log(level, "%s", spec.text)
        if self.health.should_try():
            counts: dict[str, int] = {}
            for spec in specs:
                counts[spec.kind] = counts.get(spec.kind, 0) + 1
            started = time.monotonic()
            try:
                self.store.append_events([self._fields(spec, at) for spec in specs], counts, self.maxlen)
            except redis.RedisError as e:
                self.health.failed("appending tracker events", e)
            else:
                self.health.succeeded(started)
        callbacks = self.callbacks.callbacks
        if not callbacks:
            return []
        events = [
            TrackerEvent(
                kind=spec.kind, text=spec.text, reporter=self.reporter, at=at, details=spec.details, **spec.fields
            )
            for spec in specs
        ]
        for callback in callbacks:
            for event in events:
                try:
                    callback(event)
                except Exception:
                    self.logger.exception("Event callback %r failed on %s event.", callback, event.kind)
        return events

    def _fields(self, spec: EventSpec, at: int) -> dict[str, str]:
        """The stream entry of an event (as :meth:`TrackerEvent.to_fields`), without building the event."""
        fields = {"kind": spec.kind, "text": spec.text, "reporter": self.reporter, "at": str(at)}
        for name, value in spec.fields.items():
            if value:
                fields[name] = str(value)
        for name, value in spec.details.items():
            if value:
                fields["detail." + name] = str(value)
        return fields
