"""The one way to claim orphans: from what is known of each, ask
``lua/claim_orphans.lua`` to take it, count it, give it a new attempt and
release its locks, and return it as an :class:`~dramatiq_tracker.orphans.Orphan`.

Sweepers claim a dead worker's orphans in batches; a worker claims one when
its redelivery starts (RabbitMQ, a put-off duplicate whose twin died).  Both
go through :meth:`Claims.claim`.

What decides an orphan's fate travels with it: its poison limit and its
callback come from its in-flight record (written where its actor is known),
else from its message's own options, else from the actor's policy if this
process knows the actor; only then the middleware's default, said in a warning.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from dramatiq.logging import get_logger
from dramatiq.message import Message

from .options import MAX_RECOVERIES, attempt_of
from .orphans import BROKER_REDELIVERS, OUTCOMES, REDELIVERED, Orphan
from .store import ClaimMode, ClaimReply, ClaimRequest
from .unique import lock_of

if TYPE_CHECKING:
    from dramatiq import Broker

    from .abort import AbortBridge
    from .policies import ActorPolicy, Policies
    from .records import InflightRecord, WorkerInfo
    from .settings import TrackerSettings
    from .store import TrackerStore

#: How many orphans one script call claims, so that a big recovery never blocks Redis for long.
CLAIM_BATCH = 500


@dataclasses.dataclass(frozen=True)
class Candidate:
    """What is known of one orphan before it is claimed.

    Parameters:
      message_id(str)
      actor_name(str)
      queue_name(str): The queue it was fetched from.
      message(Message|None): The decoded message, from the broker or the record.
      record(InflightRecord|None): Its in-flight record, when it was recorded running.
      redis_message_id(str): RedisBroker's id of the copy found.
      policy(ActorPolicy|None): Its policy, when the claimer runs it (a redelivery starting).
    """

    message_id: str
    actor_name: str
    queue_name: str
    message: Message[Any] | None
    record: InflightRecord | None = None
    redis_message_id: str = ""
    policy: ActorPolicy | None = None


class Claims:
    """Claims orphans for one broker identity.

    Parameters:
      broker(Broker): The claimer's broker (its actors, for messages that say nothing).
      store(TrackerStore)
      settings(TrackerSettings)
      identity(str): The digest of the claimer's broker identity (its outbox).
      policies(Policies)
      aborts(AbortBridge): dramatiq-abort, to leave cancelled messages dead.
    """

    def __init__(
        self,
        broker: Broker,
        store: TrackerStore,
        settings: TrackerSettings,
        identity: str,
        policies: Policies,
        aborts: AbortBridge,
    ) -> None:
        self.logger = get_logger(__name__, type(self))
        self.broker = broker
        self.store = store
        self.settings = settings
        self.identity = identity
        self.policies = policies
        self.aborts = aborts
        self._warned: set[str] = set()

    def claim(
        self, worker: WorkerInfo, candidates: Sequence[Candidate], mode: ClaimMode, *, dry_run: bool = False
    ) -> list[tuple[Orphan, ClaimReply]]:
        """Claim orphans of a dead worker, in batches; one result per candidate, in order.

        Parameters:
          dry_run(bool): Only say what the claim would decide.

        Raises:
          redis.RedisError: When the tracker's Redis fails; what was claimed stays claimed,
            and a later claim of the same worker reports it again, without counting it twice.
        """
        aborted = self.aborts.pending({c.message_id for c in candidates})
        requests = [self._request(candidate, candidate.message_id in aborted) for candidate in candidates]
        replies: list[ClaimReply] = []
        for start in range(0, len(requests), CLAIM_BATCH):
            batch = requests[start : start + CLAIM_BATCH]
            replies += self.store.claim_orphans(
                worker.worker_id,
                self.identity,
                batch,
                mode=mode,
                history_ttl=self.settings.history_ttl,
                dry_run=dry_run,
            )
        return [
            (self._orphan(worker, candidate, request, reply), reply)
            for candidate, request, reply in zip(candidates, requests, replies, strict=True)
        ]

    def _request(self, candidate: Candidate, aborted: bool) -> ClaimRequest:
        record, message = candidate.record, candidate.message
        options = message.options if message is not None else {}
        digest, mode = lock_of(options)
        if not digest and record is not None:
            digest, mode = record.lock_digest_and_mode
        return ClaimRequest(
            message_id=candidate.message_id,
            attempt=max(attempt_of(options), record.attempt if record is not None else 0),
            digest=digest,
            mode=mode,
            max_recoveries=self._limit(candidate, options),
            aborted=aborted,
        )

    def _limit(self, candidate: Candidate, options: Any) -> int:
        if candidate.policy is not None:
            return candidate.policy.max_recoveries
        if candidate.record is not None:
            return candidate.record.max_recoveries
        own = options.get(MAX_RECOVERIES)
        if isinstance(own, int) and not isinstance(own, bool) and own >= 0:
            return own
        policy = self.policies.of_actor(self.broker, candidate.actor_name)
        if not policy.known and candidate.actor_name not in self._warned:
            # Only orphans that ran without a record get here; their count rarely matters, but say so.
            self._warned.add(candidate.actor_name)
            self.logger.warning(
                "Actor %r is not declared in this process and its orphan %r carries no recovery policy; "
                "max_recoveries=%d (the middleware's default) applies to it.",
                candidate.actor_name,
                candidate.message_id,
                policy.max_recoveries,
            )
        return policy.max_recoveries

    def _orphan(self, worker: WorkerInfo, candidate: Candidate, request: ClaimRequest, reply: ClaimReply) -> Orphan:
        record = candidate.record
        on_exhausted = record.on_exhausted if record is not None else ""
        if not on_exhausted and candidate.policy is not None and candidate.policy.on_exhausted:
            name = candidate.policy.on_exhausted
            on_exhausted = "%s|%s" % (name, self.policies.callback_queue(self.broker, name))
        return Orphan(
            message_id=candidate.message_id,
            actor_name=candidate.actor_name,
            queue_name=candidate.queue_name,
            message=candidate.message,
            worker=worker,
            running=reply.running,
            started_at=record.started_at if record is not None else None,
            recoveries=reply.recoveries,
            attempt=reply.attempt,
            max_recoveries=request.max_recoveries,
            outcome=BROKER_REDELIVERS if reply.awaiting else OUTCOMES.get(reply.outcome, REDELIVERED),
            lock=reply.lock,
            on_exhausted=on_exhausted,
            redis_message_id=candidate.redis_message_id,
        )
