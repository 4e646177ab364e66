"""What the operator tools read of the tracker's Redis, one method each, and the read-only scripts
they run (``dramatiq_tracker/ops/lua``).

:class:`InspectionStore` is the core's :class:`~dramatiq_tracker.store.TrackerStore` with the
reads only operators need (and the testing toolkit, which inspects a namespace too): the inspection
API sends no command of its own, and the core carries none of these.  Every read is bounded: hashes
are read with ``HSCAN``, never ``KEYS``, and one script call reads at most about
:data:`SUMMARY_RECORDS` records, since a script blocks Redis while it runs.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple, TypeVar, cast

import redis
import redis.cluster

from ..keys import SEQUENCE_FIELD
from ..records import LockInfo
from ..scripts import Scripts, text, to_int
from ..store import TrackerStore

T = TypeVar("T")

#: The package whose ``lua/`` holds the operator tools' scripts.
OPS_SCRIPTS = "dramatiq_tracker.ops"
SEQUENCE_BYTES = SEQUENCE_FIELD.encode()

#: How many registrations or records one ``HSCAN`` call asks for.
SCAN_COUNT = 500
#: How many workers one pipeline or script call reads.
PIPELINE_WORKERS = 100
#: How many records one summary script reads, at most (unless one worker has more): it blocks Redis about
#: 5 ms (measured: 9.7 ms per 5,000 records).
SUMMARY_RECORDS = 2500
#: How many stream entries one ``count_events`` call counts: it blocks Redis about 2 ms.
TIMELINE_BATCH = 2000


@dataclasses.dataclass(frozen=True)
class InflightSummary:
    """In-flight records counted on the server (see :meth:`InspectionStore.summarize_inflight`).

    Parameters:
      queues(dict): queue name -> (records, records of workers not alive, oldest start time in ms).
      actors(dict): actor name -> records.
      corrupt(list): (worker id, message id) of the records that could not be read.
    """

    queues: dict[str, tuple[int, int, int]]
    actors: dict[str, int]
    corrupt: list[tuple[str, str]]


def script_batches(workers: Sequence[T], records: Callable[[T], int]) -> list[list[T]]:
    """Workers in batches of about :data:`SUMMARY_RECORDS` records and at most :data:`PIPELINE_WORKERS`
    workers: what one read-only script call may read without blocking Redis long.

    Parameters:
      records(callable): How many records a worker has in flight.
    """
    batches: list[list[T]] = [[]]
    count = 0
    for worker in workers:
        if batches[-1] and (count + records(worker) > SUMMARY_RECORDS or len(batches[-1]) >= PIPELINE_WORKERS):
            batches.append([])
            count = 0
        batches[-1].append(worker)
        count += records(worker)
    return [batch for batch in batches if batch]


def _known(value: float) -> int | None:
    """A number a script returned, None for its -1 (none) and -2 (unreadable)."""
    return None if value < 0 else int(value)


class WorkerState(NamedTuple):
    """What ``lua/worker_states.lua`` read of a registered worker; server ms, None where there is none.

    Parameters:
      last_beat(int|None): Its last heartbeat, while its heartbeat key lives.
      beat_unreadable(bool): Its heartbeat key lives but does not hold a time.
      declared_dead_at(int|None): When it was declared dead.
      deadline(int|None): Its heartbeat deadline; None when it has none (no sweep will find it).
      inflight(int): Its records in flight.
      subscribers(int|None): How many connections hold its presence channel; None when the server never
        saw its presence (it is judged by its heartbeat only); 0 when its presence is gone.
      absent_since(int|None): When a sweeper first found its presence gone.
    """

    last_beat: int | None
    beat_unreadable: bool
    declared_dead_at: int | None
    deadline: int | None
    inflight: int
    subscribers: int | None
    absent_since: int | None


class InspectionStore(TrackerStore):
    """The tracker's Redis as operators read it, for one namespace.

    Parameters:
      client(redis.Redis): The tracker's Redis client (a ``RedisCluster`` works too).
      namespace(str): The tracker namespace.
    """

    def __init__(self, client: redis.Redis, namespace: str) -> None:
        super().__init__(client, namespace)
        #: The operator tools' scripts; ``self.scripts`` are the core's.
        self.ops_scripts = Scripts(client, OPS_SCRIPTS)

    def has_data(self) -> bool:
        """Whether anything of a tracker was ever written in the namespace: workers (every one leaves its
        broker identity), tombstones, events, counters or locks."""
        k = self.keys
        return bool(self.client.exists(k.workers, k.identities, k.dead_workers, k.events, k.counters, k.locks))

    # Workers ----------------------------------------------------------------------------------

    def workers(self) -> dict[str, str]:
        """Raw registrations of every registered worker, by worker id (``HGETALL``: for tests and small
        namespaces; :meth:`all_registrations` reads them a batch at a time)."""
        return {text(wid): text(raw) for wid, raw in self.client.hgetall(self.keys.workers).items()}

    def scan_workers(self, cursor: int = 0, count: int = SCAN_COUNT) -> tuple[int, dict[str, str]]:
        """A page of registrations: the next cursor (0 at the end) and raw registrations by worker id."""
        cursor, found = self.client.hscan(self.keys.workers, cursor, count=count)
        return int(cursor), {text(wid): text(raw) for wid, raw in cast("dict[Any, Any]", found).items()}

    def all_registrations(self) -> dict[str, str]:
        """Every registration, read with ``HSCAN``."""
        registrations: dict[str, str] = {}
        scan = 0
        while True:
            scan, batch = self.scan_workers(scan)
            registrations.update(batch)
            if scan == 0:
                return registrations

    def identities(self) -> dict[str, str]:
        """Every broker identity seen in the namespace, by digest."""
        return {text(d): text(i) for d, i in self.client.hgetall(self.keys.identities).items()}

    def deadlines(self, identity: str) -> dict[str, int]:
        """Every worker of one broker identity with its heartbeat deadline (server ms)."""
        found = cast(
            "list[tuple[Any, float]]", self.client.zrange(self.keys.deadlines(identity), 0, -1, withscores=True)
        )
        return {text(wid): int(score) for wid, score in found}

    def worker_states(self, workers: Sequence[tuple[str, str]]) -> list[WorkerState]:
        """What the inspector needs to judge some workers (``lua/worker_states.lua``), a script call per
        :data:`PIPELINE_WORKERS` workers: their heartbeats, declarations of death, deadlines, records
        and presence.

        Parameters:
          workers(list): (worker id, broker identity digest) of each.
        """
        k = self.keys
        client: Any = self.client  # typed redis.Redis, but a RedisCluster works too
        sharded = "1" if isinstance(client, redis.cluster.RedisCluster) else "0"
        states = []
        for start in range(0, len(workers), PIPELINE_WORKERS):
            batch = workers[start : start + PIPELINE_WORKERS]
            keys = [k.dead_workers]
            for worker_id, identity in batch:
                keys += [k.heartbeat(worker_id), k.deadlines(identity), k.inflight(worker_id)]
                keys += [k.present(identity), k.absent(identity)]
            args = [sharded, k.presence_prefix, *(worker_id for worker_id, _ in batch)]
            found = json.loads(self.ops_scripts("worker_states", keys, args))
            states += [
                WorkerState(
                    last_beat=_known(beat),
                    beat_unreadable=beat == -2,
                    declared_dead_at=_known(declared),
                    deadline=_known(deadline),
                    inflight=int(records),
                    subscribers=_known(subscribers),
                    absent_since=_known(absent),
                )
                for beat, declared, deadline, records, subscribers, absent in found
            ]
        return states

    def dead_workers(self) -> dict[str, int]:
        """Tombstoned worker ids with the server time they were declared dead."""
        found = cast("list[tuple[Any, float]]", self.client.zrange(self.keys.dead_workers, 0, -1, withscores=True))
        return {text(wid): int(score) for wid, score in found}

    def tombstones(self, limit: int) -> list[tuple[str, int]]:
        """The ``limit`` workers declared dead last, newest first, with when (server ms)."""
        found = cast(
            "list[tuple[Any, float]]", self.client.zrevrange(self.keys.dead_workers, 0, limit - 1, withscores=True)
        )
        return [(text(wid), int(score)) for wid, score in found]

    def tombstone_count(self) -> int:
        """How many workers were declared dead and are remembered."""
        return int(self.client.zcard(self.keys.dead_workers))

    def declared_dead_at(self, worker_id: str) -> int | None:
        """When a worker was declared dead (server ms), or None."""
        declared = self.client.zscore(self.keys.dead_workers, worker_id)
        return None if declared is None else int(declared)

    def fenced_as(self, worker_ids: Sequence[str]) -> list[str]:
        """The id each worker went on as after it was declared dead while alive, or ""."""
        if not worker_ids:
            return []
        found = self.client.mget([self.keys.fenced_as(wid) for wid in worker_ids])
        return [text(value) if value is not None else "" for value in found]

    # Records in flight --------------------------------------------------------------------------

    def inflight(self, worker_id: str) -> dict[str, str]:
        """A worker's raw in-flight records, by message id."""
        records = self.client.hgetall(self.keys.inflight(worker_id))
        found = {text(mid): text(raw) for mid, raw in records.items()}
        found.pop(SEQUENCE_FIELD, None)
        return found

    def scan_inflight(self, worker_id: str, cursor: int = 0, count: int = SCAN_COUNT) -> tuple[int, dict[str, str]]:
        """A page of a worker's raw in-flight records: the next cursor (0 at the end) and records by message id."""
        cursor, records = self.client.hscan(self.keys.inflight(worker_id), cursor, count=count)
        found = {text(mid): text(raw) for mid, raw in cast("dict[Any, Any]", records).items()}
        found.pop(SEQUENCE_FIELD, None)
        return int(cursor), found

    def scan_inflight_matching(
        self,
        worker_id: str,
        cursor: int = 0,
        count: int = SCAN_COUNT,
        *,
        actor: str | None = None,
        queue: str | None = None,
        started_before: int | None = None,
    ) -> tuple[int, dict[str, str]]:
        """Like :meth:`scan_inflight`, but only the records of this actor, of this queue, started before
        this time (ms), filtered on the server (``lua/scan_inflight.lua``); unreadable ones come too."""
        args = [cursor, count, actor or "", queue or "", "" if started_before is None else started_before]
        reply = self.ops_scripts("scan_inflight", [self.keys.inflight(worker_id)], args)
        pairs = [text(item) for item in reply[1:]]
        return int(reply[0]), dict(zip(pairs[::2], pairs[1::2], strict=True))

    def records_of(self, workers: Sequence[tuple[str, int]]) -> Iterator[tuple[str, str, str]]:
        """Every record of these workers, given as (worker id, records in flight): (worker id, message id,
        raw record).  Workers with a few records are read a pipeline of them at a time, the others with
        ``HSCAN``."""
        small = [wid for wid, count in workers if 0 < count <= SCAN_COUNT * 4]
        for start in range(0, len(small), PIPELINE_WORKERS):
            batch = small[start : start + PIPELINE_WORKERS]
            pipe = self.client.pipeline(transaction=False)
            for worker_id in batch:
                pipe.hgetall(self.keys.inflight(worker_id))
            for worker_id, records in zip(batch, pipe.execute(), strict=True):
                for message_id, raw in records.items():
                    if message_id != SEQUENCE_BYTES and message_id != SEQUENCE_FIELD:
                        yield worker_id, text(message_id), text(raw)
        for worker_id in (wid for wid, count in workers if count > SCAN_COUNT * 4):
            scan = 0
            while True:
                scan, records = self.scan_inflight(worker_id, scan)
                for message_id, raw in records.items():
                    yield worker_id, message_id, raw
                if scan == 0:
                    break

    def record(self, worker_id: str, message_id: str) -> str | None:
        """A worker's raw record of a message, or None."""
        raw = self.client.hget(self.keys.inflight(worker_id), message_id)
        return None if raw is None else text(raw)

    def records(self, wanted: Sequence[tuple[str, Sequence[str]]]) -> list[list[str | None]]:
        """Raw records, in one round trip: for each (worker id, message ids), the worker's record of each
        message, or None."""
        if not wanted:
            return []
        pipe = self.client.pipeline(transaction=False)
        for worker_id, message_ids in wanted:
            pipe.hmget(self.keys.inflight(worker_id), list(message_ids))
        return [[None if raw is None else text(raw) for raw in found] for found in pipe.execute()]

    def running_owners(self, message_ids: Sequence[str]) -> list[str | None]:
        """The "worker id|token|retries" of the attempt recorded running each message, or None."""
        if not message_ids:
            return []
        owners = cast("list[Any]", self.client.hmget(self.keys.running, list(message_ids)))
        return [None if owner is None else text(owner) for owner in owners]

    def summarize_inflight(self, workers: Sequence[tuple[str, bool]]) -> InflightSummary:
        """Count the records of some workers by queue and actor, on the server (``lua/summarize_inflight.lua``).

        Parameters:
          workers(list): (worker id, whether it is alive) of each worker; a batch of
            :func:`script_batches`, since the script blocks Redis while it reads them.
        """
        if not workers:
            return InflightSummary({}, {}, [])
        keys = [self.keys.inflight(worker_id) for worker_id, _ in workers]
        args = ["0" if alive else "1" for _, alive in workers]
        found = json.loads(self.ops_scripts("summarize_inflight", keys, args))
        queues = found.get("queues") or {}
        return InflightSummary(
            queues={name: (int(n), int(orphans), int(oldest)) for name, (n, orphans, oldest) in queues.items()},
            actors={name: int(n) for name, n in (found.get("actors") or {}).items()},
            corrupt=[(workers[int(index) - 1][0], str(message_id)) for index, message_id in found.get("corrupt") or []],
        )

    def oldest_inflight(self, worker_ids: Sequence[str], limit: int) -> list[tuple[str, str, int]]:
        """The ``limit`` longest-running records of some workers, found on the server
        (``lua/oldest_inflight.lua``): (worker id, message id, started_at), oldest first.

        Parameters:
          worker_ids(list[str]): A batch of :func:`script_batches`, since the script blocks Redis
            while it reads their records.
          limit(int)
        """
        if not worker_ids or limit < 1:
            return []
        keys = [self.keys.inflight(worker_id) for worker_id in worker_ids]
        found = json.loads(self.ops_scripts("oldest_inflight", keys, [limit]))
        return [(worker_ids[int(index) - 1], str(message_id), int(started)) for index, message_id, started in found]

    # Outboxes -----------------------------------------------------------------------------------

    def outbox_size(self, identity: str) -> int:
        """How many orphans wait in the outbox of one broker identity."""
        return int(self.client.hlen(self.keys.outbox(identity)))

    def outbox_entries(self, identity: str, limit: int) -> list[tuple[str, str]]:
        """Up to ``limit`` entries of the outbox of one broker identity: (message id, raw entry)."""
        entries: list[tuple[str, str]] = []
        scan = 0
        while len(entries) < limit:
            scan, found = self.client.hscan(self.keys.outbox(identity), scan, count=SCAN_COUNT)
            entries += [(text(field), text(value)) for field, value in cast("dict[Any, Any]", found).items()]
            if scan == 0:
                break
        return entries[:limit]

    def outbox_and_lock_counts(self, identities: Sequence[str], now: int) -> tuple[dict[str, int], int]:
        """How many orphans wait in the outbox of each of these broker identities (given by their digests),
        and how many uniqueness locks are held at ``now`` (server ms), in one round trip."""
        pipe = self.client.pipeline(transaction=False)
        for identity in identities:
            pipe.hlen(self.keys.outbox(identity))
        pipe.zcount(self.keys.locks, now, "+inf")
        *outboxes, locks = pipe.execute()
        return dict(zip(identities, (int(n) for n in outboxes), strict=True)), int(locks)

    # Messages and locks -------------------------------------------------------------------------

    def message_history(self, message_id: str) -> dict[str, str]:
        """What the tracker remembers of a message (recoveries, attempt, outcome, ...)."""
        history = self.client.hgetall(self.keys.message(message_id))
        return {text(field): text(value) for field, value in history.items()}

    def message_state(self, message_id: str) -> tuple[dict[str, str], int | None, str]:
        """A message's history, how long it is kept (ms; None: for ever) and the "worker id|token|retries"
        of the attempt recorded running it (or ""), in one round trip."""
        k = self.keys
        pipe = self.client.pipeline(transaction=False)
        pipe.hgetall(k.message(message_id))
        pipe.pttl(k.message(message_id))
        pipe.hget(k.running, message_id)
        fields, ttl, owner = pipe.execute()
        history = {text(name): text(value) for name, value in fields.items()}
        return history, int(ttl) if int(ttl) >= 0 else None, text(owner) if owner is not None else ""

    def lock(self, digest: str) -> LockInfo | None:
        """One uniqueness lock, or None."""
        found = self.locks([digest])
        return found[0] if found else None

    def lock_entries(self, digests: Sequence[str]) -> list[tuple[str, dict[str, str], int | None]]:
        """Uniqueness locks as they are stored, in one round trip: (digest, fields, milliseconds until it
        expires or None) of each lock held, in the order asked."""
        return [
            (digest, {text(name): text(value) for name, value in fields.items()}, int(ttl) if int(ttl) >= 0 else None)
            for digest, fields, ttl in self.raw_locks(digests)
        ]

    def lock_count(self) -> int:
        """How many uniqueness locks the index holds (expired ones too, until the next lock taken forgets them)."""
        return int(self.client.zcard(self.keys.locks))

    # Events and counters ------------------------------------------------------------------------

    def events_after(self, after: str, count: int) -> list[tuple[str, dict[str, str]]]:
        """Up to ``count`` events written after the stream id ``after``, oldest first."""
        entries = self.client.xrange(self.keys.events, min="(" + after, max="+", count=count) or []
        return [(text(entry_id), {text(k): text(v) for k, v in (fields or {}).items()}) for entry_id, fields in entries]

    def count_events(
        self,
        kinds: Sequence[str],
        start: int,
        step: int,
        buckets: int,
        *,
        before: str = "+",
        after: int | None = None,
        count: int = TIMELINE_BATCH,
    ) -> tuple[int, str, dict[str, list[int]]]:
        """Count a batch of the newest events by kind, in ``buckets`` of ``step`` ms from ``start`` (ms), on
        the server (``lua/count_events.lua``): those before the stream id ``before`` and written at or after
        ``after`` (ms; default: ``start``).

        Returns:
          tuple: (entries read, the id of the oldest one read or "", kind -> counts, oldest bucket first).
        """
        args = [before, start if after is None else after, count, start, step, buckets, *kinds]
        reply = self.ops_scripts("count_events", [self.keys.events], args)
        counts = [int(n) for n in reply[2:]]
        by_kind = {kind: counts[i * buckets : (i + 1) * buckets] for i, kind in enumerate(kinds)}
        return int(reply[0]), text(reply[1]), by_kind

    def counters(self) -> dict[str, int]:
        """How many times each kind of event happened, and the sweep statistics (0 for a value that is
        not a number)."""
        return {field: to_int(value) for field, value in self.raw_counters().items()}

    def raw_counters(self) -> dict[str, str]:
        """The counters, as they are stored: how many times each kind of event happened, the sweep
        statistics and the recovery latency's buckets."""
        return {text(k): text(v) for k, v in self.client.hgetall(self.keys.counters).items()}
