"""Orphans, what happened to them, and what is done around their redelivery:
lock cleaning before, events and the quarantine callback after."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from dramatiq.message import Message

from .events import ABORT_HONOURED, LOCK_CLEANER_FAILED, LOCK_RELEASED, RECOVERED
from .events import QUARANTINED as QUARANTINED_EVENT
from .records import WorkerInfo
from .unique import lock_of

if TYPE_CHECKING:
    from .abort import AbortBridge
    from .events import Events
    from .quarantine import Quarantine

#: Outcomes of a recovered orphan: delivered again.
REDELIVERED = "redelivered"
#: RabbitMQ delivers the orphan again by itself when the dead connection closes.
BROKER_REDELIVERS = "broker-redelivers"
#: Recovered more than max_recoveries times: dead-lettered instead.
QUARANTINED = "quarantined"
#: A cancel or abort of it was pending: not delivered again.
DROPPED = "dropped"

#: The outcome of each decision of ``lua/claim_orphans.lua``.
OUTCOMES = {"deliver": REDELIVERED, "quarantine": QUARANTINED, "drop": DROPPED}


@dataclasses.dataclass(frozen=True)
class Orphan:
    """A message a dead worker had fetched and not acked.

    Parameters:
      message_id(str)
      actor_name(str)
      queue_name(str): The queue it was fetched from.
      message(Message|None): The decoded message; None when its payload is unreadable.
      worker(WorkerInfo): The dead worker.
      running(bool): True when it was being processed; False when it was only prefetched.
      started_at(int|None): When its processing began (ms since the epoch), if it was running and recorded.
      recoveries(int): How many times it has been recovered from dead workers, this time included.
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
    redis_message_id: str = ""

    @property
    def worker_id(self) -> str:
        return self.worker.worker_id


@dataclasses.dataclass(frozen=True)
class RecoveredOrphan:
    """An orphan and what recovery did with it.

    Parameters:
      orphan(Orphan)
      outcome(str): :data:`REDELIVERED`, :data:`BROKER_REDELIVERS`, :data:`QUARANTINED` or :data:`DROPPED`.
      age(int|None): Milliseconds since it started (or was created, if it never started).
      lock(str): What happened to its uniqueness lock: "deleted", "transferred" (to its new
        attempt) or "" (none).
    """

    orphan: Orphan
    outcome: str
    age: int | None
    lock: str = ""


@dataclasses.dataclass
class RecoveryReport:
    """What a sweep or a recovery did."""

    dead_workers: list[str] = dataclasses.field(default_factory=list)
    recovered: list[RecoveredOrphan] = dataclasses.field(default_factory=list)

    def extend(self, other: RecoveryReport) -> None:
        self.dead_workers += other.dead_workers
        self.recovered += other.recovered

    @property
    def message_ids(self) -> list[str]:
        return [item.orphan.message_id for item in self.recovered]


#: A lock cleaner: called with each running orphan before it is delivered again,
#: to release locks the tracker does not own (see docs/uniqueness.md).
LockCleaner = Callable[[Orphan], None]


class LockCleaners:
    """Run every registered lock cleaner on an orphan, each isolated from the others.

    A cleaner that raises is reported at warning level (a ``lock-cleaner-failed``
    event); the other cleaners still run and the orphan is still delivered again.
    """

    def __init__(self, cleaners: Sequence[LockCleaner] = ()) -> None:
        self.events: Events | None = None
        self._cleaners = list(cleaners)

    def add(self, cleaner: LockCleaner) -> None:
        self._cleaners.append(cleaner)

    def __len__(self) -> int:
        return len(self._cleaners)

    def clean(self, orphan: Orphan) -> None:
        for cleaner in self._cleaners:
            try:
                cleaner(orphan)
            except Exception as e:
                name = getattr(cleaner, "__qualname__", repr(cleaner))
                if self.events is None:
                    continue
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


def _fields(orphan: Orphan) -> dict[str, Any]:
    return {
        "message_id": orphan.message_id,
        "actor_name": orphan.actor_name,
        "queue_name": orphan.queue_name,
        "worker_id": orphan.worker_id,
        "recoveries": orphan.recoveries,
    }


_LOCK_TEXT = {
    "deleted": "released",
    "transferred": "passed to its next attempt",
}


class OrphanHandling:
    """What is done around the redelivery of orphans, whatever the broker.

    Parameters:
      cleaners(LockCleaners): Run on each running orphan before it is settled.
      events(Events): Where recoveries, quarantines and released locks are reported.
      quarantine(Quarantine): Sends quarantined messages to their ``on_recovery_exhausted`` actor.
      aborts(AbortBridge): dramatiq-abort, if the broker has it.
    """

    def __init__(self, cleaners: LockCleaners, events: Events, quarantine: Quarantine, aborts: AbortBridge) -> None:
        self.cleaners = cleaners
        self.events = events
        self.quarantine = quarantine
        self.aborts = aborts
        cleaners.events = events

    def settled(self, item: RecoveredOrphan) -> None:
        """Report what recovery did with an orphan; send a quarantined one to its callback actor."""
        orphan = item.orphan
        fields = _fields(orphan)
        if not orphan.running:
            state = "prefetched, not started"
        elif item.age is None:
            state = "running"
        else:
            state = "started %d ms ago" % item.age
        where = "%r (actor %r, queue %r) from dead worker %r: %s" % (
            orphan.message_id,
            orphan.actor_name,
            orphan.queue_name,
            orphan.worker_id,
            state,
        )
        details = {"state": state, "outcome": item.outcome}
        if item.outcome == QUARANTINED:
            limit = self.quarantine.max_recoveries(orphan.actor_name, orphan.message.options if orphan.message else {})
            self.events.emit(
                QUARANTINED_EVENT,
                "Quarantined message %s; recovered %d times, more than max_recoveries=%d: dead-lettered instead of "
                "delivered again.",
                where,
                orphan.recoveries,
                limit,
                **fields,
                details={**details, "max_recoveries": str(limit)},
            )
            if orphan.message is not None:
                self.quarantine.notify(orphan.message, orphan.recoveries, orphan.worker_id)
        elif item.outcome == DROPPED:
            self.events.emit(
                ABORT_HONOURED,
                "Did not deliver message %s again: it was cancelled or aborted.",
                where,
                **fields,
                details=details,
            )
        else:
            self.events.emit(
                RECOVERED,
                "Recovered message %s; %s (recovery %d).",
                where,
                "RabbitMQ delivers it again" if item.outcome == BROKER_REDELIVERS else "delivered again",
                orphan.recoveries,
                **fields,
                details=details,
            )
        if item.lock:
            digest, _ = lock_of(orphan.message.options) if orphan.message else ("", "")
            self.events.emit(
                LOCK_RELEASED,
                "Uniqueness lock %s of message %r (orphaned by worker %r) %s.",
                digest or "?",
                orphan.message_id,
                orphan.worker_id,
                _LOCK_TEXT.get(item.lock, item.lock),
                **fields,
                details={"digest": digest, "lock": item.lock},
            )
