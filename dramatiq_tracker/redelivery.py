"""Settling a dead worker's orphans, the way each broker needs it.

- RedisBroker: the orphans are still in Redis, in the dead process's
  ``__acks__`` sets (running, prefetched and delayed ones alike).  Each is
  moved back under a new redis message id, with its new attempt and recovery
  count in its options (or dead-lettered, or dropped), by exactly one caller,
  so that Dramatiq's own maintenance later finds nothing left.
- RabbitmqBroker: the server redelivers unacked messages when the dead
  connection closes.  Re-publishing would duplicate them, so the tracker only
  settles its books; the recovery is counted, and quarantine decided, when the
  redelivery starts (:class:`~dramatiq_tracker.admission.Admission`).
- Any other broker (StubBroker included): the stored payload is enqueued
  again.  The record waits in an outbox until the enqueue is confirmed.

Each orphan's fate is decided once, atomically with its claim
(:mod:`dramatiq_tracker.claims`): delivered again, quarantined (recovered
more than ``max_recoveries`` times), or dropped (cancelled or aborted).
"""

from __future__ import annotations

import dataclasses
import os
import time
import uuid
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import dramatiq
from dramatiq.common import q_name
from dramatiq.logging import get_logger
from dramatiq.message import Message

from .broker_store import BrokerStore, MoveAction, OrphanMove
from .brokers import RABBITMQ, REDIS, as_redis_broker, consumer_queues
from .options import ATTEMPT_OPTION, QUARANTINE_OPTION, RECOVERIES_OPTION, attempt_of
from .orphans import DROPPED, QUARANTINED_OUTCOME, REDELIVERED, Candidate, Claims, LockCleaners, Orphan
from .records import CorruptRecord, InflightRecord, WorkerInfo
from .store import parse_outbox_entry

if TYPE_CHECKING:
    from dramatiq import Broker

    from .scripts import ClaimReply
    from .settings import TrackerSettings
    from .store import TrackerStore

#: What RedisBroker recovery does with an orphan, by outcome.
_REDIS_ACTIONS: dict[str, MoveAction] = {"deliver": "requeue", "quarantine": "deadletter", "drop": "drop"}


def mark_recovered(message: Message[Any], orphan: Orphan, **options: Any) -> Message[Any]:
    """A copy of ``message`` that says which attempt it is and how many times it was recovered."""
    return message.copy(options=_marks(orphan, options))


#: The fields of a Dramatiq message, as ``Message.asdict()`` gives them (which looks them up each time).
_MESSAGE_FIELDS = tuple(field.name for field in dataclasses.fields(Message))


def encode_recovered(message: Message[Any], orphan: Orphan, **options: Any) -> bytes:
    """:func:`mark_recovered`, encoded, without the copy: a sweep encodes thousands."""
    fields = {name: getattr(message, name) for name in _MESSAGE_FIELDS}
    fields["options"] = {**message.options, **_marks(orphan, options)}
    return dramatiq.get_encoder().encode(fields)


def _marks(orphan: Orphan, options: dict[str, Any]) -> dict[str, Any]:
    return {RECOVERIES_OPTION: orphan.recoveries, ATTEMPT_OPTION: orphan.attempt, **options}


@dataclasses.dataclass
class Recovered:
    """What :meth:`Redelivery.recover` settled, and whether the dead worker is done with."""

    orphans: list[Orphan]
    complete: bool = True


