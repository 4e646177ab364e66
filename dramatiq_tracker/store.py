"""Every Redis operation of the tracker, one method each.

Hooks, threads, the recovery loop, the CLI and the pytest plugin all go
through :class:`TrackerStore`; none of them formats a key or sends a
command of its own.  Methods raise :class:`redis.RedisError` as redis-py
does; deciding what an outage means is the caller's business.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, cast

from .keys import Keys, RedisBrokerKeys
from .records import InflightRecord, WorkerInfo
from .scripts import Scripts

if TYPE_CHECKING:
    import redis


def text(value: Any) -> str:
    """Redis replies are bytes unless the client decodes them: make them str."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def _int(value: str | None) -> int:
    try:
        return int(value or 0)
    except ValueError:
        return 0


def _lock_info(digest: str, fields: dict[Any, Any], ttl: int) -> LockInfo:
    lock = {text(name): text(value) for name, value in fields.items()}
    return LockInfo(
        digest=digest,
        message_id=lock.get("message_id", ""),
        attempt=_int(lock.get("attempt")),
        mode=lock.get("mode", ""),
        actor_name=lock.get("actor", ""),
        queue_name=lock.get("queue", ""),
        worker_id=lock.get("worker", ""),
        acquired_at=_int(lock.get("acquired_at")),
        ttl=int(ttl) if int(ttl) >= 0 else None,
    )


def _flat(records: Iterable[InflightRecord]) -> list[str]:
    args: list[str] = []
    for record in records:
        args += [record.message_id, record.token, record.to_json()]
    return args


@dataclasses.dataclass(frozen=True)
class DeclaredDead:
    """What :meth:`TrackerStore.declare_dead` found.

    Parameters:
      status(str): "dead", "alive" (heartbeat fresh) or "gone" (not registered).
      registration(str): The raw registration JSON of a dead worker.
      records(dict[str, str]): The raw in-flight records of a dead worker, by message id.
    """

    status: str
    registration: str = ""
    records: dict[str, str] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class OrphanClaim:
    """The outcome of claiming one orphan (see ``lua/claim_orphans.lua``).

    Parameters:
      running(bool): It was being processed, not only prefetched.
      taken(bool): This call took its record: it must deliver it again.
      recoveries(int): Its recovery count; the attempt number of its next delivery.
      claim_age(int): For a running orphan another caller took, how long ago, in ms.
      awaiting(bool): Its recovery is counted when the broker redelivers it.
      lock(str): What happened to its uniqueness lock: "deleted", "transferred" or "".
      outcome(str): "deliver", "quarantine" (dead-letter it), "drop" (it was cancelled or
        aborted), or "" while awaiting.
    """

    running: bool
    taken: bool
    recoveries: int
    claim_age: int
    awaiting: bool
    lock: str
    outcome: str


@dataclasses.dataclass(frozen=True)
class OrphanLock:
    """An orphan to claim: its uniqueness lock ("" when none), how many recoveries it
    may have, and whether dramatiq-abort holds a cancel or abort request for it."""

    message_id: str
    digest: str = ""
    mode: str = ""
    max_recoveries: int = 2**31
    aborted: bool = False


@dataclasses.dataclass(frozen=True)
class LockInfo:
    """A uniqueness lock, as operators see it.

    Parameters:
      digest(str)
      message_id(str): The message that owns it.
      attempt(int): The owning attempt (the message's recovery count then).
      mode(str): The lock mode.
      actor_name(str)
      queue_name(str)
      worker_id(str): The worker running the owner, or "" while it is queued.
      acquired_at(int): Server time, in ms since the epoch.
      ttl(int|None): Milliseconds until it expires; None when it never does.
    """

    digest: str
    message_id: str
    attempt: int
    mode: str
    actor_name: str
    queue_name: str
    worker_id: str
    acquired_at: int
    ttl: int | None


@dataclasses.dataclass(frozen=True)
class AtRiskStart:
    """What :meth:`TrackerStore.begin_at_risk` found.

    Parameters:
      previous_owner(str): "worker id|token" of another attempt recorded running the message, or "".
      history(dict[str, str]): The message's history (recoveries, awaiting_from, abort, ...).
    """

    previous_owner: str
    history: dict[str, str]

    @property
    def recoveries(self) -> int:
        return _int(self.history.get("recoveries"))


