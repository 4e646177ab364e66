"""Delivering a dead worker's orphans again, the way each broker needs it.

- RedisBroker: the orphans are still in Redis, in the dead process's
  ``__acks__`` sets (running, prefetched and delayed ones alike).  They are
  moved back under their own redis message id, each by exactly one caller,
  so that Dramatiq's own maintenance later finds nothing left.
- RabbitmqBroker: the server redelivers unacked messages when the dead
  connection closes.  Re-publishing would duplicate them, so the tracker
  only settles its books; the recovery is counted when the redelivery starts.
- Any other broker (StubBroker included): the stored payload is enqueued
  again.  The record waits in an outbox until the enqueue is confirmed.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from dramatiq.common import q_name
from dramatiq.logging import get_logger
from dramatiq.message import Message

from .brokers import RABBITMQ, REDIS, as_redis_broker, consumer_queues
from .orphans import BROKER_REDELIVERS, REDELIVERED, LockCleaners, Orphan, RecoveredOrphan
from .recorder import RECOVERIES_OPTION, now_ms
from .records import CorruptRecord, InflightRecord, WorkerInfo
from .store import BrokerStore, OrphanClaim, OrphanLock
from .unique import lock_of

if TYPE_CHECKING:
    from dramatiq import Broker

    from .settings import TrackerSettings
    from .store import TrackerStore


def mark_recovered(message: Message[Any], recoveries: int) -> Message[Any]:
    """A copy of ``message`` that says how many times it was recovered."""
    return message.copy(options={RECOVERIES_OPTION: recoveries})


class Redelivery:
    """Base class of the per-broker strategies.

    Parameters:
      broker(Broker): The sweeping worker's broker, compatible with the dead worker's.
      store(TrackerStore)
      settings(TrackerSettings)
      cleaners(LockCleaners): Run on each running orphan before it is delivered again.
    """

    #: How ``lua/claim_orphans.lua`` should claim this broker's orphans.
    claim_mode = "park"

    def __init__(self, broker: Broker, store: TrackerStore, settings: TrackerSettings, cleaners: LockCleaners):
        self.logger = get_logger(__name__, type(self))
        self.broker = broker
        self.store = store
        self.settings = settings
        self.cleaners = cleaners

    def recover(self, worker: WorkerInfo, raw_records: Mapping[str, str]) -> tuple[list[RecoveredOrphan], bool]:
        """Deliver a dead worker's orphans again.

        Returns:
          tuple: What this call delivered again, and whether the worker is done with:
          False when another sweeper is still busy with some of its orphans.

        Raises:
          redis.RedisError: When Redis fails midway; the worker stays dead and
            registered, so the next sweep finishes the job without duplicates.
        """
        raise NotImplementedError

    def parse_records(self, worker: WorkerInfo, raw_records: Mapping[str, str]) -> dict[str, InflightRecord]:
        """Decode a dead worker's records, by message id; corrupt ones are logged and skipped."""
        records = {}
        for message_id, raw in raw_records.items():
            try:
                record = InflightRecord.from_json(raw)
            except CorruptRecord as e:
                self.logger.warning(
                    "Skipping unreadable in-flight record of message %r on dead worker %r: %s.",
                    message_id,
                    worker.worker_id,
                    e,
                )
                continue
            records[message_id] = record
        return records

    def claim(self, worker: WorkerInfo, orphans: Sequence[OrphanLock]) -> list[OrphanClaim]:
        """Claim orphans, releasing the uniqueness locks they own (``lua/claim_orphans.lua``)."""
        return self.store.claim_orphans(
            worker.worker_id, orphans, mode=self.claim_mode, history_ttl=self.settings.history_ttl
        )

    def claim_records(self, worker: WorkerInfo, records: Mapping[str, InflightRecord]) -> list[OrphanClaim]:
        """Claim orphans known by their records."""
        return self.claim(worker, [orphan_lock(record.message_id, _message_of(record)) for record in records.values()])


def _age(started_at: int | None, message: Message[Any] | None) -> int | None:
    if started_at is not None:
        return max(0, now_ms() - started_at)
    if message is not None:
        return max(0, now_ms() - message.message_timestamp)
    return None