class Redelivery:
    """Base class of the per-broker strategies.

    Parameters:
      broker(Broker): The sweeping worker's broker, compatible with the dead worker's.
      store(TrackerStore)
      settings(TrackerSettings)
      claims(Claims): The one way to claim orphans.
      cleaners(LockCleaners): Run on each running orphan before it is delivered again.
    """

    def __init__(
        self, broker: Broker, store: TrackerStore, settings: TrackerSettings, claims: Claims, cleaners: LockCleaners
    ) -> None:
        self.logger = get_logger(__name__, type(self))
        self.broker = broker
        self.store = store
        self.settings = settings
        self.claims = claims
        self.cleaners = cleaners

    def recover(self, worker: WorkerInfo, raw_records: Mapping[str, str], *, dry_run: bool = False) -> Recovered:
        """Settle a dead worker's orphans.

        Parameters:
          dry_run(bool): Only say what would be done with them (``outcome``); change nothing,
            run no lock cleaner.

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
                records[message_id] = InflightRecord.from_json(raw, message_id=message_id, worker_id=worker.worker_id)
            except CorruptRecord as e:
                self.logger.warning(
                    "Skipping unreadable in-flight record of message %r on dead worker %r: %s.",
                    message_id,
                    worker.worker_id,
                    e,
                )
        return records

    @staticmethod
    def candidate(record: InflightRecord) -> Candidate:
        """What a record tells of its orphan."""
        message = None
        if record.has_payload:
            try:
                message = record.message()
            except CorruptRecord:
                message = None
        return Candidate(record.message_id, record.actor_name, record.queue_name, message, record)


class RedisRedelivery(Redelivery):
    """Settle a dead RedisBroker process's un-acked messages (``lua/requeue_orphans.lua``)."""

    def __init__(
        self, broker: Broker, store: TrackerStore, settings: TrackerSettings, claims: Claims, cleaners: LockCleaners
    ) -> None:
        super().__init__(broker, store, settings, claims, cleaners)
        redis_broker = as_redis_broker(broker)
        self.broker_store = BrokerStore(redis_broker.client, redis_broker.namespace, settings.namespace)

    def _process_alive_elsewhere(self, worker: WorkerInfo) -> bool:
        # A worker id that was fenced and re-registered shares its broker_id with its new id:
        # the process is alive and owns its acks, which must not be taken from it.
        peers = [wid for wid in self.store.broker_peers(worker.broker_id) if wid != worker.worker_id]
        return bool(peers) and any(self.store.alive(peers))

    def recover(self, worker: WorkerInfo, raw_records: Mapping[str, str], *, dry_run: bool = False) -> Recovered:
        if self._process_alive_elsewhere(worker):
            # Its running messages are its own zombies now, and it completes them itself:
            # nothing is moved, counted or unlocked.
            self.logger.warning(
                "Worker %r was declared dead, but its process is alive under another worker id; "
                "its messages are left to it.",
                worker.worker_id,
            )
            return Recovered([])
        records = self.parse_records(worker, raw_records)
        found, superseded = self._found(worker, records)
        decodable = [c for c in found if c.message is not None]
        claims = self.claims.claim(worker, decodable, "deliver", dry_run=dry_run)
        if dry_run:
            return Recovered([orphan for orphan, reply in claims if not reply.running or reply.taken])
        claimed = dict(zip((c.redis_message_id for c in decodable), claims, strict=True))

        # Older copies of a message the dead process held twice: only its newest is delivered again.
        moves: list[OrphanMove] = [OrphanMove(c.queue_name, c.redis_message_id, "drop") for c in superseded]
        moved: dict[str, tuple[Message[Any], Orphan]] = {}
        orphans: dict[str, Orphan] = {}
        complete = True
        for candidate in found:
            redis_id = candidate.redis_message_id
            if candidate.message is None:
                # An orphan that cannot be decoded is still moved back, unchanged.
                moves.append(OrphanMove(candidate.queue_name, redis_id, "requeue"))
                continue
            orphan, reply = claimed[redis_id]
            if orphan.running and not self._settles(orphan, reply):
                complete = False
                continue
            moves.append(self._move(candidate.message, orphan, reply))
            moved[redis_id] = (candidate.message, orphan)
            orphans[redis_id] = orphan

        # Dead letters are stamped with this process's clock, as Dramatiq's own nack does.
        settled = self.broker_store.settle(worker.broker_id, moves, int(time.time() * 1000))
        raced = [
            (orphan.queue_name, rid, encode_recovered(message, orphan, redis_message_id=rid))
            for rid, (message, orphan) in moved.items()
            if rid in settled.raced and orphan.outcome == REDELIVERED
        ]
        if raced:
            remarked = self.broker_store.remark(raced)
            self.logger.info(
                "%d orphans of worker %r were requeued by Dramatiq's own maintenance meanwhile; %d of them "
                "still waited on their queue and now carry their recovery marks.",
                len(raced),
                worker.worker_id,
                len(remarked),
            )
        for redis_id in settled.missing:
            self.logger.debug(
                "Orphan %r of worker %r had no payload left; nothing to deliver.", redis_id, worker.worker_id
            )
        return Recovered([orphans[rid] for rid in settled.settled if rid in orphans], complete)

    def _found(
        self, worker: WorkerInfo, records: Mapping[str, InflightRecord]
    ) -> tuple[list[Candidate], list[Candidate]]:
        """The dead process's orphans, and the older copies of messages it held more than once."""
        unacked = self.broker_store.unacked(worker.broker_id, consumer_queues(worker.queues))
        found: list[Candidate] = []
        for queue_name, messages in unacked.items():
            for redis_id, payload in messages:
                message = self._decode(worker, queue_name, redis_id, payload)
                if message is None:
                    found.append(Candidate("", "", queue_name, None, None, redis_id))
                    continue
                found.append(
                    Candidate(
                        message.message_id,
                        message.actor_name,
                        queue_name,
                        message,
                        records.get(message.message_id),
                        redis_id,
                    )
                )
        newest: dict[str, Candidate] = {}
        for candidate in found:
            if candidate.message is None:
                continue
            kept = newest.get(candidate.message_id)
            if kept is None or _age_rank(candidate) > _age_rank(kept):
                newest[candidate.message_id] = candidate
        kept_ids = {id(c) for c in newest.values()}
        superseded = [c for c in found if c.message is not None and id(c) not in kept_ids]
        for candidate in superseded:
            self.logger.warning(
                "Dead worker %r held message %r twice (%r and a newer copy); only the newer one is delivered again.",
                worker.worker_id,
                candidate.message_id,
                candidate.redis_message_id,
            )
        return [c for c in found if c.message is None or id(c) in kept_ids], superseded

    def _settles(self, orphan: Orphan, reply: ClaimReply) -> bool:
        # Only the sweeper that took a running orphan cleans its locks and settles it, so that a
        # cleaner never runs after the orphan started again elsewhere; unless that sweeper stopped
        # midway long ago, and this one finishes its job, cleaners included.
        if reply.taken or reply.claim_age >= self.settings.takeover_after:
            self.cleaners.clean(orphan)
            return True
        return False

    def _move(self, message: Message[Any], orphan: Orphan, reply: ClaimReply) -> OrphanMove:
        """How to settle an orphan: requeued under a new redis message id with its marks,
        dead-lettered with them, or dropped."""
        redis_id = orphan.redis_message_id
        action = _REDIS_ACTIONS[reply.outcome or "deliver"]
        if action == "drop":
            return OrphanMove(orphan.queue_name, redis_id, action)
        new_id = str(uuid.UUID(bytes=os.urandom(16))) if action == "requeue" else ""
        payload = encode_recovered(message, orphan, redis_message_id=new_id or redis_id)
        return OrphanMove(orphan.queue_name, redis_id, action, new_id, payload)

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


