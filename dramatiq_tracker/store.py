"""The core's Redis operations, one method each, and the typed contract of its Lua scripts.

Hooks, threads and the recovery loop go through :class:`TrackerStore` (the
tracker's Redis) or :class:`~dramatiq_tracker.broker_store.BrokerStore` (a
RedisBroker's own keys); none of them formats a key or sends a command of
its own.  The operator tools read through their own store, built on this one
(:mod:`dramatiq_tracker.ops.reads`).  Methods raise :class:`redis.RedisError`
as redis-py does; deciding what an outage means is the caller's business.

Scripts are shipped in ``dramatiq_tracker/lua``, one per atomic operation,
each headed by its KEYS/ARGV/return contract, and loaded by
:mod:`dramatiq_tracker.scripts`.  Every key a script touches is passed in
``KEYS``, and all of a namespace's keys share one hash tag, so they work on
a Redis Cluster as on a single server.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

import redis
import redis.cluster

from .errors import RecoveryTakenOver
from .keys import Keys
from .records import LockInfo
from .scripts import (
    AtRiskStart,
    ClaimMode,
    ClaimReply,
    ClaimRequest,
    Completion,
    DeathReason,
    DeathStatus,
    DeclaredDead,
    LockOutcome,
    LockStatus,
    Outcome,
    PresenceSeen,
    PresenceStatus,
    RecordEntry,
    RegisterStatus,
    Scripts,
    WriteStatus,
    checked_reply,
    text,
    to_int,
)

if TYPE_CHECKING:
    from .records import WorkerInfo


#: How many events one script call appends.
EVENT_BATCH = 1000


def _flat(entries: Iterable[tuple[Any, ...]]) -> list[Any]:
    return [value for entry in entries for value in entry]


class TrackerStore:
    """The tracker's Redis operations for one namespace.

    Parameters:
      client(redis.Redis): The tracker's Redis client (a ``RedisCluster`` works too).
      namespace(str): The tracker namespace.
    """

    def __init__(self, client: redis.Redis, namespace: str) -> None:
        self.client = client
        self.keys = Keys(namespace)
        self.scripts = Scripts(client)
        #: Presence channels are sharded on a Redis Cluster (they live in the namespace's slot).
        self.sharded = isinstance(client, redis.cluster.RedisCluster)

    # Worker lifecycle ------------------------------------------------------

    def _worker_keys(self, info: WorkerInfo) -> list[str]:
        keys = [self.keys.host(info.hostname)]
        if info.broker_id:
            keys.append(self.keys.broker(info.broker_id))
        return keys

    def register(
        self,
        info: WorkerInfo,
        identity: str,
        heartbeat_timeout: int,
        records: Sequence[RecordEntry] = (),
        zombies: Sequence[tuple[str, str]] = (),
        *,
        present: bool = False,
    ) -> tuple[RegisterStatus, PresenceSeen]:
        """Register ``info`` (or re-synchronise it) with everything it has in flight.

        Parameters:
          identity(str): The digest of the worker's broker identity.
          records(list): (message id, "token|retries", record JSON) of each attempt in flight.
          zombies(list): (message id, "token|retries") of attempts still running here that were
            recovered while this process was presumed dead.
          present(bool): The worker's presence connection confirmed its subscription.
        """
        wid, k = info.worker_id, self.keys
        keys = [
            k.workers, k.identities, k.deadlines(identity), k.dead_workers, k.heartbeat(wid), k.inflight(wid),
            k.running, k.present(identity), k.absent(identity), k.server, *self._worker_keys(info),
        ]  # fmt: skip
        args = [
            wid,
            info.to_json(),
            heartbeat_timeout,
            identity,
            info.broker_identity,
            *self._presence_args(wid, present),
        ]
        reply = self.scripts("register", keys, [*args, len(zombies), *_flat(zombies), *_flat(records)])
        return checked_reply(reply[0], RegisterStatus), checked_reply(reply[1], PresenceSeen)

    def heartbeat(
        self, worker_id: str, identity: str, heartbeat_timeout: int, writes: tuple[int, int], *, present: bool = False
    ) -> tuple[WriteStatus, PresenceSeen]:
        """Refresh a worker's heartbeat and check that its records are what it wrote, and that the
        server sees its presence.

        Parameters:
          writes(tuple): The lowest and highest write count the worker expects.
          present(bool): The worker's presence connection confirmed its subscription.
        """
        k = self.keys
        keys = [
            k.workers, k.deadlines(identity), k.dead_workers, k.heartbeat(worker_id), k.inflight(worker_id),
            k.present(identity), k.absent(identity), k.server,
        ]  # fmt: skip
        args = [worker_id, heartbeat_timeout, *writes, *self._presence_args(worker_id, present)]
        reply = self.scripts("heartbeat", keys, args)
        return checked_reply(reply[0], WriteStatus), checked_reply(reply[1], PresenceSeen)

    def _presence_args(self, worker_id: str, present: bool) -> list[str]:
        return [self.keys.presence_channel(worker_id) if present else "", "1" if self.sharded else "0"]

    def check_presence(self, identity: str, settle: int, caller: str | None) -> tuple[PresenceStatus, dict[str, int]]:
        """Note which workers of one broker identity lost their presence, and say for how long it has
        been gone, their heartbeat not renewed meanwhile (``lua/check_presence.lua``).

        Parameters:
          settle(int): How long after the namespace first saw this server nothing is judged, in ms.
          caller(str|None): The caller's worker id: its own presence and heartbeat must be on this server.

        Returns:
          tuple: "ok" and worker id -> how long its presence has been gone (ms); or "settling" or
          "unsure" and nothing.
        """
        k = self.keys
        keys = [k.present(identity), k.absent(identity), k.server]
        if caller:
            keys.append(k.heartbeat(caller))
        args = [k.presence_prefix, "1" if self.sharded else "0", settle, caller or ""]
        reply = [text(item) for item in self.scripts("check_presence", keys, args)]
        absences = {worker_id: to_int(age) for worker_id, age in zip(reply[1::2], reply[2::2], strict=True)}
        return checked_reply(reply[0], PresenceStatus), absences

    def presence_seen(self, identity: str, worker_id: str) -> bool:
        """Whether the server saw ``worker_id``'s presence subscription (it is judged by presence)."""
        return bool(self.client.hexists(self.keys.present(identity), worker_id))

    def presence(self, worker_ids: Sequence[str]) -> list[int]:
        """How many subscribers each worker's presence channel has (``PUBSUB NUMSUB``, or
        ``SHARDNUMSUB`` on a Redis Cluster, on the node of the namespace's slot)."""
        if not worker_ids:
            return []
        channels = [self.keys.presence_channel(worker_id) for worker_id in worker_ids]
        reply = self.scripts("count_presence", [self.keys.server], ["1" if self.sharded else "0", *channels])
        return [to_int(count) for count in reply]

    def flush(
        self,
        worker_id: str,
        writes: tuple[int, int],
        started: Sequence[RecordEntry],
        ended: Sequence[tuple[str, str, Completion]],
    ) -> WriteStatus:
        """Write a batch of started and ended messages of one worker (``lua/flush.lua``).

        Parameters:
          writes(tuple): The lowest and highest write count the worker expects.
          started(list): (message id, "token|retries", record JSON) of each attempt that started.
          ended(list): (message id, token, "ack" or "nack") of each attempt that ended.
        """
        k = self.keys
        keys = [k.workers, k.dead_workers, k.inflight(worker_id), k.running]
        keys += [k.message(message_id) for message_id, _, _ in ended]
        args = [worker_id, *writes, len(started), *_flat(started), *_flat(ended)]
        status: WriteStatus = checked_reply(self.scripts("flush", keys, args), WriteStatus)
        return status

    def begin_at_risk(
        self, worker_id: str, owner: str, message_id: str, record: str, copy: str, history_ttl: int
    ) -> AtRiskStart | Literal["fenced", "unknown"]:
        """Record a message before it runs and read its history (``lua/begin_at_risk.lua``).

        Parameters:
          owner(str): This attempt's "token|retries".
          record(str): Its in-flight record, JSON.
          copy(str): For a copy enqueued again from the outbox, "<attempt>|<claim token>"; else "".
        """
        k = self.keys
        keys = [k.workers, k.dead_workers, k.inflight(worker_id), k.running, k.message(message_id), k.counters]
        args = [worker_id, owner, message_id, record, copy, history_ttl]
        reply = [text(item) for item in self.scripts("begin_at_risk", keys, args)]
        status: Literal["ok", "fenced", "unknown"] = checked_reply(reply[0], Literal["ok", "fenced", "unknown"])
        if status != "ok":
            return status
        return AtRiskStart(reply[1], dict(zip(reply[2::2], reply[3::2], strict=True)))

    def running_owner(self, message_id: str) -> str | None:
        """The attempt the running index names for the message ("worker id|token|retries"), or None."""
        owner = self.client.hget(self.keys.running, message_id)
        return None if owner is None else text(owner)

    def take_running(self, message_id: str, previous: str, owner: str) -> bool:
        """Put an attempt in the place of an ended or dead one in the running index."""
        return bool(self.scripts("take_running", [self.keys.running], [message_id, previous, owner]))

    def note_history(self, message_id: str, history_ttl: int, fields: Mapping[str, str], *, forget: str = "") -> None:
        """Set fields of a message's history, deleting ``forget`` first (``lua/note_history.lua``)."""
        args = [history_ttl, forget, *_flat(fields.items())]
        self.scripts("note_history", [self.keys.message(message_id)], args)

    def note_stopping(self, info: WorkerInfo) -> bool:
        """Rewrite a registered worker's registration, which says it is stopping (``lua/note_stopping.lua``)."""
        return bool(self.scripts("note_stopping", [self.keys.workers], [info.worker_id, info.to_json()]))

    def deregister(self, info: WorkerInfo, identity: str) -> int:
        """Remove a stopped worker.

        Returns:
          int: How many messages were still in flight; the worker then stays, to be recovered.
        """
        wid, k = info.worker_id, self.keys
        keys = [
            k.workers, k.deadlines(identity), k.heartbeat(wid), k.inflight(wid),
            k.present(identity), k.absent(identity), *self._worker_keys(info),
        ]  # fmt: skip
        return to_int(self.scripts("deregister", keys, [wid]))

    # Reading ------------------------------------------------------------------

    def server_time(self) -> int:
        """The clock of the Redis server that holds the namespace, in ms since the epoch."""
        seconds, microseconds = self.scripts("server_time", [self.keys.workers], [])
        return to_int(seconds) * 1000 + to_int(microseconds) // 1000

    def due_workers(self, identity: str, limit: int, *, now: int | None = None) -> list[str]:
        """Ids of the workers of one broker identity whose heartbeat deadline has passed, oldest first."""
        now = self.server_time() if now is None else now
        found = self.client.zrangebyscore(self.keys.deadlines(identity), "-inf", now, start=0, num=limit)
        return [text(worker_id) for worker_id in found]

    def postpone(self, identity: str, worker_id: str, until: int) -> None:
        """Move a worker that cannot be recovered now out of the way of the others until ``until`` (server ms)."""
        self.client.zadd(self.keys.deadlines(identity), {worker_id: until}, xx=True)

    def workers_on_host(self, hostname: str) -> dict[str, str]:
        """Raw registrations of the workers registered from ``hostname``, by worker id."""
        ids = [text(worker_id) for worker_id in self.client.smembers(self.keys.host(hostname))]
        return self.registrations(ids)

    def registration(self, worker_id: str) -> str | None:
        """A worker's raw registration, or None when it is not registered."""
        raw = self.client.hget(self.keys.workers, worker_id)
        return None if raw is None else text(raw)

    def registrations(self, worker_ids: Sequence[str]) -> dict[str, str]:
        """Raw registrations of the given workers that are registered, by worker id."""
        if not worker_ids:
            return {}
        found = self.client.hmget(self.keys.workers, list(worker_ids))
        return {wid: text(raw) for wid, raw in zip(worker_ids, found, strict=True) if raw is not None}

    def declared_dead(self, worker_ids: Sequence[str]) -> set[str]:
        """Those of the given workers that were declared dead (tombstoned)."""
        if not worker_ids:
            return set()
        pipe = self.client.pipeline(transaction=False)
        for worker_id in worker_ids:
            pipe.zscore(self.keys.dead_workers, worker_id)
        return {wid for wid, score in zip(worker_ids, pipe.execute(), strict=True) if score is not None}

    def alive(self, worker_ids: Sequence[str]) -> list[bool]:
        """Whether each worker's heartbeat is fresh."""
        if not worker_ids:
            return []
        pipe = self.client.pipeline(transaction=False)
        for worker_id in worker_ids:
            pipe.exists(self.keys.heartbeat(worker_id))
        return [bool(found) for found in pipe.execute()]

    def note_fenced(self, old_worker_id: str, new_worker_id: str, history_ttl: int) -> None:
        """Remember, for operators, that a worker declared dead while alive goes on as ``new_worker_id``."""
        self.client.set(self.keys.fenced_as(old_worker_id), new_worker_id, px=history_ttl)

    def revoked(self, worker_id: str) -> dict[str, int]:
        """The messages recovered from a worker declared dead, with the attempt that superseded its copies."""
        found = self.client.hgetall(self.keys.revoked(worker_id))
        return {text(mid): to_int(attempt) for mid, attempt in found.items()}

    # Recovery -------------------------------------------------------------------

    def declare_dead(
        self,
        worker_id: str,
        identity: str,
        *,
        reason: DeathReason,
        retry_after: int,
        settle: int,
        grace: int,
        caller: str | None = None,
        claim: str = "",
        history_ttl: int = 0,
        heartbeat_timeout: int = 0,
        dry_run: bool = False,
    ) -> DeclaredDead:
        """Confirm a worker's death and fence it (``lua/declare_dead.lua``).

        Parameters:
          reason(str): Why it would be dead: "process", "presence" or "heartbeat".
          retry_after(int): When to look at it again should the recovery be interrupted, in ms.
          settle(int): How long after the namespace first saw this server no death is judged by
            presence or heartbeat, in ms.
          grace(int): How long its presence must have been gone, for "presence", in ms.
          caller(str|None): The caller's worker id: its own heartbeat must be on this server.
          claim(str): A token to claim the recovery of the worker under, if it is dead (see
            :class:`~dramatiq_tracker.recovery_claim.RecoveryClaim`); "" to only declare it dead.
          history_ttl(int): How long the claim is kept, in ms.
          heartbeat_timeout(int): Its heartbeat deadline minus this is its last heartbeat, in ms.
          dry_run(bool): Only say what it would find; change nothing.
        """
        k = self.keys
        keys = [
            k.workers, k.deadlines(identity), k.dead_workers, k.heartbeat(worker_id), k.inflight(worker_id),
            k.present(identity), k.absent(identity), k.server, k.recovery(worker_id),
        ]  # fmt: skip
        if caller:
            keys.append(k.heartbeat(caller))
        channel = k.presence_channel(worker_id)
        args = [
            worker_id, reason, retry_after, int(dry_run), settle, grace, channel, "1" if self.sharded else "0",
            claim, caller or "", history_ttl or retry_after, heartbeat_timeout,
        ]  # fmt: skip
        reply = self.scripts("declare_dead", keys, args)
        status: DeathStatus = checked_reply(reply[0], DeathStatus)
        if status != "dead":
            return DeclaredDead(status)
        flat = [text(item) for item in reply[4:]]
        records = dict(zip(flat[::2], flat[1::2], strict=True))
        why = checked_reply(reply[3], DeathReason)
        return DeclaredDead(status, text(reply[1]), records, to_int(reply[2]), why)

    def claim_orphans(
        self,
        worker_id: str,
        identity: str,
        requests: Sequence[ClaimRequest],
        *,
        mode: ClaimMode,
        history_ttl: int,
        claim: str = "",
        starting: str = "",
        dry_run: bool = False,
    ) -> list[ClaimReply]:
        """Claim a dead worker's orphans, counting each recovery once, giving each moved copy a new
        attempt and releasing the uniqueness locks they own, atomically (``lua/claim_orphans.lua``).

        Parameters:
          claim(str): The sweeper's recovery claim token; "" for a start that claims its own orphan.
          starting(str): For a start, its attempt's name, which takes the dead attempt's place.
          dry_run(bool): Decide and reply as a claim would; change nothing (a plan).

        Raises:
          RecoveryTakenOver: When the claim token is not the worker's recovery claim any more.
        """
        if not requests:
            return []
        k = self.keys
        keys = [
            k.inflight(worker_id), k.running, k.outbox(identity), k.revoked(worker_id), k.recovery(worker_id),
            k.counters,
        ]  # fmt: skip
        orphans = []
        for request in requests:
            keys.append(k.message(request.message_id))
            if request.digest:
                keys += [k.lock(request.digest), k.locks]
            orphans.append(
                [
                    request.message_id,
                    request.attempt,
                    request.digest,
                    request.mode if request.digest else "",
                    request.max_recoveries,
                    int(request.aborted),
                ]
            )
        args = [worker_id, history_ttl, mode, json.dumps(orphans), int(dry_run), claim, starting]
        raw = self.scripts("claim_orphans", keys, args)
        if text(raw) == "fenced":
            raise RecoveryTakenOver(worker_id)
        reply = json.loads(raw)
        # An empty Lua table encodes as an object.
        replies = reply if isinstance(reply, list) else []
        return [
            ClaimReply(
                running=running == 1,
                taken=taken == 1,
                recoveries=int(recoveries),
                attempt=int(attempt),
                by_start=by_start == 1,
                awaiting=awaiting == 1,
                lock=checked_reply(lock, LockOutcome),
                outcome=checked_reply(outcome, Outcome),
            )
            for running, taken, recoveries, attempt, by_start, awaiting, lock, outcome in replies
        ]

    def finish_recovery(self, info: WorkerInfo, identity: str, history_ttl: int, claim: str = "") -> bool:
        """Forget a dead worker whose orphans were settled, keeping its tombstone; under the
        caller's recovery claim token, unless it is "" (an operator).  False when nothing was done."""
        wid, k = info.worker_id, self.keys
        keys = [
            k.workers, k.deadlines(identity), k.dead_workers, k.heartbeat(wid), k.inflight(wid), k.running,
            k.present(identity), k.absent(identity), k.recovery(wid), *self._worker_keys(info),
        ]  # fmt: skip
        return bool(self.scripts("finish_recovery", keys, [wid, history_ttl, claim]))

    def adopt_worker(self, info: WorkerInfo, identity: str, *, resumed: bool = False) -> bool:
        """Register, due for recovery, a dead worker the tracker's Redis forgot (``lua/adopt_worker.lua``);
        with ``resumed``, one declared dead before that fetched again since, and died unregistered."""
        k = self.keys
        keys = [
            k.workers, k.identities, k.deadlines(identity), k.dead_workers,
            k.host(info.hostname), k.broker(info.broker_id),
        ]  # fmt: skip
        args = [info.worker_id, info.to_json(), identity, info.broker_identity, int(resumed)]
        return bool(self.scripts("adopt_worker", keys, args))

    def outbox(self, identity: str) -> dict[str, str]:
        """Orphans claimed for re-enqueueing onto one broker identity and not yet confirmed, by message id."""
        return {text(mid): text(raw) for mid, raw in self.client.hgetall(self.keys.outbox(identity)).items()}

    def repark(self, identity: str, message_id: str, worker_id: str, claim: str) -> str | None:
        """Take a dead worker's orphan parked in the outbox, under the caller's recovery claim token,
        right before enqueueing it again (``lua/repark_outbox.lua``).

        Returns:
          str|None: The entry, or None when it is not there any more (it was enqueued).

        Raises:
          RecoveryTakenOver: When the claim token is not the worker's recovery claim any more.
        """
        keys = [self.keys.outbox(identity), self.keys.recovery(worker_id)]
        entry = text(self.scripts("repark_outbox", keys, [message_id, claim]))
        if entry == "fenced":
            raise RecoveryTakenOver(worker_id)
        return None if entry == "gone" else entry

    def renew_recovery(
        self, identity: str, worker_id: str, claim: str, takeover_after: int, ttl: int, call: str
    ) -> int:
        """Renew a recovery claim, noting a lock cleaner call (``lua/renew_recovery.lua``): 0 when the claim
        is not the caller's, 2 when the call was noted already, else 1."""
        keys = [self.keys.recovery(worker_id), self.keys.deadlines(identity)]
        return to_int(self.scripts("renew_recovery", keys, [worker_id, claim, takeover_after, ttl, call]))

    def take_recovery(self, worker_id: str, claim: str, holder: str, takeover_after: int, ttl: int) -> bool:
        """Claim a worker's recovery unless another renewed its claim lately (``lua/take_recovery.lua``)."""
        return bool(
            self.scripts("take_recovery", [self.keys.recovery(worker_id)], [claim, holder, takeover_after, ttl])
        )

    def release_recovery(self, identity: str, worker_id: str, claim: str) -> bool:
        """Let another sweeper go on with a recovery at once (``lua/release_recovery.lua``)."""
        keys = [self.keys.recovery(worker_id), self.keys.deadlines(identity)]
        return bool(self.scripts("release_recovery", keys, [worker_id, claim]))

    def unpark(self, identity: str, message_id: str) -> None:
        """Remove an orphan from the outbox once it has been re-enqueued."""
        self.client.hdel(self.keys.outbox(identity), message_id)

    def acquire_lease(
        self, identity: str, token: str, duration: int, worker_id: str = "", *, presence: bool = False
    ) -> bool:
        """Take or renew the lease of the periodic sweeper of one broker identity (``lua/acquire_lease.lua``).

        Parameters:
          token(str): The sweeper's own token.
          duration(int): How long the lease is held, in ms.
          worker_id(str): The sweeper's worker id, named beside its token.
          presence(bool): Take the lease over from a holder whose presence is gone.
        """
        k = self.keys
        args = ["%s|%s" % (token, worker_id), duration, k.presence_prefix if presence else "", int(self.sharded)]
        return bool(self.scripts("acquire_lease", [k.sweep_lease(identity), k.present(identity)], args))

    def release_lease(self, identity: str, token: str, worker_id: str = "") -> bool:
        """Give the sweeper's lease back if ``token`` (of ``worker_id``) holds it."""
        return bool(self.scripts("release_lease", [self.keys.sweep_lease(identity)], ["%s|%s" % (token, worker_id)]))

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
    ) -> tuple[LockStatus, str, str]:
        """Take a uniqueness lock (``lua/acquire_lock.lua``).

        Returns:
          tuple: ("acquired" | "owned" | "conflict", owner message id, owner worker id).
        """
        k = self.keys
        args = [digest, message_id, attempt, mode, actor_name, queue_name, worker_id, ttl or 0]
        reply = [text(item) for item in self.scripts("acquire_lock", [k.lock(digest), k.locks], args)]
        status: LockStatus = checked_reply(reply[0], LockStatus)
        return status, (reply[1] if len(reply) > 1 else ""), (reply[2] if len(reply) > 2 else "")

    def release_lock(self, digest: str, message_id: str, attempt: int, worker_id: str) -> bool:
        """Delete a uniqueness lock if this attempt of this message may (``lua/release_lock.lua``)."""
        k = self.keys
        keys = [k.lock(digest), k.locks, k.dead_workers]
        return bool(self.scripts("release_lock", keys, [digest, message_id, attempt, worker_id]))

    def delete_lock(self, digest: str) -> bool:
        """Delete a uniqueness lock whoever owns it (an operator's action)."""
        k = self.keys
        return bool(self.scripts("delete_lock", [k.lock(digest), k.locks], [digest]))

    def lock_digests(self, start: int = 0, count: int = -1) -> list[str]:
        """Lock digests, by expiry (locks without a TTL last)."""
        end = -1 if count < 0 else start + count - 1
        return [text(d) for d in self.client.zrange(self.keys.locks, start, end)]

    def locks(self, digests: Sequence[str] | None = None) -> list[LockInfo]:
        """The uniqueness locks held (all of them by default), oldest first."""
        digests = self.lock_digests() if digests is None else list(digests)
        found = [LockInfo.from_redis(digest, fields, ttl) for digest, fields, ttl in self.raw_locks(digests)]
        return sorted(found, key=lambda lock: lock.acquired_at)

    def raw_locks(self, digests: Sequence[str]) -> list[tuple[str, dict[Any, Any], Any]]:
        """The uniqueness locks held among ``digests`` as Redis holds them, in one round trip: (digest,
        its HASH's fields, its ``PTTL``) of each, in the order asked."""
        if not digests:
            return []
        pipe = self.client.pipeline(transaction=False)
        for digest in digests:
            pipe.hgetall(self.keys.lock(digest))
            pipe.pttl(self.keys.lock(digest))
        replies = pipe.execute()
        return [
            (digest, fields, ttl)
            for digest, fields, ttl in zip(digests, replies[::2], replies[1::2], strict=True)
            if fields
        ]

    # Events -------------------------------------------------------------------------

    def append_events(self, entries: Sequence[Mapping[str, str]], counts: Mapping[str, int], maxlen: int) -> None:
        """Append events to the capped stream and add to the counters, atomically, in batches of
        :data:`EVENT_BATCH` events (``lua/append_events.lua``)."""
        flat = [[value for item in fields.items() for value in item] for fields in entries]
        keys = [self.keys.events, self.keys.counters]
        for start in range(0, max(1, len(flat)), EVENT_BATCH):
            counters = json.dumps(dict(counts) if start == 0 else {})
            self.scripts("append_events", keys, [maxlen, counters, json.dumps(flat[start : start + EVENT_BATCH])])

    def events(self, count: int, *, before: str = "+", after: str = "-") -> list[tuple[str, dict[str, str]]]:
        """The newest ``count`` events (ids and fields) between two stream ids, newest first."""
        entries = self.client.xrevrange(self.keys.events, max=before, min=after, count=count) or []
        return [(text(entry_id), {text(k): text(v) for k, v in (fields or {}).items()}) for entry_id, fields in entries]

    def record_sweep(self, duration_ms: int) -> None:
        """Count a sweep that recovered something, and how long it took."""
        pipe = self.client.pipeline(transaction=False)
        pipe.hincrby(self.keys.counters, "sweeps", 1)
        pipe.hincrby(self.keys.counters, "sweep_ms", duration_ms)
        pipe.hset(self.keys.counters, "last_sweep_ms", duration_ms)
        pipe.execute()

    def broker_peers(self, broker_id: str) -> list[str]:
        """Ids of the workers registered with a RedisBroker ``broker_id``."""
        return [text(wid) for wid in self.client.smembers(self.keys.broker(broker_id))]
