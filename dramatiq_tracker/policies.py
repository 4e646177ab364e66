"""What the tracker does with each actor's messages, resolved once per actor.

A policy is resolved as Dramatiq's own middleware resolve their options:
message option, then actor option, then the middleware's default.  The
per-message path looks an actor's policy up in a dict; a message is
resolved on its own only when it carries one of the options that override
its actor's (:data:`~dramatiq_tracker.options.ACTOR_OPTIONS`).

A policy also travels with the message: it is written into the message's
in-flight record, so that whichever process recovers the message applies
it, whether or not that process imports the actor.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from .errors import ConfigurationError
from .options import ACTOR_OPTIONS, MAX_RECOVERIES, ON_RECOVERY_EXHAUSTED, TRACK
from .unique import UniquePolicy, resolve_policy

if TYPE_CHECKING:
    from dramatiq import Broker

    from .settings import TrackerSettings


def validate_quarantine_options(options: Mapping[str, Any]) -> None:
    """Check an actor's or a message's poison-quarantine options.

    Raises:
      ConfigurationError: Naming the invalid option.
    """
    limit = options.get(MAX_RECOVERIES)
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise ConfigurationError(MAX_RECOVERIES, "must be a non-negative integer, got %r" % (limit,))
    callback = options.get(ON_RECOVERY_EXHAUSTED)
    if callback is not None and not isinstance(callback, str):
        raise ConfigurationError(ON_RECOVERY_EXHAUSTED, "must be an actor name, got %r" % (callback,))


@dataclasses.dataclass(frozen=True)
class ActorPolicy:
    """What the tracker does with the messages of one actor (or of one message that overrides it).

    Parameters:
      actor_name(str)
      track(bool): Whether its messages are tracked at all.
      max_recoveries(int): Recoveries allowed before a message is quarantined; 0 is at most once.
      on_exhausted(str): The actor sent each quarantined message, or "".
      unique(UniquePolicy|None): How its messages are kept unique, if they are.
      known(bool): False when the actor is not declared in this process: its defaults are the
        middleware's, and a recovery must rely on the policy recorded with the message.
    """

    actor_name: str
    track: bool
    max_recoveries: int
    on_exhausted: str
    unique: UniquePolicy | None
    known: bool = True

    @property
    def at_most_once(self) -> bool:
        """A message of this policy never runs twice: its start is recorded before it runs."""
        return self.max_recoveries == 0


class Policies:
    """Resolves and caches each actor's :class:`ActorPolicy`.

    Parameters:
      settings(TrackerSettings): The middleware's defaults.
    """

    def __init__(self, settings: TrackerSettings) -> None:
        self.settings = settings
        #: Each actor's policy, resolved once: the per-message path looks it up here.
        self.by_actor: dict[str, ActorPolicy] = {}
        self._declared: dict[str, Mapping[str, Any]] = {}
        self._lock = threading.Lock()

    def declare(self, actor_name: str, options: Mapping[str, Any]) -> ActorPolicy:
        """Resolve an actor's policy when it is declared.

        Raises:
          ConfigurationError: When one of its options is invalid; the error names it.
        """
        policy = self._resolve(actor_name, True, options)
        with self._lock:
            self._declared[actor_name] = options
            self.by_actor[actor_name] = policy
        return policy

    def of_actor(self, broker: Broker, actor_name: str) -> ActorPolicy:
        """The policy of an actor, from the cache; an actor declared before the middleware was
        added, or unknown in this process, is resolved the first time it is seen."""
        policy = self.by_actor.get(actor_name)
        if policy is None:
            actor = broker.actors.get(actor_name)
            options = actor.options if actor is not None else {}
            try:
                policy = self._resolve(actor_name, actor is not None, options)
            except ConfigurationError:
                policy = self._resolve(actor_name, actor is not None, {})
            with self._lock:
                self._declared.setdefault(actor_name, options)
                self.by_actor[actor_name] = policy
        return policy

    def of_message(self, broker: Broker, actor_name: str, options: Mapping[str, Any]) -> ActorPolicy:
        """The policy of one message: its actor's, unless its own options override it.

        Raises:
          ConfigurationError: When one of the message's options is invalid.
        """
        actor_policy = self.of_actor(broker, actor_name)
        if ACTOR_OPTIONS.isdisjoint(options):
            return actor_policy
        return self._resolve(actor_name, actor_policy.known, options, self._declared.get(actor_name, {}))

    def callback_queue(self, broker: Broker, actor_name: str) -> str:
        """The queue of the ``on_recovery_exhausted`` actor ``actor_name``, or "" when it is not declared here."""
        actor = broker.actors.get(actor_name)
        return actor.queue_name if actor is not None else ""

    def _resolve(self, actor_name: str, known: bool, *layers: Mapping[str, Any]) -> ActorPolicy:
        for layer in layers:
            validate_quarantine_options(layer)

        def lookup(name: str, default: Any) -> Any:
            for layer in layers:
                value = layer.get(name)
                if value is not None:
                    return value
            return default

        return ActorPolicy(
            actor_name=actor_name,
            track=bool(lookup(TRACK, True)),
            max_recoveries=lookup(MAX_RECOVERIES, self.settings.max_recoveries),
            on_exhausted=lookup(ON_RECOVERY_EXHAUSTED, ""),
            unique=resolve_policy(*layers, self.settings.unique_defaults),
            known=known,
        )
