"""What the inspection API returns (:mod:`dramatiq_tracker.ops.inspection`): typed views of the
tracker's Redis, the same for the command line, the exporter and the dashboard, and the
schema of the command's ``--json`` output; each built, by the inspector, from the records it read.
A worker's states and its view are in :mod:`~dramatiq_tracker.ops.states` (and importable from here)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import TYPE_CHECKING, Generic, TypeVar

from ..events import TrackerEvent
from ..records import LockInfo
from .states import (
    ALIVE,
    DEAD,
    FENCED,
    GONE,
    PRESENCE_LOST,
    PROCESS_EXITED,
    RECOVERING,
    STATES,
    STOPPING,
    UNRESPONSIVE,
    WorkerView,
)

if TYPE_CHECKING:
    from ..records import InflightRecord

__all__ = [
    "ALIVE",
    "DEAD",
    "FENCED",
    "GONE",
    "PRESENCE_LOST",
    "PROCESS_EXITED",
    "RECOVERING",
    "STATES",
    "STOPPING",
    "UNRESPONSIVE",
    "ClusterStatus",
    "Counters",
    "HealthCheck",
    "InflightView",
    "LeftOut",
    "LockView",
    "MessageHistory",
    "MessageView",
    "OrphanView",
    "Page",
    "Problem",
    "QueueDepth",
    "QueueStatus",
    "Timeline",
    "Unswept",
    "WorkerView",
]

T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class Problem:
    """An entry the inspector could not understand: skipped, left as it is.

    Parameters:
      key(str): The Redis key that holds it.
      field(str): Its hash field (a worker id, a message id), or "".
      reason(str)
    """

    key: str
    field: str
    reason: str


@dataclasses.dataclass(frozen=True)
class Page(Generic[T]):
    """One page of a listing.

    Parameters:
      items(list): What was found, at most the ``limit`` asked for.
      cursor(str): Pass it back to get the next page; "" when there is nothing more.
      problems(list[Problem]): Entries skipped because they could not be read.
      total(int|None): How many there are in all, when that is known without reading them all.
    """

    items: list[T]
    cursor: str = ""
    problems: list[Problem] = dataclasses.field(default_factory=list)
    total: int | None = None


@dataclasses.dataclass(frozen=True)
class InflightView:
    """A message being processed (or left running by a worker that stopped heartbeating).

    Parameters:
      message_id(str)
      worker_id(str)
      worker_state(str): The state of its worker (see :class:`WorkerView`).
      actor_name(str)
      queue_name(str)
      started_at(int): When this attempt began, in ms since the epoch (the worker's clock).
      running_for(int): Milliseconds since it began, by the Redis server's clock.
      attempt(int): Its delivery attempt.
      recoveries(int): How many times it was recovered from dead workers before this attempt.
      retries(int): Dramatiq's retry count.
      max_recoveries(int): Its poison limit.
      lock_digest(str): The uniqueness lock it holds or may hold, or "".
      lock_mode(str)
      preview(str): Its arguments, rendered safely and cut to the workers' ``preview_length``.
      hostname(str): Its worker's host.
      pid(int): Its worker's process id.
    """

    message_id: str
    worker_id: str
    worker_state: str
    actor_name: str
    queue_name: str
    started_at: int
    running_for: int
    attempt: int
    recoveries: int
    retries: int
    max_recoveries: int
    lock_digest: str
    lock_mode: str
    preview: str
    hostname: str
    pid: int

    @classmethod
    def of(cls, record: InflightRecord, worker: WorkerView, now: int) -> InflightView:
        """A worker's record, at ``now`` (server ms)."""
        digest, mode = record.lock_digest_and_mode
        return cls(
            message_id=record.message_id,
            worker_id=worker.worker_id,
            worker_state=worker.state,
            actor_name=record.actor_name,
            queue_name=record.queue_name,
            started_at=record.started_at,
            running_for=max(0, now - record.started_at),
            attempt=record.attempt,
            recoveries=record.recoveries,
            retries=record.retries,
            max_recoveries=record.max_recoveries,
            lock_digest=digest,
            lock_mode=mode,
            preview=record.preview,
            hostname=worker.hostname,
            pid=worker.pid,
        )

    def matches(self, actor: str | None, queue: str | None, older_than: int | None) -> bool:
        """Whether it is of this actor and this queue, running for longer than ``older_than`` ms (None: any)."""
        return (
            (actor is None or self.actor_name == actor)
            and (queue is None or self.queue_name == queue)
            and (older_than is None or self.running_for > older_than)
        )


@dataclasses.dataclass(frozen=True)
class OrphanView:
    """A message waiting for recovery: recorded by a worker that is not alive, or parked in an
    outbox while it is enqueued again.

    Parameters:
      message_id(str)
      worker_id(str): The worker it was taken from.
      worker_state(str): ``GONE``, :data:`UNRESPONSIVE` or :data:`RECOVERING`; "" for an outbox entry.
      actor_name(str)
      queue_name(str)
      waiting_for(int): Milliseconds since its worker died, as best known (its presence lost, its
        heartbeat deadline passed, it was declared dead); since it was parked, for an outbox entry.
      attempt(int)
      recoveries(int)
      lock_digest(str)
      where(str): "record" (its dead worker's record) or "outbox".
    """

    message_id: str
    worker_id: str
    worker_state: str
    actor_name: str
    queue_name: str
    waiting_for: int
    attempt: int
    recoveries: int
    lock_digest: str
    where: str

    @classmethod
    def of_record(cls, record: InflightView, worker: WorkerView, now: int) -> OrphanView:
        """The record of a worker that is not alive, at ``now`` (server ms)."""
        return cls(
            message_id=record.message_id,
            worker_id=worker.worker_id,
            worker_state=worker.state,
            actor_name=record.actor_name,
            queue_name=record.queue_name,
            waiting_for=max(0, now - worker.dead_since) if worker.dead_since is not None else 0,
            attempt=record.attempt,
            recoveries=record.recoveries,
            lock_digest=record.lock_digest,
            where="record",
        )

    @classmethod
    def of_outbox(cls, record: InflightRecord, parked_at: int, now: int) -> OrphanView:
        """An outbox entry: the record it was parked with, at ``parked_at`` (server ms)."""
        return cls(
            message_id=record.message_id,
            worker_id=record.worker_id,
            worker_state="",
            actor_name=record.actor_name,
            queue_name=record.queue_name,
            waiting_for=max(0, now - parked_at),
            attempt=record.attempt,
            recoveries=record.recoveries,
            lock_digest=record.lock_digest_and_mode[0],
            where="outbox",
        )


@dataclasses.dataclass(frozen=True)
class LockView(LockInfo):
    """A uniqueness lock, and where its owner runs.

    Parameters:
      running_on(str): The worker whose attempt of the owner message is recorded running, or "" when
        it is not (queued, or running for less than a ``flush_interval``).  An ``until_executed`` lock
        is taken as its message is sent, by no worker (``worker_id`` is ""): this says where it runs.
    """

    running_on: str = ""

    @classmethod
    def read(
        cls, digest: str, fields: Mapping[str, str], ttl: int | None, running_on: str = ""
    ) -> tuple[LockView, list[tuple[str, str]]]:
        """A lock hash as it is stored, and its fields that do not hold what they should: (field, reason).

        Parameters:
          fields(dict): Its fields: ``message_id``, ``attempt``, ``mode``, ``actor``, ``queue``,
            ``worker``, ``acquired_at`` (server ms).
          ttl(int|None): Milliseconds until it expires, None for never.
        """
        problems = []
        numbers = {}
        for name, what in (("attempt", "an attempt number"), ("acquired_at", "a time in ms")):
            value = fields.get(name, "")
            numbers[name] = int(value) if value.isascii() and value.isdigit() else 0
            if not (value.isascii() and value.isdigit()):
                problems.append((name, "not %s: %r (read as unknown)" % (what, value)))
        view = cls(
            digest=digest,
            message_id=fields.get("message_id", ""),
            attempt=numbers["attempt"],
            mode=fields.get("mode", ""),
            actor_name=fields.get("actor", ""),
            queue_name=fields.get("queue", ""),
            worker_id=fields.get("worker", ""),
            acquired_at=numbers["acquired_at"],
            ttl=ttl,
            running_on=running_on,
        )
        return view, problems


@dataclasses.dataclass(frozen=True)
class MessageHistory:
    """What the tracker remembers of a message, for ``history_ttl`` after its last recovery.

    Parameters:
      recoveries(int): How many times it was recovered from dead workers.
      attempt(int): The attempt of its latest delivery by recovery.
      outcome(str): What its last recovery decided: "deliver", "quarantine" or "drop"; "" if never recovered.
      orphaned_from(str): The dead worker it was last taken from.
      orphaned_at(int|None): When (server ms).
      orphaned_running(bool): Whether it was running then (not only fetched).
      awaiting_from(str): A dead worker whose copy the broker has yet to redeliver (RabbitMQ).
      abort(str): A remembered "cancel" or "abort" request.
      done_by_attempt(int|None): An attempt that completed on a worker declared dead while alive.
      deferred_behind(str): The attempt a put-off duplicate waits for.
      completed_by(str): The attempt that completed while a duplicate waited for it.
      completed_with(str): How it completed ("ack" or "nack").
      unconfirmed_by(str): An attempt that ran while the RabbitMQ channel that delivered it closed:
        its ack or nack could not reach the server, which delivers the message again.
      unconfirmed_attempt(int|None): That attempt's delivery attempt.
      unconfirmed_with(str): How it completed ("ack" or "nack").
      ttl(int|None): Milliseconds until the history expires.
      other(dict[str, str]): Fields this version does not know.
    """

    recoveries: int = 0
    attempt: int = 0
    outcome: str = ""
    orphaned_from: str = ""
    orphaned_at: int | None = None
    orphaned_running: bool = False
    awaiting_from: str = ""
    abort: str = ""
    done_by_attempt: int | None = None
    deferred_behind: str = ""
    completed_by: str = ""
    completed_with: str = ""
    unconfirmed_by: str = ""
    unconfirmed_attempt: int | None = None
    unconfirmed_with: str = ""
    ttl: int | None = None
    other: Mapping[str, str] = dataclasses.field(default_factory=dict)

    @classmethod
    def from_fields(cls, fields: Mapping[str, str], ttl: int | None) -> MessageHistory:
        """Read a message's history hash; fields this version does not know go to ``other``."""
        return cls.read(fields, ttl)[0]

    @classmethod
    def read(cls, fields: Mapping[str, str], ttl: int | None) -> tuple[MessageHistory, list[tuple[str, str]]]:
        """Read a message's history hash, with the fields that do not hold a number where they should:
        (field, reason); those are read as 0 (or as absent)."""
        get = fields.get
        problems = []

        def number(name: str, default: int | None) -> int | None:
            value = get(name)
            if value is None:
                return default
            if value.isascii() and value.isdigit():
                return int(value)
            problems.append((name, "not a whole number: %r (read as %s)" % (value, default)))
            return default

        known = {field.name for field in dataclasses.fields(cls)} - {"ttl", "other"}
        history = cls(
            recoveries=number("recoveries", 0) or 0,
            attempt=number("attempt", 0) or 0,
            outcome=get("outcome", ""),
            orphaned_from=get("orphaned_from", ""),
            orphaned_at=number("orphaned_at", None),
            orphaned_running=get("orphaned_running") == "1",
            awaiting_from=get("awaiting_from", ""),
            abort=get("abort", ""),
            done_by_attempt=number("done_by_attempt", None),
            deferred_behind=get("deferred_behind", ""),
            completed_by=get("completed_by", ""),
            completed_with=get("completed_with", ""),
            unconfirmed_by=get("unconfirmed_by", ""),
            unconfirmed_attempt=number("unconfirmed_attempt", None),
            unconfirmed_with=get("unconfirmed_with", ""),
            ttl=ttl,
            other={name: value for name, value in fields.items() if name not in known},
        )
        return history, problems


@dataclasses.dataclass(frozen=True)
class MessageView:
    """Everything the tracker knows of one message.

    Parameters:
      message_id(str)
      history(MessageHistory|None): None when it was never recovered, deferred or aborted.
      running(InflightView|None): Its recorded attempt in flight, if any.
      running_owner(str): "worker id|token|retries" of the attempt the running index names, or "".
      lock(LockInfo|None): The uniqueness lock its running attempt names, if held.
      events(list[TrackerEvent]): Its events among the newest ones, newest first.
      problems(list[Problem]): What could not be read of it (a history field that is not a number).
    """

    message_id: str
    history: MessageHistory | None
    running: InflightView | None
    running_owner: str
    lock: LockInfo | None
    events: list[TrackerEvent]
    problems: list[Problem] = dataclasses.field(default_factory=list)


#: The upper bounds of the recovery latency's buckets the core counts, in ms (and ``inf``).
LATENCY_BOUNDS = (250, 500, 1000, 2000, 3000, 5000, 10_000, 20_000, 30_000, 60_000, 120_000)


@dataclasses.dataclass(frozen=True)
class Counters:
    """Counts kept by every process since the namespace was created.

    Parameters:
      events(dict[str, int]): How many events of each kind (``"recovered"``, ``"quarantined"``, ...).
      sweeps(int): Sweeps that recovered something.
      sweep_ms(int): How long they took, in all.
      last_sweep_ms(int): How long the last of them took.
      recovery_latency(dict[str, int]): How many orphans started again within each bucket of time after
        their worker's death (its presence lost, else its last heartbeat), by the bucket's upper bound
        in ms ("inf" for the last); not cumulative.
      recovery_latency_sum_ms(int): Their latencies, in all.
      recovery_latency_count(int): How many were measured.
    """

    events: Mapping[str, int]
    sweeps: int = 0
    sweep_ms: int = 0
    last_sweep_ms: int = 0
    recovery_latency: Mapping[str, int] = dataclasses.field(default_factory=dict)
    recovery_latency_sum_ms: int = 0
    recovery_latency_count: int = 0

    def of(self, kind: str) -> int:
        """How many events of ``kind`` there were."""
        return self.events.get(kind, 0)

    def latency_buckets(self) -> list[tuple[float, int]]:
        """The recovery latency as a histogram's cumulative buckets: (upper bound in seconds, how many
        within it), every bound of ``LATENCY_BOUNDS`` and the ones counted, then ``inf``."""
        bounds = sorted({*LATENCY_BOUNDS, *(int(b) for b in self.recovery_latency if b.isdigit())})
        buckets, total = [], 0
        for bound in bounds:
            total += self.recovery_latency.get(str(bound), 0)
            buckets.append((bound / 1000, total))
        buckets.append((float("inf"), max(total + self.recovery_latency.get("inf", 0), self.recovery_latency_count)))
        return buckets


@dataclasses.dataclass(frozen=True)
class Unswept:
    """Workers of one broker identity that are not alive while no live worker of it sweeps: their orphans
    wait until one starts, or until ``recover`` is run with the application's broker.

    Parameters:
      broker_identity(str)
      workers(list[str]): Their ids.
      orphans(int): Their records in flight, and the entries of the identity's outbox.
    """

    broker_identity: str
    workers: list[str]
    orphans: int


@dataclasses.dataclass(frozen=True)
class LeftOut:
    """A worker that is not alive, with orphans, that a recovery (or its plan) left out, and why.

    Parameters:
      worker_id(str)
      state(str): Its state (see :class:`WorkerView`).
      orphans(int): Its records in flight.
      reason(str): Why the recovery did not take it, and what to do.
    """

    worker_id: str
    state: str
    orphans: int
    reason: str


@dataclasses.dataclass(frozen=True)
class QueueDepth:
    """The messages a broker holds on one queue (read through the application's broker).

    Parameters:
      queue_name(str)
      ready(int): Waiting to be fetched.
      unacked(int|None): Fetched by a worker and not acked yet (RedisBroker; None on RabbitMQ).
      delayed(int): On its delay queue (retries with a backoff, ``send_with_options(delay=...)``).
      dead_letters(int): Dead-lettered.
      oldest_age(int|None): Milliseconds since the next message to be fetched was enqueued; None when
        none is ready, or the broker cannot tell (RabbitMQ).
    """

    queue_name: str
    ready: int
    unacked: int | None
    delayed: int
    dead_letters: int
    oldest_age: int | None


@dataclasses.dataclass(frozen=True)
class QueueStatus:
    """Messages in flight on one queue.

    Parameters:
      queue_name(str)
      inflight(int): Recorded in flight, by live workers and by those waiting for recovery.
      orphans(int): Of which recorded by workers that are not alive.
      oldest(int): Milliseconds the oldest of them has been running; 0 when there are none.
    """

    queue_name: str
    inflight: int
    orphans: int
    oldest: int


@dataclasses.dataclass(frozen=True)
class ClusterStatus:
    """The namespace at a glance.

    Parameters:
      at(int): When it was read (server ms).
      workers(dict[str, int]): How many workers are in each state.
      inflight(int): Messages recorded in flight.
      orphans(int): Messages waiting for recovery (records of workers not alive, and outbox entries).
      outbox(int): Of which parked in an outbox.
      locks(int): Uniqueness locks held.
      queues(list[QueueStatus]): By queue name.
      actors(dict[str, int]): Messages in flight by actor.
      counters(Counters)
      problems(list[Problem]): Entries skipped because they could not be read.
      oldest_orphan(int): Milliseconds the longest-waiting orphan has waited since its worker died
        (as best known: its presence lost, its heartbeat expired, or it was parked); 0 with none.
      unswept(list[Unswept]): Broker identities with workers not alive and no live worker to sweep them.
      broker_queues(list[QueueDepth]|None): What the application's broker holds on each queue, when
        it was given (``--broker``); None without it.
    """

    at: int
    workers: Mapping[str, int]
    inflight: int
    orphans: int
    outbox: int
    locks: int
    queues: list[QueueStatus]
    actors: Mapping[str, int]
    counters: Counters
    problems: list[Problem]
    oldest_orphan: int = 0
    unswept: list[Unswept] = dataclasses.field(default_factory=list)
    broker_queues: list[QueueDepth] | None = None


@dataclasses.dataclass(frozen=True)
class HealthCheck:
    """Whether some workers are alive and heartbeating: a liveness probe's answer
    (see :meth:`~dramatiq_tracker.ops.inspection.Inspector.check`).

    Parameters:
      healthy(bool)
      reasons(list[str]): Why not, one sentence per problem; empty when healthy.
      workers(list[WorkerView]): The workers judged.
      hostname(str): The host whose workers were judged, or "".
      worker_id(str): The worker judged, or "".
      min_workers(int): How many had to be alive (for a host).
    """

    healthy: bool
    reasons: list[str]
    workers: list[WorkerView]
    hostname: str = ""
    worker_id: str = ""
    min_workers: int = 0


@dataclasses.dataclass(frozen=True)
class Timeline:
    """Events counted over time, by kind, in buckets of equal width, oldest first (see
    :meth:`~dramatiq_tracker.ops.inspection.Inspector.timeline`).

    Parameters:
      start(int): When the first bucket begins, in server ms since the epoch.
      step(int): The width of each bucket, in milliseconds.
      counts(dict[str, list[int]]): Per event kind asked for, how many events in each bucket.
      complete(bool): False when the window held more events than were read: the oldest buckets
        undercount.
    """

    start: int
    step: int
    counts: Mapping[str, list[int]]
    complete: bool = True

    @property
    def end(self) -> int:
        """When the last bucket ends (server ms)."""
        return self.start + self.step * self.buckets

    @property
    def buckets(self) -> int:
        return max((len(counts) for counts in self.counts.values()), default=0)

    def total(self, kind: str) -> int:
        """How many events of ``kind`` the window holds."""
        return sum(self.counts.get(kind, ()))
