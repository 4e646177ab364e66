"""The operations on a RedisBroker's own keys that recovery needs (Dramatiq's queues, acks sets and
heartbeats), and the tracker's note of its processes beside them.

Like :class:`~dramatiq_tracker.store.TrackerStore`, one method per operation, over the scripts
in ``dramatiq_tracker/lua`` (``read_unacked``, ``requeue_orphans``, ``remark_orphans``).  The
keys are Dramatiq's, laid out as its ``dispatch.lua`` does (:class:`~dramatiq_tracker.keys.RedisBrokerKeys`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

from .keys import RedisBrokerKeys
from .scripts import Scripts, text

if TYPE_CHECKING:
    import redis

#: What happens to an orphan in a dead RedisBroker process's acks.
MoveAction = Literal["requeue", "deadletter", "drop"]


@dataclasses.dataclass(frozen=True)
class OrphanMove:
    """What to do with one orphan in a dead RedisBroker process's acks.

    Parameters:
      queue_name(str)
      redis_message_id(str)
      action(str): "requeue", "deadletter" or "drop".
      new_redis_message_id(str): The id to requeue it under, or "" to keep its own.
      payload(bytes|None): A replacement payload, or None to keep the stored one.
    """

    queue_name: str
    redis_message_id: str
    action: MoveAction
    new_redis_message_id: str = ""
    payload: bytes | None = None


@dataclasses.dataclass(frozen=True)
class Settled:
    """What :meth:`BrokerStore.settle` did, by redis message id.

    Parameters:
      settled(set[str]): Moved, dead-lettered or dropped by this call.
      raced(set[str]): No longer in the dead process's acks: someone else settled them.
      missing(set[str]): Their payload was gone: nothing to deliver.
    """

    settled: set[str]
    raced: set[str]
    missing: set[str]


class BrokerStore:
    """The operations on a RedisBroker's own keys that recovery needs.

    Parameters:
      client(redis.Redis): The broker's Redis client.
      namespace(str): The broker's namespace.
      tracker_namespace(str): The tracker namespace whose processes are noted beside the broker's keys.
    """

    def __init__(self, client: redis.Redis, namespace: str, tracker_namespace: str) -> None:
        self.client = client
        self.keys = RedisBrokerKeys(namespace)
        self.tracker_namespace = tracker_namespace
        self.scripts = Scripts(client)

    def unacked(self, broker_id: str, queue_names: Sequence[str]) -> dict[str, list[tuple[str, bytes | None]]]:
        """The messages a broker process fetched and did not ack, by queue: each redis message id,
        sorted, with its stored payload (None where it is gone), in one round trip (``lua/read_unacked.lua``)."""
        if not queue_names:
            return {}
        keys = [key for q in queue_names for key in (self.keys.acks(broker_id, q), self.keys.messages(q))]
        found = {}
        for queue_name, flat in zip(queue_names, self.scripts("read_unacked", keys, []), strict=True):
            if flat:
                payloads = [value.encode("utf-8") if isinstance(value, str) else value for value in flat[1::2]]
                found[queue_name] = sorted(zip((text(rid) for rid in flat[::2]), payloads, strict=True))
        return found

    def settle(self, broker_id: str, moves: Sequence[OrphanMove], now: int) -> Settled:
        """Requeue, dead-letter or drop orphans from a dead process's acks (``lua/requeue_orphans.lua``).

        Parameters:
          now(int): The time (ms) to stamp dead letters with.
        """
        if not moves:
            return Settled(set(), set(), set())
        queue_index: dict[str, int] = {}
        keys: list[str] = []
        args: list[Any] = [now]
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
            index = queue_index[move.queue_name]
            args += [index, move.redis_message_id, move.action, move.new_redis_message_id, move.payload or b""]
        raced_at, missing_at = self.scripts("requeue_orphans", keys, args)
        raced = {moves[int(position) - 1].redis_message_id for position in raced_at}
        missing = {moves[int(position) - 1].redis_message_id for position in missing_at}
        exceptions = {int(position) for position in (*raced_at, *missing_at)}
        settled = {move.redis_message_id for position, move in enumerate(moves, 1) if position not in exceptions}
        return Settled(settled, raced, missing)

    def ack_before_move(self, broker_id: str, queue_name: str, redis_message_id: str) -> bool:
        """Ack a zombie's completed copy as Dramatiq does; whether that came before the recovery's move of
        it (``lua/ack_before_move.lua``): then no recovered copy of it exists, or ever will."""
        keys = [self.keys.acks(broker_id, queue_name), self.keys.messages(queue_name)]
        return bool(self.scripts("ack_before_move", keys, [redis_message_id]))

    def remark(self, marks: Sequence[tuple[str, str, bytes]]) -> set[str]:
        """Give recovery marks to orphans that Dramatiq's maintenance requeued meanwhile
        (``lua/remark_orphans.lua``).

        Parameters:
          marks(list): (queue name, redis message id, marked payload keeping that id).

        Returns:
          set[str]: The redis message ids whose payload was replaced.
        """
        if not marks:
            return set()
        queue_index: dict[str, int] = {}
        keys: list[str] = []
        args: list[Any] = []
        for queue_name, redis_id, payload in marks:
            if queue_name not in queue_index:
                queue_index[queue_name] = len(queue_index) + 1
                keys += [self.keys.queue(queue_name), self.keys.messages(queue_name)]
            args += [queue_index[queue_name], redis_id, payload]
        return {text(r) for r in self.scripts("remark_orphans", keys, args)}

    # The tracker's note of its processes, beside the broker's keys -----------------------

    def note_process(self, broker_id: str, registration: str) -> None:
        """Remember a tracked worker process where its broker keeps its messages."""
        self.client.hset(self.keys.tracked_processes(self.tracker_namespace), broker_id, registration)

    def forget_process(self, broker_id: str) -> None:
        """Forget a tracked worker process that stopped or was recovered."""
        self.client.hdel(self.keys.tracked_processes(self.tracker_namespace), broker_id)

    def hold_unacked(self, processes: Sequence[tuple[str, Sequence[str]]]) -> list[bool]:
        """Whether each broker process (broker id, queue names) holds un-acked messages on any of its
        queues, in one round trip: a sweep asks it of every dead process Dramatiq still remembers."""
        asked = [[self.keys.acks(broker_id, q) for q in queue_names] for broker_id, queue_names in processes]
        pipe = self.client.pipeline(transaction=False)
        for keys in asked:
            if keys:
                pipe.exists(*keys)
        found = iter(pipe.execute()) if any(asked) else iter(())
        return [bool(keys) and int(next(found)) > 0 for keys in asked]

    def tracked_process_ids(self) -> list[str]:
        """The broker ids of the tracked processes of this broker namespace."""
        return [text(bid) for bid in self.client.hkeys(self.keys.tracked_processes(self.tracker_namespace))]

    def tracked_processes(self, broker_ids: Sequence[str]) -> dict[str, str]:
        """Raw registrations of tracked processes of this broker namespace, by broker id (those noted)."""
        if not broker_ids:
            return {}
        found = self.client.hmget(self.keys.tracked_processes(self.tracker_namespace), list(broker_ids))
        return {bid: text(raw) for bid, raw in zip(broker_ids, found, strict=True) if raw is not None}

    def last_seen(self, broker_ids: Sequence[str]) -> list[int | None]:
        """When Dramatiq last heard from each broker process (its client's ms), or None."""
        if not broker_ids:
            return []
        pipe = self.client.pipeline(transaction=False)
        for broker_id in broker_ids:
            pipe.zscore(self.keys.heartbeats, broker_id)
        return [int(score) if score is not None else None for score in pipe.execute()]

    def seen_since(self, since: int) -> set[str]:
        """The broker processes Dramatiq heard from after ``since`` (ms; its heartbeats are its
        processes' clocks)."""
        found = self.client.zrangebyscore(self.keys.heartbeats, "(%d" % since, "+inf")
        return {text(broker_id) for broker_id in found}

    def server_time(self) -> int:
        """The broker Redis server's clock, in ms since the epoch."""
        seconds, microseconds = self.client.time()
        return int(seconds) * 1000 + int(microseconds) // 1000