class TrackerStore:
    """The tracker's Redis operations for one namespace.

    Parameters:
      client(redis.Redis): The tracker's Redis client.
      namespace(str): The tracker namespace.
    """

    def __init__(self, client: redis.Redis, namespace: str) -> None:
        self.client = client
        self.keys = Keys(namespace)
        self.scripts = Scripts(client)

    # Worker lifecycle ------------------------------------------------------

    def _worker_keys(self, info: WorkerInfo) -> list[str]:
        keys = [self.keys.host(info.hostname)]
        if info.broker_id:
            keys.append(self.keys.broker(info.broker_id))
        return keys

    def register(
        self,
        info: WorkerInfo,
        records: Sequence[InflightRecord],
        heartbeat_timeout: int,
        zombies: Sequence[tuple[str, str]] = (),
    ) -> str:
        """Register ``info`` (or re-synchronise it) with everything it has in flight.

        Parameters:
          zombies(list): (message id, token) of attempts still running here that were
            recovered while this process was presumed dead.

        Returns:
          str: "ok", or "fenced" when this worker id was declared dead.
        """
        wid = info.worker_id
        k = self.keys
        keys = [k.workers, k.deadlines, k.dead_workers, k.heartbeat(wid), k.inflight(wid), k.running]
        args: list[Any] = [wid, info.to_json(), heartbeat_timeout, len(zombies)]
        for message_id, token in zombies:
            args += [message_id, token]
        args += _flat(records)
        return text(self.scripts["register"](keys=keys + self._worker_keys(info), args=args))

    def heartbeat(self, worker_id: str, heartbeat_timeout: int) -> str:
        """Refresh a worker's heartbeat.

        Returns:
          str: "ok", "fenced" (declared dead) or "unknown" (not registered).
        """
        k = self.keys
        keys = [k.workers, k.deadlines, k.dead_workers, k.heartbeat(worker_id)]
        return text(self.scripts["heartbeat"](keys=keys, args=[worker_id, heartbeat_timeout]))

    def flush(self, worker_id: str, started: Sequence[InflightRecord], ended: Sequence[tuple[str, str]]) -> bool:
        """Write a batch of started and ended messages of one worker.

        Returns:
          bool: False, with nothing written, when the worker is not registered or was declared dead.
        """
        k = self.keys
        keys = [k.workers, k.dead_workers, k.inflight(worker_id), k.running]
        args: list[Any] = [worker_id, len(started), *_flat(started)]
        for message_id, token in ended:
            keys.append(k.message(message_id))
            args += [message_id, token]
        return bool(self.scripts["flush"](keys=keys, args=args))

    def begin_at_risk(self, record: InflightRecord) -> AtRiskStart | None:
        """Record a message before it runs and read its history (``lua/begin_at_risk.lua``).

        Returns:
          AtRiskStart: None when the worker is not registered or was declared dead.
        """
        k = self.keys
        wid, mid = record.worker_id, record.message_id
        keys = [k.workers, k.dead_workers, k.inflight(wid), k.running, k.message(mid)]
        reply = [
            text(item)
            for item in self.scripts["begin_at_risk"](keys=keys, args=[wid, record.token, mid, record.to_json()])
        ]
        if reply[0] != "ok":
            return None
        return AtRiskStart(reply[1], dict(zip(reply[2::2], reply[3::2], strict=True)))

    def take_running(self, message_id: str, dead_owner: str, owner: str) -> bool:
        """Put an attempt in a dead attempt's place in the running index (``lua/take_running.lua``)."""
        return bool(self.scripts["take_running"](keys=[self.keys.running], args=[message_id, dead_owner, owner]))

    def mark_deferred(self, message_id: str, owner: str, history_ttl: int) -> None:
        """Note that a duplicate of a message was put off behind the attempt ``owner`` ("worker id|token")."""
        key = self.keys.message(message_id)
        pipe = self.client.pipeline(transaction=True)
        pipe.hset(key, "deferred_behind", owner)
        pipe.hdel(key, "completed_by")
        pipe.pexpire(key, history_ttl)
        pipe.execute()

    def remember_abort(self, message_id: str, mode: str, history_ttl: int) -> None:
        """Persist that a message was cancelled or aborted, longer than dramatiq-abort's own TTL."""
        key = self.keys.message(message_id)
        pipe = self.client.pipeline(transaction=True)
        pipe.hset(key, "abort", mode)
        pipe.pexpire(key, history_ttl)
        pipe.execute()

    def deregister(self, info: WorkerInfo) -> int:
        """Remove a stopped worker.

        Returns:
          int: How many messages were still in flight; the worker then stays, to be recovered.
        """
        wid = info.worker_id
        k = self.keys
        keys = [k.workers, k.deadlines, k.heartbeat(wid), k.inflight(wid), *self._worker_keys(info)]
        return int(self.scripts["deregister"](keys=keys, args=[wid]))

    # Reading ------------------------------------------------------------------

    def server_time(self) -> int:
        """The Redis server's clock, in ms since the epoch."""
        seconds, microseconds = self.client.time()
        return int(seconds) * 1000 + int(microseconds) // 1000

    def due_workers(self, limit: int) -> list[str]:
        """Ids of workers whose heartbeat deadline has passed, by the server's clock."""
        now = self.server_time()
        ids = self.client.zrangebyscore(self.keys.deadlines, "-inf", now, start=0, num=limit)
        return [text(worker_id) for worker_id in ids]

    def workers_on_host(self, hostname: str) -> dict[str, str]:
        """Raw registrations of the workers registered from ``hostname``, by worker id."""
        ids = [text(worker_id) for worker_id in self.client.smembers(self.keys.host(hostname))]
        if not ids:
            return {}
        registrations = self.client.hmget(self.keys.workers, ids)
        return {wid: text(raw) for wid, raw in zip(ids, registrations, strict=True) if raw is not None}

    def registration(self, worker_id: str) -> str | None:
        """A worker's raw registration, or None when it is not registered."""
        raw = self.client.hget(self.keys.workers, worker_id)
        return None if raw is None else text(raw)

    def workers(self) -> dict[str, str]:
        """Raw registrations of every registered worker, by worker id."""
        return {text(wid): text(raw) for wid, raw in self.client.hgetall(self.keys.workers).items()}

    def alive(self, worker_ids: Sequence[str]) -> list[bool]:
        """Whether each worker's heartbeat is fresh."""
        pipe = self.client.pipeline(transaction=False)
        for worker_id in worker_ids:
            pipe.exists(self.keys.heartbeat(worker_id))
        return [bool(found) for found in pipe.execute()]

    def inflight(self, worker_id: str) -> dict[str, str]:
        """A worker's raw in-flight records, by message id."""
        records = self.client.hgetall(self.keys.inflight(worker_id))
        return {text(mid): text(raw) for mid, raw in records.items()}

    def dead_workers(self) -> dict[str, int]:
        """Tombstoned worker ids with the server time they were declared dead."""
        found = cast("list[tuple[bytes, float]]", self.client.zrange(self.keys.dead_workers, 0, -1, withscores=True))
        return {text(wid): int(score) for wid, score in found}

    def message_history(self, message_id: str) -> dict[str, str]:
        """What the tracker remembers of a message (recoveries, ...)."""
        history = self.client.hgetall(self.keys.message(message_id))
        return {text(field): text(value) for field, value in history.items()}

    # Recovery -------------------------------------------------------------------

    def declare_dead(self, worker_id: str, *, process_gone: bool, retry_after: int) -> DeclaredDead:
        """Confirm a worker's death and fence it (``lua/declare_dead.lua``)."""
        k = self.keys
        keys = [k.workers, k.deadlines, k.dead_workers, k.heartbeat(worker_id), k.inflight(worker_id)]
        reply = self.scripts["declare_dead"](keys=keys, args=[worker_id, int(process_gone), retry_after])
        status = text(reply[0])
        if status != "dead":
            return DeclaredDead(status)
        flat = [text(item) for item in reply[2:]]
        return DeclaredDead(status, text(reply[1]), dict(zip(flat[::2], flat[1::2], strict=True)))

    def claim_orphans(
        self, worker_id: str, orphans: Sequence[OrphanLock], *, mode: str, history_ttl: int
    ) -> list[OrphanClaim]:
        """Claim a dead worker's orphans, counting each recovery once and releasing
        the uniqueness locks they own, atomically (``lua/claim_orphans.lua``).

        Parameters:
          mode(str): "deliver", "park" or "await"; see the script.
        """
        if not orphans:
            return []
        k = self.keys
        keys = [k.inflight(worker_id), k.running, k.outbox]
        args: list[Any] = [worker_id, history_ttl, mode]
        for orphan in orphans:
            keys.append(k.message(orphan.message_id))
            if orphan.digest:
                keys += [k.lock(orphan.digest), k.locks]
            mode_ = orphan.mode if orphan.digest else ""
            args += [orphan.message_id, orphan.digest, mode_, orphan.max_recoveries, int(orphan.aborted)]
        reply = self.scripts["claim_orphans"](keys=keys, args=args)
        return [
            OrphanClaim(bool(int(r)), bool(int(t)), int(n), int(age), bool(int(awaiting)), text(lock), text(outcome))
            for r, t, n, age, awaiting, lock, outcome in reply
        ]

    def finish_recovery(self, worker_id: str, hostname: str, broker_id: str, history_ttl: int) -> bool:
        """Forget a dead worker whose orphans were delivered again."""
        k = self.keys
        keys = [
            k.workers,
            k.deadlines,
            k.dead_workers,
            k.heartbeat(worker_id),
            k.inflight(worker_id),
            k.running,
            k.host(hostname),
        ]
        if broker_id:
            keys.append(k.broker(broker_id))
        return bool(self.scripts["finish_recovery"](keys=keys, args=[worker_id, history_ttl]))

    # Uniqueness locks ---------------------------------------------------------------

    def acquire_lock(
        self,
        digest: str,
        message_id: str,
        attempt: int,
        mode: str,
        actor_name: str,
        queue_name: str,
        worker_id: str,
        ttl: int | None,
    ) -> tuple[str, str, str]:
        """Take a uniqueness lock (``lua/acquire_lock.lua``).

        Returns:
          tuple: ("acquired" | "owned" | "conflict", owner message id, owner worker id).
        """
        k = self.keys
        args: list[Any] = [digest, message_id, attempt, mode, actor_name, queue_name, worker_id, ttl or 0]
        reply = [text(item) for item in self.scripts["acquire_lock"](keys=[k.lock(digest), k.locks], args=args)]
        return reply[0], (reply[1] if len(reply) > 1 else ""), (reply[2] if len(reply) > 2 else "")

    def release_lock(self, digest: str, message_id: str, attempt: int) -> bool:
        """Delete a uniqueness lock if this attempt of this message owns it (``lua/release_lock.lua``)."""
        k = self.keys
        return bool(self.scripts["release_lock"](keys=[k.lock(digest), k.locks], args=[digest, message_id, attempt]))

    def delete_lock(self, digest: str) -> bool:
        """Delete a uniqueness lock whoever owns it (an operator's action)."""
        k = self.keys
        return bool(self.scripts["delete_lock"](keys=[k.lock(digest), k.locks], args=[digest]))

    def locks(self) -> list[LockInfo]:
        """Every uniqueness lock held, oldest first."""
        digests = [text(d) for d in self.client.zrange(self.keys.locks, 0, -1)]
        pipe = self.client.pipeline(transaction=False)
        for digest in digests:
            pipe.hgetall(self.keys.lock(digest))
            pipe.pttl(self.keys.lock(digest))
        replies = pipe.execute()
        found = [
            _lock_info(digest, fields, ttl)
            for digest, fields, ttl in zip(digests, replies[::2], replies[1::2], strict=True)
            if fields
        ]
        return sorted(found, key=lambda lock: lock.acquired_at)

    def lock(self, digest: str) -> LockInfo | None:
        """One uniqueness lock, or None."""
        pipe = self.client.pipeline(transaction=False)
        pipe.hgetall(self.keys.lock(digest))
        pipe.pttl(self.keys.lock(digest))
        fields, ttl = pipe.execute()
        return _lock_info(digest, fields, ttl) if fields else None

    # Events -------------------------------------------------------------------------

    def append_event(self, fields: dict[str, str], maxlen: int) -> str:
        """Append an event to the capped stream; returns its id."""
        return text(self.client.xadd(self.keys.events, fields, maxlen=maxlen, approximate=True))  # type: ignore[arg-type]

    def events(self, count: int, *, before: str = "+") -> list[tuple[str, dict[str, str]]]:
        """The newest ``count`` events (ids and fields), newest first."""
        entries = self.client.xrevrange(self.keys.events, max=before, min="-", count=count) or []
        return [(text(entry_id), {text(k): text(v) for k, v in (fields or {}).items()}) for entry_id, fields in entries]

    def broker_peers(self, broker_id: str) -> list[str]:
        """Ids of the workers registered with a RedisBroker ``broker_id``."""
        return [text(wid) for wid in self.client.smembers(self.keys.broker(broker_id))]

    def outbox(self) -> dict[str, str]:
        """Orphans claimed for re-enqueueing and not yet confirmed, by message id."""
        return {text(mid): text(raw) for mid, raw in self.client.hgetall(self.keys.outbox).items()}

    def repark(self, message_id: str, entry: str) -> str | None:
        """Take over a stale outbox entry; returns the renewed entry, or None if someone else did."""
        renewed = self.scripts["repark_outbox"](keys=[self.keys.outbox], args=[message_id, entry])
        return text(renewed) if renewed else None

    def unpark(self, message_id: str) -> None:
        """Remove an orphan from the outbox once it has been re-enqueued."""
        self.client.hdel(self.keys.outbox, message_id)

    def acquire_lease(self, token: str, duration: int) -> bool:
        """Take or renew the periodic sweeper's lease."""
        return bool(self.scripts["acquire_lease"](keys=[self.keys.sweep_lease], args=[token, duration]))

    def release_lease(self, token: str) -> bool:
        """Give the sweeper's lease back if ``token`` holds it."""
        return bool(self.scripts["release_lease"](keys=[self.keys.sweep_lease], args=[token]))


