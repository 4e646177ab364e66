"""What the inspection API returns (:mod:`dramatiq_tracker.ops.inspection`): typed views of the
tracker's Redis, the same for the command line, the exporter and the dashboard, and the
schema of the command's ``--json`` output; each built, by the inspector, from the records it read."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import TYPE_CHECKING, Generic, TypeVar

from ..events import TrackerEvent
from ..scripts import to_int
from ..store import LockInfo

if TYPE_CHECKING:
    from ..records import InflightRecord, WorkerInfo

T = TypeVar("T")

#: Worker states. Its heartbeat is fresh.
ALIVE = "alive"
#: Registered, but its heartbeat expired and it was not declared dead yet: its orphans wait for a sweep.
UNRESPONSIVE = "unresponsive"
#: Declared dead; the recovery of its orphans has not finished.
RECOVERING = "recovering"
#: Declared dead and recovered (a tombstone, kept for ``history_ttl``).
DEAD = "dead"
#: Declared dead while it was alive (a stall, a partition): its process goes on under a new id.
FENCED = "fenced"


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
class WorkerView:
    """A worker process, as the tracker sees it.

    Parameters:
      worker_id(str)
      state(str): :data:`ALIVE`, :data:`UNRESPONSIVE`, :data:`RECOVERING`, :data:`DEAD` or :data:`FENCED`.
      hostname(str): "" for a tombstone (the registration is gone).
      pid(int)
      queues(tuple[str, ...])
      broker_kind(str): "redis", "rabbitmq", "stub" or "other".
      broker_identity(str): The broker deployment it consumes from.
      worker_threads(int)
      started_at(int): When it registered, in ms since the epoch (its own clock); 0 if unknown.
      heartbeat_age(int|None): Milliseconds since its last heartbeat; None when it has none.
      overdue(int|None): Milliseconds since its heartbeat deadline passed; None while it has not.
      inflight(int): How many messages it has recorded in flight.
      declared_dead_at(int|None): When it was declared dead (server ms), if it was.
      fenced_as(str): The id its process goes on under, for a fenced worker.
      tracker_version(str)
      dramatiq_version(str)
    """

    worker_id: str
    state: str
    hostname: str = ""
    pid: int = 0
    queues: tuple[str, ...] = ()
    broker_kind: str = ""
    broker_identity: str = ""
    worker_threads: int = 0
    started_at: int = 0
    heartbeat_age: int | None = None
    overdue: int | None = None
    inflight: int = 0
    declared_dead_at: int | None = None
    fenced_as: str = ""
    tracker_version: str = ""
    dramatiq_version: str = ""

    @property
    def alive(self) -> bool:
        return self.state == ALIVE

    @classmethod
    def judge(cls, info: WorkerInfo, state: tuple[int | None, int | None, int | None, int], now: int) -> WorkerView:
        """A registered worker, judged by what ``lua/worker_states.lua`` read of it at ``now``.

        Parameters:
          state(tuple): (last heartbeat, declared dead at, heartbeat deadline, records in flight), server ms.
        """
        last_beat, declared, deadline, inflight = state
        if declared is not None:
            judged = RECOVERING
        elif last_beat is not None:
            judged = ALIVE
        else:
            judged = UNRESPONSIVE
        return cls(
            worker_id=info.worker_id,
            state=judged,
            hostname=info.hostname,
            pid=info.pid,
            queues=info.queues,
            broker_kind=info.broker_kind,
            broker_identity=info.broker_identity,
            worker_threads=info.worker_threads,
            started_at=info.started_at,
            heartbeat_age=max(0, now - last_beat) if last_beat is not None else None,
            overdue=max(0, now - deadline) if deadline is not None and now > deadline else None,
            inflight=inflight,
            declared_dead_at=declared,
            tracker_version=info.tracker_version,
            dramatiq_version=info.dramatiq_version,
        )

    @classmethod
    def tombstone(cls, worker_id: str, declared_dead_at: int, fenced_as: str) -> WorkerView:
        """A worker declared dead whose registration is gone; fenced when it went on as ``fenced_as``."""
        return cls(
            worker_id=worker_id,
            state=FENCED if fenced_as else DEAD,
            declared_dead_at=declared_dead_at,
            fenced_as=fenced_as,
        )

    def unhealthy(self, process_gone: bool) -> str:
        """Why this worker is not alive and heartbeating, or "" when it is."""
        who = (
            "worker %r (host %r, pid %d)" % (self.worker_id, self.hostname, self.pid)
            if self.hostname
            else ("worker %r" % self.worker_id)
        )
        if self.state == ALIVE:
            return "%s is gone: its process exited (its heartbeat has not expired yet)" % who if process_gone else ""
        if self.state == UNRESPONSIVE:
            overdue = " %d ms ago" % self.overdue if self.overdue is not None else ""
            return "%s is unresponsive: its heartbeat expired%s" % (who, overdue)
        if self.state == RECOVERING:
            return "%s was declared dead: its messages are being recovered" % who
        if self.state == FENCED:
            return "%s was declared dead while alive (fenced): its process goes on as worker %r" % (who, self.fenced_as)
        return "%s was declared dead" % who


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
      worker_state(str): :data:`UNRESPONSIVE` or :data:`RECOVERING`; "" for an outbox entry.
      actor_name(str)
      queue_name(str)
      waiting_for(int): Milliseconds since its worker's heartbeat deadline passed (since it was
        parked, for an outbox entry).
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
    def of_record(cls, record: InflightView, worker: WorkerView) -> OrphanView:
        """The record of a worker that is not alive."""
        return cls(
            message_id=record.message_id,
            worker_id=worker.worker_id,
            worker_state=worker.state,
            actor_name=record.actor_name,
            queue_name=record.queue_name,
            waiting_for=worker.overdue if worker.overdue is not None else 0,
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
        get = fields.get

        def optional(name: str) -> int | None:
            value = get(name, "")
            return int(value) if value.isdigit() else None

        known = {field.name for field in dataclasses.fields(cls)} - {"ttl", "other"}
        return cls(
            recoveries=to_int(get("recoveries", "0")),
            attempt=to_int(get("attempt", "0")),
            outcome=get("outcome", ""),
            orphaned_from=get("orphaned_from", ""),
            orphaned_at=optional("orphaned_at"),
            orphaned_running=get("orphaned_running") == "1",
            awaiting_from=get("awaiting_from", ""),
            abort=get("abort", ""),
            done_by_attempt=optional("done_by_attempt"),
            deferred_behind=get("deferred_behind", ""),
            completed_by=get("completed_by", ""),
            completed_with=get("completed_with", ""),
            unconfirmed_by=get("unconfirmed_by", ""),
            unconfirmed_attempt=optional("unconfirmed_attempt"),
            unconfirmed_with=get("unconfirmed_with", ""),
            ttl=ttl,
            other={name: value for name, value in fields.items() if name not in known},
        )


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
    """

    message_id: str
    history: MessageHistory | None
    running: InflightView | None
    running_owner: str
    lock: LockInfo | None
    events: list[TrackerEvent]


@dataclasses.dataclass(frozen=True)
class Counters:
    """Counts kept by every process since the namespace was created.

    Parameters:
      events(dict[str, int]): How many events of each kind (``"recovered"``, ``"quarantined"``, ...).
      sweeps(int): Sweeps that recovered something.
      sweep_ms(int): How long they took, in all.
      last_sweep_ms(int): How long the last of them took.
    """

    events: Mapping[str, int]
    sweeps: int = 0
    sweep_ms: int = 0
    last_sweep_ms: int = 0

    def of(self, kind: str) -> int:
        """How many events of ``kind`` there were."""
        return self.events.get(kind, 0)


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
