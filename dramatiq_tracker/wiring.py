"""The tracker's object graph, built once per broker.

Dramatiq tells a middleware its broker only through hooks, so the graph is
built when the first hook brings the broker (:meth:`Binding.bind`); each part
is given what it depends on, and nothing reaches back up.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from typing import TYPE_CHECKING

import dramatiq

from .abort import AbortBridge
from .broker_store import BrokerStore
from .brokers import REDIS, BrokerFacts, as_redis_broker
from .connection import MasterWatch, resolve_client
from .errors import TrackerError
from .events import EventCallbacks, Events
from .health import ConnectionHealth
from .keys import identity_digest
from .orphans import Claims, LockCleaner, LockCleaners, Quarantine, Settlement
from .recovery import Recovery
from .redelivery import redelivery_for
from .store import TrackerStore
from .unique import QUIET_SKIP_ATTRIBUTE, Uniqueness

if TYPE_CHECKING:
    import redis
    from dramatiq import Broker, Middleware

    from .policies import Policies
    from .settings import TrackerSettings


@dataclasses.dataclass(frozen=True)
class Wiring:
    """The tracker's machinery in one process, bound to its broker; built once by :func:`build`."""

    broker: Broker
    settings: TrackerSettings
    facts: BrokerFacts
    #: The short digest of the broker identity: the suffix of its deadlines, lease and outbox keys.
    digest: str
    store: TrackerStore
    #: With a Sentinel-managed Redis, which server is the master (a no-op otherwise).
    master: MasterWatch
    broker_store: BrokerStore | None
    health: ConnectionHealth
    events: Events
    policies: Policies
    uniqueness: Uniqueness
    aborts: AbortBridge
    cleaners: LockCleaners
    settlement: Settlement
    claims: Claims
    recovery: Recovery


def build(
    broker: Broker,
    settings: TrackerSettings,
    client: redis.Redis,
    policies: Policies,
    cleaners: list[LockCleaner],
    callbacks: EventCallbacks,
) -> Wiring:
    """Build the tracker's machinery for ``broker``, each part given what it depends on."""
    facts = BrokerFacts.of(broker, settings.broker_identity)
    digest = identity_digest(facts.identity)
    store = TrackerStore(client, settings.namespace)
    broker_store = None
    if facts.kind == REDIS:
        redis_broker = as_redis_broker(broker)
        broker_store = BrokerStore(redis_broker.client, redis_broker.namespace, settings.namespace)
    health = ConnectionHealth()
    events = Events(store, health, settings.events_maxlen, callbacks)
    aborts = AbortBridge(broker, _AbortMemory(store, settings.history_ttl).remember)
    lock_cleaners = LockCleaners(events, cleaners, settings.takeover_after)
    settlement = Settlement(events, Quarantine(broker, policies))
    claims = Claims(broker, store, settings, digest, policies, aborts)
    redelivery = redelivery_for(facts.kind, broker, store, settings, claims, lock_cleaners)
    master = MasterWatch(client)
    recovery = Recovery(broker, store, settings, facts.identity, redelivery, settlement, events, master, broker_store)
    return Wiring(
        broker=broker,
        settings=settings,
        facts=facts,
        digest=digest,
        store=store,
        master=master,
        broker_store=broker_store,
        health=health,
        events=events,
        policies=policies,
        uniqueness=Uniqueness(store, health),
        aborts=aborts,
        cleaners=lock_cleaners,
        settlement=settlement,
        claims=claims,
        recovery=recovery,
    )


class Binding:
    """Builds the machinery of one middleware once, when its broker is known.

    Parameters:
      middleware(Middleware): The middleware (to find its broker before any hook).
      settings(TrackerSettings)
      client(redis.Redis|None): The tracker's client, or None to resolve it from the broker.
      owns_client(bool): Whether the tracker made the client, and so closes it.
      policies(Policies)
      cleaners(list): The middleware's lock cleaners (the list itself: later additions count).
      callbacks(EventCallbacks): The application's event callbacks.
    """

    def __init__(
        self,
        middleware: Middleware,
        settings: TrackerSettings,
        client: redis.Redis | None,
        owns_client: bool,
        policies: Policies,
        cleaners: list[LockCleaner],
        callbacks: EventCallbacks,
    ) -> None:
        self.middleware = middleware
        self.settings = settings
        self.client = client
        self.owns_client = owns_client
        self.policies = policies
        self.cleaners = cleaners
        self.callbacks = callbacks
        self._lock = threading.Lock()
        #: The machinery once built, else None.
        self.wiring: Wiring | None = None

    def broker(self) -> Broker:
        """The broker the middleware is added to.

        Raises:
          TrackerError: Before it is added to one.
        """
        if self.wiring is not None:
            return self.wiring.broker
        # Before any hook, the global broker may be ours.
        broker = dramatiq.get_broker()
        if self.middleware not in broker.middleware:
            raise TrackerError("This tracker is not added to a broker yet; add it with broker.add_middleware().")
        return broker

    def bind(self, broker: Broker) -> Wiring:
        """Pick the tracker's Redis (the broker's own client by default) and build the machinery, once."""
        wiring = self.wiring
        if wiring is not None:
            return wiring
        with self._lock:
            if self.wiring is None:
                if self.client is None:
                    self.client = resolve_client(broker)
                    self.owns_client = self.client is not getattr(broker, "client", None)
                self.wiring = build(broker, self.settings, self.client, self.policies, self.cleaners, self.callbacks)
                install_quiet_skips()
            return self.wiring

    def close(self) -> None:
        """Close the tracker's Redis client if the tracker made it; it reconnects if used again."""
        if self.owns_client and self.client is not None:
            self.client.close()


class _AbortMemory:
    """Persists cancel and abort requests longer than dramatiq-abort does."""

    def __init__(self, store: TrackerStore, history_ttl: int) -> None:
        self.store = store
        self.history_ttl = history_ttl

    def remember(self, message_id: str, mode: str) -> None:
        self.store.note_history(message_id, self.history_ttl, {"abort": mode})


class QuietSkips(logging.Filter):
    """Leaves out Dramatiq's "Message ... was skipped." warning for messages the tracker skips on
    purpose (put-off duplicates, stale copies, dropped duplicates): the tracker says why itself."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if record.msg == "Message %s was skipped." and isinstance(args, tuple) and args:
            return not getattr(args[0], QUIET_SKIP_ATTRIBUTE, False)
        return True


_quiet_skips_installed = threading.Lock()


def install_quiet_skips() -> None:
    """Install :class:`QuietSkips` on Dramatiq's worker-thread logger, once per process."""
    logger = logging.getLogger("dramatiq.worker.WorkerThread")
    with _quiet_skips_installed:
        if not any(isinstance(f, QuietSkips) for f in logger.filters):
            logger.addFilter(QuietSkips())
