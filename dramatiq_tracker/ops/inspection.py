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
from collections.abc import Iterator, Sequence

import redis

from ..connection import DEFAULT_URL, URL_ENVIRONMENT_VARIABLE, client_from_url, is_redis_client
from ..errors import ConfigurationError
from ..host import HostFacts
from ..keys import Keys, validate_namespace
from ..records import InflightRecord, LockInfo, parse_outbox_entry
from ..settings import DEFAULT_NAMESPACE
from .failures import CLIENT_ERRORS
from .reads import SCAN_COUNT, InspectionStore
from .status import StatusReads
from .views import (
    ALIVE,
    DEAD,
    FENCED,
    GONE,
    RECOVERING,
    STATES,
    STOPPING,
    UNRESPONSIVE,
    ClusterStatus,
    Counters,
    HealthCheck,
    InflightView,
    LockView,
    MessageHistory,
    MessageView,
    OrphanView,
    Page,
    Problem,
    QueueDepth,
    QueueStatus,
    Timeline,
    Unswept,
    WorkerView,
)
from .workers import _bad_cursor, _number_cursor

__all__ = [
    "ALIVE",
    "DEAD",
    "FENCED",
    "GONE",
    "RECOVERING",
    "STATES",
    "STOPPING",
    "UNRESPONSIVE",
    "ClusterStatus",
    "Counters",
    "HealthCheck",
    "Inspector",
    "InflightView",
    "LockInfo",
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

#: How many of the newest events :meth:`Inspector.message` looks through for a message's own.
MESSAGE_EVENTS_SCANNED = 2000


class Inspector(StatusReads):
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
        self._store: InspectionStore | None = None
        if client is None:
            setting = "url" if url is not None else URL_ENVIRONMENT_VARIABLE
            url = url if url is not None else os.environ.get(URL_ENVIRONMENT_VARIABLE) or DEFAULT_URL
            self._url_setting = setting
            try:
                client = client_from_url(url, setting=setting)
            except CLIENT_ERRORS:
                # A Redis Cluster client connects as it is made: unreachable now, it is made again at the
                # first read, which raises what the client raises then (see ops/failures.py).
                client = None
        if client is not None:
            self._store = InspectionStore(client, namespace)
        #: The URL it was made from, or "" for a client given.
        self.url = url or ""
        #: This host, to see at once that a worker that ran here is gone.
        self._here = HostFacts.current()
        self.namespace = namespace
        self.keys = Keys(namespace)

    @property
    def store(self) -> InspectionStore:
        """Every read of the namespace: the inspector sends no command of its own."""
        if self._store is None:
            self._store = InspectionStore(client_from_url(self.url, setting=self._url_setting), self.namespace)
        return self._store

    @property
    def client(self) -> redis.Redis:
        return self.store.client

    def close(self) -> None:
        """Close the connections, if the inspector made its client."""
        if self._owns_client and self._store is not None:
            self._store.client.close()

    def __enter__(self) -> Inspector:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

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

        Raises:
          ConfigurationError: When ``cursor`` is not one a page gave.
        """
        start_worker, scan, skip = _parse_cursor(cursor)
        now = self.server_time()
        registrations = self.store.registrations([worker_id]) if worker_id else self.store.workers()
        views, problems = self._worker_views(registrations, now)
        workers = {view.worker_id: view for view in views}
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
            items.append(OrphanView.of_record(record, worker, now))
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
    ) -> Page[LockView]:
        """Uniqueness locks held, a page at a time, soonest to expire first, each with the worker its
        owner runs on (``running_on``).  A lock field that does not hold what it should (an attempt,
        a time) is reported in ``Page.problems``, and read as unknown.

        Parameters:
          actor(str): Only this actor's.
          owner(str): Only those owned by this message id, or held by this worker id, or whose owner
            runs on it.
          older_than(int): Only those acquired longer ago, in milliseconds (not those whose
            acquisition time is unreadable).
          limit(int): At most this many.
          cursor(str): The cursor of the previous page.

        Raises:
          ConfigurationError: When ``cursor`` is not one a page gave.
        """
        start = _number_cursor(cursor, "locks")
        now = self.server_time()
        total = self.store.lock_count()
        items: list[LockView] = []
        problems: list[Problem] = []
        while len(items) < limit and start < total:
            digests = self.store.lock_digests(start, SCAN_COUNT)
            if not digests:
                break
            found = {lock.digest: lock for lock in self._lock_views(digests, problems)}
            for position, digest in enumerate(digests):
                lock = found.get(digest)
                if lock is None or not _lock_matches(lock, actor, owner, older_than, now):
                    continue
                items.append(lock)
                if len(items) == limit:
                    following = start + position + 1
                    return Page(items, str(following) if following < total else "", problems, total)
            start += len(digests)
        return Page(items, "", problems, total)

    def lock(self, digest: str) -> LockView | None:
        """One uniqueness lock, or None when it is not held."""
        found = self._lock_views([digest], [])
        return found[0] if found else None

    def _lock_views(self, digests: Sequence[str], problems: list[Problem]) -> list[LockView]:
        """Some locks as they are held now, and where their owners run (two round trips)."""
        entries = self.store.lock_entries(digests)
        owners = self.store.running_owners([fields.get("message_id", "") for _, fields, _ in entries])
        views = []
        for (digest, fields, ttl), running in zip(entries, owners, strict=True):
            view, unreadable = LockView.read(digest, fields, ttl, running.split("|", 1)[0] if running else "")
            views.append(view)
            problems += [Problem(self.keys.lock(digest), field, reason) for field, reason in unreadable]
        return views

    # One message --------------------------------------------------------------------------

    def message(self, message_id: str) -> MessageView | None:
        """Where a message runs now, what recovery did with it, and its recent events; None when
        the tracker knows nothing of it (never recorded running, recovered, or in an event)."""
        now = self.server_time()
        fields, ttl, running_owner = self.store.message_state(message_id)
        history, unreadable = MessageHistory.read(fields, ttl) if fields else (None, [])
        key = self.keys.message(message_id)
        problems = [Problem(key, field, reason) for field, reason in unreadable]
        running = None
        if running_owner:
            worker_id = running_owner.split("|", 1)[0]
            raw = self.store.record(worker_id, message_id)
            registration = self.store.registration(worker_id)
            if raw is not None and registration is not None:
                views, _ = self._worker_views({worker_id: registration}, now)
                if views:
                    running = self._inflight_view(message_id, raw, views[0], now, [])
        lock = self._lock_views([running.lock_digest], problems) if running is not None and running.lock_digest else []
        events = [
            event
            for event in self.events(MESSAGE_EVENTS_SCANNED)
            if event.message_id == message_id or message_id in event.details.get("zombies", "").split()
        ]
        if history is None and not running_owner and not events:
            return None
        return MessageView(message_id, history, running, running_owner, lock[0] if lock else None, events, problems)


def _lock_matches(lock: LockView, actor: str | None, owner: str | None, older_than: int | None, now: int) -> bool:
    return (
        (actor is None or lock.actor_name == actor)
        and (owner is None or owner in (lock.message_id, lock.worker_id, lock.running_on))
        and (older_than is None or (lock.acquired_at > 0 and now - lock.acquired_at > older_than))
    )


def _cursor(worker_id: str, scan: int, skip: int) -> str:
    return "%d:%d:%s" % (scan, skip, worker_id)


def _parse_cursor(cursor: str) -> tuple[str, int, int]:
    """(worker id, HSCAN cursor, matches to skip) of an ``inflight`` cursor; ("", 0, 0) for none.

    Raises:
      ConfigurationError: When it is not one.
    """
    if not cursor:
        return "", 0, 0
    scan, _, rest = cursor.partition(":")
    skip, _, worker_id = rest.partition(":")
    if not (scan.isascii() and scan.isdigit() and skip.isascii() and skip.isdigit() and worker_id):
        raise _bad_cursor(cursor, "inflight")
    return worker_id, int(scan), int(skip)
