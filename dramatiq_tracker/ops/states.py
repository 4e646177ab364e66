"""A worker process's states, and how the inspection API judges a registered worker into one of them
(:class:`WorkerView`): from its heartbeat, its declaration of death, its heartbeat deadline, its
presence connection, its registration's ``stopping_at``, and, for a worker of this host, its process.
Part of the views of :mod:`dramatiq_tracker.ops.views`, which imports them all from here."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..records import WorkerInfo
    from .reads import WorkerState

#: Worker states. Its heartbeat is fresh.
ALIVE = "alive"
#: Its heartbeat is fresh, and it is shutting down gracefully (SIGTERM): it finishes its messages and takes
#: no new ones.
STOPPING = "stopping"
#: Dead, not yet recovered: its process is known gone (its presence connection closed, or this host sees
#: its pid gone), before its heartbeat expired or a sweep declared it dead; its orphans wait for a sweep.
GONE = "gone"
#: Registered, but its heartbeat expired and it was not declared dead yet: its orphans wait for a sweep.
UNRESPONSIVE = "unresponsive"
#: Declared dead; the recovery of its orphans has not finished.
RECOVERING = "recovering"
#: Declared dead and recovered (a tombstone, kept for ``history_ttl``).
DEAD = "dead"
#: Declared dead while it was alive (a stall, a partition): its process goes on under a new id.
FENCED = "fenced"

#: Every state, in the order the command line and the dashboard list them.
STATES = (ALIVE, STOPPING, GONE, UNRESPONSIVE, RECOVERING, DEAD, FENCED)
#: How a worker is known ``GONE``.
PRESENCE_LOST, PROCESS_EXITED = "presence", "process"


@dataclasses.dataclass(frozen=True)
class WorkerView:
    """A worker process, as the tracker sees it.

    Parameters:
      worker_id(str)
      state(str): One of ``STATES``: :data:`ALIVE`, ``STOPPING``, ``GONE``,
        :data:`UNRESPONSIVE`, :data:`RECOVERING`, :data:`DEAD` or :data:`FENCED`.
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
      stopping_at(int): When it began a graceful shutdown (ms since the epoch), 0 if it did not.
      gone(str): For a ``GONE`` worker, how it is known: ``PRESENCE_LOST`` (its presence
        connection closed) or ``PROCESS_EXITED`` (this host sees its process gone).
      dead_since(int|None): Since when it is dead as best known (server ms): its presence went, its
        heartbeat expired, or it was declared dead; None while it is not dead.
      swept(bool): Whether a sweep can find it: False for a registration without a heartbeat deadline
        (written by hand, or partly lost), whose orphans no sweep and no ``recover`` sees.
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
    stopping_at: int = 0
    gone: str = ""
    dead_since: int | None = None
    swept: bool = True

    @property
    def alive(self) -> bool:
        """Whether its process runs and heartbeats (:data:`ALIVE` or ``STOPPING``): its records are
        not orphans."""
        return self.state in (ALIVE, STOPPING)

    @classmethod
    def judge(
        cls, info: WorkerInfo, state: WorkerState, now: int, *, stopping_at: int = 0, process_exited: bool = False
    ) -> WorkerView:
        """A registered worker, judged by what ``lua/worker_states.lua`` read of it at ``now`` (server ms).

        Parameters:
          stopping_at(int): Its registration's ``stopping_at``.
          process_exited(bool): Whether this host sees its process gone.
        """
        last_beat, declared, deadline = state.last_beat, state.declared_dead_at, state.deadline
        beating = last_beat is not None or state.beat_unreadable
        gone = ""
        if declared is None and state.subscribers == 0:
            gone = PRESENCE_LOST
        elif declared is None and process_exited:
            gone = PROCESS_EXITED
        overdue = max(0, now - deadline) if deadline is not None and now > deadline else None
        dead_since: int | None
        if declared is not None:
            judged, dead_since = RECOVERING, min(declared, deadline if deadline is not None else declared)
        elif gone:
            judged = GONE
            dead_since = state.absent_since if gone == PRESENCE_LOST and state.absent_since is not None else last_beat
            if dead_since is None:
                dead_since = deadline if deadline is not None and deadline < now else now
        elif beating:
            judged, dead_since = (STOPPING if stopping_at > 0 else ALIVE), None
        else:
            judged = UNRESPONSIVE
            dead_since = deadline if deadline is not None else (last_beat or now)
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
            overdue=overdue,
            inflight=state.inflight,
            declared_dead_at=declared,
            tracker_version=info.tracker_version,
            dramatiq_version=info.dramatiq_version,
            stopping_at=stopping_at,
            gone=gone,
            dead_since=dead_since,
            swept=declared is not None or deadline is not None,
        )

    @classmethod
    def tombstone(cls, worker_id: str, declared_dead_at: int, fenced_as: str) -> WorkerView:
        """A worker declared dead whose registration is gone; fenced when it went on as ``fenced_as``."""
        return cls(
            worker_id=worker_id,
            state=FENCED if fenced_as else DEAD,
            declared_dead_at=declared_dead_at,
            fenced_as=fenced_as,
            dead_since=declared_dead_at,
        )

    @property
    def who(self) -> str:
        """``worker 'id' (host 'h', pid 1)``, or ``worker 'id'`` for a tombstone."""
        if self.hostname:
            return "worker %r (host %r, pid %d)" % (self.worker_id, self.hostname, self.pid)
        return "worker %r" % self.worker_id

    @property
    def why_gone(self) -> str:
        """How a ``GONE`` worker is known dead, as a clause."""
        if self.gone == PRESENCE_LOST:
            return "its presence connection to the tracker's Redis closed"
        return "its process exited (its heartbeat has not expired yet)"

    def unhealthy(self) -> str:
        """Why this worker is not alive and heartbeating, or "" when it is (or is stopping gracefully)."""
        who = self.who
        if self.alive:
            return ""
        if self.state == GONE:
            return "%s is dead, not recovered yet: %s" % (who, self.why_gone)
        if self.state == UNRESPONSIVE:
            overdue = " %d ms ago" % self.overdue if self.overdue is not None else ""
            return "%s is unresponsive: its heartbeat expired%s" % (who, overdue)
        if self.state == RECOVERING:
            return "%s was declared dead: its messages are being recovered" % who
        if self.state == FENCED:
            return "%s was declared dead while alive (fenced): its process goes on as worker %r" % (who, self.fenced_as)
        return "%s was declared dead" % who
