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
from typing import Any, cast

import redis

from ..connection import DEFAULT_URL, URL_ENVIRONMENT_VARIABLE, client_from_url, is_redis_client
from ..errors import ConfigurationError
from ..events import TrackerEvent
from ..host import HostFacts
from ..keys import SEQUENCE_FIELD, Keys, identity_digest, validate_namespace
from ..records import CorruptRecord, InflightRecord, WorkerInfo
from ..settings import DEFAULT_NAMESPACE
from ..store import InflightSummary, LockInfo, TrackerStore, parse_outbox_entry, text
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

SEQUENCE_BYTES = SEQUENCE_FIELD.encode()

#: How many registrations or records one ``HSCAN`` call asks for.
SCAN_COUNT = 500
#: How many workers' records one pipeline reads.
PIPELINE_WORKERS = 100
#: How many records one summary script reads, at most (unless one worker has more): it blocks Redis about
#: 5 ms (measured: 9.7 ms per 5,000 records).
SUMMARY_RECORDS = 2500
#: How many of the newest events :meth:`Inspector.message` looks through for a message's own.
MESSAGE_EVENTS_SCANNED = 2000
#: How many stream entries one script call of :meth:`Inspector.timeline` counts: it blocks Redis about 2 ms.
TIMELINE_BATCH = 2000


