"""Orphans, what recovery did with them, and what is done around their
redelivery: lock cleaning before, events and the quarantine callback after."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from dramatiq.logging import get_logger
from dramatiq.message import Message

from .events import ABORT_HONOURED, LOCK_CLEANER_FAILED, LOCK_RELEASED, QUARANTINED, RECOVERED, EventSpec
from .records import WorkerInfo

if TYPE_CHECKING:
    from .events import Events
    from .quarantine import Quarantine
    from .store import LockOutcome

#: Outcomes of a recovered orphan: delivered again.
REDELIVERED = "redelivered"
#: RabbitMQ delivers the orphan again by itself when the dead connection closes.
BROKER_REDELIVERS = "broker-redelivers"
#: Recovered more than max_recoveries times: dead-lettered instead.
QUARANTINED_OUTCOME = "quarantined"
#: A cancel or abort of it was pending: not delivered again.
DROPPED = "dropped"

#: The outcome of each decision of ``lua/claim_orphans.lua``.
OUTCOMES = {"deliver": REDELIVERED, "quarantine": QUARANTINED_OUTCOME, "drop": DROPPED}


@dataclasses.dataclass(frozen=True)
class Orphan:
    """A message a dead worker had fetched and not acked, and what recovery decided for it.

    Lock cleaners receive it before it is delivered again; reports list it after.

    Parameters:
      message_id(str)
      actor_name(str)
      queue_name(str): The queue it was fetched from.
      message(Message|None): The decoded message; None when its payload is unreadable.
      worker(WorkerInfo): The dead worker.
      running(bool): True when it was being processed; False when it was only fetched
        (prefetched, delayed, or started too recently to be recorded).
      started_at(int|None): When its processing began (ms since the epoch), if it was recorded.
      recoveries(int): How many times it has been recovered from dead workers, this time included.
      attempt(int): The attempt of its next delivery.
      max_recoveries(int): Its poison limit.
      outcome(str): :data:`REDELIVERED`, :data:`BROKER_REDELIVERS`, :data:`QUARANTINED_OUTCOME` or
        :data:`DROPPED`.
      lock(str): What happened to its uniqueness lock: "deleted", "transferred" (to its new
        attempt) or "" (none).
      on_exhausted(str): "actor|queue" of its ``on_recovery_exhausted`` actor, or "".
      redis_message_id(str): RedisBroker's id of the copy; "" on other brokers.
    """

    message_id: str
    actor_name: str
    queue_name: str
    message: Message[Any] | None
    worker: WorkerInfo
    running: bool
    started_at: int | None
    recoveries: int
    attempt: int = 0
    max_recoveries: int = 0
    outcome: str = REDELIVERED
    lock: LockOutcome = ""
    on_exhausted: str = ""
    redis_message_id: str = ""

    @property
    def worker_id(self) -> str:
        return self.worker.worker_id

    def age(self, now_ms: int) -> int | None:
        """Milliseconds since it started (or was created, if it was never recorded running)."""
        if self.started_at is not None:
            return max(0, now_ms - self.started_at)
        if self.message is not None:
            return max(0, now_ms - self.message.message_timestamp)
        return None


@dataclasses.dataclass
class RecoveryReport:
    """What a sweep or a recovery did."""

    dead_workers: list[str] = dataclasses.field(default_factory=list)
    recovered: list[Orphan] = dataclasses.field(default_factory=list)
    #: True when the sweep stopped before its end (time budget); the next one goes on.
    partial: bool = False
    #: True for a plan: what a sweep would do, nothing done.
    dry_run: bool = False
    #: In a plan, workers the tracker's Redis forgot that the sweep would find from their broker's records.
    forgotten: list[str] = dataclasses.field(default_factory=list)

    def extend(self, other: RecoveryReport) -> None:
        self.dead_workers += other.dead_workers
        self.recovered += other.recovered
        self.partial = self.partial or other.partial
        self.forgotten += other.forgotten

    @property
    def message_ids(self) -> list[str]:
        return [orphan.message_id for orphan in self.recovered]


#: A lock cleaner: called with each running orphan before it is delivered again,
#: to release locks the tracker does not own (see docs/uniqueness.md).
LockCleaner = Callable[[Orphan], None]


def _fields(orphan: Orphan) -> dict[str, Any]:
    return {
        "message_id": orphan.message_id,
        "actor_name": orphan.actor_name,
        "queue_name": orphan.queue_name,
        "worker_id": orphan.worker_id,
        "recoveries": orphan.recoveries,
    }


class LockCleaners:
    """Run every registered lock cleaner on an orphan, each isolated from the others.

    A cleaner that raises is always reported, at warning level (a ``lock-cleaner-failed``
    event, and the log line that comes with it); the other cleaners still run and the orphan
    is still delivered again.

    Parameters:
      events(Events): Where failures are reported.
      cleaners(list[callable]): The middleware's list of cleaners.
    """

    def __init__(self, events: Events, cleaners: list[LockCleaner]) -> None:
        self.events = events
        #: The middleware's own list: cleaners added later count too.
        self._cleaners = cleaners

    def __len__(self) -> int:
        return len(self._cleaners)

    def clean(self, orphan: Orphan) -> None:
        for cleaner in tuple(self._cleaners):
            try:
                cleaner(orphan)
            except Exception as e:
                name = getattr(cleaner, "__qualname__", repr(cleaner))
                self.events.emit(
                    LOCK_CLEANER_FAILED,
                    "Lock cleaner %r failed for message %r (actor %r) orphaned by worker %r: %s: %s. "
                    "The message is delivered anyway.",
                    name,
                    orphan.message_id,
                    orphan.actor_name,
                    orphan.worker_id,
                    type(e).__name__,
                    e,
                    **_fields(orphan),
                    details={"cleaner": name, "error": "%s: %s" % (type(e).__name__, e)},
                )


_LOCK_TEXT = {
    "deleted": "released",
    "transferred": "passed to its next attempt",
}


class Settlement:
    """Reports what recovery did with orphans, in batches, and sends quarantined ones to their callback.

    Parameters:
      events(Events)
      quarantine(Quarantine)
    """

    def __init__(self, events: Events, quarantine: Quarantine) -> None:
        self.logger = get_logger(__name__, type(self))
        self.events = events
        self.quarantine = quarantine

    def report(
        self,
        orphans: Sequence[Orphan],
        now_ms: int,
        *,
        log_level: int | None = None,
        summary: EventSpec | None = None,
    ) -> None:
        """One event per orphan (and per released lock), appended to the stream in one round trip.

        Parameters:
          log_level(int): Log each at this level rather than its own (a caller that logs a summary).
          summary(EventSpec): The caller's summary, appended after them in the same round trip and
            logged at its own level.
        """
        specs: list[EventSpec] = []
        for orphan in orphans:
            specs += self._describe(orphan, now_ms, log_level)
        if summary is not None:
            specs.append(summary)
        self.events.emit_many(specs)
        for orphan in orphans:
            if orphan.outcome == QUARANTINED_OUTCOME:
                self.quarantine.notify(orphan)

    def _describe(self, orphan: Orphan, now_ms: int, log_level: int | None) -> list[EventSpec]:
        fields = _fields(orphan)
        age = orphan.age(now_ms)
        if not orphan.running:
            state = "fetched, not recorded running"
        elif age is None or orphan.started_at is None:
            state = "running"
        else:
            state = "started %d ms ago" % age
        where = "%r (actor %r, queue %r) from dead worker %r: %s" % (
            orphan.message_id,
            orphan.actor_name,
            orphan.queue_name,
            orphan.worker_id,
            state,
        )
        details = {"state": state, "outcome": orphan.outcome, "attempt": str(orphan.attempt)}
        if orphan.outcome == QUARANTINED_OUTCOME:
            spec = EventSpec(
                QUARANTINED,
                "Quarantined message %s; recovered %d times, more than max_recoveries=%d: dead-lettered instead "
                "of delivered again." % (where, orphan.recoveries, orphan.max_recoveries),
                fields,
                {**details, "max_recoveries": str(orphan.max_recoveries)},
                log_level,
            )
        elif orphan.outcome == DROPPED:
            spec = EventSpec(
                ABORT_HONOURED,
                "Did not deliver message %s again: it was cancelled or aborted." % where,
                fields,
                details,
                log_level,
            )
        else:
            how = "RabbitMQ delivers it again" if orphan.outcome == BROKER_REDELIVERS else "delivered again"
            counted = "recovery %d" % orphan.recoveries if orphan.running else "not counted: it never ran"
            text = "Recovered message %s; %s (%s)." % (where, how, counted)
            spec = EventSpec(RECOVERED, text, fields, details, log_level)
        specs = [spec]
        if orphan.lock:
            digest = ""
            if orphan.message is not None:
                digest = str(orphan.message.options.get("unique_digest", ""))
            specs.append(
                EventSpec(
                    LOCK_RELEASED,
                    "Uniqueness lock %s of message %r (orphaned by worker %r) %s."
                    % (digest or "?", orphan.message_id, orphan.worker_id, _LOCK_TEXT.get(orphan.lock, orphan.lock)),
                    fields,
                    {"digest": digest, "lock": orphan.lock},
                    log_level,
                )
            )
        return specs
