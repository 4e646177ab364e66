"""Poison messages: what happens to a message recovered more than ``max_recoveries`` times.

A message that kills its worker comes back after every crash, bypassing
Dramatiq's ``max_retries`` (dramatiq #213).  The tracker counts recoveries
durably per message id; a message recovered more than ``max_recoveries``
times is dead-lettered through its broker's own dead-letter path instead of
being delivered again, and the actor named by ``on_recovery_exhausted`` is
sent ``(message.asdict(), {"recoveries": n, "max_recoveries": m, "worker_id": w})``,
as Dramatiq's Retries does with ``on_retry_exhausted``.

The limit and the callback travel with the message (its in-flight record), so
the process that quarantines it need not import its actor.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from dramatiq.logging import get_logger
from dramatiq.message import Message

if TYPE_CHECKING:
    from dramatiq import Broker

    from .orphans import Orphan
    from .policies import Policies


class Quarantine:
    """Sends quarantined messages to their ``on_recovery_exhausted`` actor.

    Parameters:
      broker(Broker): Where the callback message is enqueued.
      policies(Policies): To find the callback of a message whose record did not name it.
    """

    def __init__(self, broker: Broker, policies: Policies) -> None:
        self.logger = get_logger(__name__, type(self))
        self.broker = broker
        self.policies = policies

    def target(self, orphan: Orphan) -> tuple[str, str]:
        """The (actor name, queue name) of an orphan's callback, or ("", "")."""
        actor_name, _, queue_name = orphan.on_exhausted.partition("|")
        if not actor_name and orphan.message is not None:
            policy = self.policies.of_message(self.broker, orphan.actor_name, orphan.message.options)
            actor_name = policy.on_exhausted
        if actor_name and not queue_name:
            queue_name = self.policies.callback_queue(self.broker, actor_name)
        return actor_name, queue_name

    def notify(self, orphan: Orphan) -> None:
        """Send the quarantined message to its ``on_recovery_exhausted`` actor, if it has one."""
        if orphan.message is None:
            return
        try:
            actor_name, queue_name = self.target(orphan)
            if not actor_name:
                return
            if not queue_name:
                self.logger.warning(
                    "The on_recovery_exhausted actor %r of quarantined message %r is not declared here and its "
                    "queue is unknown; it is sent to queue 'default'.",
                    actor_name,
                    orphan.message_id,
                )
                queue_name = "default"
            info = {
                "recoveries": orphan.recoveries,
                "max_recoveries": orphan.max_recoveries,
                "worker_id": orphan.worker_id,
            }
            self.broker.enqueue(
                Message(
                    queue_name=queue_name,
                    actor_name=actor_name,
                    args=(orphan.message.asdict(), info),
                    kwargs={},
                    options={},
                )
            )
        except Exception:
            self.logger.exception(
                "Could not send quarantined message %r to its on_recovery_exhausted actor.", orphan.message_id
            )
