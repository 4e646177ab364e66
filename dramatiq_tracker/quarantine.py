"""Poison messages: how many recoveries a message may have, and what happens after.

A message that kills its worker comes back after every crash, bypassing
Dramatiq's ``max_retries`` (dramatiq #213).  The tracker counts recoveries
durably per message id; a message recovered more than ``max_recoveries``
times is dead-lettered through its broker's own dead-letter path instead of
being delivered again, and the actor named by ``on_recovery_exhausted`` is
sent ``(message.asdict(), {"recoveries": n, "max_recoveries": m, "worker_id": w})``,
as Dramatiq's Retries does with ``on_retry_exhausted``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from dramatiq.logging import get_logger

from .errors import ConfigurationError

if TYPE_CHECKING:
    from dramatiq import Broker
    from dramatiq.message import Message

#: The actor options of poison quarantine.
OPTIONS = frozenset({"max_recoveries", "on_recovery_exhausted"})

#: The option of a message the tracker enqueued again only to be dead-lettered (brokers without
#: a dead-letter path the tracker can reach directly): the worker that receives it nacks it.
QUARANTINE_OPTION = "tracker_quarantined"


def validate_options(options: Mapping[str, Any]) -> None:
    """Check an actor's or a message's quarantine options.

    Raises:
      ConfigurationError: Naming the invalid option.
    """
    limit = options.get("max_recoveries")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise ConfigurationError("max_recoveries", "must be a non-negative integer, got %r" % (limit,))
    callback = options.get("on_recovery_exhausted")
    if callback is not None and not isinstance(callback, str):
        raise ConfigurationError("on_recovery_exhausted", "must be an actor name, got %r" % (callback,))


class Quarantine:
    """Resolves ``max_recoveries`` and ``on_recovery_exhausted``: message option,
    then actor option, then the middleware's default.

    Parameters:
      broker(Broker)
      max_recoveries(int): The middleware's default.
    """

    def __init__(self, broker: Broker, max_recoveries: int) -> None:
        self.logger = get_logger(__name__, type(self))
        self.broker = broker
        self.default = max_recoveries

    def _option(self, name: str, actor_name: str, options: Mapping[str, Any]) -> Any:
        value = options.get(name)
        if value is None:
            actor = self.broker.actors.get(actor_name)
            value = actor.options.get(name) if actor is not None else None
        return value

    def max_recoveries(self, actor_name: str, options: Mapping[str, Any]) -> int:
        value = self._option("max_recoveries", actor_name, options)
        return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else self.default

    def notify(self, message: Message[Any], recoveries: int, worker_id: str) -> None:
        """Send the message to its ``on_recovery_exhausted`` actor, if it has one."""
        target = self._option("on_recovery_exhausted", message.actor_name, message.options)
        if not target:
            return
        try:
            actor = self.broker.get_actor(target)
            actor.send(
                message.asdict(),
                {
                    "recoveries": recoveries,
                    "max_recoveries": self.max_recoveries(message.actor_name, message.options),
                    "worker_id": worker_id,
                },
            )
        except Exception:
            self.logger.exception(
                "Could not send quarantined message %r to its on_recovery_exhausted actor %r.",
                message.message_id,
                target,
            )
