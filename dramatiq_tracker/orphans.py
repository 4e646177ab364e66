"""Orphans and what is done with them: the one way to claim them, lock cleaning before their
redelivery, and events and the quarantine callback after.

**Claims.** From what is known of each orphan, ``lua/claim_orphans.lua`` takes it, counts it, gives
it a new attempt and releases its locks, and it is returned as an :class:`Orphan`.  Sweepers claim
a dead worker's orphans in batches; a worker claims one when its redelivery starts (RabbitMQ, a
put-off duplicate whose twin died).  Both go through :meth:`Claims.claim`.  What decides an
orphan's fate travels with it: its poison limit and its callback come from its in-flight record
(written where its actor is known), else from its message's own options, else from the actor's
policy if this process knows the actor; only then the middleware's default, said in a warning.

**Quarantine.** A message that kills its worker comes back after every crash, bypassing
Dramatiq's ``max_retries`` (dramatiq #213).  The tracker counts recoveries durably per message id;
a message recovered more than ``max_recoveries`` times is dead-lettered through its broker's own
dead-letter path instead of being delivered again, and the actor named by
``on_recovery_exhausted`` is sent ``(message.asdict(), {"recoveries": n, "max_recoveries": m,
"worker_id": w})``, as Dramatiq's Retries does with ``on_retry_exhausted``.
"""

from __future__ import annotations

import dataclasses
import os
import queue
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from dramatiq.logging import get_logger
from dramatiq.message import Message

from .events import ABORT_HONOURED, LOCK_CLEANER_FAILED, LOCK_RELEASED, QUARANTINED, RECOVERED, EventSpec
from .options import MAX_RECOVERIES, attempt_of
from .records import WorkerInfo
from .scripts import ClaimMode, ClaimReply, ClaimRequest
from .unique import lock_of

if TYPE_CHECKING:
    from dramatiq import Broker

    from .abort import AbortBridge
    from .events import Events
    from .policies import ActorPolicy, Policies
    from .records import InflightRecord
    from .recovery_claim import RecoveryClaim
    from .scripts import LockOutcome
    from .settings import TrackerSettings
    from .store import TrackerStore

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

    A cleaner that raises, or does not return within ``timeout``, is always reported, at warning
    level (a ``lock-cleaner-failed`` event, and the log line that comes with it); the other cleaners
    still run and the orphan is still delivered again.  A cleaner that hangs is left behind (it runs
    on a thread of its own) so that it cannot hold its orphan back for ever.

    Parameters:
      events(Events): Where failures are reported.
      cleaners(list[callable]): The middleware's list of cleaners.
      timeout(int): How long one cleaner call may take, in milliseconds.
    """

    def __init__(self, events: Events, cleaners: list[LockCleaner], timeout: int) -> None:
        self.events = events
        #: The middleware's own list: cleaners added later count too.
        self._cleaners = cleaners
        self.timeout = timeout / 1000
        self._local = threading.local()

    def __len__(self) -> int:
        return len(self._cleaners)

    def clean(self, orphan: Orphan, claim: RecoveryClaim | None = None) -> None:
        """Call each cleaner on ``orphan``.

        Parameters:
          claim(RecoveryClaim|None): A sweeper's claim on the recovery of the orphan's worker: each
            call is noted under it before it is made, and not made when it was made already (by the
            sweeper this one took the recovery over from); it is renewed while a call runs.

        Raises:
          RecoveryTakenOver: When another sweeper took the claim over: no cleaner is called after.
        """
        for cleaner in tuple(self._cleaners):
            name = getattr(cleaner, "__qualname__", repr(cleaner))
            if claim is not None and not claim.note_call(orphan.message_id, name):
                continue
            error = self._call(cleaner, orphan, claim)
            if error:
                self.events.emit(
                    LOCK_CLEANER_FAILED,
                    "Lock cleaner %r failed for message %r (actor %r) orphaned by worker %r: %s. "
                    "The message is delivered anyway.",
                    name,
                    orphan.message_id,
                    orphan.actor_name,
                    orphan.worker_id,
                    error,
                    **_fields(orphan),
                    details={"cleaner": name, "error": error},
                )

    def _call(self, cleaner: LockCleaner, orphan: Orphan, claim: RecoveryClaim | None) -> str:
        """Make one call on this thread's cleaner thread; what went wrong, or ""."""
        runner: _CallThread | None = getattr(self._local, "runner", None)
        if runner is None or runner.pid != os.getpid():
            runner = self._local.runner = _CallThread()
        call = runner.submit(lambda: cleaner(orphan))
        deadline = time.monotonic() + self.timeout
        wait = self.timeout / 4 if claim is None else min(self.timeout, claim.lease) / 4
        try:
            while not call.done.wait(max(0.0, min(wait, deadline - time.monotonic()))):
                if claim is not None:
                    claim.check()
                if time.monotonic() >= deadline:
                    self._abandon(runner)
                    return "it did not return within %d ms, and was left running" % (self.timeout * 1000)
        except BaseException:
            self._abandon(runner)
            raise
        if call.error is not None:
            return "%s: %s" % (type(call.error).__name__, call.error)
        return ""

    def _abandon(self, runner: _CallThread) -> None:
        self._local.runner = None
        runner.close()