class BrokerStore:
    """The operations on a RedisBroker's own keys that recovery needs.

    Parameters:
      client(redis.Redis): The broker's Redis client.
      namespace(str): The broker's namespace.
    """

    def __init__(self, client: redis.Redis, namespace: str) -> None:
        self.client = client
        self.keys = RedisBrokerKeys(namespace)
        self.scripts = Scripts(client)

    def unacked(self, broker_id: str, queue_names: Sequence[str]) -> dict[str, list[str]]:
        """The redis message ids a broker process fetched and did not ack, by queue."""
        pipe = self.client.pipeline(transaction=False)
        for queue_name in queue_names:
            pipe.smembers(self.keys.acks(broker_id, queue_name))
        found = pipe.execute()
        return {q: sorted(text(rid) for rid in ids) for q, ids in zip(queue_names, found, strict=True) if ids}

    def payloads(self, queue_name: str, redis_message_ids: Sequence[str]) -> list[bytes | None]:
        """The stored payloads of messages on a queue (None where missing)."""
        if not redis_message_ids:
            return []
        found = self.client.hmget(self.keys.messages(queue_name), list(redis_message_ids))
        return [value.encode("utf-8") if isinstance(value, str) else value for value in found]

    def settle(self, broker_id: str, moves: Sequence[OrphanMove]) -> set[str]:
        """Requeue, dead-letter or drop orphans from a dead process's acks (``lua/requeue_orphans.lua``).

        Returns:
          set[str]: The redis message ids this call settled.
        """
        if not moves:
            return set()
        queue_index: dict[str, int] = {}
        keys: list[str] = []
        args: list[Any] = [int(time.time() * 1000)]
        k = self.keys
        for move in moves:
            if move.queue_name not in queue_index:
                queue_index[move.queue_name] = len(queue_index) + 1
                keys += [
                    k.acks(broker_id, move.queue_name),
                    k.queue(move.queue_name),
                    k.messages(move.queue_name),
                    k.dead_letters(move.queue_name),
                    k.dead_letter_messages(move.queue_name),
                ]
            args += [queue_index[move.queue_name], move.redis_message_id, move.action, move.payload or b""]
        return {text(rid) for rid in self.scripts["requeue_orphans"](keys=keys, args=args)}


@dataclasses.dataclass(frozen=True)
class OrphanMove:
    """What to do with one orphan in a dead RedisBroker process's acks.

    Parameters:
      queue_name(str)
      redis_message_id(str)
      action(str): "requeue", "deadletter" or "drop".
      payload(bytes|None): A replacement payload, or None to keep the stored one.
    """

    queue_name: str
    redis_message_id: str
    action: str
    payload: bytes | None = None
