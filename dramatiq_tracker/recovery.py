"""Dead-worker detection and orphan recovery.

A worker is dead when its heartbeat key has expired on the tracker's Redis
(the server's clock decides), or at once when it ran on this host and its
process is gone.  Recovery then goes, for each dead worker:

1. ``declare_dead``: confirm the death and fence the worker, atomically;
2. the broker's :class:`~dramatiq_tracker.redelivery.Redelivery` claims each
   orphan atomically (``claim_orphans``), runs the lock cleaners and
   delivers it again, exactly once however many sweepers race;
3. ``finish_recovery``: forget the worker, keeping its tombstone.

An interrupted recovery leaves the worker registered and due again after
``takeover_after``, so the next sweep finishes it.  Recovery runs when a
worker boots, every ``sweep_interval`` in one worker of the cluster (a
lease with an owner token picks it), and on demand (:meth:`Recovery.sweep`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import redis
from dramatiq.logging import get_logger
from dramatiq.message import Message

from .brokers import BrokerFacts
from .events import ABORT_HONOURED, DUPLICATE_DEFERRED, DUPLICATE_DROPPED, WORKER_DEAD
from .host import HostFacts
from .orphans import (
    BROKER_REDELIVERS,
    DROPPED,
    OUTCOMES,
    QUARANTINED,
    REDELIVERED,
    Orphan,
    OrphanHandling,
    RecoveredOrphan,
    RecoveryReport,
)
from .quarantine import QUARANTINE_OPTION
from .recorder import DEFERRED_OPTION, FAIL, SKIP
from .records import CorruptRecord, WorkerInfo
from .redelivery import EnqueueRedelivery, redelivery_for
from .threads import PeriodicThread
from .unique import attempt_of

if TYPE_CHECKING:
    from dramatiq import Broker, MessageProxy

    from .health import ConnectionHealth
    from .recorder import Delivery, InflightRecorder
    from .settings import TrackerSettings
    from .store import AtRiskStart, TrackerStore

#: How many expired workers one sweep looks at, at most.
SWEEP_BATCH = 100


class Recovery:
    """Find dead workers whose broker matches ours and settle their orphans.

    Parameters:
      broker(Broker): The broker orphans are delivered to.
      store(TrackerStore)
      settings(TrackerSettings)
      handling(OrphanHandling): Lock cleaners, events, quarantine and dramatiq-abort.
    """

    def __init__(self, broker: Broker, store: TrackerStore, settings: TrackerSettings, handling: OrphanHandling):
        self.logger = get_logger(__name__, type(self))
        self.broker = broker
        self.store = store
        self.settings = settings
        self.handling = handling
        self.events = handling.events
        self.facts = BrokerFacts.of(broker)
        self.redelivery = redelivery_for(self.facts.kind, broker, store, settings, handling)
        self.host = HostFacts.current()
        self._reported: set[str] = set()
        #: This process's worker id while it runs one: a worker never recovers itself.
        self.own_worker_id: Callable[[], str | None] = lambda: None

    def sweep(self) -> RecoveryReport:
        """Recover every dead worker we can see: local ones at once, others when their heartbeat expired."""
        report = self.recover_local()
        report.extend(self.recover_expired())
        report.extend(self.retry_outbox())
        return report

    def recover_local(self) -> RecoveryReport:
        """Recover workers of this host whose process is gone, without waiting for their heartbeat."""
        report = RecoveryReport()
        for worker_id, raw in self.store.workers_on_host(self.host.hostname).items():
            info = self._parse(worker_id, raw)
            if info is not None and self.host.process_is_gone(_facts(info)):
                report.extend(self.recover_worker(worker_id, process_gone=True))
        return report

    def recover_expired(self) -> RecoveryReport:
        """Recover workers whose heartbeat has expired."""
        report = RecoveryReport()
        for worker_id in self.store.due_workers(SWEEP_BATCH):
            report.extend(self.recover_worker(worker_id))
        return report

    def retry_outbox(self) -> RecoveryReport:
        """Finish re-enqueueing orphans that a stopped sweeper left in the outbox."""
        report = RecoveryReport()
        if isinstance(self.redelivery, EnqueueRedelivery):
            report.recovered += self.redelivery.retry_outbox(self.settings.takeover_after)
            for item in report.recovered:
                self.handling.settled(item)
        return report

    def recover_worker(self, worker_id: str, *, process_gone: bool = False) -> RecoveryReport:
        """Recover one worker if it is dead.

        Parameters:
          worker_id(str)
          process_gone(bool): True when the caller saw its process gone; its heartbeat is then ignored.

        Raises:
          redis.RedisError: When the tracker's or the broker's Redis fails; nothing is lost.
        """
        report = RecoveryReport()
        if worker_id == self.own_worker_id():
            # Our own heartbeat is late: we are the one in trouble, not a corpse to recover.
            return report
        raw = self.store.registration(worker_id)
        info = None if raw is None else self._parse(worker_id, raw)
        if info is None:
            return report
        if info.broker_identity != self.facts.identity:
            self.logger.debug(
                "Dead worker %r used broker %r, not ours (%r); leaving it to a worker of that broker.",
                worker_id,
                info.broker_identity,
                self.facts.identity,
            )
            return report

        declared = self.store.declare_dead(
            worker_id, process_gone=process_gone, retry_after=self.settings.takeover_after
        )
        if declared.status != "dead":
            return report

        started = time.monotonic()
        recovered, complete = self.redelivery.recover(info, declared.records)
        if complete:
            self.store.finish_recovery(worker_id, info.hostname, info.broker_id, self.settings.history_ttl)
        report.dead_workers.append(worker_id)
        report.recovered += recovered
        reason = "process gone" if process_gone else "heartbeat expired"
        self.events.emit(
            WORKER_DEAD,
            "Worker %r (host %r, pid %d) is dead (%s); %d of its messages settled in %d ms%s.",
            worker_id,
            info.hostname,
            info.pid,
            reason,
            len(recovered),
            (time.monotonic() - started) * 1000,
            "" if complete else "; another sweeper is finishing the rest",
            worker_id=worker_id,
            details={"reason": reason, "hostname": info.hostname, "pid": str(info.pid)},
        )
        for item in recovered:
            self.handling.settled(item)
        return report

    # Starts that must be recorded before they run ------------------------------------------

    def begin_at_risk(self, recorder: InflightRecorder, message: MessageProxy, max_recoveries: int) -> Delivery:
        """Start a message whose start must not be missed, recording it before it runs.

        Those are messages delivered again (RabbitMQ's redelivered flag, the tracker's
        own marks), duplicates that were put off, and messages of at-most-once actors.
        What is known about the message decides its fate (``Delivery.verdict``):

        - a previous attempt still running on a live worker: this one is put off
          (enqueued again later), never run beside it (a duplicate delivery);
        - a put-off duplicate whose awaited attempt completed: dropped;
        - the orphan of a dead worker (a sweeper left it awaiting this redelivery,
          or its process on this host is gone): the recovery is counted now and
          decided: run (its locks pass to this attempt, lock cleaners run first),
          quarantined (dead-lettered), or dropped (cancelled or aborted);
        - a quarantine mark: dead-lettered without running.
        """
        options = message.options
        delivery = recorder.begin(message, attempt_of(options), written=True)
        if options.get(QUARANTINE_OPTION):
            delivery.verdict = FAIL
            return delivery
        try:
            start = self.store.begin_at_risk(delivery.record())
            if start is None:
                recorder.unwritten(delivery)
                return delivery
            delivery.recoveries = max(delivery.recoveries, start.recoveries)
            self._decide(delivery, start, max_recoveries)
        except redis.RedisError as e:
            recorder.health.failed("recording a message before it runs", e)
            recorder.unwritten(delivery)
        return delivery

    def _decide(self, delivery: Delivery, start: AtRiskStart, max_recoveries: int) -> None:
        message, history = delivery.message, start.history
        behind = message.options.get(DEFERRED_OPTION)
        if behind and history.get("completed_by") == behind:
            delivery.verdict = SKIP
            self.events.emit(
                DUPLICATE_DROPPED,
                "Dropped duplicate delivery of message %r (actor %r): the attempt it waited for (%s) completed.",
                delivery.message_id,
                message.actor_name,
                behind,
                **_message_fields(delivery),
                details={"completed_by": str(behind)},
            )
            return

        dead = history.get("awaiting_from", "")
        previous = start.previous_owner
        if previous:
            previous_worker = previous.rpartition("|")[0]
            if self._alive(previous_worker):
                self._defer(delivery, previous)
                return
            dead = dead or previous_worker
        if dead:
            self._claim_at_start(delivery, dead, max_recoveries)
        elif history.get("abort"):
            delivery.verdict = SKIP
            self.events.emit(
                ABORT_HONOURED,
                "Did not run message %r (actor %r) delivered again: it was %sed.",
                delivery.message_id,
                message.actor_name,
                history["abort"].rstrip("e"),
                **_message_fields(delivery),
            )
        if previous and delivery.verdict is None:
            # The previous attempt is dead: this one takes its place in the running index.
            self.store.take_running(delivery.message_id, previous, "%s|%s" % (delivery.worker_id, delivery.token))

    def _alive(self, worker_id: str) -> bool:
        raw = self.store.registration(worker_id)
        info = raw and self._parse(worker_id, raw)
        if info and self.host.process_is_gone(_facts(info)):
            return False
        return bool(info) and self.store.alive([worker_id])[0]

    def _defer(self, delivery: Delivery, previous: str) -> None:
        # Not run beside the attempt that is still running, and not lost if that one then dies:
        # enqueued again later, marked so that its start is checked again then.
        message = delivery.message
        self.store.mark_deferred(delivery.message_id, previous, self.settings.history_ttl)
        copy = Message(**message.asdict()).copy(options={DEFERRED_OPTION: previous})
        self.broker.enqueue(copy, delay=self.settings.heartbeat_timeout)
        delivery.verdict = SKIP
        self.events.emit(
            DUPLICATE_DEFERRED,
            "Message %r (actor %r) was delivered again while attempt %s still runs it on a live worker; "
            "this delivery is put off by %d ms instead of running beside it.",
            delivery.message_id,
            message.actor_name,
            previous,
            self.settings.heartbeat_timeout,
            **_message_fields(delivery),
            details={"running": previous},
        )

    def _claim_at_start(self, delivery: Delivery, dead: str, max_recoveries: int) -> None:
        message: Message[Any] = Message(**delivery.message.asdict())
        aborted = self.handling.aborts.pending([delivery.message_id]) if self.handling.aborts.available else set()
        orphan_lock = self.redelivery.orphan_lock(delivery.message_id, message, message.actor_name, aborted)
        (claim,) = self.store.claim_orphans(
            dead,
            [dataclasses.replace(orphan_lock, max_recoveries=max_recoveries)],
            mode="deliver",
            history_ttl=self.settings.history_ttl,
        )
        if not claim.taken:
            return
        delivery.recoveries = claim.recoveries
        raw = self.store.registration(dead)
        worker = (raw and self._parse(dead, raw)) or WorkerInfo.unknown(dead)
        orphan = Orphan(
            message_id=delivery.message_id,
            actor_name=message.actor_name,
            queue_name=message.queue_name,
            message=message,
            worker=worker,
            running=True,
            started_at=None,
            recoveries=claim.recoveries,
        )
        self.handling.cleaners.clean(orphan)
        outcome = OUTCOMES[claim.outcome or "deliver"]
        if outcome == QUARANTINED:
            delivery.verdict = FAIL
        elif outcome == DROPPED:
            delivery.verdict = SKIP
        self.handling.settled(
            RecoveredOrphan(orphan, BROKER_REDELIVERS if outcome == REDELIVERED else outcome, None, claim.lock)
        )

    def _parse(self, worker_id: str, raw: str) -> WorkerInfo | None:
        try:
            return WorkerInfo.from_json(raw)
        except CorruptRecord as e:
            if worker_id not in self._reported:
                self._reported.add(worker_id)
                self.logger.warning("Skipping worker %r: its registration is unreadable (%s).", worker_id, e)
            return None


def _message_fields(delivery: Delivery) -> dict[str, Any]:
    return {
        "message_id": delivery.message_id,
        "actor_name": delivery.message.actor_name,
        "queue_name": delivery.message.queue_name,
        "recoveries": delivery.recoveries,
    }


def _facts(info: WorkerInfo) -> HostFacts:
    return HostFacts(info.hostname, info.pid, info.process_started, info.boot_id, info.pid_namespace)


class Sweeper(PeriodicThread):
    """The thread that runs recovery in a worker process.

    Each tick recovers dead workers of this host whose process is gone, then,
    if this worker holds the cluster-wide sweep lease, workers whose heartbeat
    expired.  The first tick, at boot, does both without the lease.  Right after
    an outage of the tracker's Redis, expired heartbeats are not trusted until
    live workers have had two heartbeat intervals to renew theirs.
    """

    def __init__(
        self,
        recovery: Recovery,
        store: TrackerStore,
        settings: TrackerSettings,
        health: ConnectionHealth,
        heartbeat_fresh: Callable[[], bool] = lambda: True,
    ):
        super().__init__("dramatiq-tracker-sweeper", settings.sweep_interval)
        self.recovery = recovery
        self.store = store
        self.settings = settings
        self.health = health
        self.heartbeat_fresh = heartbeat_fresh
        self.token = uuid.uuid4().hex
        self._booted = False

    def tick(self) -> None:
        started = time.monotonic()
        try:
            self.recovery.recover_local()
            if not self.heartbeat_fresh():
                # A worker whose own heartbeat is late may be the one declared dead: it leaves
                # judging others to healthy workers.
                self.store.release_lease(self.token)
            elif not self._booted or self._holds_lease():
                if self.health.settled_for(2 * self.settings.heartbeat_interval / 1000):
                    self.recovery.recover_expired()
                self.recovery.retry_outbox()
            self._booted = True
        except redis.RedisError as e:
            self.health.failed("sweeping for dead workers", e)
        else:
            self.health.succeeded(started)

    def _holds_lease(self) -> bool:
        # A bit shorter than the interval, so that the holder's next tick finds it free or renews it.
        return self.store.acquire_lease(self.token, max(1, self.settings.sweep_interval * 9 // 10))

    def stop(self, timeout: float | None = 5.0) -> None:
        super().stop(timeout)
        with contextlib.suppress(redis.RedisError):
            self.store.release_lease(self.token)