class Inspector:
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
        self.store = TrackerStore(client, namespace)
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

    def server_time(self) -> int:
        """The Redis server's clock, in ms since the epoch.

        Raises:
          redis.RedisError: When Redis cannot be reached (every method raises it then).
        """
        return self.store.server_time()

    def has_data(self) -> bool:
        """Whether anything of a tracker was ever written in this namespace: workers (every worker
        that ever registered leaves its broker identity), tombstones, events, counters or locks."""
        k = self.keys
        return bool(self.client.exists(k.workers, k.identities, k.dead_workers, k.events, k.counters, k.locks))

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
        tombstones = cast(
            "list[tuple[Any, float]]",
            self.client.zrevrange(self.keys.dead_workers, 0, limit - 1, withscores=True),
        )
        ids = [text(wid) for wid, _ in tombstones]
        registered = self.store.registrations(ids)
        fenced = self.store.fenced_as(ids)
        return [
            WorkerView(
                worker_id=wid,
                state=FENCED if new_id else DEAD,
                declared_dead_at=int(score),
                fenced_as=new_id,
            )
            for wid, (_, score), new_id in zip(ids, tombstones, fenced, strict=True)
            if wid not in registered
        ]

    def worker(self, worker_id: str) -> WorkerView | None:
        """One worker, registered or a tombstone; None when the namespace does not know it."""
        registration = self.store.registration(worker_id)
        if registration is not None:
            views, _ = self._worker_views({worker_id: registration}, self.server_time())
            return views[0] if views else WorkerView(worker_id=worker_id, state=UNRESPONSIVE)
        declared = self.client.zscore(self.keys.dead_workers, worker_id)
        if declared is None:
            return None
        (new_id,) = self.store.fenced_as([worker_id])
        return WorkerView(
            worker_id=worker_id, state=FENCED if new_id else DEAD, declared_dead_at=int(declared), fenced_as=new_id
        )

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
            reason = _unhealthy(view, gone)
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
                reasons.append(_unhealthy(tombstone, False))
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
        states = []
        for start in range(0, len(infos), PIPELINE_WORKERS):
            batch = infos[start : start + PIPELINE_WORKERS]
            states += self.store.worker_states([(i.worker_id, identity_digest(i.broker_identity)) for i in batch])
        views = []
        for info, (last_beat, declared, deadline, inflight) in zip(infos, states, strict=True):
            if declared is not None:
                state = RECOVERING
            elif last_beat is not None:
                state = ALIVE
            else:
                state = UNRESPONSIVE
            views.append(
                WorkerView(
                    worker_id=info.worker_id,
                    state=state,
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
            )
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
                    if view is not None and _matches(view, actor, queue, older_than):
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
        digest, mode = record.lock_digest_and_mode
        return InflightView(
            message_id=message_id,
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

    def _all_records(self, workers: Sequence[WorkerView]) -> Iterator[tuple[WorkerView, str, str]]:
        """Every record of these workers: (worker, message id, raw record)."""
        small = [w for w in workers if 0 < w.inflight <= SCAN_COUNT * 4]
        for start in range(0, len(small), PIPELINE_WORKERS):
            batch = small[start : start + PIPELINE_WORKERS]
            pipe = self.client.pipeline(transaction=False)
            for worker in batch:
                pipe.hgetall(self.keys.inflight(worker.worker_id))
            for worker, records in zip(batch, pipe.execute(), strict=True):
                for message_id, raw in records.items():
                    if message_id != SEQUENCE_BYTES and message_id != SEQUENCE_FIELD:
                        yield worker, text(message_id), text(raw)
        for worker in (w for w in workers if w.inflight > SCAN_COUNT * 4):
            scan = 0
            while True:
                scan, records = self.store.scan_inflight(worker.worker_id, scan, count=SCAN_COUNT)
                for message_id, raw in records.items():
                    yield worker, message_id, raw
                if scan == 0:
                    break

    def running(self, message_ids: Sequence[str]) -> dict[str, InflightView]:
        """Where these messages run now: their recorded attempts in flight, by message id.

        A message that is queued, finished, or has not run for a ``flush_interval`` yet is left
        out, and so is one whose recorded worker was declared dead (its record was claimed).
        It costs a few round trips, whatever the number of messages.
        """
        if not message_ids:
            return {}
        owners = cast("list[Any]", self.client.hmget(self.keys.running, list(message_ids)))
        by_worker: dict[str, list[str]] = {}
        for message_id, owner in zip(message_ids, owners, strict=True):
            if owner is not None:
                by_worker.setdefault(text(owner).split("|", 1)[0], []).append(message_id)
        if not by_worker:
            return {}
        now = self.server_time()
        views, _ = self._worker_views(self.store.registrations(sorted(by_worker)), now)
        workers = {view.worker_id: view for view in views}
        pipe = self.client.pipeline(transaction=False)
        wanted = [(worker_id, ids) for worker_id, ids in sorted(by_worker.items()) if worker_id in workers]
        for worker_id, ids in wanted:
            pipe.hmget(self.keys.inflight(worker_id), ids)
        found: dict[str, InflightView] = {}
        for (worker_id, ids), records in zip(wanted, pipe.execute() if wanted else [], strict=True):
            for message_id, raw in zip(ids, records, strict=True):
                if raw is None:
                    continue
                view = self._inflight_view(message_id, text(raw), workers[worker_id], now, [])
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
        views, problems = self._worker_views(self._all_registrations(), now)
        waiting = sorted((v for v in views if not v.alive), key=lambda v: v.worker_id)
        items: list[OrphanView] = []
        for worker, message_id, raw in self._all_records(waiting):
            if len(items) >= limit:
                break
            record = self._inflight_view(message_id, raw, worker, now, problems)
            if record is None:
                continue
            since = worker.overdue if worker.overdue is not None else 0
            items.append(
                OrphanView(
                    message_id=message_id,
                    worker_id=worker.worker_id,
                    worker_state=worker.state,
                    actor_name=record.actor_name,
                    queue_name=record.queue_name,
                    waiting_for=since,
                    attempt=record.attempt,
                    recoveries=record.recoveries,
                    lock_digest=record.lock_digest,
                    where="record",
                )
            )
        total = sum(worker.inflight for worker in waiting)
        for digest in sorted(self.store.identities()):
            key = self.keys.outbox(digest)
            total += int(self.client.hlen(key))
            if len(items) >= limit:
                continue
            for message_id, raw in self._scan_hash(key, limit - len(items)):
                item = self._outbox_view(key, message_id, raw, now, problems)
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
        return OrphanView(
            message_id=message_id,
            worker_id=worker_id,
            worker_state="",
            actor_name=record.actor_name,
            queue_name=record.queue_name,
            waiting_for=max(0, now - parked_at),
            attempt=record.attempt,
            recoveries=record.recoveries,
            lock_digest=record.lock_digest_and_mode[0],
            where="outbox",
        )

    def _scan_hash(self, key: str, limit: int) -> Iterator[tuple[str, str]]:
        scan, given = 0, 0
        while given < limit:
            scan, found = self.client.hscan(key, scan, count=SCAN_COUNT)
            for field, value in cast("dict[Any, Any]", found).items():
                if given >= limit:
                    return
                given += 1
                yield text(field), text(value)
            if scan == 0:
                return

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
        index = self.keys.locks
        start = int(cursor) if cursor.isdigit() else 0
        total = int(self.client.zcard(index))
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
        k = self.keys
        pipe = self.client.pipeline(transaction=False)
        pipe.hgetall(k.message(message_id))
        pipe.pttl(k.message(message_id))
        pipe.hget(k.running, message_id)
        fields, ttl, owner = pipe.execute()
        history = None
        if fields:
            decoded = {text(name): text(value) for name, value in fields.items()}
            history = MessageHistory.from_fields(decoded, int(ttl) if int(ttl) >= 0 else None)
        running_owner = text(owner) if owner is not None else ""
        running = None
        if running_owner:
            worker_id = running_owner.split("|", 1)[0]
            raw = self.client.hget(k.inflight(worker_id), message_id)
            registration = self.store.registration(worker_id)
            if raw is not None and registration is not None:
                views, _ = self._worker_views({worker_id: registration}, now)
                if views:
                    running = self._inflight_view(message_id, text(raw), views[0], now, [])
        lock = self.store.lock(running.lock_digest) if running is not None and running.lock_digest else None
        events = [
            event
            for event in self.events(MESSAGE_EVENTS_SCANNED)
            if event.message_id == message_id or message_id in event.details.get("zombies", "").split()
        ]
        if history is None and not running_owner and not events:
            return None
        return MessageView(message_id, history, running, running_owner, lock, events)

    # Events and counters ------------------------------------------------------------------

    def events(
        self,
        count: int = 50,
        *,
        kinds: Sequence[str] | None = None,
        before: str = "+",
        since: int | None = None,
        worker_id: str | None = None,
    ) -> list[TrackerEvent]:
        """The newest events, newest first.

        Parameters:
          count(int): How many stream entries to read (fewer are returned with ``kinds`` or ``worker_id``).
          kinds(list[str]): Only these kinds.
          before(str): Only those before this stream id (exclusive), to page back.
          since(int): Only those written at or after this time (server ms since the epoch).
          worker_id(str): Only those about this worker (the dead one, the zombie).
        """
        maximum = before if before == "+" else "(" + before
        entries = self.store.events(count, before=maximum, after="-" if since is None else str(since))
        found = [TrackerEvent.from_fields(fields, entry_id) for entry_id, fields in entries]
        return [
            event
            for event in found
            if (not kinds or event.kind in kinds) and (worker_id is None or event.worker_id == worker_id)
        ]

    def timeline(
        self,
        kinds: Sequence[str],
        *,
        window: int = 3_600_000,
        buckets: int = 60,
        limit: int = 10_000,
        since: int | None = None,
    ) -> Timeline:
        """Events of some kinds counted over the last ``window``, in ``buckets`` of equal width
        aligned on multiples of their width (by the stream ids: the Redis server's clock).  They are
        counted on the server, a batch of entries per script call; none is sent to the client.

        Parameters:
          kinds(list[str]): The kinds to count (``"recovered"``, ``"worker-dead"``, ...).
          window(int): How far back, in milliseconds.
          buckets(int): How many buckets.
          limit(int): At most this many stream entries are read, the newest first; beyond it the
            timeline is not ``complete``.
          since(int): Count only the events written at or after this time (server ms): the buckets
            before it stay 0 (for a caller that kept the counts of the buckets that ended).

        Raises:
          ConfigurationError: When ``window`` or ``buckets`` is not positive.
        """
        if buckets < 1 or window < buckets:
            raise ConfigurationError("timeline", "needs at least one bucket of at least 1 ms")
        step = window // buckets
        end = -(-self.server_time() // step) * step
        start = end - step * buckets
        counts = {kind: [0] * buckets for kind in kinds}
        before, read = "+", 0
        while read < limit:
            asked = min(TIMELINE_BATCH, limit - read)
            found, oldest, batch = self.store.count_events(
                kinds, start, step, buckets, before=before, after=max(start, since or 0), count=asked
            )
            for kind, series in batch.items():
                counts[kind] = [a + b for a, b in zip(counts[kind], series, strict=True)]
            read += found
            if found < asked:
                return Timeline(start, step, counts)
            before = "(" + oldest
        return Timeline(start, step, counts, complete=False)

    def events_after(self, after: str, *, count: int = 100) -> list[TrackerEvent]:
        """Events written after the stream id ``after`` ("0" for the oldest), oldest first: to follow
        the stream, pass the id of the last event seen."""
        entries = self.store.events_after(after, count)
        return [TrackerEvent.from_fields(fields, entry_id) for entry_id, fields in entries]

    def last_event_id(self) -> str:
        """The stream id of the newest event, or "0" when there is none."""
        newest = self.store.events(1)
        return newest[0][0] if newest else "0"

    def counters(self) -> Counters:
        """What the tracker counted: events by kind, and its sweeps."""
        found = self.store.counters()
        sweep_fields = {"sweeps", "sweep_ms", "last_sweep_ms"}
        return Counters(
            events={kind: count for kind, count in found.items() if kind not in sweep_fields},
            sweeps=found.get("sweeps", 0),
            sweep_ms=found.get("sweep_ms", 0),
            last_sweep_ms=found.get("last_sweep_ms", 0),
        )

    # At a glance --------------------------------------------------------------------------

    def status(self) -> ClusterStatus:
        """The namespace at a glance: workers by state, messages in flight by queue and actor,
        orphans waiting, locks held, counters.  The records are counted on the server, a batch of
        workers per script call (see ``benchmarks/inspection.py`` for what it costs)."""
        now = self.server_time()
        views, problems = self._worker_views(self._all_registrations(), now)
        states = {state: 0 for state in (ALIVE, UNRESPONSIVE, RECOVERING, DEAD, FENCED)}
        for view in views:
            states[view.state] += 1
        for view in self.dead_workers(limit=int(self.client.zcard(self.keys.dead_workers)) or 1):
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
        pipe = self.client.pipeline(transaction=False)
        for digest in sorted(self.store.identities()):
            pipe.hlen(self.keys.outbox(digest))
        pipe.zcount(self.keys.locks, now, "+inf")
        *outboxes, locks = pipe.execute()
        outbox = sum(int(n) for n in outboxes)
        return ClusterStatus(
            at=now,
            workers=states,
            inflight=sum(totals[0] for totals in queues.values()),
            orphans=sum(totals[1] for totals in queues.values()) + outbox,
            outbox=outbox,
            locks=int(locks),
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
        views, problems = self._worker_views(self._all_registrations(), now)
        workers = {view.worker_id: view for view in views}
        found: list[tuple[str, str, int]] = []
        for batch in _batches([v for v in views if v.inflight]):
            found += self.store.oldest_inflight([view.worker_id for view in batch], limit)
        found = sorted(found, key=lambda entry: (entry[2], entry[1]))[: max(0, limit)]
        pipe = self.client.pipeline(transaction=False)
        for worker_id, message_id, _ in found:
            pipe.hget(self.keys.inflight(worker_id), message_id)
        items = []
        for (worker_id, message_id, _), raw in zip(found, pipe.execute() if found else [], strict=True):
            if raw is None:  # it completed since
                continue
            view = self._inflight_view(message_id, text(raw), workers[worker_id], now, problems)
            if view is not None:
                items.append(view)
        return Page(items, "", problems)

    def _summaries(self, workers: Sequence[WorkerView]) -> list[InflightSummary]:
        """The workers' records counted on the server, in batches of about :data:`SUMMARY_RECORDS`."""
        return [
            self.store.summarize_inflight([(view.worker_id, view.alive) for view in batch])
            for batch in _batches(workers)
        ]

    def _all_registrations(self) -> dict[str, str]:
        """Every registration, read with ``HSCAN``."""
        registrations: dict[str, str] = {}
        scan = 0
        while True:
            scan, batch = self.store.scan_workers(scan, count=SCAN_COUNT)
            registrations.update(batch)
            if scan == 0:
                return registrations


def _unhealthy(view: WorkerView, process_gone: bool) -> str:
    """Why a worker is not alive and heartbeating, or "" when it is."""
    who = (
        "worker %r (host %r, pid %d)" % (view.worker_id, view.hostname, view.pid)
        if view.hostname
        else ("worker %r" % view.worker_id)
    )
    if view.state == ALIVE:
        return "%s is gone: its process exited (its heartbeat has not expired yet)" % who if process_gone else ""
    if view.state == UNRESPONSIVE:
        overdue = " %d ms ago" % view.overdue if view.overdue is not None else ""
        return "%s is unresponsive: its heartbeat expired%s" % (who, overdue)
    if view.state == RECOVERING:
        return "%s was declared dead: its messages are being recovered" % who
    if view.state == FENCED:
        return "%s was declared dead while alive (fenced): its process goes on as worker %r" % (who, view.fenced_as)
    return "%s was declared dead" % who


def _batches(workers: Sequence[WorkerView]) -> list[list[WorkerView]]:
    """Workers in batches of about :data:`SUMMARY_RECORDS` records and at most :data:`PIPELINE_WORKERS`
    workers: what one read-only script call may read without blocking Redis long."""
    batches: list[list[WorkerView]] = [[]]
    records = 0
    for worker in workers:
        if batches[-1] and (records + worker.inflight > SUMMARY_RECORDS or len(batches[-1]) >= PIPELINE_WORKERS):
            batches.append([])
            records = 0
        batches[-1].append(worker)
        records += worker.inflight
    return [batch for batch in batches if batch]


def _matches(view: InflightView, actor: str | None, queue: str | None, older_than: int | None) -> bool:
    return (
        (actor is None or view.actor_name == actor)
        and (queue is None or view.queue_name == queue)
        and (older_than is None or view.running_for > older_than)
    )


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
