"""TrackerMiddleware: the hooks.  Every Redis operation is delegated."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import dramatiq
import redis
from dramatiq.logging import get_logger
from dramatiq.middleware import Middleware, SkipMessage

from .abort import AbortBridge
from .connection import client_from_url, resolve_client
from .errors import ConfigurationError, TrackerError, TrackerNotConfigured
from .events import EventCallback, Events, TrackerEvent
from .health import ConnectionHealth
from .orphans import LockCleaner, LockCleaners, OrphanHandling, RecoveryReport
from .quarantine import OPTIONS as QUARANTINE_OPTIONS
from .quarantine import Quarantine
from .quarantine import validate_options as validate_quarantine_options
from .recorder import FAIL, Delivery
from .recovery import Recovery
from .session import WorkerSession
from .settings import (
    DEFAULT_EVENTS_MAXLEN,
    DEFAULT_FLUSH_INTERVAL,
    DEFAULT_HEARTBEAT_INTERVAL,
    DEFAULT_HEARTBEAT_TIMEOUT,
    DEFAULT_HISTORY_TTL,
    DEFAULT_MAX_RECOVERIES,
    DEFAULT_NAMESPACE,
    DEFAULT_SWEEP_INTERVAL,
    TrackerSettings,
)
from .store import LockInfo, TrackerStore
from .unique import DEFAULT_UNIQUE_DELAY, UniqueAttempt, Uniqueness, attempt_of, validate_defaults
from .unique import OPTIONS as UNIQUE_OPTIONS

if TYPE_CHECKING:
    from dramatiq import Actor, Broker, MessageProxy, Worker
    from dramatiq.message import Message


class TrackerMiddleware(Middleware):
    """Track every in-flight message per worker, heartbeat each worker, and
    deliver a dead worker's orphaned messages again within seconds, exactly once.

    Example:

      >>> from dramatiq_tracker import TrackerMiddleware
      >>> broker.add_middleware(TrackerMiddleware())

    Add it before declaring actors: actors may use its options.

    Parameters:
      client(redis.Redis): The tracker's Redis client.
      url(str): Or a Redis URL for it.  With neither, the ``DRAMATIQ_TRACKER_REDIS_URL``
        environment variable, else the RedisBroker's own client, else ``redis://localhost:6379/0``.
      namespace(str): The prefix (and Redis Cluster hash tag) of every tracker key.
      heartbeat_interval(int): How often a worker heartbeats, in milliseconds.
      heartbeat_timeout(int): How long without a heartbeat makes a worker dead, in
        milliseconds; at least twice ``heartbeat_interval``.  Raise it above the longest
        time your actors may hold the GIL.
      sweep_interval(int): How often the cluster looks for dead workers, in milliseconds.
        An orphan is delivered again within ``heartbeat_timeout + sweep_interval``.
      max_recoveries(int): How many times a message may be recovered from dead workers
        before it is quarantined.  Actor and message option ``max_recoveries`` override it.
      flush_interval(int): How long in-flight records may wait in memory, in milliseconds.
      history_ttl(int): How long recovery counts and dead-worker tombstones are kept, in milliseconds.
      lock_cleaners(list[callable]): Called with each running orphan before it is delivered
        again, to release locks the tracker does not own (see :meth:`add_lock_cleaner`).
      unique(bool|str): The default of the ``unique`` actor option: False, True
        (``"until_executed"``) or a lock mode (see docs/uniqueness.md).
      unique_ttl(int): The default backstop expiry of uniqueness locks, in milliseconds;
        None for none.
      unique_on_conflict(str): The default fate of duplicates: "raise" or "drop" when
        sent, "skip", "delay" or "fail" when started (``while_executing``).
      unique_delay(int): How long a delayed ``while_executing`` duplicate waits, in milliseconds.
      on_event(callable|list): Called with each :class:`~dramatiq_tracker.events.TrackerEvent`
        this process emits (see :meth:`subscribe`).
      events_maxlen(int): The approximate length the Redis stream of events is capped at.

    Raises:
      ConfigurationError: When a setting is invalid; the message names it.
    """

    def __init__(
        self,
        *,
        client: redis.Redis | None = None,
        url: str | None = None,
        namespace: str = DEFAULT_NAMESPACE,
        heartbeat_interval: int = DEFAULT_HEARTBEAT_INTERVAL,
        heartbeat_timeout: int = DEFAULT_HEARTBEAT_TIMEOUT,
        sweep_interval: int = DEFAULT_SWEEP_INTERVAL,
        max_recoveries: int = DEFAULT_MAX_RECOVERIES,
        flush_interval: int = DEFAULT_FLUSH_INTERVAL,
        history_ttl: int = DEFAULT_HISTORY_TTL,
        lock_cleaners: Sequence[LockCleaner] = (),
        unique: bool | str = False,
        unique_ttl: int | None = None,
        unique_on_conflict: str | None = None,
        unique_delay: int = DEFAULT_UNIQUE_DELAY,
        on_event: EventCallback | Sequence[EventCallback] = (),
        events_maxlen: int = DEFAULT_EVENTS_MAXLEN,
    ) -> None:
        self.logger = get_logger(__name__, type(self))
        self.settings = TrackerSettings(
            namespace=namespace,
            heartbeat_interval=heartbeat_interval,
            heartbeat_timeout=heartbeat_timeout,
            sweep_interval=sweep_interval,
            max_recoveries=max_recoveries,
            flush_interval=flush_interval,
            history_ttl=history_ttl,
        )
        if client is not None and url is not None:
            raise ConfigurationError("url", "give either client or url, not both")
        if client is not None and not isinstance(client, redis.Redis):
            raise ConfigurationError("client", "must be a redis.Redis client, got %r" % (client,))
        #: Whether the tracker made its client, and so closes it when its worker stops.
        self._owns_client = client is None
        if url is not None:
            client = client_from_url(url)
        for cleaner in lock_cleaners:
            if not callable(cleaner):
                raise ConfigurationError("lock_cleaners", "%r is not callable" % (cleaner,))

        unique_defaults = {
            "unique": unique,
            "unique_ttl": unique_ttl,
            "unique_on_conflict": unique_on_conflict,
            "unique_delay": unique_delay,
        }
        validate_defaults(unique_defaults)
        if isinstance(events_maxlen, bool) or not isinstance(events_maxlen, int) or events_maxlen < 1:
            raise ConfigurationError("events_maxlen", "must be a positive integer, got %r" % (events_maxlen,))
        callbacks = [on_event] if callable(on_event) else list(on_event)
        for callback in callbacks:
            if not callable(callback):
                raise ConfigurationError("on_event", "%r is not callable" % (callback,))

        self.cleaners = LockCleaners(lock_cleaners)
        self.health = ConnectionHealth()
        self.uniqueness = Uniqueness(unique_defaults, lambda: self.store, self.health)
        self.events = Events(lambda: self.store, self.health, events_maxlen, lambda: self.worker_id)
        for callback in callbacks:
            self.events.subscribe(callback)
        self._client = client
        self._store: TrackerStore | None = None
        self._broker: Broker | None = None
        self._session: WorkerSession | None = None
        self._recovery_instance: Recovery | None = None
        self._quarantine: Quarantine | None = None
        self._abort_bridge: AbortBridge | None = None
        self._session_lock = threading.Lock()
        self._local = threading.local()
        self._actor_tracks: dict[str, bool] = {}

    @property
    def actor_options(self) -> set[str]:
        return {"track", *QUARANTINE_OPTIONS, *UNIQUE_OPTIONS}

    # Public API ------------------------------------------------------------------

    @property
    def store(self) -> TrackerStore:
        """The tracker's Redis operations (for the CLI and tests).

        Raises:
          TrackerError: Before the middleware is added to a broker and used.
        """
        return self._store or self._bind(self._find_broker())

    @property
    def worker_id(self) -> str | None:
        """This process's worker id while a Worker runs, else None."""
        session = self._session
        return session.worker_id if session else None

    def add_lock_cleaner(self, cleaner: LockCleaner) -> None:
        """Register a function called with each running orphan before it is delivered again.

        Use it to release locks the tracker does not own, such as a
        ``ConcurrentRateLimiter`` mutex whose key derives from the message.
        A cleaner that raises is logged at warning level; the orphan is delivered anyway.
        """
        if not callable(cleaner):
            raise ConfigurationError("lock_cleaners", "%r is not callable" % (cleaner,))
        self.cleaners.add(cleaner)

    def locks(self) -> list[LockInfo]:
        """Every uniqueness lock held: digest, owner message and attempt, mode, worker, age and TTL."""
        return self.store.locks()

    def delete_lock(self, digest: str) -> bool:
        """Delete a uniqueness lock by its digest, whoever owns it (an operator's action).

        Returns:
          bool: False when there was no such lock.
        """
        deleted = self.store.delete_lock(digest)
        self.logger.warning("Uniqueness lock %s %s by an operator.", digest, "deleted" if deleted else "not found")
        return deleted

    def subscribe(self, callback: EventCallback) -> None:
        """Call ``callback`` with every event this process emits: recoveries, quarantines,
        released locks, zombies, suppressed duplicates.  It runs in the emitting thread
        (a worker thread or the sweeper): keep it short, hand slow work off."""
        if not callable(callback):
            raise ConfigurationError("on_event", "%r is not callable" % (callback,))
        self.events.subscribe(callback)

    def recent_events(self, count: int = 100) -> list[TrackerEvent]:
        """The newest events of the whole cluster, newest first, from the Redis stream."""
        return [TrackerEvent.from_fields(fields) for _, fields in self.store.events(count)]

    def abort(self, message_id: str, *, mode: str = "abort", abort_timeout: int = 0) -> None:
        """Cancel (``mode="cancel"``: only if it has not started) or abort (``mode="abort"``: stop it
        if it runs) a message with dramatiq-abort, and remember the request for ``history_ttl``,
        so that the message is not delivered again after a crash, however late.

        Raises:
          TrackerNotConfigured: When the broker has no dramatiq-abort ``Abortable`` middleware.
          ConfigurationError: When ``mode`` is not "cancel" or "abort".
        """
        if mode not in ("cancel", "abort"):
            raise ConfigurationError("mode", "must be 'cancel' or 'abort', got %r" % (mode,))
        aborts = self._aborts(self._find_broker())
        if not aborts.available:
            raise TrackerNotConfigured("Aborting a message needs dramatiq-abort's Abortable middleware on the broker.")
        aborts.abort(message_id, mode, abort_timeout)

    def recover(self) -> RecoveryReport:
        """Recover dead workers now, without waiting for the periodic sweep.

        Returns:
          RecoveryReport: The dead workers found and the orphans delivered again.

        Raises:
          TrackerError: Before the middleware is added to a broker.
          redis.RedisError: When the tracker's or the broker's Redis fails; nothing is lost.
        """
        return self._recovery(self._find_broker()).sweep()

    def _recovery(self, broker: Broker) -> Recovery:
        if self._recovery_instance is None:
            handling = OrphanHandling(self.cleaners, self.events, self._quarantine_of(broker), self._aborts(broker))
            self._recovery_instance = Recovery(broker, self._bind(broker), self.settings, handling)
            self._recovery_instance.own_worker_id = lambda: self.worker_id
        return self._recovery_instance

    def _quarantine_of(self, broker: Broker) -> Quarantine:
        if self._quarantine is None:
            self._quarantine = Quarantine(broker, self.settings.max_recoveries)
        return self._quarantine

    def _aborts(self, broker: Broker) -> AbortBridge:
        # Looked for again until found: Abortable may be added to the broker after the tracker.
        if self._abort_bridge is None or not self._abort_bridge.available:
            self._abort_bridge = AbortBridge(broker, self._remember_abort)
        return self._abort_bridge

    def _remember_abort(self, message_id: str, mode: str) -> None:
        self.store.remember_abort(message_id, mode, self.settings.history_ttl)

    def _find_broker(self) -> Broker:
        # Dramatiq tells a middleware its broker only through hooks; before any, the global broker may be ours.
        if self._broker is not None:
            return self._broker
        broker = dramatiq.get_broker()
        if self not in broker.middleware:
            raise TrackerError("This tracker is not added to a broker yet; add it with broker.add_middleware().")
        return broker

    # Hooks ----------------------------------------------------------------------

    def _bind(self, broker: Broker) -> TrackerStore:
        if self._store is None:
            self._broker = broker
            if self._client is None:
                self._client = resolve_client(broker)
                self._owns_client = self._client is not getattr(broker, "client", None)
            self._store = TrackerStore(self._client, self.settings.namespace)
        return self._store

    def after_declare_actor(self, broker: Broker, actor: Any) -> None:
        self._bind(broker)

    def after_declare_queue(self, broker: Broker, queue_name: str) -> None:
        self._bind(broker)
        session = self._session
        if session is not None:
            session.queue_declared(queue_name)

    def before_worker_boot(self, broker: Broker, worker: Worker) -> None:
        store = self._bind(broker)
        self._aborts(broker)
        with self._session_lock:
            if self._session is None:
                self._session = WorkerSession(broker, worker, store, self.settings, self._recovery(broker), self.health)
                self._session.start()

    def before_worker_shutdown(self, broker: Broker, worker: Worker) -> None:
        session = self._session
        if session is not None:
            session.stop_sweeping()

    def after_worker_shutdown(self, broker: Broker, worker: Worker) -> None:
        with self._session_lock:
            session, self._session = self._session, None
        if session is not None:
            session.stop()
        if self._owns_client and self._client is not None:
            # It reconnects by itself should the tracker be used again.
            self._client.close()

    def _tracks(self, broker: Broker, actor_name: str, options: dict[str, Any]) -> bool:
        # The hot path: a message option rarely overrides the actor's, so look the actor's up once.
        track = options.get("track")
        if track is not None:
            return bool(track)
        tracks = self._actor_tracks.get(actor_name)
        if tracks is None:
            actor = broker.actors.get(actor_name)
            tracks = self._actor_tracks[actor_name] = bool(actor.options.get("track", True) if actor else True)
        return tracks

    def before_declare_actor(self, broker: Broker, actor: Actor[Any, Any]) -> None:
        validate_quarantine_options(actor.options)
        self.uniqueness.validate_actor(actor.actor_name, actor.options)

    def before_enqueue(self, broker: Broker, message: Message[Any], delay: int) -> None:
        self._bind(broker)
        if not QUARANTINE_OPTIONS.isdisjoint(message.options):
            validate_quarantine_options(message.options)
        self.uniqueness.before_enqueue(broker, message, getattr(self._local, "unique", None))

    def before_process_message(self, broker: Broker, message: MessageProxy) -> None:
        local, session = self._local, self._session
        delivery: Delivery | None = getattr(local, "delivery", None)
        if delivery is not None and session is not None:
            session.end(delivery)
        local.delivery = local.unique = delivery = None
        options, actor_name = message.options, message.actor_name
        if session is not None and self._tracks(broker, actor_name, options):
            max_recoveries = self._quarantine_of(broker).max_recoveries(actor_name, options)
            local.delivery = delivery = session.begin(message, options, max_recoveries)
            if delivery.verdict is not None:
                # Decided before it runs: a duplicate, a quarantined or a cancelled message.
                if delivery.verdict == FAIL:
                    message.fail()
                raise SkipMessage()
        if self.uniqueness.applies(broker, actor_name, options):
            attempt = delivery.recoveries if delivery is not None else attempt_of(options)
            worker_id = session.worker_id if session is not None else ""
            local.unique = self.uniqueness.before_process(broker, message, attempt, worker_id)

    def after_process_message(
        self,
        broker: Broker,
        message: MessageProxy,
        *,
        result: Any | None = None,
        exception: BaseException | None = None,
    ) -> None:
        state: UniqueAttempt | None = getattr(self._local, "unique", None)
        if state is not None and state.message_id == message.message_id:
            self.uniqueness.after_process(state)

    def after_skip_message(self, broker: Broker, message: MessageProxy) -> None:
        self.after_process_message(broker, message)

    def _end(self, message: MessageProxy) -> None:
        state: UniqueAttempt | None = getattr(self._local, "unique", None)
        if state is not None and state.message_id == message.message_id:
            self._local.unique = None
            self.uniqueness.after_done(state)
        delivery: Delivery | None = getattr(self._local, "delivery", None)
        if delivery is None or delivery.message is not message:
            return
        self._local.delivery = None
        session = self._session
        if session is not None:
            session.end(delivery)

    def after_ack(self, broker: Broker, message: MessageProxy) -> None:
        self._end(message)

    def after_nack(self, broker: Broker, message: MessageProxy) -> None:
        self._end(message)


#: A shorter name, after Dramatiq's own middleware (``Retries``, ``TimeLimit``).
Tracker = TrackerMiddleware