class RedisRedelivery(Redelivery):
    """Move a dead RedisBroker process's un-acked messages back (``lua/requeue_orphans.lua``)."""

    claim_mode = "requeue"

    def __init__(self, broker: Broker, store: TrackerStore, settings: TrackerSettings, cleaners: LockCleaners):
        super().__init__(broker, store, settings, cleaners)
        redis_broker = as_redis_broker(broker)
        self.broker_store = BrokerStore(redis_broker.client, redis_broker.namespace)

    def _process_alive_elsewhere(self, worker: WorkerInfo) -> bool:
        # A worker id that was fenced and re-registered shares its broker_id with its new id:
        # the process is alive and owns its acks, which must not be taken from it.
        peers = [wid for wid in self.store.broker_peers(worker.broker_id) if wid != worker.worker_id]
        return bool(peers) and any(self.store.alive(peers))

    def recover(self, worker: WorkerInfo, raw_records: Mapping[str, str]) -> tuple[list[RecoveredOrphan], bool]:
        records = self.parse_records(worker, raw_records)
        if self._process_alive_elsewhere(worker):
            self.logger.warning(
                "Worker %r was declared dead, but its process is alive under another worker id; "
                "its messages are left to it.",
                worker.worker_id,
            )
            self.claim_records(worker, records)
            return [], True

        unacked = self.broker_store.unacked(worker.broker_id, consumer_queues(worker.queues))
        by_redis_id = {record.redis_message_id: record for record in records.values() if record.redis_message_id}

        orphans: list[tuple[str, str, Message[Any] | None, InflightRecord | None]] = []
        for queue_name, redis_ids in unacked.items():
            for redis_id, payload in zip(redis_ids, self.broker_store.payloads(queue_name, redis_ids), strict=True):
                message = self._decode(worker, queue_name, redis_id, payload)
                orphans.append((queue_name, redis_id, message, by_redis_id.get(redis_id)))

        # Orphans that cannot be decoded are still moved back, unchanged; they count as not running.
        message_ids = [
            message.message_id if message else (record.message_id if record else "")
            for _, _, message, record in orphans
        ]
        locks = {}
        for (_, _, message, record), message_id in zip(orphans, message_ids, strict=True):
            if message_id:
                locks[message_id] = orphan_lock(message_id, message or (_message_of(record) if record else None))
        claims = dict(zip(locks, self.claim(worker, list(locks.values())), strict=True))

        moves: list[tuple[str, str, bytes | None]] = []
        described: dict[str, Orphan] = {}
        complete = True
        for (queue_name, redis_id, message, record), message_id in zip(orphans, message_ids, strict=True):
            claim = claims.get(message_id)
            running = bool(claim and claim.running)
            orphan = Orphan(
                message_id=message_id,
                actor_name=message.actor_name if message else (record.actor_name if record else ""),
                queue_name=queue_name,
                message=message,
                worker=worker,
                running=running,
                started_at=record.started_at if record else None,
                recoveries=claim.recoveries if claim else 0,
                redis_message_id=redis_id,
            )
            replacement = None
            if running and claim is not None:
                # Only the sweeper that took a running orphan cleans its locks and moves it, so that
                # a cleaner never runs after the orphan started again elsewhere; unless that sweeper
                # stopped midway long ago.
                if not claim.taken and claim.claim_age < self.settings.takeover_after:
                    complete = False
                    continue
                if claim.taken:
                    self.cleaners.clean(orphan)
                if message is not None:
                    replacement = mark_recovered(message, claim.recoveries).encode()
            moves.append((queue_name, redis_id, replacement))
            described[redis_id] = orphan

        moved = self.broker_store.requeue(worker.broker_id, moves)
        recovered = [
            RecoveredOrphan(orphan, REDELIVERED, _age(orphan.started_at, orphan.message), _lock(claims, orphan))
            for redis_id, orphan in described.items()
            if redis_id in moved
        ]
        return recovered, complete

    def _decode(self, worker: WorkerInfo, queue_name: str, redis_id: str, payload: bytes | None) -> Message[Any] | None:
        if payload is None:
            return None
        try:
            return Message.decode(payload)
        except Exception as e:
            self.logger.warning(
                "Message %r on queue %r orphaned by worker %r does not decode (%s); it is moved back unchanged.",
                redis_id,
                queue_name,
                worker.worker_id,
                e,
            )
            return None


class RabbitmqRedelivery(Redelivery):
    """RabbitMQ redelivers by itself: settle the books, never re-publish."""

    claim_mode = "await"

    def recover(self, worker: WorkerInfo, raw_records: Mapping[str, str]) -> tuple[list[RecoveredOrphan], bool]:
        records = self.parse_records(worker, raw_records)
        claims = self.claim_records(worker, records)
        recovered, awaiting = [], 0
        for record, claim in zip(records.values(), claims, strict=True):
            if claim.awaiting:
                awaiting += 1
            elif claim.taken:
                # RabbitMQ delivered it again before this sweep: it runs elsewhere already.
                orphan = _orphan_from_record(worker, record, claim.recoveries, message=None)
                recovered.append(RecoveredOrphan(orphan, BROKER_REDELIVERS, _age(record.started_at, None)))
        if awaiting:
            self.logger.info(
                "Dead worker %r had %d messages running; RabbitMQ delivers them again when its connection "
                "closes, and each recovery is counted then.",
                worker.worker_id,
                awaiting,
            )
        return recovered, True


