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
import time
import uuid
from typing import TYPE_CHECKING

import redis
from dramatiq.logging import get_logger
from dramatiq.message import Message

from .brokers import BrokerFacts
from .host import HostFacts
from .orphans import BROKER_REDELIVERS, LockCleaners, Orphan, RecoveredOrphan, RecoveryReport
from .records import CorruptRecord, WorkerInfo
from .redelivery import EnqueueRedelivery, orphan_lock, redelivery_for
from .threads import PeriodicThread

if TYPE_CHECKING:
    from dramatiq import Broker, MessageProxy

    from .health import ConnectionHealth
    from .recorder import Delivery, InflightRecorder
    from .settings import TrackerSettings
    from .store import OrphanClaim, TrackerStore

#: How many expired workers one sweep looks at, at most.
SWEEP_BATCH = 100


class Recovery:
    """Find dead workers whose broker matches ours and deliver their orphans again.

    Parameters:
      broker(Broker): The broker orphans are delivered to.
      store(TrackerStore)
      settings(TrackerSettings)
      cleaners(LockCleaners): Run on each running orphan before it is delivered again.
    """

    def __init__(self, broker: Broker, store: TrackerStore, settings: TrackerSettings, cleaners: LockCleaners):
        self.logger = get_logger(__name__, type(self))
        self.store = store
        self.settings = settings
        self.facts = BrokerFacts.of(broker)
        self.redelivery = redelivery_for(self.facts.kind, broker, store, settings, cleaners)
        self.host = HostFacts.current()
        self._reported: set[str] = set()

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
            report.recovered += self.redelivery.retry_outbox({}, self.settings.takeover_after)
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
        self.logger.info(
            "Worker %r (host %r, pid %d) is dead (%s); %d of its messages recovered in %d ms%s.",
            worker_id,
            info.hostname,
            info.pid,
            "process gone" if process_gone else "heartbeat expired",
            len(recovered),
            (time.monotonic() - started) * 1000,
            "" if complete else "; another sweeper is finishing the rest",
        )
        for item in recovered:
            self._log_recovered(item)
        return report

    def begin_redelivered(self, recorder: InflightRecorder, message: MessageProxy) -> Delivery:
        """Start a message its broker delivered again (RabbitMQ), settling its recovery first.

        The record is written before the actor runs, so that a redelivered
        message is never unaccounted for.  If a dead worker had it running (a
        sweeper left it awaiting this redelivery, or its process on this host is
        gone), the recovery is counted now, the locks it owned pass to this
        attempt, and the lock cleaners run, all before it starts again.
        """
        delivery = recorder.begin(message, 0, written=True)
        claim: OrphanClaim | None = None
        try:
            start = self.store.begin_redelivered(delivery.record())
            if start is None:
                recorder.unwritten(delivery)
                return delivery
            delivery.recoveries = start.recoveries
            dead = start.awaiting_from or self._gone_owner(start.previous_owner)
            if dead:
                orphan = orphan_lock(delivery.message_id, Message(**message.asdict()))
                claims = self.store.claim_orphans(dead, [orphan], mode="deliver", history_ttl=self.settings.history_ttl)
                claim = claims[0] if claims and claims[0].taken else None
        except redis.RedisError as e:
            recorder.health.failed("recording a redelivered message", e)
            recorder.unwritten(delivery)
            return delivery
        if claim is not None:
            delivery.recoveries = claim.recoveries
            raw = self.store.registration(dead)
            worker = (raw and self._parse(dead, raw)) or WorkerInfo.unknown(dead)
            orphan_ = Orphan(
                message_id=delivery.message_id,
                actor_name=message.actor_name,
                queue_name=message.queue_name,
                message=Message(**message.asdict()),
                worker=worker,
                running=True,
                started_at=None,
                recoveries=delivery.recoveries,
            )
            self.redelivery.cleaners.clean(orphan_)
            self._log_recovered(RecoveredOrphan(orphan_, BROKER_REDELIVERS, None, claim.lock))
        return delivery

    def _gone_owner(self, previous_owner: str) -> str:
        # The broker delivered it again before any sweep: if the previous attempt ran on this host
        # in a process that is gone, that attempt is an orphan to recover now.
        worker_id = previous_owner.rpartition("|")[0]
        raw = worker_id and self.store.registration(worker_id)
        info = raw and self._parse(worker_id, raw)
        return worker_id if info and self.host.process_is_gone(_facts(info)) else ""

    def _log_recovered(self, item: RecoveredOrphan) -> None:
        orphan = item.orphan
        if not orphan.running:
            state = "prefetched, not started"
        elif item.age is None:
            state = "running"
        else:
            state = "started %d ms ago" % item.age
        self.logger.warning(
            "Recovered message %r (actor %r, queue %r) from dead worker %r: %s; %s (recovery %d)%s.",
            orphan.message_id,
            orphan.actor_name,
            orphan.queue_name,
            orphan.worker_id,
            state,
            "RabbitMQ delivers it again" if item.outcome == BROKER_REDELIVERS else "delivered again",
            orphan.recoveries,
            _LOCK_OUTCOMES.get(item.lock, ""),
        )

    def _parse(self, worker_id: str, raw: str) -> WorkerInfo | None:
        try:
            return WorkerInfo.from_json(raw)
        except CorruptRecord as e:
            if worker_id not in self._reported:
                self._reported.add(worker_id)
                self.logger.warning("Skipping worker %r: its registration is unreadable (%s).", worker_id, e)
            return None


_LOCK_OUTCOMES = {
    "deleted": "; its uniqueness lock was released",
    "transferred": "; its uniqueness lock passed to its new attempt",
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

    def __init__(self, recovery: Recovery, store: TrackerStore, settings: TrackerSettings, health: ConnectionHealth):
        super().__init__("dramatiq-tracker-sweeper", settings.sweep_interval)
        self.recovery = recovery
        self.store = store
        self.settings = settings
        self.health = health
        self.token = uuid.uuid4().hex
        self._booted = False

    def tick(self) -> None:
        started = time.monotonic()
        try:
            self.recovery.recover_local()
            if not self._booted or self._holds_lease():
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
