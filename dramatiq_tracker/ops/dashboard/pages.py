"""What each page of the dashboard shows, read through the inspection API (the same read path as the
``dramatiq-tracker`` command), and the actions it may take through :class:`~dramatiq_tracker.ops.actions.Operator`."""

from __future__ import annotations

import dataclasses
import math
import threading
from collections.abc import Mapping, Sequence
from typing import Any

from dramatiq import Broker

from ...abort import find_abortable
from ...events import (
    ABORT_HONOURED,
    KINDS,
    LOCK_RELEASED,
    QUARANTINED,
    RECOVERED,
    WORKER_DEAD,
    TrackerEvent,
)
from ...records import LockInfo
from ..actions import Operator
from ..inspection import DEAD, FENCED, GONE, RECOVERING, UNRESPONSIVE, Inspector
from ..queues import queue_depths
from ..views import InflightView, QueueDepth, Timeline, WorkerView
from .charts import timeline_chart
from .wsgi import Request

#: What the overview's chart counts: event kind and label, stacked bottom first.
CHART_SERIES = ((RECOVERED, "recovered"), (QUARANTINED, "quarantined"), (ABORT_HONOURED, "not delivered (aborted)"))
#: The chart's window and buckets: the last hour, by minute.
CHART_WINDOW, CHART_BUCKETS = 3_600_000, 60
#: Rows per page of the workers, in-flight and locks listings.
PAGE_SIZE = 50
#: How many of each worker's messages the workers page lists.
WORKER_MESSAGES = 3
#: Events per page of the events listing.
EVENTS_PAGE = 100
#: How many events after a worker's death are read to tell what became of its messages.
FATE_EVENTS_SCANNED = 5000
#: At most this many of a dead worker's messages are shown with where they run now.
FATES_SHOWN = 100
#: Workers declared dead within this long of the last one are of the same incident, in milliseconds.
INCIDENT_WINDOW = 60_000
#: At most this many workers of the last incident are shown.
INCIDENT_WORKERS = 20
#: What the events of a dead worker's messages say became of them.
_FATE_KINDS = (RECOVERED, QUARANTINED, ABORT_HONOURED)


@dataclasses.dataclass(frozen=True)
class Rendered:
    """A template to render, with its context.

    Parameters:
      template(str): Its file name under ``templates/``.
      context(dict): Its variables.
      status(int): The HTTP status.
      live(bool): Whether the page updates itself (its ``live`` block is fetched again).
    """

    template: str
    context: Mapping[str, Any]
    status: int = 200
    live: bool = True


@dataclasses.dataclass(frozen=True)
class Fate:
    """What became of one of a dead worker's messages.

    Parameters:
      event(TrackerEvent): What its recovery decided ("recovered", "quarantined", "abort-honoured").
      running(InflightView|None): Where it runs now, if it is recorded running.
      lock(LockInfo|None): The uniqueness lock its running attempt holds.
    """

    event: TrackerEvent
    running: InflightView | None
    lock: LockInfo | None

    @property
    def outcome(self) -> str:
        return self.event.details.get("outcome", "") or self.event.kind


@dataclasses.dataclass(frozen=True)
class Aftermath:
    """A worker declared dead and what became of its messages.

    Parameters:
      worker(WorkerView)
      death(TrackerEvent|None): Its "worker-dead" event, if it is among those read.
      fates(list[Fate]): Its messages, the newest decision first.
      more(int): How many more of its messages were settled than are shown.
    """

    worker: WorkerView
    death: TrackerEvent | None
    fates: list[Fate]
    more: int = 0


class TimelineCache:
    """The overview chart's counts.  Stream ids only grow, so a bucket that ended before a read
    never gets another event: its counts are kept, and each update reads only the events of the
    buckets still open (the last one, mostly).  Shared by the threads serving requests."""

    def __init__(self, kinds: Sequence[str], window: int, buckets: int) -> None:
        self.kinds = list(kinds)
        self.window = window
        self.buckets = buckets
        self._lock = threading.Lock()
        #: bucket start -> kind -> count, for buckets that had ended when they were read.
        self._closed: dict[int, dict[str, int]] = {}
        #: Every event before it is counted in ``_closed``.
        self._boundary = 0

    def read(self, inspector: Inspector) -> Timeline:
        with self._lock:
            closed, boundary = self._closed, self._boundary
        fresh = inspector.timeline(
            self.kinds, window=self.window, buckets=self.buckets, since=boundary if closed else None
        )
        counts: dict[str, list[int]] = {kind: list(series) for kind, series in fresh.counts.items()}
        starts = [fresh.start + index * fresh.step for index in range(self.buckets)]
        for index, start in enumerate(starts):
            kept = closed.get(start) if start + fresh.step <= boundary else None
            if kept is not None:
                for kind in self.kinds:
                    counts[kind][index] += kept.get(kind, 0)
        if fresh.complete:
            # Every bucket but the last has ended: the last one holds the server's time of the read.
            ended = {
                start: {kind: counts[kind][index] for kind in self.kinds} for index, start in enumerate(starts[:-1])
            }
            with self._lock:
                self._closed, self._boundary = ended, starts[-1]
        return Timeline(fresh.start, fresh.step, counts, fresh.complete)