class EnqueueRedelivery(Redelivery):
    """Enqueue the stored payload again, for brokers that lose a dead consumer's messages."""

    claim_mode = "park"

    def recover(self, worker: WorkerInfo, raw_records: Mapping[str, str]) -> tuple[list[RecoveredOrphan], bool]:
        records = self.parse_records(worker, raw_records)
        claims = self.claim_records(worker, records)
        recovered = []
        for record, claim in zip(records.values(), claims, strict=True):
            if claim.taken:
                item = self.enqueue(worker, record, claim.recoveries, claim.lock)
                if item is not None:
                    recovered.append(item)
        # Orphans another sweeper took wait in the outbox; that sweeper or retry_outbox() ends them.
        return recovered, True

    def enqueue(
        self, worker: WorkerInfo, record: InflightRecord, recoveries: int, lock: str = ""
    ) -> RecoveredOrphan | None:
        """Enqueue one parked orphan again, then take it out of the outbox."""
        try:
            message = record.message()
        except CorruptRecord as e:
            self.logger.error(
                "Cannot deliver message %r (actor %r) orphaned by worker %r again: %s. "
                "Its record stays in the outbox for an operator.",
                record.message_id,
                record.actor_name,
                worker.worker_id,
                e,
            )
            return None
        orphan = _orphan_from_record(worker, record, recoveries, message=message)
        self.cleaners.clean(orphan)
        # Deliver to the canonical queue now, even if it was consumed from a delay queue.
        redelivered = mark_recovered(message, recoveries).copy(queue_name=q_name(message.queue_name))
        redelivered.options.pop("eta", None)
        self.broker.enqueue(redelivered)
        self.store.unpark(record.message_id)
        return RecoveredOrphan(orphan, REDELIVERED, _age(record.started_at, message), lock)

    def retry_outbox(self, worker_lookup: Mapping[str, WorkerInfo], grace: int) -> list[RecoveredOrphan]:
        """Re-enqueue orphans left in the outbox by a sweeper that stopped midway."""
        recovered = []
        now = self.store.server_time()
        for message_id, entry in self.store.outbox().items():
            try:
                parked = json.loads(entry)
                parked_at, raw_record = int(parked["parked_at"]), str(parked["record"])
                record = InflightRecord.from_json(raw_record)
            except (ValueError, KeyError, TypeError, CorruptRecord) as e:
                self.logger.warning("Skipping unreadable outbox entry of message %r: %s.", message_id, e)
                continue
            if now - parked_at < grace or self.store.repark(message_id, entry) is None:
                continue
            worker = worker_lookup.get(record.worker_id) or WorkerInfo.unknown(record.worker_id)
            history = self.store.message_history(message_id)
            item = self.enqueue(worker, record, int(history.get("recoveries", "0") or 0))
            if item is not None:
                recovered.append(item)
        return recovered


def _message_of(record: InflightRecord) -> Message[Any] | None:
    try:
        return record.message()
    except CorruptRecord:
        return None


def orphan_lock(message_id: str, message: Message[Any] | None) -> OrphanLock:
    """An orphan to claim with the uniqueness lock its message says it may own."""
    return OrphanLock(message_id, *lock_of(message.options)) if message is not None else OrphanLock(message_id)


def _lock(claims: Mapping[str, OrphanClaim], orphan: Orphan) -> str:
    claim = claims.get(orphan.message_id)
    return claim.lock if claim is not None else ""


def _orphan_from_record(
    worker: WorkerInfo, record: InflightRecord, recoveries: int, *, message: Message[Any] | None
) -> Orphan:
    if message is None:
        message = _message_of(record)
    return Orphan(
        message_id=record.message_id,
        actor_name=record.actor_name,
        queue_name=record.queue_name,
        message=message,
        worker=worker,
        running=True,
        started_at=record.started_at,
        recoveries=recoveries,
        redis_message_id=record.redis_message_id,
    )


def redelivery_for(
    kind: str, broker: Broker, store: TrackerStore, settings: TrackerSettings, cleaners: LockCleaners
) -> Redelivery:
    """The redelivery strategy for a broker kind (see :mod:`dramatiq_tracker.brokers`)."""
    if kind == REDIS:
        return RedisRedelivery(broker, store, settings, cleaners)
    if kind == RABBITMQ:
        return RabbitmqRedelivery(broker, store, settings, cleaners)
    return EnqueueRedelivery(broker, store, settings, cleaners)
