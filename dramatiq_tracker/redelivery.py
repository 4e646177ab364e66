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
(:class:`~dramatiq_tracker.orphans.Claims`): delivered again, quarantined
(recovered more than ``max_recoveries`` times), or dropped (cancelled or
aborted).  A sweeper does all of it under its claim on the dead worker's
recovery (:class:`~dramatiq_tracker.recovery_claim.RecoveryClaim`): should another
take it over, it stops, and the other does every step it did not, lock
cleaners included, none twice.
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
from .errors import RecoveryTakenOver
from .options import ATTEMPT_OPTION, COPY_OPTION, QUARANTINE_OPTION, RECOVERIES_OPTION, attempt_of
from .orphans import DROPPED, QUARANTINED_OUTCOME, REDELIVERED, Candidate, Claims, LockCleaners, Orphan
from .records import CorruptRecord, InflightRecord, WorkerInfo, parse_outbox_entry
from .recovery_claim import RecoveryClaim
from .unique import lock_of

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

    def recover(
        self,
        worker: WorkerInfo,
        raw_records: Mapping[str, str],
        *,
        claim: RecoveryClaim | None = None,
        dry_run: bool = False,
    ) -> Recovered:
        """Settle a dead worker's orphans.

        Parameters:
          claim(RecoveryClaim): The caller's claim on the worker's recovery (None for a dry run).
          dry_run(bool): Only say what would be done with them (``outcome``); change nothing,
            run no lock cleaner.

        Returns:
          Recovered: Not complete when the claim's budget ran out: the next holder goes on.

        Raises:
          RecoveryTakenOver: When another sweeper took the claim over; it goes on.
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

    def _live_peers(self, worker: WorkerInfo) -> list[WorkerInfo | None]:
        """The live workers that share ``worker``'s broker_id: its own process under a new id (it was
        fenced), or processes forked after the broker was built; None for one that is unreadable."""
        peers = [wid for wid in self.store.broker_peers(worker.broker_id) if wid != worker.worker_id]
        live = [wid for wid, alive in zip(peers, self.store.alive(peers), strict=True) if alive] if peers else []
        registrations = self.store.registrations(live) if live else {}
        found: list[WorkerInfo | None] = []
        for worker_id in live:
            try:
                found.append(WorkerInfo.from_json(registrations[worker_id]))
            except (KeyError, CorruptRecord):
                found.append(None)
        return found

    def recover(
        self,
        worker: WorkerInfo,
        raw_records: Mapping[str, str],
        *,
        claim: RecoveryClaim | None = None,
        dry_run: bool = False,
    ) -> Recovered:
        peers = self._live_peers(worker)
        # Once a claim revoked its copies (a sweeper stopped between the claim and the move), the process
        # skips them as stale: they must be moved, whoever runs under its new id.
        same_process = any(peer is None or peer.host == worker.host for peer in peers)
        revoked = self.store.revoked(worker.worker_id) if same_process else {}
        if same_process and not revoked:
            # A worker id that was fenced and re-registered shares its broker_id with its new id: the
            # process is alive and owns its acks, and its running messages are its own zombies now,
            # which it completes itself: nothing is moved, counted or unlocked.
            self.logger.warning(
                "Worker %r was declared dead, but its process is alive under another worker id; "
                "its messages are left to it.",
                worker.worker_id,
            )
            return Recovered([])
        records = self.parse_records(worker, raw_records)
        found, superseded = self._found(worker, records)
        if same_process:
            # Alive under its new id, in the same acks: only the copies a claim revoked from it are the
            # dead id's (what it fetched since is its own, and runs there), and they must be moved, or
            # nothing delivers them (it skips them, and withholds their acks for this move).
            def revoked_copy(candidate: Candidate) -> bool:
                message = candidate.message
                superseding = revoked.get(candidate.message_id)
                return message is not None and superseding is not None and attempt_of(message.options) < superseding

            found, superseded = [c for c in found if revoked_copy(c)], [c for c in superseded if revoked_copy(c)]
        elif peers:
            # Processes forked after their broker was built share its acks: only what this one was
            # recorded running is known to be its own.  What it had prefetched stays there (Dramatiq
            # gives it back when the last of them stops, as it does without the tracker).
            found, superseded = [c for c in found if c.record is not None], []
            self.logger.warning(
                "Worker %r shared its RedisBroker broker_id %r with %d live processes (a broker built before "
                "a fork): the %d messages it was recorded running are delivered again; those it had only "
                "fetched stay in the shared acks until every one of these processes stops. Build the broker "
                "in each process.",
                worker.worker_id,
                worker.broker_id,
                len(peers),
                len(found),
            )
        decodable = [c for c in found if c.message is not None]
        claims = self.claims.claim(worker, decodable, "deliver", claim=claim, dry_run=dry_run)
        if dry_run or claim is None:
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
            if reply.by_start:
                # A copy of it started elsewhere and took it over (a put-off copy whose twin died here):
                # this one is stale.
                moves.append(OrphanMove(candidate.queue_name, redis_id, "drop"))
                continue
            if orphan.running:
                if orphans and claim.over_budget:
                    # Claimed, not moved: the next holder of the claim goes on from here.
                    complete = False
                    continue
                self.cleaners.clean(orphan, claim)
            moves.append(self._move(candidate.message, orphan, reply))
            moved[redis_id] = (candidate.message, orphan)
            orphans[redis_id] = orphan

        # Dead letters are stamped with this process's clock, as Dramatiq's own nack does.
        claim.check()
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
            gone = [moved[rid][1] for _, rid, _ in raced if rid not in remarked]
            self._release_unclaimed_locks(gone)
        for redis_id in settled.missing:
            self.logger.debug(
                "Orphan %r of worker %r had no payload left; nothing to deliver.", redis_id, worker.worker_id
            )
        return Recovered([orphans[rid] for rid in settled.settled if rid in orphans], complete)

    def _release_unclaimed_locks(self, orphans: list[Orphan]) -> None:
        # Settled by someone else before the move: acked by the worker declared dead (a zombie that
        # completed it), or requeued by Dramatiq's maintenance and fetched.  The lock a claim passed
        # to the new attempt has no copy to release it, unless an attempt runs the message now.  (The
        # claim that passed it may be an earlier one, of a sweeper this one took the recovery over
        # from: the lock is released if the new attempt holds it, whoever passed it.)
        for orphan in orphans:
            if orphan.message is None or self.store.running_owner(orphan.message_id) is not None:
                continue
            digest, _ = lock_of(orphan.message.options)
            if digest and self.store.release_lock(digest, orphan.message_id, orphan.attempt, ""):
                self.logger.info(
                    "Released the uniqueness lock %s of message %r: its copy on dead worker %r was settled "
                    "before it could be moved back (acked or requeued), and no attempt runs it.",
                    digest,
                    orphan.message_id,
                    orphan.worker_id,
                )

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

    def recover(
        self,
        worker: WorkerInfo,
        raw_records: Mapping[str, str],
        *,
        claim: RecoveryClaim | None = None,
        dry_run: bool = False,
    ) -> Recovered:
        records = self.parse_records(worker, raw_records)
        candidates = [self.candidate(r) for r in records.values()]
        claimed = self.claims.claim(worker, candidates, "await", claim=claim, dry_run=dry_run)
        recovered, awaiting = [], 0
        for orphan, reply in claimed:
            if reply.awaiting:
                awaiting += 1
            elif reply.taken:
                # RabbitMQ delivered it again before this sweep: it runs elsewhere already (or the dead copy
                # was itself a redelivery, put aside while the first copy runs on).  Counted as a recovery
                # of a running orphan, so its lock cleaners run, once, under the claim.
                if orphan.running and claim is not None:
                    self.cleaners.clean(orphan, claim)
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
    """Enqueue the stored payload again, for brokers that lose a dead consumer's messages.

    Claimed records wait in the outbox, under the claim's token, until they are enqueued; a sweeper
    that takes the recovery over takes them from there.
    """

    def __init__(
        self, broker: Broker, store: TrackerStore, settings: TrackerSettings, claims: Claims, cleaners: LockCleaners
    ) -> None:
        super().__init__(broker, store, settings, claims, cleaners)
        self._undecodable: set[str] = set()

    def recover(
        self,
        worker: WorkerInfo,
        raw_records: Mapping[str, str],
        *,
        claim: RecoveryClaim | None = None,
        dry_run: bool = False,
    ) -> Recovered:
        records = self.parse_records(worker, raw_records)
        candidates = [self.candidate(r) for r in records.values()]
        claimed = self.claims.claim(worker, candidates, "park", claim=claim, dry_run=dry_run)
        if dry_run or claim is None:
            return Recovered([orphan for orphan, reply in claimed if reply.taken])
        return self.send_parked(worker, claim, {orphan.message_id: orphan for orphan, reply in claimed if reply.taken})

    def send_parked(self, worker: WorkerInfo, claim: RecoveryClaim, taken: Mapping[str, Orphan]) -> Recovered:
        """Clean and enqueue again every orphan of ``worker`` parked in the outbox: those this claim
        just took, and those a sweeper it took the recovery over from left there.

        Parameters:
          taken(dict[str, Orphan]): The orphans this claim took, by message id.
        """
        parked = self._parked(worker.worker_id)
        # What was decided for those parked by another sweeper, without counting them again.
        others = [self.candidate(record) for message_id, record in parked.items() if message_id not in taken]
        decided = {orphan.message_id: orphan for orphan, _ in self.claims.claim(worker, others, "park", claim=claim)}
        recovered: list[Orphan] = []
        for message_id, record in parked.items():
            if recovered and claim.over_budget:
                return Recovered(recovered, complete=False)
            orphan = taken.get(message_id) or decided[message_id]
            self.cleaners.clean(orphan, claim)
            if self.enqueue(orphan, record, claim):
                recovered.append(orphan)
        return Recovered(recovered)

    def _parked(self, worker_id: str) -> dict[str, InflightRecord]:
        """The records of ``worker_id``'s orphans parked in the outbox, by message id."""
        parked = {}
        for message_id, entry in self.store.outbox(self.claims.identity).items():
            try:
                _, raw, parked_by = parse_outbox_entry(entry)
                if parked_by == worker_id:
                    parked[message_id] = InflightRecord.from_json(raw, message_id=message_id, worker_id=worker_id)
            except (ValueError, KeyError, TypeError, CorruptRecord) as e:
                self.logger.warning("Skipping unreadable outbox entry of message %r: %s.", message_id, e)
        return parked

    def enqueue(self, orphan: Orphan, record: InflightRecord, claim: RecoveryClaim) -> bool:
        """Take one parked orphan from the outbox under ``claim``, enqueue it again (or drop it),
        then remove it from the outbox.

        Returns:
          bool: False when its payload does not decode (it stays in the outbox for an operator), or
            when it was not in the outbox any more (enqueued by the sweeper this one took over from).

        Raises:
          RecoveryTakenOver: When another sweeper took the claim over.
        """
        message = orphan.message
        if message is None:
            if record.message_id not in self._undecodable:
                self._undecodable.add(record.message_id)
                self.logger.error(
                    "Cannot deliver message %r (actor %r) orphaned by worker %r again: its payload does not "
                    "decode. Its record stays in the outbox for an operator.",
                    record.message_id,
                    record.actor_name,
                    orphan.worker_id,
                )
            return False
        if claim.take_parked(record.message_id) is None:
            return False
        if orphan.outcome != DROPPED:
            # To the canonical queue now, even if it was consumed from a delay queue.  A quarantined
            # message goes with a mark: the worker that receives it dead-letters it without running it.
            extra = {QUARANTINE_OPTION: True} if orphan.outcome == QUARANTINED_OUTCOME else {}
            redelivered = mark_recovered(message, orphan, **{COPY_OPTION: claim.token}, **extra).copy(
                queue_name=q_name(message.queue_name)
            )
            redelivered.options.pop("eta", None)
            # Stalled since the take (past half the lease), it renews first, and stops if taken over.  A stall
            # inside the enqueue itself can still make a twin: the first copy to start runs, the other is
            # dropped (begin_at_risk.lua).
            claim.check()
            self.broker.enqueue(redelivered)
        self.store.unpark(self.claims.identity, record.message_id)
        return True

    def retry_outbox(self, grace: int, holder: str = "", *, dry_run: bool = False) -> list[Orphan]:
        """Enqueue again orphans left in the outbox for ``grace`` by a sweeper that stopped midway,
        taking over its claim on their worker's recovery (unless it still renews it).

        Parameters:
          holder(str): The caller's worker id, or "".
          dry_run(bool): Only list those it would enqueue.
        """
        now = self.store.server_time()
        stale: dict[str, dict[str, InflightRecord]] = {}
        for message_id, entry in self.store.outbox(self.claims.identity).items():
            try:
                parked_at, raw_record, worker_id = parse_outbox_entry(entry)
                record = InflightRecord.from_json(raw_record, message_id=message_id, worker_id=worker_id)
            except (ValueError, KeyError, TypeError, CorruptRecord) as e:
                self.logger.warning("Skipping unreadable outbox entry of message %r: %s.", message_id, e)
                continue
            if now - parked_at >= grace and message_id not in self._undecodable:
                stale.setdefault(worker_id, {})[message_id] = record
        recovered: list[Orphan] = []
        for worker_id, records in stale.items():
            worker = WorkerInfo.unknown(worker_id)
            if dry_run:
                candidates = [self.candidate(record) for record in records.values()]
                recovered += [orphan for orphan, _ in self.claims.claim(worker, candidates, "park", dry_run=True)]
                continue
            claim = RecoveryClaim.take(self.store, self.settings, self.claims.identity, worker_id, holder)
            if claim is None:
                continue
            try:
                recovered += self.send_parked(worker, claim, {}).orphans
            except RecoveryTakenOver:
                continue
            claim.release()
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
