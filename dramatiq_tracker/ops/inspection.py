"""Read what the tracker knows, from its Redis alone: workers, messages in flight, orphans,
uniqueness locks, message histories, events and counters.

This is the one read path of the ``dramatiq-tracker`` command, its Prometheus exporter
and its dashboard.  It needs no broker and no actor, only the tracker's Redis and
namespace::

    from dramatiq_tracker.ops.inspection import Inspector

    inspector = Inspector(url="redis://localhost:6379/0")
    for record in inspector.inflight(older_than=60_000).items:
        print(record.worker_id, record.actor_name, record.running_for)

Every read is bounded: listings take a ``limit`` and return a :class:`Page` with a
cursor to go on from; hashes are read with ``HSCAN``, never ``KEYS``.  An entry it cannot
understand (corrupt, or written by something else) is reported in ``Page.problems`` and
skipped, never raised and never deleted.  Ages are measured against the Redis server's
clock; start times are the workers' own clocks.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence

import redis

from ..connection import DEFAULT_URL, URL_ENVIRONMENT_VARIABLE, client_from_url, is_redis_client
from ..errors import ConfigurationError
from ..host import HostFacts
from ..keys import Keys, identity_digest, validate_namespace
from ..records import CorruptRecord, InflightRecord, WorkerInfo
from ..settings import DEFAULT_NAMESPACE
from ..store import LockInfo, parse_outbox_entry
from .reads import SCAN_COUNT, InflightSummary, InspectionStore, script_batches
from .stream import StreamReads
from .views import (
    ALIVE,
    DEAD,
    FENCED,
    RECOVERING,
    UNRESPONSIVE,
    ClusterStatus,
    Counters,
    HealthCheck,
    InflightView,
    MessageHistory,
    MessageView,
    OrphanView,
    Page,
    Problem,
    QueueStatus,
    Timeline,
    WorkerView,
)

__all__ = [
    "ALIVE",
    "DEAD",
    "FENCED",
    "RECOVERING",
    "UNRESPONSIVE",
    "ClusterStatus",
    "Counters",
    "HealthCheck",
    "Inspector",
    "InflightView",
    "LockInfo",
    "MessageHistory",
    "MessageView",
    "OrphanView",
    "Page",
    "Problem",
    "QueueStatus",
    "Timeline",
    "WorkerView",
]

#: How many of the newest events :meth:`Inspector.message` looks through for a message's own.
MESSAGE_EVENTS_SCANNED = 2000


class Inspector(StreamReads):
    """Read a tracker namespace.

    Parameters:
      client(redis.Redis|RedisCluster): The tracker's Redis.
      url(str): Or its URL (``redis://``, ``rediss://``, ``unix://``, ``redis+cluster://``,
        ``redis+sentinel://``); default: ``$DRAMATIQ_TRACKER_REDIS_URL``, else ``redis://localhost:6379/0``.
      namespace(str): The tracker's namespace (``TrackerMiddleware(namespace=...)``).

    Raises:
      ConfigurationError: When the client, URL or namespace is not valid.
    """

    def __init__(
        self, *, client: redis.Redis | None = None, url: str | None = None, namespace: str = DEFAULT_NAMESPACE
    ) -> None:
        if client is not None and url is not None:
            raise ConfigurationError("url", "give a client or a url, not both")
        if client is not None and not is_redis_client(client):
            raise ConfigurationError("client", "must be a redis.Redis or RedisCluster client, got %r" % (client,))
        try:
            validate_namespace(namespace)
        except ValueError as e:
            raise ConfigurationError("namespace", str(e)) from None
        self._owns_client = client is None
        if client is None:
            setting = "url" if url is not None else URL_ENVIRONMENT_VARIABLE
            url = url if url is not None else os.environ.get(URL_ENVIRONMENT_VARIABLE) or DEFAULT_URL
            client = client_from_url(url, setting=setting)
        #: Every read of the namespace: the inspector sends no command of its own.
        self.store = InspectionStore(client, namespace)
        #: The URL it was made from, or "" for a client given.
        self.url = url or ""
        self.namespace = namespace

    @property
    def client(self) -> redis.Redis:
        return self.store.client

    @property
    def keys(self) -> Keys:
        return self.store.keys

    def close(self) -> None:
        """Close the connections, if the inspector made its client."""
        if self._owns_client:
            self.client.close()

    def __enter__(self) -> Inspector:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # The namespace ------------------------------------------------------------------------

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
        scan = int(cursor) if cursor.isdigit() else 0
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
        here = HostFacts.current()
        reasons = []
        alive = 0
        for view in views:
            try:
                gone = here.process_is_gone(WorkerInfo.from_json(registrations[view.worker_id]).host)
            except CorruptRecord:
                gone = False
            reason = view.unhealthy(gone)
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
                reasons.append(tombstone.unhealthy(False))
        elif hostname and alive < min_workers:
            if not views:
                reasons.append("no worker is registered from host %r in namespace %r" % (hostname, self.namespace))
            else:
                reasons.append("%d of at least %d workers of host %r are alive" % (alive, min_workers, hostname))
        return HealthCheck(not reasons, reasons, views, hostname, worker_id, min_workers if hostname else 0)

    def _worker_views(self, registrations: Mapping[str, str], now: int) -> tuple[list[WorkerView], list[Problem]]:
        infos: list[WorkerInfo] = []
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
            infos.append(info)
        states = self.store.worker_states([(i.worker_id, identity_digest(i.broker_identity)) for i in infos])
        views = [WorkerView.judge(info, state, now) for info, state in zip(infos, states, strict=True)]
        return views, problems

    # Messages in flight -------------------------------------------------------------------

    def inflight(
        self,
        *,
        worker_id: str | None = None,
        actor: str | None = None,
        queue: str | None = None,
        older_than: int | None = None,
        limit: int = 50,
        cursor: str = "",
    ) -> Page[InflightView]:
        """Messages recorded in flight, a page at a time, worker by worker.

        A message is recorded once it has run for about one ``flush_interval``; records of
        workers that are not alive are orphans waiting for recovery (see ``worker_state``).

        Parameters:
          worker_id(str): Only this worker's.
          actor(str): Only this actor's.
          queue(str): Only this queue's.
          older_than(int): Only those running for longer, in milliseconds.
          limit(int): At most this many.
          cursor(str): The cursor of the previous page.
        """
        now = self.server_time()
        registrations = self.store.registrations([worker_id]) if worker_id else self.store.workers()
        views, problems = self._worker_views(registrations, now)
        workers = {view.worker_id: view for view in views}
        start_worker, scan, skip = _parse_cursor(cursor)
        items: list[InflightView] = []
        filtered = actor is not None or queue is not None or older_than is not None
        started_before = now - older_than if older_than is not None else None
        for wid in sorted(w for w in workers if w >= start_worker):
            if wid != start_worker:
                if not workers[wid].inflight:
                    continue
                scan, skip = 0, 0
            while True:
                if filtered:
                    # Filtered on the server: a filter few records match does not ship them all.
                    next_scan, raw_records = self.store.scan_inflight_matching(
                        wid, scan, SCAN_COUNT, actor=actor, queue=queue, started_before=started_before
                    )
                else:
                    next_scan, raw_records = self.store.scan_inflight(wid, scan, count=SCAN_COUNT)
                matches = []
                for message_id, raw in sorted(raw_records.items()):
                    view = self._inflight_view(message_id, raw, workers[wid], now, problems)
                    if view is not None and view.matches(actor, queue, older_than):
                        matches.append(view)
                wanted = limit - len(items)
                if len(matches) - skip > wanted:
                    items += matches[skip : skip + wanted]
                    return Page(items, _cursor(wid, scan, skip + wanted), problems)
                items += matches[skip:]
                skip = 0
                scan = next_scan
                if scan == 0:
                    break
            if len(items) >= limit:
                following = [w for w in workers if w > wid]
                return Page(items, _cursor(min(following), 0, 0) if following else "", problems)
        return Page(items, "", problems)

    def _inflight_view(
        self, message_id: str, raw: str, worker: WorkerView, now: int, problems: list[Problem]
    ) -> InflightView | None:
        try:
            record = InflightRecord.from_json(raw, message_id=message_id, worker_id=worker.worker_id)
        except CorruptRecord as e:
            problems.append(Problem(self.keys.inflight(worker.worker_id), message_id, "unreadable record: %s" % e))
            return None
        return InflightView.of(record, worker, now)

    def _all_records(self, workers: Sequence[WorkerView]) -> Iterator[tuple[WorkerView, str, str]]:
        """Every record of these workers: (worker, message id, raw record)."""
        by_id = {worker.worker_id: worker for worker in workers}
        for worker_id, message_id, raw in self.store.records_of([(w.worker_id, w.inflight) for w in workers]):
            yield by_id[worker_id], message_id, raw

    def running(self, message_ids: Sequence[str]) -> dict[str, InflightView]:
        """Where these messages run now: their recorded attempts in flight, by message id.

        A message that is queued, finished, or has not run for a ``flush_interval`` yet is left
        out, and so is one whose recorded worker was declared dead (its record was claimed).
        It costs a few round trips, whatever the number of messages.
        """
        if not message_ids:
            return {}
        owners = self.store.running_owners(message_ids)
        by_worker: dict[str, list[str]] = {}
        for message_id, owner in zip(message_ids, owners, strict=True):
            if owner is not None:
                by_worker.setdefault(owner.split("|", 1)[0], []).append(message_id)
        if not by_worker:
            return {}
        now = self.server_time()
        views, _ = self._worker_views(self.store.registrations(sorted(by_worker)), now)
        workers = {view.worker_id: view for view in views}
        wanted = [(worker_id, ids) for worker_id, ids in sorted(by_worker.items()) if worker_id in workers]
        found: dict[str, InflightView] = {}
        for (worker_id, ids), records in zip(wanted, self.store.records(wanted), strict=True):
            for message_id, raw in zip(ids, records, strict=True):
                if raw is None:
                    continue
                view = self._inflight_view(message_id, raw, workers[worker_id], now, [])
                if view is not None:
                    found[message_id] = view
        return found

    # Orphans ------------------------------------------------------------------------------

    def orphans(self, *, limit: int = 100) -> Page[OrphanView]:
        """Messages waiting for recovery: recorded by workers that are not alive, and parked in
        outboxes while they are enqueued again.  Messages a dead worker had only fetched are not
        recorded (the broker keeps them): the next sweep finds them in the broker.

        Parameters:
          limit(int): At most this many; ``Page.total`` says how many there are.
        """
        now = self.server_time()
        views, problems = self._worker_views(self.store.all_registrations(), now)
        waiting = sorted((v for v in views if not v.alive), key=lambda v: v.worker_id)
        items: list[OrphanView] = []
        for worker, message_id, raw in self._all_records(waiting):
            if len(items) >= limit:
                break
            record = self._inflight_view(message_id, raw, worker, now, problems)
            if record is None:
                continue
            items.append(OrphanView.of_record(record, worker))
        total = sum(worker.inflight for worker in waiting)
        for digest in sorted(self.store.identities()):
            total += self.store.outbox_size(digest)
            if len(items) >= limit:
                continue
            for message_id, raw in self.store.outbox_entries(digest, limit - len(items)):
                item = self._outbox_view(self.keys.outbox(digest), message_id, raw, now, problems)
                if item is not None:
                    items.append(item)
        return Page(items, "", problems, total)

    def _outbox_view(self, key: str, message_id: str, raw: str, now: int, problems: list[Problem]) -> OrphanView | None:
        try:
            parked_at, raw_record, worker_id = parse_outbox_entry(raw)
            record = InflightRecord.from_json(raw_record, message_id=message_id, worker_id=worker_id)
        except (ValueError, KeyError, TypeError) as e:
            problems.append(Problem(key, message_id, "unreadable outbox entry: %s" % e))
            return None
        return OrphanView.of_outbox(record, parked_at, now)

    # Locks --------------------------------------------------------------------------------

    def locks(
        self,
        *,
        actor: str | None = None,
        owner: str | None = None,
        older_than: int | None = None,
        limit: int = 50,
        cursor: str = "",
    ) -> Page[LockInfo]:
        """Uniqueness locks held, a page at a time, soonest to expire first.

        Parameters:
          actor(str): Only this actor's.
          owner(str): Only those owned by this message id or held by this worker id.
          older_than(int): Only those acquired longer ago, in milliseconds.
          limit(int): At most this many.
          cursor(str): The cursor of the previous page.
        """
        now = self.server_time()
        start = int(cursor) if cursor.isdigit() else 0
        total = self.store.lock_count()
        items: list[LockInfo] = []
        while len(items) < limit and start < total:
            digests = self.store.lock_digests(start, SCAN_COUNT)
            if not digests:
                break
            found = {lock.digest: lock for lock in self.store.locks(digests)}
            for position, digest in enumerate(digests):
                lock = found.get(digest)
                if lock is None or not _lock_matches(lock, actor, owner, older_than, now):
                    continue
                items.append(lock)
                if len(items) == limit:
                    following = start + position + 1
                    return Page(items, str(following) if following < total else "", [], total)
            start += len(digests)
        return Page(items, "", [], total)

    def lock(self, digest: str) -> LockInfo | None:
        """One uniqueness lock, or None when it is not held."""
        return self.store.lock(digest)

    # One message --------------------------------------------------------------------------

    def message(self, message_id: str) -> MessageView | None:
        """Where a message runs now, what recovery did with it, and its recent events; None when
        the tracker knows nothing of it (never recorded running, recovered, or in an event)."""
        now = self.server_time()
        fields, ttl, running_owner = self.store.message_state(message_id)
        history = MessageHistory.from_fields(fields, ttl) if fields else None
        running = None
        if running_owner:
            worker_id = running_owner.split("|", 1)[0]
            raw = self.store.record(worker_id, message_id)
            registration = self.store.registration(worker_id)
            if raw is not None and registration is not None:
                views, _ = self._worker_views({worker_id: registration}, now)
                if views:
                    running = self._inflight_view(message_id, raw, views[0], now, [])
        lock = self.store.lock(running.lock_digest) if running is not None and running.lock_digest else None
        events = [
            event
            for event in self.events(MESSAGE_EVENTS_SCANNED)
            if event.message_id == message_id or message_id in event.details.get("zombies", "").split()
        ]
        if history is None and not running_owner and not events:
            return None
        return MessageView(message_id, history, running, running_owner, lock, events)

    # At a glance --------------------------------------------------------------------------

    def status(self) -> ClusterStatus:
        """The namespace at a glance: workers by state, messages in flight by queue and actor,
        orphans waiting, locks held, counters.  The records are counted on the server, a batch of
        workers per script call (see ``benchmarks/inspection.py`` for what it costs)."""
        now = self.server_time()
        views, problems = self._worker_views(self.store.all_registrations(), now)
        states = {state: 0 for state in (ALIVE, UNRESPONSIVE, RECOVERING, DEAD, FENCED)}
        for view in views:
            states[view.state] += 1
        for view in self.dead_workers(limit=self.store.tombstone_count() or 1):
            states[view.state] += 1
        queues: dict[str, list[int]] = {}
        actors: dict[str, int] = {}
        for summary in self._summaries([v for v in views if v.inflight]):
            for name, (count, orphaned, oldest) in summary.queues.items():
                totals = queues.setdefault(name, [0, 0, oldest])
                totals[0] += count
                totals[1] += orphaned
                totals[2] = min(totals[2], oldest)
            for name, count in summary.actors.items():
                actors[name] = actors.get(name, 0) + count
            problems += [
                Problem(self.keys.inflight(worker_id), message_id, "unreadable record")
                for worker_id, message_id in summary.corrupt
            ]
        outbox, locks = self.store.outbox_and_lock_counts(sorted(self.store.identities()), now)
        return ClusterStatus(
            at=now,
            workers=states,
            inflight=sum(totals[0] for totals in queues.values()),
            orphans=sum(totals[1] for totals in queues.values()) + outbox,
            outbox=outbox,
            locks=locks,
            queues=[
                QueueStatus(name, totals[0], totals[1], max(0, now - totals[2]))
                for name, totals in sorted(queues.items())
            ],
            actors=dict(sorted(actors.items())),
            counters=self.counters(),
            problems=problems,
        )

    def oldest(self, limit: int = 10) -> Page[InflightView]:
        """The messages in flight that have been running longest, oldest first (those of workers
        that are not alive included: see ``worker_state``).  They are found on the server, a batch
        of workers per script call, as :meth:`status` counts them.

        Parameters:
          limit(int): How many.
        """
        now = self.server_time()
        views, problems = self._worker_views(self.store.all_registrations(), now)
        workers = {view.worker_id: view for view in views}
        found: list[tuple[str, str, int]] = []
        for batch in script_batches([v for v in views if v.inflight], _records):
            found += self.store.oldest_inflight([view.worker_id for view in batch], limit)
        found = sorted(found, key=lambda entry: (entry[2], entry[1]))[: max(0, limit)]
        records = self.store.records([(worker_id, [message_id]) for worker_id, message_id, _ in found])
        items = []
        for (worker_id, message_id, _), (raw,) in zip(found, records, strict=True):
            if raw is None:  # it completed since
                continue
            view = self._inflight_view(message_id, raw, workers[worker_id], now, problems)
            if view is not None:
                items.append(view)
        return Page(items, "", problems)

    def _summaries(self, workers: Sequence[WorkerView]) -> list[InflightSummary]:
        """The workers' records counted on the server, in batches of about :data:`SUMMARY_RECORDS`."""
        return [
            self.store.summarize_inflight([(view.worker_id, view.alive) for view in batch])
            for batch in script_batches(workers, _records)
        ]


def _records(worker: WorkerView) -> int:
    return worker.inflight


def _lock_matches(lock: LockInfo, actor: str | None, owner: str | None, older_than: int | None, now: int) -> bool:
    return (
        (actor is None or lock.actor_name == actor)
        and (owner is None or owner in (lock.message_id, lock.worker_id))
        and (older_than is None or now - lock.acquired_at > older_than)
    )


def _cursor(worker_id: str, scan: int, skip: int) -> str:
    return "%d:%d:%s" % (scan, skip, worker_id)


def _parse_cursor(cursor: str) -> tuple[str, int, int]:
    """(worker id, HSCAN cursor, matches to skip) of an ``inflight`` cursor; a bad one starts over."""
    scan, _, rest = cursor.partition(":")
    skip, _, worker_id = rest.partition(":")
    if not (scan.isdigit() and skip.isdigit() and worker_id):
        return "", 0, 0
    return worker_id, int(scan), int(skip)