def _age_rank(candidate: Candidate) -> tuple[int, int, int]:
    # A later retry, a later recovery attempt, then the delay queue's copy (a scheduled retry) wins.
    assert candidate.message is not None
    options = candidate.message.options
    retries = options.get("retries", 0)
    return (
        retries if isinstance(retries, int) else 0,
        attempt_of(options),
        int(candidate.queue_name != q_name(candidate.queue_name)),
    )


class RabbitmqRedelivery(Redelivery):
    """RabbitMQ redelivers by itself: settle the books, never re-publish."""

    def recover(self, worker: WorkerInfo, raw_records: Mapping[str, str], *, dry_run: bool = False) -> Recovered:
        records = self.parse_records(worker, raw_records)
        claimed = self.claims.claim(worker, [self.candidate(r) for r in records.values()], "await", dry_run=dry_run)
        recovered, awaiting = [], 0
        for orphan, reply in claimed:
            if reply.awaiting:
                awaiting += 1
            elif reply.taken:
                # RabbitMQ delivered it again before this sweep: it runs elsewhere already.
                recovered.append(orphan)
        if awaiting:
            self.logger.info(
                "Dead worker %r had %d messages running; RabbitMQ delivers them again when its connection "
                "closes, and each recovery is counted then.",
                worker.worker_id,
                awaiting,
            )
        return Recovered(recovered)