class Pages:
    """The pages of one dashboard.

    Parameters:
      inspector(Inspector)
      broker(Broker|None): The application's broker, for recovering and aborting.
    """

    def __init__(self, inspector: Inspector, broker: Broker | None) -> None:
        self.inspector = inspector
        self.broker = broker
        self.timeline = TimelineCache([kind for kind, _ in CHART_SERIES], CHART_WINDOW, CHART_BUCKETS)

    @property
    def can_recover(self) -> bool:
        return self.broker is not None

    @property
    def can_abort(self) -> bool:
        return self.broker is not None and find_abortable(self.broker) is not None

    def broker_queues(self) -> list[QueueDepth] | str | None:
        """What the application's broker holds on each queue; why it could not be read; None without
        the broker."""
        if self.broker is None:
            return None
        try:
            return queue_depths(self.broker)
        except Exception as e:  # any broker's client: the rest of the page stands without it
            return "%s: %s" % (type(e).__name__, e)

    def operator(self, request: Request) -> Operator:
        """An operator acting for the request's user (``REMOTE_USER``, set by the application's authentication)."""
        user = str(request.environ.get("REMOTE_USER") or "")
        return Operator(self.inspector, self.broker, who="dashboard:%s" % user if user else "dashboard")

    # Pages -------------------------------------------------------------------------------

    def overview(self, request: Request) -> Rendered:
        inspector = self.inspector
        status = inspector.status()
        timeline = self.timeline.read(inspector)
        chart = timeline_chart(timeline, CHART_SERIES, title="Messages recovered from dead workers, last hour")
        # Every worker is read again only when some are not alive (the status counted them).
        waiting = status.workers[GONE] + status.workers[UNRESPONSIVE] + status.workers[RECOVERING]
        troubled = [w for w in inspector.workers(limit=1_000_000).items if not w.alive] if waiting else []
        return Rendered(
            "overview.html",
            {
                "status": status,
                "now": status.at,
                "oldest": max((queue.oldest for queue in status.queues), default=0),
                "timeline": timeline,
                "chart": chart,
                "series": CHART_SERIES,
                "troubled": troubled,
                "incident": self.incident(),
                "broker_queues": self.broker_queues(),
            },
        )

    def workers(self, request: Request) -> Rendered:
        page = self.inspector.workers(limit=PAGE_SIZE, cursor=request.arg("cursor"))
        messages = {
            worker.worker_id: self.inspector.inflight(worker_id=worker.worker_id, limit=WORKER_MESSAGES).items
            for worker in page.items
            if worker.inflight
        }
        return Rendered(
            "workers.html",
            {
                "page": page,
                "messages": messages,
                "dead": self.inspector.dead_workers(limit=PAGE_SIZE),
                "now": self.inspector.server_time(),
                "cursor": request.arg("cursor"),
            },
        )

    def worker(self, request: Request) -> Rendered:
        worker_id = request.arg("id")
        view = self.inspector.worker(worker_id) if worker_id else None
        if view is None:
            return Rendered("missing.html", {"what": "worker", "name": worker_id}, status=404, live=False)
        messages = self.inspector.inflight(worker_id=worker_id, limit=PAGE_SIZE, cursor=request.arg("cursor"))
        declared = view.state in (RECOVERING, DEAD, FENCED)
        return Rendered(
            "worker.html",
            {
                "worker": view,
                "messages": messages,
                "aftermath": self.aftermath(view) if declared else None,
                "now": self.inspector.server_time(),
                "cursor": request.arg("cursor"),
            },
        )

    def inflight(self, request: Request) -> Rendered:
        filters, errors = _filters(request, ("queue", "actor", "worker"))
        page = self.inspector.inflight(
            worker_id=filters["worker"] or None,
            actor=filters["actor"] or None,
            queue=filters["queue"] or None,
            older_than=_older_than(filters),
            limit=PAGE_SIZE,
            cursor=request.arg("cursor"),
        )
        return Rendered(
            "inflight.html",
            {"page": page, "filters": filters, "errors": errors, "cursor": request.arg("cursor")},
        )

    def message(self, request: Request) -> Rendered:
        message_id = request.arg("id")
        if not message_id:
            return Rendered("message.html", {"message_id": "", "view": None}, live=False)
        view = self.inspector.message(message_id)
        lock = None
        if view is not None:
            lock = view.lock or self._lock_of(message_id, _released_digests(view.events).get(message_id, ""))
        context = {"message_id": message_id, "view": view, "lock": lock, "now": self.inspector.server_time()}
        return Rendered("message.html", context, status=200 if view is not None else 404)

    def locks(self, request: Request) -> Rendered:
        filters, errors = _filters(request, ("actor", "owner"))
        page = self.inspector.locks(
            actor=filters["actor"] or None,
            owner=filters["owner"] or None,
            older_than=_older_than(filters),
            limit=PAGE_SIZE,
            cursor=request.arg("cursor"),
        )
        context = {
            "page": page,
            "filters": filters,
            "errors": errors,
            "now": self.inspector.server_time(),
            "cursor": request.arg("cursor"),
        }
        return Rendered("locks.html", context)

    def events(self, request: Request) -> Rendered:
        kind = request.arg("kind")
        before = request.arg("before")
        events = self.inspector.events(
            EVENTS_PAGE * (10 if kind else 1), kinds=[kind] if kind else None, before=before or "+"
        )[:EVENTS_PAGE]
        context = {"events": events, "kind": kind, "kinds": KINDS, "before": before}
        # Only the newest page follows the stream; an older one stays put.
        return Rendered("events.html", context, live=not before)

    # What became of a dead worker's messages ------------------------------------------------

    def aftermath(self, worker: WorkerView) -> Aftermath:
        """A dead worker's death and what became of each of its messages, from the events written
        since it was declared dead, and where each runs now."""
        return self.aftermaths([worker])[0]

    def incident(self) -> list[Aftermath]:
        """The workers of the last incident: those declared dead within :data:`INCIDENT_WINDOW` of the
        last one, with what became of their messages; those that had messages first, then the newest."""
        declared = [w for w in self.inspector.declared_dead(limit=INCIDENT_WORKERS) if w.declared_dead_at]
        if not declared:
            return []
        newest = max(w.declared_dead_at or 0 for w in declared)
        workers = [w for w in declared if (w.declared_dead_at or 0) >= newest - INCIDENT_WINDOW]
        return sorted(
            self.aftermaths(workers),
            key=lambda found: (-(len(found.fates) + found.more), -(found.worker.declared_dead_at or 0)),
        )

    def aftermaths(self, workers: Sequence[WorkerView]) -> list[Aftermath]:
        """What became of the messages of some dead workers, from one read of the events written since
        the first of them was declared dead; in the order given."""
        declared = [w.declared_dead_at for w in workers if w.declared_dead_at]
        since = min(declared) - 1000 if declared else None
        ids = {worker.worker_id for worker in workers}
        events = [e for e in self.inspector.events(FATE_EVENTS_SCANNED, since=since) if e.worker_id in ids]
        released = _released_digests(events)
        decided: dict[str, dict[str, TrackerEvent]] = {worker_id: {} for worker_id in ids}
        for event in events:
            if event.kind in _FATE_KINDS and event.message_id:
                decided[event.worker_id].setdefault(event.message_id, event)
        shown = {worker_id: list(found.values())[:FATES_SHOWN] for worker_id, found in decided.items()}
        running = self.inspector.running([event.message_id for found in shown.values() for event in found])
        found = []
        for worker in workers:
            death = next((e for e in events if e.kind == WORKER_DEAD and e.worker_id == worker.worker_id), None)
            fates = []
            for event in shown[worker.worker_id]:
                message_id = event.message_id
                now_running = running.get(message_id)
                digest = now_running.lock_digest if now_running is not None and now_running.lock_digest else ""
                lock = self._lock_of(message_id, digest or released.get(message_id, ""))
                fates.append(Fate(event, now_running, lock))
            more = max(0, len(decided[worker.worker_id]) - len(fates))
            found.append(Aftermath(worker, death, fates, more))
        return found

    def _lock_of(self, message_id: str, digest: str) -> LockInfo | None:
        """The lock ``digest`` if ``message_id`` holds it now."""
        lock = self.inspector.lock(digest) if digest else None
        return lock if lock is not None and lock.message_id == message_id else None


def _released_digests(events: Sequence[TrackerEvent]) -> dict[str, str]:
    """message id -> the digest of the lock that recovery passed to (or took from) its next attempt.

    A recovered copy starts before its lock is known to its record, so its record may not name
    the lock: the recovery's "lock-released" event does."""
    found: dict[str, str] = {}
    for event in events:
        digest = event.details.get("digest", "")
        if event.kind == LOCK_RELEASED and event.message_id and digest:
            found.setdefault(event.message_id, digest)
    return found


def _filters(request: Request, names: Sequence[str]) -> tuple[dict[str, str], list[str]]:
    """The text filters asked for, and ``older_than`` (seconds); with what is wrong with them."""
    filters = {name: request.arg(name) for name in (*names, "older_than")}
    errors = []
    if filters["older_than"]:
        try:
            seconds = float(filters["older_than"])
            if not (math.isfinite(seconds) and 0 <= seconds < 10**9):
                raise ValueError
        except ValueError:
            errors.append("'older than' must be a number of seconds, not %r." % filters["older_than"])
            filters["older_than"] = ""
    return filters, errors


def _older_than(filters: Mapping[str, str]) -> int | None:
    return int(float(filters["older_than"]) * 1000) if filters["older_than"] else None
