"""The inspection API's reads of worker processes: each registered worker judged (alive, stopping,
gone, unresponsive, recovering) from its heartbeat, its presence and, for a worker of this host, its
process; the tombstones of dead and fenced ones; and the liveness check.  A base of
:class:`~dramatiq_tracker.ops.inspection.Inspector`, which has all these methods."""

from __future__ import annotations

import json
from collections.abc import Mapping

from ..errors import ConfigurationError
from ..host import HostFacts
from ..keys import Keys, identity_digest
from ..records import CorruptRecord, InflightRecord, WorkerInfo
from .reads import SCAN_COUNT
from .stream import StreamReads
from .views import UNRESPONSIVE, HealthCheck, InflightView, Page, Problem, WorkerView


class WorkerReads(StreamReads):
    """Read and judge a namespace's workers."""

    #: The namespace's keys.
    keys: Keys
    namespace: str
    #: This host, to see at once that a worker that ran here is gone.
    _here: HostFacts

    def has_data(self) -> bool:
        """Whether anything of a tracker was ever written in this namespace: workers (every worker
        that ever registered leaves its broker identity), tombstones, events, counters or locks."""
        return self.store.has_data()

    # Workers ------------------------------------------------------------------------------

    def workers(self, *, limit: int = 1000, cursor: str = "") -> Page[WorkerView]:
        """The registered workers (alive, unresponsive or recovering), a page at a time, by id.

        Parameters:
          limit(int): At most this many (the last page may hold a few more than asked, up to
            one ``HSCAN`` batch, rather than skip any).
          cursor(str): The cursor of the previous page.
        """
        scan = _number_cursor(cursor, "workers")
        found: dict[str, str] = {}
        while True:
            scan, batch = self.store.scan_workers(scan, count=min(SCAN_COUNT, max(limit, 10)))
            found.update(batch)
            if scan == 0 or len(found) >= limit:
                break
        views, problems = self._worker_views(found, self.server_time())
        return Page(sorted(views, key=lambda w: w.worker_id), str(scan) if scan else "", problems)

    def dead_workers(self, *, limit: int = 100) -> list[WorkerView]:
        """Workers declared dead whose registration is gone (tombstones), newest first."""
        tombstones = self.store.tombstones(limit)
        ids = [wid for wid, _ in tombstones]
        registered = self.store.registrations(ids)
        fenced = self.store.fenced_as(ids)
        return [
            WorkerView.tombstone(wid, declared, new_id)
            for (wid, declared), new_id in zip(tombstones, fenced, strict=True)
            if wid not in registered
        ]

    def declared_dead(self, *, limit: int = 100) -> list[WorkerView]:
        """The workers declared dead last, newest first: tombstones (dead, fenced) and those whose
        recovery has not finished (recovering)."""
        tombstones = self.store.tombstones(limit)
        ids = [wid for wid, _ in tombstones]
        registered = self.store.registrations(ids)
        views, _ = self._worker_views(registered, self.server_time())
        judged = {view.worker_id: view for view in views}
        fenced = self.store.fenced_as(ids)
        return [
            judged.get(wid) or WorkerView.tombstone(wid, declared, new_id)
            for (wid, declared), new_id in zip(tombstones, fenced, strict=True)
        ]

    def worker(self, worker_id: str) -> WorkerView | None:
        """One worker, registered or a tombstone; None when the namespace does not know it."""
        registration = self.store.registration(worker_id)
        if registration is not None:
            views, _ = self._worker_views({worker_id: registration}, self.server_time())
            return views[0] if views else WorkerView(worker_id=worker_id, state=UNRESPONSIVE)
        declared = self.store.declared_dead_at(worker_id)
        if declared is None:
            return None
        (new_id,) = self.store.fenced_as([worker_id])
        return WorkerView.tombstone(worker_id, declared, new_id)

    def workers_on_host(self, hostname: str) -> list[WorkerView]:
        """The workers registered from ``hostname``."""
        views, _ = self._worker_views(self.store.workers_on_host(hostname), self.server_time())
        return sorted(views, key=lambda w: w.worker_id)

    def check(self, *, hostname: str = "", worker_id: str = "", min_workers: int = 1) -> HealthCheck:
        """Whether the workers of a host, or one worker, are alive and heartbeating: the answer of
        ``dramatiq-tracker check``, a liveness probe.

        A worker is healthy when it is registered, its heartbeat is fresh and, when it runs in
        this process's pid space (the same host, boot and pid namespace), its process exists: a
        SIGKILLed worker fails at once, not after ``heartbeat_timeout``.  A worker declared dead
        while it was alive (fenced) fails, naming the id its process goes on under.

        Parameters:
          hostname(str): Judge the workers registered from this host (``socket.gethostname()``
            of their processes).
          worker_id(str): Or judge this worker only.
          min_workers(int): With ``hostname``: how many of its workers must be alive.

        Raises:
          ConfigurationError: When neither or both of ``hostname`` and ``worker_id`` are given.
        """
        if bool(hostname) == bool(worker_id):
            raise ConfigurationError("check", "give a hostname or a worker id")
        registrations = self.store.registrations([worker_id]) if worker_id else self.store.workers_on_host(hostname)
        views, _ = self._worker_views(registrations, self.server_time())
        views.sort(key=lambda view: view.worker_id)
        reasons = []
        alive = 0
        for view in views:
            reason = view.unhealthy()
            if reason:
                reasons.append(reason)
            else:
                alive += 1
        if worker_id and not views:
            tombstone = self.worker(worker_id)
            if tombstone is None:
                reasons.append("worker %r is not registered in namespace %r" % (worker_id, self.namespace))
            else:
                views.append(tombstone)
                reasons.append(tombstone.unhealthy())
        elif hostname and alive < min_workers:
            if not views:
                reasons.append("no worker is registered from host %r in namespace %r" % (hostname, self.namespace))
            else:
                reasons.append("%d of at least %d workers of host %r are alive" % (alive, min_workers, hostname))
        return HealthCheck(not reasons, reasons, views, hostname, worker_id, min_workers if hostname else 0)

    def _worker_views(self, registrations: Mapping[str, str], now: int) -> tuple[list[WorkerView], list[Problem]]:
        """Judge registered workers at ``now`` (server ms): what Redis holds of them, their presence, and
        whether this host sees their process gone; with what could not be read."""
        infos: list[tuple[WorkerInfo, int]] = []
        problems = []
        for worker_id, raw in registrations.items():
            try:
                info = WorkerInfo.from_json(raw)
            except CorruptRecord as e:
                problems.append(Problem(self.keys.workers, worker_id, "unreadable registration: %s" % e))
                continue
            if info.worker_id != worker_id:
                problems.append(Problem(self.keys.workers, worker_id, "registration of another worker id"))
                continue
            stopping_at, problem = _stopping_at(raw)
            if problem:
                problems.append(Problem(self.keys.workers, worker_id, problem))
            infos.append((info, stopping_at))
        digests = [identity_digest(info.broker_identity) for info, _ in infos]
        states = self.store.worker_states(
            [(info.worker_id, digest) for (info, _), digest in zip(infos, digests, strict=True)]
        )
        views = []
        for (info, stopping_at), digest, state in zip(infos, digests, states, strict=True):
            exited = self._here.process_is_gone(info.host)
            view = WorkerView.judge(info, state, now, stopping_at=stopping_at, process_exited=exited)
            views.append(view)
            if state.beat_unreadable:
                reason = "unreadable heartbeat: not a time (the worker counts as heartbeating while the key lives)"
                problems.append(Problem(self.keys.heartbeat(info.worker_id), "", reason))
            if not view.swept:
                problems.append(Problem(self.keys.deadlines(digest), info.worker_id, _NO_DEADLINE % view.inflight))
        return views, problems

    def _inflight_view(
        self, message_id: str, raw: str, worker: WorkerView, now: int, problems: list[Problem]
    ) -> InflightView | None:
        try:
            record = InflightRecord.from_json(raw, message_id=message_id, worker_id=worker.worker_id)
        except CorruptRecord as e:
            problems.append(Problem(self.keys.inflight(worker.worker_id), message_id, "unreadable record: %s" % e))
            return None
        return InflightView.of(record, worker, now)