class EnqueueRedelivery(Redelivery):
    """Enqueue the stored payload again, for brokers that lose a dead consumer's messages."""

    def recover(self, worker: WorkerInfo, raw_records: Mapping[str, str], *, dry_run: bool = False) -> Recovered:
        records = self.parse_records(worker, raw_records)
        claimed = self.claims.claim(worker, [self.candidate(r) for r in records.values()], "park", dry_run=dry_run)
        if dry_run:
            return Recovered([orphan for orphan, reply in claimed if reply.taken])
        recovered = []
        for (orphan, reply), record in zip(claimed, records.values(), strict=True):
            if reply.taken:
                self.cleaners.clean(orphan)
                if self.enqueue(orphan, record):
                    recovered.append(orphan)
        # Orphans another sweeper took wait in the outbox; that sweeper or retry_outbox() ends them.
        return Recovered(recovered)

    def enqueue(self, orphan: Orphan, record: InflightRecord) -> bool:
        """Enqueue one parked orphan again (or drop it), then take it out of the outbox.

        Returns:
          bool: False when its payload does not decode: it stays in the outbox for an operator.
        """
        message = orphan.message
        if message is None:
            self.logger.error(
                "Cannot deliver message %r (actor %r) orphaned by worker %r again: its payload does not decode. "
                "Its record stays in the outbox for an operator.",
                record.message_id,
                record.actor_name,
                orphan.worker_id,
            )
            return False
        if orphan.outcome != DROPPED:
            # To the canonical queue now, even if it was consumed from a delay queue.  A quarantined
            # message goes with a mark: the worker that receives it dead-letters it without running it.
            extra = {QUARANTINE_OPTION: True} if orphan.outcome == QUARANTINED_OUTCOME else {}
            redelivered = mark_recovered(message, orphan, **extra).copy(queue_name=q_name(message.queue_name))
            redelivered.options.pop("eta", None)
            self.broker.enqueue(redelivered)
        self.store.unpark(self.claims.identity, record.message_id)
        return True

    def retry_outbox(self, grace: int, *, dry_run: bool = False) -> list[Orphan]:
        """Re-enqueue orphans left in the outbox by a sweeper that stopped midway.

        Parameters:
          dry_run(bool): Only list those it would re-enqueue.
        """
        recovered = []
        now = self.store.server_time()
        identity = self.claims.identity
        for message_id, entry in self.store.outbox(identity).items():
            try:
                parked_at, raw_record, worker_id = parse_outbox_entry(entry)
                record = InflightRecord.from_json(raw_record, message_id=message_id, worker_id=worker_id)
            except (ValueError, KeyError, TypeError, CorruptRecord) as e:
                self.logger.warning("Skipping unreadable outbox entry of message %r: %s.", message_id, e)
                continue
            if now - parked_at < grace:
                continue
            if dry_run:
                claimed = self.claims.claim(
                    WorkerInfo.unknown(worker_id), [self.candidate(record)], "park", dry_run=True
                )
                recovered.append(claimed[0][0])
                continue
            if self.store.repark(identity, message_id, entry) is None:
                continue
            claimed = self.claims.claim(WorkerInfo.unknown(worker_id), [self.candidate(record)], "park")
            (orphan, _) = claimed[0]
            if self.enqueue(orphan, record):
                recovered.append(orphan)
        return recovered


def redelivery_for(
    kind: str, broker: Broker, store: TrackerStore, settings: TrackerSettings, claims: Claims, cleaners: LockCleaners
) -> Redelivery:
    """The redelivery strategy for a broker kind (see :mod:`dramatiq_tracker.brokers`)."""
    if kind == REDIS:
        return RedisRedelivery(broker, store, settings, claims, cleaners)
    if kind == RABBITMQ:
        return RabbitmqRedelivery(broker, store, settings, claims, cleaners)
    return EnqueueRedelivery(broker, store, settings, claims, cleaners)
