"""Dead-worker detection and orphan recovery, for the workers of one broker identity.

A worker is dead when its heartbeat key has expired on the tracker's Redis
(the server's clock decides), or at once when it ran on this host and its
process is gone.  Recovery then goes, for each dead worker:

1. ``declare_dead``: confirm the death, fence the worker and claim its
   recovery (:class:`~dramatiq_tracker.recovery_claim.RecoveryClaim`), atomically;
2. the broker's :class:`~dramatiq_tracker.redelivery.Redelivery` claims each
   orphan atomically (:class:`~dramatiq_tracker.orphans.Claims`), runs the
   lock cleaners and delivers it again, under the claim;
3. ``finish_recovery``: forget the worker, keeping its tombstone.

An interrupted recovery leaves the worker registered and due again after
``takeover_after``: the next sweep takes the claim over and finishes it, each
step done once however many sweepers race or stall.  One that runs out of its
budget lets the claim go, and the next sweep goes on at once.  Only workers of the same
broker identity are recovered (they share the queues); each identity has its
own index of deadlines, so that workers of other apps sharing the namespace
never delay ours.  On RedisBroker, dead processes the tracker's Redis forgot
(it restarted empty, failed over, evicted) are found from the broker's own
records and recovered the same way.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from dramatiq.logging import get_logger

from .brokers import consumer_queues
from .errors import RecoveryTakenOver
from .events import WORKER_ADOPTED, WORKER_DEAD, EventSpec
from .host import HostFacts
from .keys import identity_digest
from .orphans import DROPPED, QUARANTINED_OUTCOME, RecoveryReport
from .records import CorruptRecord, WorkerInfo
from .recovery_claim import RecoveryClaim
from .redelivery import EnqueueRedelivery

if TYPE_CHECKING:
    from dramatiq import Broker

    from .broker_store import BrokerStore
    from .connection import MasterWatch
    from .events import Events
    from .orphans import Settlement
    from .redelivery import Redelivery
    from .scripts import DeathReason, DeclaredDead
    from .settings import TrackerSettings
    from .store import TrackerStore

#: How many expired workers one read of the deadlines index returns.
SWEEP_PAGE = 100

#: How each reason of a death reads in the worker-dead event.
_WHY = {"process": "process gone", "presence": "presence gone", "heartbeat": "heartbeat expired"}


class Recovery:
    """Find dead workers of one broker identity and settle their orphans.

    Parameters:
      broker(Broker): The broker orphans are delivered to.
      store(TrackerStore)
      settings(TrackerSettings)
      identity(str): The broker identity (the text) of this process's broker.
      redelivery(Redelivery): How this broker's orphans are delivered again.
      settlement(Settlement): Reports what was done with them.
      events(Events)
      master(MasterWatch): With a Sentinel-managed Redis, which server is the master: asked before a
        death is judged by presence or heartbeat, which the old master of a failover would misjudge.
      broker_store(BrokerStore|None): A RedisBroker's own keys, to find processes the tracker forgot.

    The methods that recover take ``own``: the caller's worker id while it runs one (a worker never
    recovers itself), else None.
    """

    def __init__(
        self,
        broker: Broker,
        store: TrackerStore,
        settings: TrackerSettings,
        identity: str,
        redelivery: Redelivery,
        settlement: Settlement,
        events: Events,
        master: MasterWatch,
        broker_store: BrokerStore | None = None,
    ) -> None:
        self.logger = get_logger(__name__, type(self))
        self.broker = broker
        self.store = store
        self.settings = settings
        self.identity = identity
        self.digest = identity_digest(identity)
        self.redelivery = redelivery
        self.settlement = settlement
        self.events = events
        self.master = master
        #: A RedisBroker's own keys, where tracked processes are noted; None on other brokers.
        self.broker_store = broker_store
        self.host = HostFacts.current()
        self._reported: set[str] = set()

    def sweep(self, own: str | None = None, *, budget: float | None = None, dry_run: bool = False) -> RecoveryReport:
        """Recover every dead worker we can see: local ones at once, others when their heartbeat
        expired, forgotten ones from their broker's records, and orphans left in the outbox.

        Parameters:
          budget(float): Seconds after which the sweep stops, leaving the rest to the next one.
          dry_run(bool): Only say what it would do (the same decisions, against the same data);
            change nothing, run no lock cleaner, emit no event.
        """
        deadline = None if budget is None else time.monotonic() + budget
        report = self.recover_local(own, dry_run=dry_run)
        # A dry run declares nobody dead: a local worker found gone is also due by its heartbeat.
        report.extend(self.recover_expired(own, deadline=deadline, dry_run=dry_run, skip=set(report.dead_workers)))
        if not report.partial:
            if dry_run:
                report.forgotten += self.forgotten()
            elif self.adopt_forgotten():
                report.extend(self.recover_expired(own, deadline=deadline))
        report.extend(self.retry_outbox(own, dry_run=dry_run))
        report.dry_run = dry_run
        return report

    def recover_local(self, own: str | None = None, *, dry_run: bool = False) -> RecoveryReport:
        """Recover workers of this host whose process is gone, without waiting for their heartbeat."""
        report = RecoveryReport()
        for worker_id, raw in self.store.workers_on_host(self.host.hostname).items():
            info = self._parse(worker_id, raw)
            if info is not None and info.broker_identity == self.identity and self.host.process_is_gone(info.host):
                report.extend(self._recover(worker_id, raw, own, reason="process", dry_run=dry_run))
        return report

    def recover_expired(
        self,
        own: str | None = None,
        *,
        deadline: float | None = None,
        dry_run: bool = False,
        skip: set[str] | None = None,
    ) -> RecoveryReport:
        """Recover workers of our broker identity whose heartbeat has expired, oldest first.

        Parameters:
          deadline(float): A ``time.monotonic()`` after which it stops (``report.partial``).
          skip(set[str]): Workers this sweep recovered already.
        """
        report = RecoveryReport()
        seen: set[str] = set(skip or ())
        while True:
            now = self.store.server_time()
            due = [wid for wid in self.store.due_workers(self.digest, SWEEP_PAGE, now=now) if wid not in seen]
            if not due:
                return report
            # Their registrations in one read: a round trip per dead worker is a tenth of its recovery.
            registrations = self.store.registrations(due)
            for worker_id in due:
                if deadline is not None and time.monotonic() > deadline:
                    report.partial = True
                    return report
                seen.add(worker_id)
                report.extend(self._recover(worker_id, registrations.get(worker_id), own, now=now, dry_run=dry_run))

    def recover_worker(
        self,
        worker_id: str,
        own: str | None = None,
        *,
        reason: DeathReason = "heartbeat",
        now: int | None = None,
        dry_run: bool = False,
    ) -> RecoveryReport:
        """Recover one worker if it is dead.

        Parameters:
          worker_id(str)
          reason(str): Why it would be dead: "process" (the caller saw its process gone on this host;
            its heartbeat is then ignored), "presence" or "heartbeat".
          dry_run(bool): Only say what would be done.

        Raises:
          redis.RedisError: When the tracker's or the broker's Redis fails; nothing is lost.
        """
        return self._recover(worker_id, self.store.registration(worker_id), own, reason, now, dry_run)

    def _recover(
        self,
        worker_id: str,
        raw: str | None,
        own: str | None,
        reason: DeathReason = "heartbeat",
        now: int | None = None,
        dry_run: bool = False,
        grace: int | None = None,
    ) -> RecoveryReport:
        """:meth:`recover_worker`, its registration (``raw``) read already (``grace``: the presence
        grace that applies, for a death by presence)."""
        report = RecoveryReport()
        if worker_id == own:
            # Our own heartbeat is late: we are the one in trouble, not a corpse to recover.
            return report
        if raw is None:
            # Not registered (any more): declaring it dead only removes it from the deadlines.
            self._declare(worker_id, "heartbeat", own, retry_after=0, dry_run=dry_run)
            return report
        info = self._parse(worker_id, raw)
        if info is None:
            # Unreadable: out of the way of the others, looked at again later.
            if not dry_run:
                until = (now or self.store.server_time()) + self.settings.history_ttl
                self.store.postpone(self.digest, worker_id, until)
            return report
        if info.broker_identity != self.identity:
            self.logger.debug(
                "Dead worker %r used broker %r, not ours (%r); leaving it to a worker of that broker.",
                worker_id,
                info.broker_identity,
                self.identity,
            )
            return report

        if reason != "process" and not dry_run and self.master.moved():
            # A failover: what the old master said of presence and heartbeats decides nothing.
            return report
        token, started = "" if dry_run else RecoveryClaim.new_token(), time.monotonic()
        declared = self._declare(
            worker_id, reason, own, retry_after=self.settings.takeover_after, dry_run=dry_run, grace=grace, claim=token
        )
        if declared.status == "claimed":
            self.logger.debug("Dead worker %r is being recovered by another sweeper.", worker_id)
            return report
        if declared.status != "dead":
            return report
        if dry_run:
            report.dead_workers.append(worker_id)
            report.recovered += self.redelivery.recover(info, declared.records, dry_run=True).orphans
            return report

        claim = RecoveryClaim(self.store, self.settings, self.digest, worker_id, token, started)
        try:
            recovered = self.redelivery.recover(info, declared.records, claim=claim)
            if not recovered.complete:
                report.partial = True
                claim.release()
            else:
                # Its note beside the broker's keys stays: should it resume and fetch again, then die
                # before it registers anew, what it fetched is found there (adopt_forgotten).
                self.store.finish_recovery(info, self.digest, self.settings.history_ttl, claim.token)
        except RecoveryTakenOver:
            # This sweeper stalled past takeover_after (or its Redis did not answer): another one
            # finishes the recovery, and this one does nothing more for the worker.
            self.logger.warning(
                "The recovery of dead worker %r was taken over by another sweeper while this one stalled; "
                "it goes on there.",
                worker_id,
            )
            return report
        report.dead_workers.append(worker_id)
        report.recovered += recovered.orphans
        outcomes = [orphan.outcome for orphan in recovered.orphans]
        quarantined, dropped = outcomes.count(QUARANTINED_OUTCOME), outcomes.count(DROPPED)
        why = _WHY[declared.reason]
        summary = EventSpec(
            WORKER_DEAD,
            "Worker %r (host %r, pid %d) is dead (%s); %d of its messages settled in %d ms "
            "(%d delivered again, %d quarantined, %d dropped)%s."
            % (
                worker_id,
                info.hostname,
                info.pid,
                why,
                len(outcomes),
                (time.monotonic() - started) * 1000,
                len(outcomes) - quarantined - dropped,
                quarantined,
                dropped,
                "" if recovered.complete else "; the next sweep settles the rest",
            ),
            {"worker_id": worker_id},
            {
                "reason": why,
                "hostname": info.hostname,
                "pid": str(info.pid),
                "settled": str(len(outcomes)),
                "running": str(sum(1 for o in recovered.orphans if o.running)),
            },
        )
        # One line per orphan at debug; the worker-dead event, in the same round trip, sums them up.
        self.settlement.report(recovered.orphans, int(time.time() * 1000), log_level=logging.DEBUG, summary=summary)
        return report

    def recover_absent(self, own: str | None = None, *, booting: bool = False) -> RecoveryReport:
        """Recover workers of our broker identity whose presence has been gone for ``presence_grace``,
        their heartbeat not renewed meanwhile (``lua/check_presence.lua``).  Nothing is judged while
        the server is new to the namespace, or when the caller's own presence or heartbeat is not
        on it.

        Parameters:
          booting(bool): The caller just started: a worker of its own hostname (the process it
            replaces, when a container restarts) is dead once its presence has been gone for a quarter
            of the grace, so that its orphans are recovered at once.
        """
        report = RecoveryReport()
        status, absences = self.store.check_presence(self.digest, self.settings.settle, own)
        if status != "ok":
            self.logger.debug("Presence not judged now: %s.", status)
            return report
        grace, local_grace = self.settings.presence_grace, self.settings.presence_grace // 4
        candidates = [w for w, absent_for in absences.items() if absent_for >= (local_grace if booting else grace)]
        if not candidates:
            return report
        registrations = self.store.registrations(candidates)
        for worker_id in candidates:
            raw = registrations.get(worker_id)
            applies = grace
            if absences[worker_id] < grace:
                info = self._parse(worker_id, raw) if raw is not None else None
                if info is None or info.hostname != self.host.hostname:
                    continue
                applies = local_grace
            report.extend(self._recover(worker_id, raw, own, reason="presence", grace=applies))
        return report

    def _declare(
        self,
        worker_id: str,
        reason: DeathReason,
        own: str | None,
        *,
        retry_after: int,
        dry_run: bool,
        grace: int | None = None,
        claim: str = "",
    ) -> DeclaredDead:
        return self.store.declare_dead(
            worker_id,
            self.digest,
            reason=reason,
            retry_after=retry_after,
            settle=self.settings.settle,
            grace=self.settings.presence_grace if grace is None else grace,
            caller=own,
            claim=claim,
            history_ttl=self.settings.history_ttl,
            heartbeat_timeout=self.settings.heartbeat_timeout,
            dry_run=dry_run,
        )

    def forgotten(self) -> list[str]:
        """The worker ids :meth:`adopt_forgotten` would adopt now (a dry run)."""
        return [info.worker_id for info, _, resumed in self._forgotten() if resumed is not False]

    def _forgotten(self) -> list[tuple[WorkerInfo, int | None, bool | None]]:
        """Tracked processes of our broker, silent on Dramatiq's heartbeat for more than
        ``heartbeat_timeout`` and not registered in the tracker, with how long they have been silent
        (None: Dramatiq forgot them), and, for those declared dead before, whether they hold un-acked
        messages (they resumed after their declaration and fetched; None for the others)."""
        if self.broker_store is None:
            return []
        broker_ids = self.broker_store.tracked_process_ids()
        if not broker_ids:
            return []
        now = self.broker_store.server_time()
        # One read of who Dramatiq heard from lately, then only the silent ones are looked at: a
        # sweep runs every few seconds, and with a thousand live workers the rest would be most of it.
        fresh = self.broker_store.seen_since(now - self.settings.heartbeat_timeout)
        silent_ids = [broker_id for broker_id in broker_ids if broker_id not in fresh]
        if not silent_ids:
            return []
        last_seen = self.broker_store.last_seen(silent_ids)
        silent = {
            broker_id: None if seen is None else now - seen
            for broker_id, seen in zip(silent_ids, last_seen, strict=True)
            if seen is None or now - seen >= self.settings.heartbeat_timeout
        }
        if not silent:
            return []
        noted = []
        for broker_id, raw in self.broker_store.tracked_processes(list(silent)).items():
            info = self._parse(broker_id, raw)
            if info is not None and info.broker_identity == self.identity:
                noted.append((info, silent[broker_id]))
        registered = self.store.registrations([info.worker_id for info, _ in noted])
        unregistered = [(info, silence) for info, silence in noted if info.worker_id not in registered]
        declared = self.store.declared_dead([info.worker_id for info, _ in unregistered])
        tombstoned = [info for info, _ in unregistered if info.worker_id in declared]
        holding = self.broker_store.hold_unacked([(i.broker_id, consumer_queues(i.queues)) for i in tombstoned])
        resumed = dict(zip((info.worker_id for info in tombstoned), holding, strict=True))
        return [(info, silence, resumed.get(info.worker_id)) for info, silence in unregistered]

    def adopt_forgotten(self) -> int:
        """Find dead RedisBroker processes that the tracker's Redis forgot, from the broker's own records.

        Each tracked process is noted beside its broker's keys when it registers.  One that is
        noted there, is not registered in the tracker, and whose Dramatiq heartbeat is older than
        ``heartbeat_timeout`` is registered again as due, and recovered by this sweep.

        Returns:
          int: How many were adopted.
        """
        adopted = 0
        for info, silent, resumed in self._forgotten():
            if resumed is None:
                if self.store.adopt_worker(info, self.digest):
                    adopted += 1
                    self._adopted(
                        info, silent, "is unknown to the tracker's Redis (it lost its state) and", resumed=False
                    )
            elif self.broker_store is None:
                continue
            elif resumed:
                # Declared dead while stopped, it resumed, fetched, and died before it registered anew:
                # what it fetched waits in its acks, where no registration points.
                if self.store.adopt_worker(info, self.digest, resumed=True):
                    adopted += 1
                    self._adopted(
                        info,
                        silent,
                        "was declared dead, resumed and fetched messages, died unregistered,",
                        resumed=True,
                    )
            elif silent is None or silent > self.settings.history_ttl:
                # Declared dead and recovered, and Dramatiq forgot it too: the note has served.
                self.broker_store.forget_process(info.broker_id)
        return adopted

    def _adopted(self, info: WorkerInfo, silent: int | None, how: str, *, resumed: bool) -> None:
        self.events.emit(
            WORKER_ADOPTED,
            "Worker %r (host %r, pid %d) %s is silent on its broker for %s; it is recovered from the broker's records.",
            info.worker_id,
            info.hostname,
            info.pid,
            how,
            "ever" if silent is None else "%d ms" % silent,
            worker_id=info.worker_id,
            details={"broker_id": info.broker_id, **({"resumed": "1"} if resumed else {})},
        )

    def retry_outbox(self, own: str | None = None, *, dry_run: bool = False) -> RecoveryReport:
        """Finish re-enqueueing orphans that a stopped sweeper left in the outbox."""
        report = RecoveryReport()
        if isinstance(self.redelivery, EnqueueRedelivery):
            grace = self.settings.takeover_after
            report.recovered += self.redelivery.retry_outbox(grace, own or "", dry_run=dry_run)
            if report.recovered and not dry_run:
                self.settlement.report(report.recovered, int(time.time() * 1000))
        return report

    def _parse(self, worker_id: str, raw: str) -> WorkerInfo | None:
        try:
            return WorkerInfo.from_json(raw)
        except CorruptRecord as e:
            if worker_id not in self._reported:
                self._reported.add(worker_id)
                self.logger.warning("Skipping worker %r: its registration is unreadable (%s).", worker_id, e)
            return None
