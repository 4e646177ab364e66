"""TrackerMiddleware: its settings, its public API, and its hooks, all delegated to the runtime."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import dramatiq
import redis
from dramatiq.logging import get_logger
from dramatiq.middleware import Middleware

from .connection import client_from_url, is_redis_client
from .errors import ConfigurationError, TrackerNotConfigured
from .events import EventCallback, EventCallbacks, TrackerEvent
from .options import ACTOR_OPTIONS
from .orphans import LockCleaner, RecoveryReport
from .runtime import TrackerRuntime
from .settings import (
    DEFAULT_EVENTS_MAXLEN,
    DEFAULT_FLUSH_INTERVAL,
    DEFAULT_HEARTBEAT_INTERVAL,
    DEFAULT_HEARTBEAT_TIMEOUT,
    DEFAULT_HISTORY_TTL,
    DEFAULT_MAX_RECOVERIES,
    DEFAULT_NAMESPACE,
    DEFAULT_PREVIEW_LENGTH,
    DEFAULT_SWEEP_INTERVAL,
    TrackerSettings,
)
from .store import LockInfo, TrackerStore
from .unique import DEFAULT_UNIQUE_DELAY

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
        preview_length: int = DEFAULT_PREVIEW_LENGTH,
        broker_identity: str | None = None,
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
            events_maxlen=events_maxlen,
            preview_length=preview_length,
            unique_defaults={
                "unique": unique,
                "unique_ttl": unique_ttl,
                "unique_on_conflict": unique_on_conflict,
                "unique_delay": unique_delay,
            },
            broker_identity=broker_identity,
        )
        if client is not None and url is not None:
            raise ConfigurationError("url", "give either client or url, not both")
        if client is not None and not is_redis_client(client):
            raise ConfigurationError(
                "client", "must be a redis.Redis or redis.cluster.RedisCluster client, got %r" % (client,)
            )
        # The tracker closes the client it makes when its worker stops.
        owns_client = client is None
        if url is not None:
            client = client_from_url(url)
        #: The lock cleaners, called with each running orphan before it is delivered again.
        self.lock_cleaners: list[LockCleaner] = []
        for cleaner in lock_cleaners:
            self.add_lock_cleaner(cleaner)
        self.callbacks = EventCallbacks()
        for callback in [on_event] if callable(on_event) else list(on_event):
            self.subscribe(callback)
        self.runtime = TrackerRuntime(self, self.settings, client, owns_client, self.lock_cleaners, self.callbacks)

    @property
    def actor_options(self) -> set[str]:
        return set(ACTOR_OPTIONS)

    # Public API ------------------------------------------------------------------

    @property
    def store(self) -> TrackerStore:
        """The tracker's Redis operations (for the CLI and tests).

        Raises:
          TrackerError: Before the middleware is added to a broker.
        """
        return self.runtime.store

    @property
    def worker_id(self) -> str | None:
        """This process's worker id while a Worker runs, else None."""
        return self.runtime.current_worker_id()

    def add_lock_cleaner(self, cleaner: LockCleaner) -> None:
        """Register a function called with each running orphan before it is delivered again.

        Use it to release locks the tracker does not own, such as a
        ``ConcurrentRateLimiter`` mutex whose key derives from the message.
        A cleaner that raises is logged at warning level; the orphan is delivered anyway.
        """
        if not callable(cleaner):
            raise ConfigurationError("lock_cleaners", "%r is not callable" % (cleaner,))
        self.lock_cleaners.append(cleaner)

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
        self.callbacks.subscribe(callback)

    def recent_events(self, count: int = 100) -> list[TrackerEvent]:
        """The newest events of the whole cluster, newest first, from the Redis stream."""
        return [TrackerEvent.from_fields(fields, entry_id) for entry_id, fields in self.store.events(count)]

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
        self.runtime.abort(message_id, mode, abort_timeout)

    def close(self) -> None:
        """Close the tracker's Redis connections, if the tracker made its client.

        Workers do it when they stop; producers may call it when they are done.
        """
        self.runtime.close()

    def recover(self, *, dry_run: bool = False) -> RecoveryReport:
        """Recover dead workers now, without waiting for the periodic sweep.

        Parameters:
          dry_run(bool): Only say what it would do: the dead workers it would declare and what it
            would decide for each orphan (``RecoveryReport.dry_run``); nothing is changed.

        Returns:
          RecoveryReport: The dead workers found and the orphans delivered again.

        Raises:
          TrackerError: Before the middleware is added to a broker.
          redis.RedisError: When the tracker's or the broker's Redis fails; nothing is lost.
        """
        return self.runtime.parts.recovery.sweep(dry_run=dry_run)

    # Hooks ----------------------------------------------------------------------

    def before_declare_actor(self, broker: Broker, actor: Actor[Any, Any]) -> None:
        self.runtime.declare_actor(actor.actor_name, actor.options)

    def after_declare_actor(self, broker: Broker, actor: Actor[Any, Any]) -> None:
        self.runtime.bind(broker)

    def after_declare_queue(self, broker: Broker, queue_name: str) -> None:
        self.runtime.queue_declared(broker)

    def before_worker_boot(self, broker: Broker, worker: Worker) -> None:
        self.runtime.start_session(broker, worker)

    def before_worker_shutdown(self, broker: Broker, worker: Worker) -> None:
        self.runtime.stop_sweeping(worker)

    def after_worker_shutdown(self, broker: Broker, worker: Worker) -> None:
        self.runtime.stop_session(worker)

    def before_enqueue(self, broker: Broker, message: Message[Any], delay: int) -> None:
        self.runtime.before_enqueue(broker, message, delay)

    def before_process_message(self, broker: Broker, message: MessageProxy) -> None:
        self.runtime.before_process(broker, message)

    def after_process_message(
        self,
        broker: Broker,
        message: MessageProxy,
        *,
        result: Any | None = None,
        exception: BaseException | None = None,
    ) -> None:
        self.runtime.after_process(message, exception is None)

    def after_skip_message(self, broker: Broker, message: MessageProxy) -> None:
        self.runtime.after_process(message, False, skipped=True)

    def after_ack(self, broker: Broker, message: MessageProxy) -> None:
        self.runtime.end(message, "ack")

    def after_nack(self, broker: Broker, message: MessageProxy) -> None:
        self.runtime.end(message, "nack")


#: A shorter name, after Dramatiq's own middleware (``Retries``, ``TimeLimit``).
Tracker = TrackerMiddleware


def find_tracker(broker: Broker | None = None) -> TrackerMiddleware:
    """The TrackerMiddleware of ``broker`` (default: the global broker).

    Raises:
      TrackerNotConfigured: When the broker has none.
    """
    broker = broker or dramatiq.get_broker()
    for middleware in broker.middleware:
        if isinstance(middleware, TrackerMiddleware):
            return middleware
    raise TrackerNotConfigured("Broker %r has no TrackerMiddleware; add it with broker.add_middleware()." % broker)


def recover(broker: Broker | None = None) -> RecoveryReport:
    """Recover dead workers now: deliver their orphans again.

    Parameters:
      broker(Broker): The broker whose tracker sweeps (default: the global broker).

    Raises:
      TrackerNotConfigured: When the broker has no TrackerMiddleware.
      redis.RedisError: When Redis fails; nothing is lost, a later sweep finishes.
    """
    return find_tracker(broker).recover()
