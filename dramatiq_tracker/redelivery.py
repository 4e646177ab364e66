"""Settling a dead worker's orphans, the way each broker needs it.

- RedisBroker: the orphans are still in Redis, in the dead process's
  ``__acks__`` sets (running, prefetched and delayed ones alike).  Each is
  moved back under its own redis message id (or dead-lettered, or dropped)
  by exactly one caller, so that Dramatiq's own maintenance later finds
  nothing left.
- RabbitmqBroker: the server redelivers unacked messages when the dead
  connection closes.  Re-publishing would duplicate them, so the tracker only
  settles its books; the recovery is counted, and quarantine decided, when the
  redelivery starts (:meth:`~dramatiq_tracker.recovery.Recovery.begin_at_risk`).
- Any other broker (StubBroker included): the stored payload is enqueued
  again.  The record waits in an outbox until the enqueue is confirmed.

Each orphan's fate is decided once, atomically with its claim
(``lua/claim_orphans.lua``): delivered again, quarantined (recovered more
than ``max_recoveries`` times), or dropped (cancelled or aborted).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from dramatiq.common import q_name
from dramatiq.logging import get_logger
from dramatiq.message import Message

from .brokers import RABBITMQ, REDIS, as_redis_broker, consumer_queues
from .orphans import BROKER_REDELIVERS, OUTCOMES, Orphan, OrphanHandling, RecoveredOrphan
from .quarantine import QUARANTINE_OPTION
from .recorder import RECOVERIES_OPTION, now_ms
from .records import CorruptRecord, InflightRecord, WorkerInfo
from .store import BrokerStore, OrphanClaim, OrphanLock, OrphanMove
from .unique import lock_of

if TYPE_CHECKING:
    from dramatiq import Broker

    from .settings import TrackerSettings
    from .store import TrackerStore

#: What RedisBroker recovery does with an orphan, by outcome.
_REDIS_ACTIONS = {"deliver": "requeue", "quarantine": "deadletter", "drop": "drop"}


def mark_recovered(message: Message[Any], recoveries: int) -> Message[Any]:
    """A copy of ``message`` that says how many times it was recovered."""
    return message.copy(options={RECOVERIES_OPTION: recoveries})


def message_of(record: InflightRecord) -> Message[Any] | None:
    """The message a record stores, or None when it cannot be decoded."""
    try:
        return record.message()
    except CorruptRecord:
        return None


class Redelivery:
    """Base class of the per-broker strategies.

    Parameters:
      broker(Broker): The sweeping worker's broker, compatible with the dead worker's.
      store(TrackerStore)
      settings(TrackerSettings)
      handling(OrphanHandling): Lock cleaners, events, quarantine and dramatiq-abort.
    """

    #: How ``lua/claim_orphans.lua`` should claim this broker's orphans.
    claim_mode = "park"

    def __init__(self, broker: Broker, store: TrackerStore, settings: TrackerSettings, handling: OrphanHandling):
        self.logger = get_logger(__name__, type(self))
        self.broker = broker
        self.store = store
        self.settings = settings
        self.handling = handling

    def recover(self, worker: WorkerInfo, raw_records: Mapping[str, str]) -> tuple[list[RecoveredOrphan], bool]:
        """Settle a dead worker's orphans.

        Returns:
          tuple: What this call settled, and whether the worker is done with:
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
                records[message_id] = InflightRecord.from_json(raw)
            except CorruptRecord as e:
                self.logger.warning(
                    "Skipping unreadable in-flight record of message %r on dead worker %r: %s.",
                    message_id,
                    worker.worker_id,
                    e,
                )
        return records

    def orphan_lock(
        self, message_id: str, message: Message[Any] | None, actor_name: str, aborted: set[str]
    ) -> OrphanLock:
        """What ``lua/claim_orphans.lua`` needs to decide an orphan's fate."""
        options = message.options if message is not None else {}
        digest, mode = lock_of(options)
        limit = self.handling.quarantine.max_recoveries(actor_name, options)
        return OrphanLock(message_id, digest, mode, limit, message_id in aborted)

    def claim(self, worker: WorkerInfo, orphans: Sequence[OrphanLock]) -> list[OrphanClaim]:
        """Claim orphans, deciding their fate and releasing the locks they own."""
        return self.store.claim_orphans(
            worker.worker_id, orphans, mode=self.claim_mode, history_ttl=self.settings.history_ttl
        )

    def claim_records(self, worker: WorkerInfo, records: Mapping[str, InflightRecord]) -> list[OrphanClaim]:
        """Claim orphans known by their records."""
        aborted = self.handling.aborts.pending(records) if self.handling.aborts.available else set()
        return self.claim(
            worker,
            [self.orphan_lock(r.message_id, message_of(r), r.actor_name, aborted) for r in records.values()],
        )


def _age(started_at: int | None, message: Message[Any] | None) -> int | None:
    if started_at is not None:
        return max(0, now_ms() - started_at)
    if message is not None:
        return max(0, now_ms() - message.message_timestamp)
    return None


def _orphan(
    worker: WorkerInfo,
    message_id: str,
    queue_name: str,
    message: Message[Any] | None,
    record: InflightRecord | None,
    claim: OrphanClaim | None,
) -> Orphan:
    return Orphan(
        message_id=message_id,
        actor_name=message.actor_name if message else (record.actor_name if record else ""),
        queue_name=queue_name,
        message=message,
        worker=worker,
        running=bool(claim and claim.running),
        started_at=record.started_at if record else None,
        recoveries=claim.recoveries if claim else 0,
        redis_message_id=message.options.get("redis_message_id", "") if message else "",
    )


