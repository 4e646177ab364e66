"""Orphans, what happened to them, and the lock-cleaning step before redelivery."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

from dramatiq.logging import get_logger
from dramatiq.message import Message

from .records import WorkerInfo

#: Outcomes of a recovered orphan.
REDELIVERED = "redelivered"
#: RabbitMQ delivers the orphan again by itself when the dead connection closes.
BROKER_REDELIVERS = "broker-redelivers"


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
      outcome(str): :data:`REDELIVERED` or :data:`BROKER_REDELIVERS`.
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

    A cleaner that raises is logged at warning level; the other cleaners
    still run and the orphan is still delivered again.
    """

    def __init__(self, cleaners: Sequence[LockCleaner] = ()) -> None:
        self.logger = get_logger(__name__, type(self))
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
                self.logger.warning(
                    "Lock cleaner %r failed for message %r (actor %r) orphaned by worker %r: %s. "
                    "The message is delivered again anyway.",
                    getattr(cleaner, "__qualname__", cleaner),
                    orphan.message_id,
                    orphan.actor_name,
                    orphan.worker_id,
                    e,
                    exc_info=True,
                )