class _Call:
    def __init__(self, function: Callable[[], None]) -> None:
        self.function = function
        self.done = threading.Event()
        self.error: BaseException | None = None


class _CallThread:
    """A daemon thread that makes one call at a time for the thread that owns it, so that its owner
    may stop waiting for a call that hangs."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self._calls: queue.SimpleQueue[_Call | None] = queue.SimpleQueue()
        threading.Thread(target=self._run, name="dramatiq-tracker-cleaner", daemon=True).start()

    def submit(self, function: Callable[[], None]) -> _Call:
        call = _Call(function)
        self._calls.put(call)
        return call

    def close(self) -> None:
        """The thread ends once its current call returns."""
        self._calls.put(None)

    def _run(self) -> None:
        while (call := self._calls.get()) is not None:
            try:
                call.function()
            except BaseException as e:  # reported by the caller, which may be gone
                call.error = e
            call.done.set()


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


class Quarantine:
    """Sends quarantined messages to their ``on_recovery_exhausted`` actor.

    Parameters:
      broker(Broker): Where the callback message is enqueued.
      policies(Policies): To find the callback of a message whose record did not name it.
    """

    def __init__(self, broker: Broker, policies: Policies) -> None:
        self.logger = get_logger(__name__, type(self))
        self.broker = broker
        self.policies = policies

    def target(self, orphan: Orphan) -> tuple[str, str]:
        """The (actor name, queue name) of an orphan's callback, or ("", "")."""
        actor_name, _, queue_name = orphan.on_exhausted.partition("|")
        if not actor_name and orphan.message is not None:
            policy = self.policies.of_message(self.broker, orphan.actor_name, orphan.message.options)
            actor_name = policy.on_exhausted
        if actor_name and not queue_name:
            queue_name = self.policies.callback_queue(self.broker, actor_name)
        return actor_name, queue_name

    def notify(self, orphan: Orphan) -> None:
        """Send the quarantined message to its ``on_recovery_exhausted`` actor, if it has one."""
        if orphan.message is None:
            return
        try:
            actor_name, queue_name = self.target(orphan)
            if not actor_name:
                return
            if not queue_name:
                self.logger.warning(
                    "The on_recovery_exhausted actor %r of quarantined message %r is not declared here and its "
                    "queue is unknown; it is sent to queue 'default'.",
                    actor_name,
                    orphan.message_id,
                )
                queue_name = "default"
            info = {
                "recoveries": orphan.recoveries,
                "max_recoveries": orphan.max_recoveries,
                "worker_id": orphan.worker_id,
            }
            self.broker.enqueue(
                Message(
                    queue_name=queue_name,
                    actor_name=actor_name,
                    args=(orphan.message.asdict(), info),
                    kwargs={},
                    options={},
                )
            )
        except Exception:
            self.logger.exception(
                "Could not send quarantined message %r to its on_recovery_exhausted actor.", orphan.message_id
            )


# Claims ----------------------------------------------------------------------------------------

#: How many orphans one script call claims, so that a big recovery never blocks Redis for long.
CLAIM_BATCH = 500


@dataclasses.dataclass(frozen=True)
class Candidate:
    """What is known of one orphan before it is claimed.

    Parameters:
      message_id(str)
      actor_name(str)
      queue_name(str): The queue it was fetched from.
      message(Message|None): The decoded message, from the broker or the record.
      record(InflightRecord|None): Its in-flight record, when it was recorded running.
      redis_message_id(str): RedisBroker's id of the copy found.
      policy(ActorPolicy|None): Its policy, when the claimer runs it (a redelivery starting).
    """

    message_id: str
    actor_name: str
    queue_name: str
    message: Message[Any] | None
    record: InflightRecord | None = None
    redis_message_id: str = ""
    policy: ActorPolicy | None = None


