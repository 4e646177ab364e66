"""Declared dead while alive.

A worker that stalls (SIGSTOP, a GIL hold, a paused VM) or is cut off from
the tracker's Redis may be declared dead while it runs, and its messages
delivered again elsewhere.  When it learns it (at its next heartbeat, or
before its next start), :class:`WorkerFencing` takes over:

- it waits until the recovery of its old identity is over, then learns which
  messages recovery took from it (the dead worker's revoked list);
- copies of them that it fetched before are stale and never start;
- its running copies of them are zombies: their completions release nothing
  and are reported, and with dramatiq-abort they are aborted;
- running messages recovery did not take (RabbitMQ keeps delivering them to a
  live connection) run on as its own;
- those it completed after it was declared dead, before it learned it, are
  zombie completions: their recovered copies are dropped if not started.

The worker continues under a new identity (see
:meth:`~dramatiq_tracker.recorder.Recorder.fence`).

Sweepers are fenced too: see :mod:`dramatiq_tracker.recovery_claim`.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

import redis
from dramatiq.common import q_name
from dramatiq.logging import get_logger

from .brokers import WITHHELD_PREFIX, withhold_ack
from .events import STALE_SKIPPED, ZOMBIE_ABORTED, ZOMBIE_COMPLETION, ZOMBIE_DETECTED
from .options import attempt_of
from .unique import lock_of

if TYPE_CHECKING:
    from dramatiq.broker import MessageProxy

    from .registry import Delivery, InflightRegistry
    from .wiring import Wiring


#: How often a fenced worker looks whether the recovery of its old identity is over, in seconds.
_FENCE_POLL = 0.05


class WorkerFencing:
    """What this worker process does once it learns it was declared dead while alive.

    Parameters:
      wiring(Wiring): The tracker's machinery (dramatiq-abort among it, to abort zombie copies).
      registry(InflightRegistry): This process's attempts.
    """

    def __init__(self, wiring: Wiring, registry: InflightRegistry) -> None:
        self.logger = get_logger(__name__, type(self))
        self.store, self.settings, self.health = wiring.store, wiring.settings, wiring.health
        self.events, self.aborts = wiring.events, wiring.aborts
        self.broker_store = wiring.broker_store
        self.registry = registry
        #: Messages recovered from this worker while it was presumed dead, with the attempt that
        #: superseded the copies it fetched before.
        self.revoked: dict[str, int] = {}
        #: Completed copies of unique messages this worker acked while its heartbeat was late, before
        #: any recovery moved them: their locks are released if it learns it was declared dead.
        self._acked_first: list[_AckedFirst] = []
        self._acked_lock = threading.Lock()

    def is_stale(self, message_id: str, attempt: int) -> bool:
        """Whether a copy of this attempt was superseded while this worker was presumed dead."""
        superseded = self.revoked.get(message_id)
        return superseded is not None and attempt < superseded

    def skip_stale(self, delivery: Delivery) -> None:
        """Report a copy this worker fetched before it was declared dead, which does not run."""
        message = delivery.message
        self.events.emit(
            STALE_SKIPPED,
            "Did not run message %r (actor %r): this worker fetched it before it was declared dead, and it "
            "was delivered again elsewhere since (attempt %d superseded).",
            delivery.message_id,
            message.actor_name,
            delivery.attempt,
            worker_id=delivery.worker_id,
            **delivery.event_fields(),
        )

    def fenced(self, old_worker_id: str, zombies: list[Delivery], completed: list[tuple[str, int]]) -> None:
        """This worker learned it was declared dead as ``old_worker_id``; it continues under the
        registry's new id.

        It waits (at most ``takeover_after``) until the recovery of its old identity is over, then
        learns what recovery took from it (see the module's documentation).

        Parameters:
          zombies(list[Delivery]): Its attempts still running under the old id.
          completed(list[tuple[str, int]]): (message id, attempt) of those that succeeded since it was
            last known alive: perhaps after it was declared dead.

        Raises:
          redis.RedisError: When the tracker's Redis fails; the fencing is done again at the next write.
        """
        deadline = time.monotonic() + self.settings.takeover_after / 1000
        while self.store.registration(old_worker_id) is not None and time.monotonic() < deadline:
            time.sleep(_FENCE_POLL)
        revoked = self.store.revoked(old_worker_id)
        for message_id, attempt in revoked.items():
            self.revoked[message_id] = max(attempt, self.revoked.get(message_id, 0))
        with self._acked_lock:
            acked_first, self._acked_first = self._acked_first, []
        for acked in acked_first:
            if self.is_stale(acked.delivery.message_id, acked.delivery.attempt):
                self._release_passed_lock(acked, self.revoked[acked.delivery.message_id])
        for message_id, attempt in completed:
            if self.is_stale(message_id, attempt):
                self._completed_as_zombie(message_id, attempt, old_worker_id)
        taken = []
        for delivery in zombies:
            if self.is_stale(delivery.message_id, delivery.attempt):
                taken.append(delivery)
            else:
                self.registry.readopt(delivery)
                self.store.note_history(delivery.message_id, self.settings.history_ttl, {}, forget="awaiting_from")
        try:
            self.store.note_fenced(old_worker_id, self.registry.worker_id, self.settings.history_ttl)
        except redis.RedisError as e:
            self.health.failed("noting that this worker was fenced", e)
        self.events.emit(
            ZOMBIE_DETECTED,
            "This worker (%r) was declared dead while it was alive (a stall longer than heartbeat_timeout, "
            "or a partition from the tracker's Redis); %d of its messages were recovered for delivery elsewhere "
            "and no longer belong to it, %d of them still running here. It continues as worker %r.",
            old_worker_id,
            len(revoked),
            len(taken),
            self.registry.worker_id,
            worker_id=old_worker_id,
            details={"new_worker_id": self.registry.worker_id, "zombies": " ".join(d.message_id for d in taken)},
        )
        if taken and self.aborts.available:
            self._abort(taken, old_worker_id)

    def _abort(self, taken: Iterable[Delivery], old_worker_id: str) -> None:
        for message_id in self.aborts.abort_locally((d.message, d.thread) for d in taken):
            self.events.emit(
                ZOMBIE_ABORTED,
                "Aborting the zombie copy of message %r on this worker: it was recovered for delivery elsewhere.",
                message_id,
                message_id=message_id,
                worker_id=old_worker_id,
            )

    def ack_zombie(self, delivery: Delivery, proxy: MessageProxy) -> None:
        """Ack a completed copy of a unique message on a RedisBroker here, before Dramatiq does (its ack is
        then a no-op), when this worker may be a zombie.  If this ack comes before the move of a recovery
        that superseded the copy, no recovered copy of it will ever run, and none would release the lock
        the claim passed to it: it is released here, at once if the worker knows it was fenced, else when
        it learns it (:meth:`fenced`).  (The sweeper that claimed it may have died before the move, and
        the one that took over found nothing to move.)"""
        superseding = self.revoked.get(delivery.message_id)
        digest, _ = lock_of(delivery.message.options)
        broker_id, redis_id = self.registry.info.broker_id, str(proxy.options.get("redis_message_id", ""))
        if (superseding is not None and superseding <= delivery.attempt) or not digest or not broker_id:
            return
        if not redis_id or redis_id.startswith(WITHHELD_PREFIX) or self.broker_store is None:
            return
        try:
            first = self.broker_store.ack_before_move(broker_id, proxy.queue_name, redis_id)
        except redis.RedisError as e:
            self.health.failed("acking a message that may be a zombie's", e)
            return
        withhold_ack(proxy)
        if not first:
            return
        acked = _AckedFirst(delivery, digest, time.monotonic())
        if superseding is None:
            # Declared dead or not, it is known at the next heartbeat: kept until then.
            horizon = time.monotonic() - (self.settings.takeover_after + self.settings.heartbeat_timeout) / 1000
            with self._acked_lock:
                self._acked_first = [a for a in self._acked_first if a.at > horizon] + [acked]
            return
        self._release_passed_lock(acked, superseding)

    def _release_passed_lock(self, acked: _AckedFirst, superseding: int) -> None:
        message_id = acked.delivery.message_id
        try:
            if self.store.running_owner(message_id) not in (None, acked.delivery.name.text):
                # Another attempt runs it (not this copy, still named there until its end is written).
                return
            if self.store.release_lock(acked.digest, message_id, superseding, ""):
                self.logger.info(
                    "Released the uniqueness lock %s of message %r: its recovery passed it to attempt %d, "
                    "but this worker completed the message and acked it before the recovery moved it.",
                    acked.digest,
                    message_id,
                    superseding,
                )
        except redis.RedisError as e:
            self.health.failed("releasing a lock no attempt will run to release", e)

    def withhold_delayed(self, proxy: MessageProxy) -> None:
        """Withhold the ack of a stale delayed copy this worker just moved to its queue (marked revoked
        there): it stays in its acks for the move of the recovery that superseded it, which would find
        nothing otherwise, and the message would be lost."""
        if proxy.queue_name != q_name(proxy.queue_name) and self.is_stale(proxy.message_id, attempt_of(proxy.options)):
            withhold_ack(proxy)

    def zombie_ended(self, delivery: Delivery, completion: str) -> None:
        """A zombie attempt (recovered elsewhere while it ran here) was acked or nacked: report it, and
        if it succeeded, let its recovered copy be dropped if that has not started."""
        message = delivery.message
        if delivery.succeeded and completion == "ack":
            self._note_done(delivery.message_id, delivery.attempt)
        self.events.emit(
            ZOMBIE_COMPLETION,
            "Message %r (actor %r) completed on this worker after it was recovered for delivery elsewhere, "
            "while this worker was presumed dead.",
            delivery.message_id,
            message.actor_name,
            worker_id=delivery.worker_id,
            **delivery.event_fields(),
        )

    def _completed_as_zombie(self, message_id: str, attempt: int, old_worker_id: str) -> None:
        """An attempt succeeded here after this worker was declared dead, before it learned it."""
        self._note_done(message_id, attempt)
        self.events.emit(
            ZOMBIE_COMPLETION,
            "Message %r (attempt %d) completed on this worker after it was declared dead (as %r) and the message "
            "was recovered for delivery elsewhere.",
            message_id,
            attempt,
            old_worker_id,
            message_id=message_id,
            worker_id=old_worker_id,
        )

    def _note_done(self, message_id: str, attempt: int) -> None:
        """The work of ``attempt`` is done: the copy recovery made of it is dropped if it has not started."""
        try:
            self.store.note_history(message_id, self.settings.history_ttl, {"done_by_attempt": str(attempt)})
        except redis.RedisError as e:
            self.health.failed("noting a zombie's completion", e)


@dataclasses.dataclass(frozen=True)
class _AckedFirst:
    """A completed copy acked before any move (:meth:`WorkerFencing.ack_zombie`), with its lock's digest."""

    delivery: Delivery
    digest: str
    at: float