#: Why a registration without a heartbeat deadline is a problem.
_NO_DEADLINE = (
    "registered without a heartbeat deadline (written by hand, or partly lost): no sweep finds it, and "
    "`recover` does not see it, so its %d records wait for ever; if its process is gone, remove its "
    "registration and records by hand"
)


def _stopping_at(raw: str) -> tuple[int, str]:
    """A registration's ``stopping_at`` (0 when absent), and what is wrong with it, if anything."""
    if '"stopping_at"' not in raw:  # most registrations: not parsed a second time
        return 0, ""
    try:
        value = json.loads(raw).get("stopping_at", 0)
    except (ValueError, AttributeError):
        return 0, ""
    if value is None or value == 0:
        return 0, ""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return 0, "field 'stopping_at' is not a time in ms: %r (read as not stopping)" % (value,)
    return value, ""


def _bad_cursor(cursor: str, listing: str) -> ConfigurationError:
    return ConfigurationError(
        "cursor", "%r is not a cursor of %s: pass back the one a page of it gave, or none" % (cursor, listing)
    )


def _number_cursor(cursor: str, listing: str) -> int:
    """The position a ``workers`` or ``locks`` cursor names; 0 for none.

    Raises:
      ConfigurationError: When it is not one.
    """
    if cursor and not (cursor.isascii() and cursor.isdigit()):
        raise _bad_cursor(cursor, listing)
    return int(cursor or 0)
