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

import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

import redis
from dramatiq.logging import get_logger

from .events import STALE_SKIPPED, ZOMBIE_ABORTED, ZOMBIE_COMPLETION, ZOMBIE_DETECTED

if TYPE_CHECKING:
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
        self.registry = registry
        #: Messages recovered from this worker while it was presumed dead, with the attempt that
        #: superseded the copies it fetched before.
        self.revoked: dict[str, int] = {}

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