class Claims:
    """Claims orphans for one broker identity.

    Parameters:
      broker(Broker): The claimer's broker (its actors, for messages that say nothing).
      store(TrackerStore)
      settings(TrackerSettings)
      identity(str): The digest of the claimer's broker identity (its outbox).
      policies(Policies)
      aborts(AbortBridge): dramatiq-abort, to leave cancelled messages dead.
    """

    def __init__(
        self,
        broker: Broker,
        store: TrackerStore,
        settings: TrackerSettings,
        identity: str,
        policies: Policies,
        aborts: AbortBridge,
    ) -> None:
        self.logger = get_logger(__name__, type(self))
        self.broker = broker
        self.store = store
        self.settings = settings
        self.identity = identity
        self.policies = policies
        self.aborts = aborts
        self._warned: set[str] = set()

    def claim(
        self,
        worker: WorkerInfo,
        candidates: Sequence[Candidate],
        mode: ClaimMode,
        *,
        claim: RecoveryClaim | None = None,
        starting: str = "",
        dry_run: bool = False,
    ) -> list[tuple[Orphan, ClaimReply]]:
        """Claim orphans of a dead worker, in batches; one result per candidate, in order.

        Parameters:
          claim(RecoveryClaim|None): A sweeper's claim on the worker's recovery, under which the orphans
            are claimed; None for a start that claims the orphan it is about to run.
          starting(str): That start's attempt name: it takes the dead attempt's place in the running
            index in the same step.
          dry_run(bool): Only say what the claim would decide.

        Raises:
          RecoveryTakenOver: When another sweeper took the claim over.
          redis.RedisError: When the tracker's Redis fails; what was claimed stays claimed,
            and a later claim of the same worker reports it again, without counting it twice.
        """
        aborted = self.aborts.pending({c.message_id for c in candidates})
        requests = [self._request(candidate, candidate.message_id in aborted) for candidate in candidates]
        replies: list[ClaimReply] = []
        for start in range(0, len(requests), CLAIM_BATCH):
            batch = requests[start : start + CLAIM_BATCH]
            replies += self.store.claim_orphans(
                worker.worker_id,
                self.identity,
                batch,
                mode=mode,
                history_ttl=self.settings.history_ttl,
                claim=claim.token if claim is not None else "",
                starting=starting,
                dry_run=dry_run,
            )
        return [
            (self._orphan(worker, candidate, request, reply), reply)
            for candidate, request, reply in zip(candidates, requests, replies, strict=True)
        ]

    def _request(self, candidate: Candidate, aborted: bool) -> ClaimRequest:
        record, message = candidate.record, candidate.message
        options = message.options if message is not None else {}
        digest, mode = lock_of(options)
        if not digest and record is not None:
            digest, mode = record.lock_digest_and_mode
        return ClaimRequest(
            message_id=candidate.message_id,
            attempt=max(attempt_of(options), record.attempt if record is not None else 0),
            digest=digest,
            mode=mode,
            max_recoveries=self._limit(candidate, options),
            aborted=aborted,
        )

    def _limit(self, candidate: Candidate, options: Any) -> int:
        if candidate.policy is not None:
            return candidate.policy.max_recoveries
        if candidate.record is not None:
            return candidate.record.max_recoveries
        own = options.get(MAX_RECOVERIES)
        if isinstance(own, int) and not isinstance(own, bool) and own >= 0:
            return own
        policy = self.policies.of_actor(self.broker, candidate.actor_name)
        if not policy.known and candidate.actor_name not in self._warned:
            # Only orphans that ran without a record get here; their count rarely matters, but say so.
            self._warned.add(candidate.actor_name)
            self.logger.warning(
                "Actor %r is not declared in this process and its orphan %r carries no recovery policy; "
                "max_recoveries=%d (the middleware's default) applies to it.",
                candidate.actor_name,
                candidate.message_id,
                policy.max_recoveries,
            )
        return policy.max_recoveries

    def _orphan(self, worker: WorkerInfo, candidate: Candidate, request: ClaimRequest, reply: ClaimReply) -> Orphan:
        record = candidate.record
        on_exhausted = record.on_exhausted if record is not None else ""
        if not on_exhausted and candidate.policy is not None and candidate.policy.on_exhausted:
            name = candidate.policy.on_exhausted
            on_exhausted = "%s|%s" % (name, self.policies.callback_queue(self.broker, name))
        return Orphan(
            message_id=candidate.message_id,
            actor_name=candidate.actor_name,
            queue_name=candidate.queue_name,
            message=candidate.message,
            worker=worker,
            running=reply.running,
            started_at=record.started_at if record is not None else None,
            recoveries=reply.recoveries,
            attempt=reply.attempt,
            max_recoveries=request.max_recoveries,
            outcome=BROKER_REDELIVERS if reply.awaiting else OUTCOMES.get(reply.outcome, REDELIVERED),
            lock=reply.lock,
            on_exhausted=on_exhausted,
            redis_message_id=candidate.redis_message_id,
        )