class RedisRedelivery(Redelivery):
    """Settle a dead RedisBroker process's un-acked messages (``lua/requeue_orphans.lua``)."""

    claim_mode = "deliver"

    def __init__(self, broker: Broker, store: TrackerStore, settings: TrackerSettings, handling: OrphanHandling):
        super().__init__(broker, store, settings, handling)
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
        found: list[tuple[str, str, Message[Any] | None, InflightRecord | None]] = []
        for queue_name, redis_ids in unacked.items():
            for redis_id, payload in zip(redis_ids, self.broker_store.payloads(queue_name, redis_ids), strict=True):
                record = by_redis_id.get(redis_id)
                message = self._decode(worker, queue_name, redis_id, payload)
                found.append((queue_name, redis_id, message, record))

        # An orphan that cannot be decoded is still moved back, unchanged; it counts as not running.
        def message_id(message: Message[Any] | None, record: InflightRecord | None) -> str:
            return message.message_id if message else (record.message_id if record else "")

        aborted = self.handling.aborts.pending(
            {message_id(m, r) for _, _, m, r in found} - {""}
        ) if self.handling.aborts.available else set()  # fmt: skip
        locks: dict[str, OrphanLock] = {}
        for _, _, message, record in found:
            mid = message_id(message, record)
            if mid:
                actor_name = message.actor_name if message else (record.actor_name if record else "")
                locks[mid] = self.orphan_lock(
                    mid, message or (message_of(record) if record else None), actor_name, aborted
                )
        claims = dict(zip(locks, self.claim(worker, list(locks.values())), strict=True))

        moves: list[OrphanMove] = []
        settled: dict[str, RecoveredOrphan] = {}
        complete = True
        for queue_name, redis_id, message, record in found:
            mid = message_id(message, record)
            claim = claims.get(mid)
            orphan = _orphan(worker, mid, queue_name, message, record, claim)
            outcome = claim.outcome if claim and claim.outcome else "deliver"
            if orphan.running and claim is not None:
                # Only the sweeper that took a running orphan cleans its locks and settles it, so that
                # a cleaner never runs after the orphan started again elsewhere; unless that sweeper
                # stopped midway long ago.
                if not claim.taken and claim.claim_age < self.settings.takeover_after:
                    complete = False
                    continue
                if claim.taken:
                    self.handling.cleaners.clean(orphan)
            # Every orphan of a queue (not of a delay queue, whose messages never started) is marked,
            # so that its next start is recorded before it runs: a crash at once is then counted.
            payload = None
            if message is not None and queue_name == q_name(queue_name):
                payload = mark_recovered(message, orphan.recoveries).encode()
            moves.append(OrphanMove(queue_name, redis_id, _REDIS_ACTIONS[outcome], payload))
            lock = claim.lock if claim else ""
            settled[redis_id] = RecoveredOrphan(orphan, OUTCOMES[outcome], _age(orphan.started_at, message), lock)

        done = self.broker_store.settle(worker.broker_id, moves)
        return [item for redis_id, item in settled.items() if redis_id in done], complete

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
                orphan = _orphan(worker, record.message_id, record.queue_name, message_of(record), record, claim)
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
                item = self.enqueue(worker, record, claim)
                if item is not None:
                    recovered.append(item)
        # Orphans another sweeper took wait in the outbox; that sweeper or retry_outbox() ends them.
        return recovered, True

    def enqueue(self, worker: WorkerInfo, record: InflightRecord, claim: OrphanClaim) -> RecoveredOrphan | None:
        """Enqueue one parked orphan again (or drop it), then take it out of the outbox."""
        message = message_of(record)
        if message is None:
            self.logger.error(
                "Cannot deliver message %r (actor %r) orphaned by worker %r again: its payload does not decode. "
                "Its record stays in the outbox for an operator.",
                record.message_id,
                record.actor_name,
                worker.worker_id,
            )
            return None
        orphan = _orphan(worker, record.message_id, record.queue_name, message, record, claim)
        self.handling.cleaners.clean(orphan)
        outcome = claim.outcome or "deliver"
        if outcome != "drop":
            # To the canonical queue now, even if it was consumed from a delay queue.  A quarantined
            # message goes with a mark: the worker that receives it dead-letters it without running it.
            redelivered = mark_recovered(message, claim.recoveries).copy(queue_name=q_name(message.queue_name))
            redelivered.options.pop("eta", None)
            if outcome == "quarantine":
                redelivered.options[QUARANTINE_OPTION] = True
            self.broker.enqueue(redelivered)
        self.store.unpark(record.message_id)
        return RecoveredOrphan(orphan, OUTCOMES[outcome], _age(record.started_at, message), claim.lock)

    def retry_outbox(self, grace: int) -> list[RecoveredOrphan]:
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
            history = self.store.message_history(message_id)
            claim = OrphanClaim(
                True, True, int(history.get("recoveries", "0") or 0), 0, False, "", history.get("outcome", "")
            )
            item = self.enqueue(WorkerInfo.unknown(record.worker_id), record, claim)
            if item is not None:
                recovered.append(item)
        return recovered


def redelivery_for(
    kind: str, broker: Broker, store: TrackerStore, settings: TrackerSettings, handling: OrphanHandling
) -> Redelivery:
    """The redelivery strategy for a broker kind (see :mod:`dramatiq_tracker.brokers`)."""
    if kind == REDIS:
        return RedisRedelivery(broker, store, settings, handling)
    if kind == RABBITMQ:
        return RabbitmqRedelivery(broker, store, settings, handling)
    return EnqueueRedelivery(broker, store, settings, handling)
