"""The decision taken when a delivery starts whose start must not be missed.

Most messages start without a word to Redis (see :mod:`dramatiq_tracker.registry`).
A few are recorded before they run, and what is known about them decides
their fate (the delivery's verdict):

- a stale copy: fetched by this worker before it was declared dead, and
  delivered again elsewhere since (its attempt is older than the one recovery
  gave the message): not run;
- a copy marked for the dead-letter queue (quarantine on brokers the tracker
  cannot dead-letter directly): failed;
- a delivery of a message whose previous attempt still runs on a live worker
  (RabbitMQ's redelivery after a connection loss or a ``consumer_timeout``):
  put off (enqueued again later), never run beside it;
- a put-off duplicate whose awaited attempt completed: dropped, or
  dead-lettered when that attempt failed (its nack may not have reached the
  broker);
- the orphan of a dead worker (a sweeper left it awaiting this redelivery, or
  the previous attempt's worker is dead): claimed now, like a sweeper would
  (:mod:`dramatiq_tracker.claims`): run, quarantined or dropped;
- a message whose cancel or abort the tracker remembers: not run.

A new attempt made by Dramatiq itself (a retry, whose ``retries`` option
advanced) or a previous attempt that ended in this very worker is never
taken for a duplicate.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from typing import TYPE_CHECKING, Any, Literal

import redis
from dramatiq.logging import get_logger
from dramatiq.message import Message

from .events import (
    ABORT_HONOURED,
    DEFERRAL_FAILED,
    DUPLICATE_DEAD_LETTERED,
    DUPLICATE_DEFERRED,
    DUPLICATE_DROPPED,
    STALE_SKIPPED,
)
from .host import HostFacts
from .options import DEFERRED_OPTION, QUARANTINE_OPTION, REVOKED_OPTION
from .orphans import BROKER_REDELIVERS, DROPPED, QUARANTINED_OUTCOME, REDELIVERED, Candidate
from .records import CorruptRecord, WorkerInfo
from .unique import UNTIL_EXECUTED, UNTIL_EXECUTING, lock_of

if TYPE_CHECKING:
    from collections.abc import Callable

    from dramatiq import Broker

    from .events import Events
    from .health import ConnectionHealth
    from .orphans import Claims, LockCleaners, Settlement
    from .recorder import Recorder
    from .records import InflightRecord
    from .registry import Delivery, InflightRegistry
    from .settings import TrackerSettings
    from .store import AtRiskStart, TrackerStore

#: What happens to a delivery before it runs: None to run it, "skip" (ack it unrun) or "fail" (dead-letter it).
Verdict = Literal["skip", "fail"] | None

#: How long a put-off duplicate's enqueue is retried while its broker fails, in seconds.
DEFERRAL_RETRY_SECONDS = 5.0


@dataclasses.dataclass(frozen=True)
class Owner:
    """An attempt as the running index names it: ``"<worker id>|<token>|<retries>"``."""

    worker_id: str
    token: str
    retries: int

    @classmethod
    def parse(cls, text: str) -> Owner:
        worker_id, _, rest = text.rpartition("|")
        head, _, token = worker_id.rpartition("|")
        try:
            retries = int(rest)
        except ValueError:
            return cls(worker_id, rest, 0)
        return cls(head, token, retries)

    @property
    def attempt_id(self) -> str:
        return "%s|%s" % (self.worker_id, self.token)


def _fields(delivery: Delivery) -> dict[str, Any]:
    return {
        "message_id": delivery.message_id,
        "actor_name": delivery.message.actor_name,
        "queue_name": delivery.message.queue_name,
        "recoveries": delivery.recoveries,
    }


class Admission:
    """Records at-risk deliveries before they run and decides their fate.

    Parameters:
      broker(Broker)
      store(TrackerStore)
      settings(TrackerSettings)
      health(ConnectionHealth)
      registry(InflightRegistry): This worker's deliveries.
      recorder(Recorder): Told what a write outside its thread found.
      describe(callable): Builds the record of a delivery.
      revoked(dict[str, int]): Messages recovered from this worker while it was presumed dead,
        with the attempt that superseded the copies it fetched before.
      claims(Claims)
      cleaners(LockCleaners)
      settlement(Settlement)
      events(Events)
    """

    def __init__(
        self,
        broker: Broker,
        store: TrackerStore,
        settings: TrackerSettings,
        health: ConnectionHealth,
        registry: InflightRegistry,
        recorder: Recorder,
        describe: Callable[[Delivery], InflightRecord],
        revoked: dict[str, int],
        claims: Claims,
        cleaners: LockCleaners,
        settlement: Settlement,
        events: Events,
    ) -> None:
        self.logger = get_logger(__name__, type(self))
        self.broker = broker
        self.store = store
        self.settings = settings
        self.health = health
        self.registry = registry
        self.recorder = recorder
        self.describe = describe
        self.revoked = revoked
        self.claims = claims
        self.cleaners = cleaners
        self.settlement = settlement
        self.events = events
        self.host = HostFacts.current()

    def is_stale(self, message_id: str, attempt: int) -> bool:
        """Whether a copy of this attempt was superseded while this worker was presumed dead."""
        superseded = self.revoked.get(message_id)
        return superseded is not None and attempt < superseded

    def admit(self, delivery: Delivery) -> Verdict:
        """Decide a delivery's fate before it runs, recording it first when it may run."""
        options = delivery.message.options
        if self.is_stale(delivery.message_id, delivery.attempt) or options.get(REVOKED_OPTION):
            delivery.written = False
            self.events.emit(
                STALE_SKIPPED,
                "Did not run message %r (actor %r): this worker fetched it before it was declared dead, and it "
                "was delivered again elsewhere since (attempt %d superseded).",
                delivery.message_id,
                delivery.message.actor_name,
                delivery.attempt,
                **_fields(delivery),
                worker_id=delivery.worker_id,
            )
            return "skip"
        if options.get(QUARANTINE_OPTION):
            delivery.written = False
            return "fail"
        start = self._record(delivery)
        if start is None:
            return None
        return self._decide(delivery, start)

    def _record(self, delivery: Delivery) -> AtRiskStart | None:
        worker_id = delivery.worker_id
        self.registry.write_started()
        confirmed = False
        started = time.monotonic()
        record = self.describe(delivery).to_json()
        try:
            with self.recorder.exclusive():
                reply = self.store.begin_at_risk(worker_id, delivery.owner, delivery.message_id, record)
        except redis.RedisError as e:
            self.health.failed("recording a message before it runs", e)
            self.registry.unwritten(delivery)
            return None
        else:
            self.health.succeeded(started)
            if isinstance(reply, str):
                self.registry.unwritten(delivery)
                self.recorder.wrote(reply, worker_id)
                if delivery.zombie and not self.is_stale(delivery.message_id, delivery.attempt):
                    # Fenced just now, but this copy is not one recovery took: it runs as this worker's.
                    self.registry.readopt(delivery)
                return None
            confirmed = True
            delivery.written = True
            return reply
        finally:
            self.registry.write_ended(confirmed)

    def _decide(self, delivery: Delivery, start: AtRiskStart) -> Verdict:
        message, history = delivery.message, start.history
        self.logger.debug(
            "Message %r starts at risk (attempt %d, retries %d); previous attempt %r, history %r.",
            delivery.message_id,
            delivery.attempt,
            delivery.retries,
            start.previous_owner,
            history,
        )
        with contextlib.suppress(ValueError):
            delivery.recoveries = max(delivery.recoveries, int(history.get("recoveries", "0")))
        behind = message.options.get(DEFERRED_OPTION)
        if behind and history.get("completed_by") == behind:
            return self._completed_before(
                delivery, history.get("completed_with", ""), str(behind), "completed_by", "the attempt it waited for"
            )
        unconfirmed = history.get("unconfirmed_by", "")
        if unconfirmed and self._redelivers(delivery, unconfirmed, history.get("unconfirmed_attempt", "")):
            return self._completed_before(
                delivery,
                history.get("unconfirmed_with", ""),
                unconfirmed,
                "unconfirmed_by",
                "an attempt whose RabbitMQ channel closed while it ran",
            )

        done_by = history.get("done_by_attempt", "")
        if done_by.isdigit() and int(done_by) < delivery.attempt:
            self.events.emit(
                DUPLICATE_DROPPED,
                "Dropped message %r (actor %r), attempt %d: its attempt %s completed on a worker that was declared "
                "dead while alive, before this copy started.",
                delivery.message_id,
                message.actor_name,
                delivery.attempt,
                done_by,
                **_fields(delivery),
                details={"done_by_attempt": done_by},
            )
            self._release_lock(delivery)
            return "skip"

        dead = history.get("awaiting_from", "")
        previous = start.previous_owner
        if previous:
            owner = Owner.parse(previous)
            if self._superseded(owner, delivery):
                self._take_place(delivery, previous, owner)
                previous = ""
            elif self._alive(owner.worker_id):
                return self._defer(delivery, owner)
            else:
                dead = dead or owner.worker_id
        verdict: Verdict = None
        if dead:
            verdict = self._claim(delivery, dead)
        elif history.get("abort"):
            self.events.emit(
                ABORT_HONOURED,
                "Did not run message %r (actor %r) delivered again: it was %sed.",
                delivery.message_id,
                message.actor_name,
                history["abort"].rstrip("e"),
                **_fields(delivery),
            )
            self._release_lock(delivery)
            return "skip"
        if previous and verdict is None:
            # The previous attempt is dead: this one takes its place in the running index.
            self._take_place(delivery, previous, Owner.parse(previous))
        return verdict

    def _completed_before(self, delivery: Delivery, completion: str, by: str, detail: str, whose: str) -> Verdict:
        """A duplicate of an attempt that ended: dropped, or dead-lettered when that attempt failed (its
        nack may not have reached the broker).

        Parameters:
          completion(str): How that attempt ended: "ack" or "nack".
          by(str): That attempt.
          detail(str): The event detail that names it.
          whose(str): What it was, for the event's text.
        """
        failed = completion == "nack"
        self.events.emit(
            DUPLICATE_DEAD_LETTERED if failed else DUPLICATE_DROPPED,
            "%s duplicate delivery of message %r (actor %r): %s (%s) %s.",
            "Dead-lettered" if failed else "Dropped",
            delivery.message_id,
            delivery.message.actor_name,
            whose,
            by,
            "failed, and its own dead-lettering may not have reached the broker" if failed else "completed",
            **_fields(delivery),
            details={detail: by},
        )
        # (A newer attempt than the one it waited for, a zombie's, holds the lock: it is done.)
        self._release_lock(delivery)
        return "fail" if failed else "skip"

    @staticmethod
    def _redelivers(delivery: Delivery, unconfirmed: str, attempt: str) -> bool:
        # The broker's redelivery of that very attempt: neither a retry by Dramatiq nor a recovery since.
        return (
            Owner.parse(unconfirmed).retries == delivery.retries
            and attempt.isdigit()
            and delivery.attempt <= int(attempt)
        )

    def _release_lock(self, delivery: Delivery) -> None:
        """A delivery that will never run is done: release the lock its attempt holds from enqueue."""
        digest, mode = lock_of(delivery.message.options)
        if digest and mode in (UNTIL_EXECUTED, UNTIL_EXECUTING):
            self.store.release_lock(digest, delivery.message_id, delivery.attempt, delivery.worker_id)

    def _superseded(self, owner: Owner, delivery: Delivery) -> bool:
        # Dramatiq retried the message since (a new attempt of its own), or the previous attempt ran
        # in this very worker and ended: not a duplicate, whatever the running index still says.
        if owner.retries < delivery.retries:
            return True
        if owner.worker_id == self.registry.worker_id:
            try:
                return not self.registry.is_active(int(owner.token, 16))
            except ValueError:
                return False
        return False

    def _take_place(self, delivery: Delivery, previous: str, owner: Owner) -> None:
        if owner.worker_id == delivery.worker_id:
            # begin_at_risk kept the previous attempt's record (same worker): the recorder writes ours,
            # and its place in the running index with it.  Taken here, the place could outlive an
            # attempt that ends before the recorder writes it (its end is then never written).
            self.registry.unwritten(delivery)
            return
        self.store.take_running(delivery.message_id, previous, delivery.running_entry)

    def _alive(self, worker_id: str) -> bool:
        if worker_id == self.registry.worker_id:
            return True
        raw = self.store.registration(worker_id)
        if raw is None:
            return False
        try:
            info = WorkerInfo.from_json(raw)
        except CorruptRecord:
            return bool(self.store.alive([worker_id])[0])
        if self.host.process_is_gone(info.host):
            return False
        return bool(self.store.alive([worker_id])[0])

    def _defer(self, delivery: Delivery, owner: Owner) -> Verdict:
        # Not run beside the attempt that is still running, and not lost if that one then dies:
        # enqueued again later, marked so that its start is checked again then.
        message = delivery.message
        behind = owner.attempt_id
        self.store.note_history(
            delivery.message_id, self.settings.history_ttl, {"deferred_behind": behind}, forget="completed_by"
        )
        copy = Message(**message.asdict()).copy(options={DEFERRED_OPTION: behind})
        delay = self.settings.heartbeat_timeout
        if not self._enqueue(copy, delay):
            self.events.emit(
                DEFERRAL_FAILED,
                "Message %r (actor %r) was delivered again while attempt %s still runs it on a live worker, and "
                "could not be put off (its broker fails); it is dead-lettered rather than run beside it.",
                delivery.message_id,
                message.actor_name,
                behind,
                **_fields(delivery),
                details={"running": behind},
            )
            return "fail"
        self.events.emit(
            DUPLICATE_DEFERRED,
            "Message %r (actor %r) was delivered again while attempt %s still runs it on a live worker; "
            "this delivery is put off by %d ms instead of running beside it.",
            delivery.message_id,
            message.actor_name,
            behind,
            delay,
            **_fields(delivery),
            details={"running": behind},
        )
        return "skip"

    def _enqueue(self, message: Message[Any], delay: int) -> bool:
        # A broker error is not an outage of the tracker's Redis: retry for a while, never run beside.
        deadline = time.monotonic() + DEFERRAL_RETRY_SECONDS
        while True:
            try:
                self.broker.enqueue(message, delay=delay)
                return True
            except Exception as e:
                if time.monotonic() > deadline:
                    self.logger.warning(
                        "Could not put off message %r: %s: %s.", message.message_id, type(e).__name__, e
                    )
                    return False
                time.sleep(0.2)

    def _claim(self, delivery: Delivery, dead_worker_id: str) -> Verdict:
        raw = self.store.registration(dead_worker_id)
        worker = WorkerInfo.unknown(dead_worker_id)
        if raw is not None:
            with contextlib.suppress(CorruptRecord):
                worker = WorkerInfo.from_json(raw)
        message = delivery.message
        candidate = Candidate(
            delivery.message_id,
            message.actor_name,
            message.queue_name,
            Message(**message.asdict()),
            redis_message_id=str(message.options.get("redis_message_id", "")),
            policy=delivery.policy,
        )
        ((orphan, reply),) = self.claims.claim(worker, [candidate], "deliver")
        if not reply.taken:
            return None
        delivery.recoveries = orphan.recoveries
        delivery.attempt = orphan.attempt
        self.cleaners.clean(orphan)
        if orphan.outcome == BROKER_REDELIVERS:
            orphan = dataclasses.replace(orphan, outcome=REDELIVERED)
        self.settlement.report([orphan], int(time.time() * 1000))
        if orphan.outcome == QUARANTINED_OUTCOME:
            return "fail"
        if orphan.outcome == DROPPED:
            return "skip"
        return None
