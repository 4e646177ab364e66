"""TrackerMiddleware: its settings, its public API, and the bodies of its hooks.

As Dramatiq's own middleware do, the hooks are the implementation of the
per-message path: an actor's policy is resolved once, then each message costs
one clock read and one registry insert, and one removal at the end.  Nothing
here waits on Redis, but a start that must not be missed
(:mod:`dramatiq_tracker.at_risk`) and a unique message (:mod:`dramatiq_tracker.unique`).
The machinery is built once per broker (:mod:`dramatiq_tracker.wiring`); the
worker process's threads and registration live in :mod:`dramatiq_tracker.process`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import dramatiq
import redis
from dramatiq.logging import get_logger
from dramatiq.middleware import Middleware, SkipMessage

from .brokers import RABBITMQ, REDIS
from .connection import client_from_url, is_redis_client
from .errors import ConfigurationError, TrackerNotConfigured
from .events import EventCallback, EventCallbacks, TrackerEvent
from .options import ACTOR_OPTIONS, AT_RISK_MARKS, REVOKED_OPTION, SPECIAL_OPTIONS, UNIQUE_MARKS, attempt_of
from .orphans import LockCleaner, RecoveryReport
from .policies import Policies
from .process import TrackedProcess, forget_at_fork
from .rabbitmq import fetched_on_closed_channel, unwatch_channels, watch_channels
from .records import LockInfo
from .settings import (
    DEFAULT_EVENTS_MAXLEN,
    DEFAULT_FLUSH_INTERVAL,
    DEFAULT_HISTORY_TTL,
    DEFAULT_PREVIEW_LENGTH,
    TrackerSettings,
    environment_variable,
    from_environment,
)
from .store import TrackerStore
from .unique import DEFAULT_UNIQUE_DELAY, DroppedDuplicate, UniqueAttempt, quiet_skip
from .wiring import Binding, Wiring

if TYPE_CHECKING:
    from dramatiq import Actor, Broker, MessageProxy, Worker
    from dramatiq.message import Message

    from .policies import ActorPolicy
    from .registry import Delivery

_time = time.time

#: The attribute of a message proxy that holds its delivery, and that of an untracked unique one.
_DELIVERY = "_tracker_delivery"
_UNIQUE = "_tracker_unique"


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
      namespace(str): The prefix (and Redis Cluster hash tag) of every tracker key;
        ``"dramatiq-tracker"`` by default.
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
      preview_length(int): How many characters of a message's arguments its record keeps.
      broker_identity(str): Names the broker deployment; workers recover only workers of the same one.
      presence(bool): Whether each worker keeps a presence connection, so that its death is known
        within about a second wherever it ran (True by default).
      presence_grace(int): How long a worker's presence may be gone, its heartbeat not renewed,
        before it is dead, in milliseconds (1 000 by default).

    ``namespace``, the timings, ``max_recoveries``, ``presence`` and ``presence_grace`` not given
    are read from the environment, as the command line reads them: ``DRAMATIQ_TRACKER_NAMESPACE``,
    ``DRAMATIQ_TRACKER_HEARTBEAT_INTERVAL`` and so on (see docs/guide.md); else their defaults.

    Raises:
      ConfigurationError: When a setting is invalid; the message names it.
    """

    def __init__(
        self,
        *,
        client: redis.Redis | None = None,
        url: str | None = None,
        namespace: str | None = None,
        heartbeat_interval: int | None = None,
        heartbeat_timeout: int | None = None,
        sweep_interval: int | None = None,
        max_recoveries: int | None = None,
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
        presence: bool | None = None,
        presence_grace: int | None = None,
    ) -> None:
        self.logger = get_logger(__name__, type(self))
        given = {
            "namespace": namespace,
            "heartbeat_interval": heartbeat_interval,
            "heartbeat_timeout": heartbeat_timeout,
            "sweep_interval": sweep_interval,
            "max_recoveries": max_recoveries,
            "presence": presence,
            "presence_grace": presence_grace,
        }
        configured = from_environment(given)
        try:
            self.settings = TrackerSettings(
                **configured,
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
        except ConfigurationError as e:
            # A setting the environment gave is named by its variable.
            if e.setting in configured and given.get(e.setting) is None:
                raise ConfigurationError(environment_variable(e.setting), str(e).partition(": ")[2]) from None
            raise
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
        self.policies = Policies(self.settings)
        self._binding = Binding(
            self, self.settings, client, owns_client, self.policies, self.lock_cleaners, self.callbacks
        )
        self._process: TrackedProcess | None = None
        self._process_lock = threading.Lock()
        forget_at_fork(self)
        # The per-message path reads these directly.
        self._by_actor = self.policies.by_actor
        self._rabbit = False
        self._redis = False
        #: The uniqueness state of the message this thread processes, for its retries sent meanwhile.
        self._thread = threading.local()

    @property
    def actor_options(self) -> set[str]:
        return set(ACTOR_OPTIONS)

    # Public API ------------------------------------------------------------------

    def bind(self, broker: Broker) -> Wiring:
        """Build the tracker's machinery for ``broker`` now (the first hook that brings the broker
        does it otherwise); it is built once.

        Returns:
          Wiring: The machinery, for the operator tools and tests.
        """
        wiring = self._binding.bind(broker)
        self._rabbit = wiring.facts.kind == RABBITMQ
        self._redis = wiring.facts.kind == REDIS
        return wiring

    @property
    def wiring(self) -> Wiring:
        """The tracker's machinery, bound to its broker.

        Raises:
          TrackerError: Before the middleware is added to a broker.
        """
        return self._binding.wiring or self.bind(self._binding.broker())

    @property
    def store(self) -> TrackerStore:
        """The tracker's Redis operations (for the CLI and tests).

        Raises:
          TrackerError: Before the middleware is added to a broker.
        """
        return self.wiring.store

    @property
    def identity_digest(self) -> str:
        """The short digest of this tracker's broker identity, which names its keys of recovery.

        Raises:
          TrackerError: Before the middleware is added to a broker.
        """
        return self.wiring.digest

    @property
    def worker_id(self) -> str | None:
        """This process's worker id while a Worker runs, else None."""
        process = self._process
        return process.worker_id if process is not None else None

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
        aborts = self.wiring.aborts
        if not aborts.available:
            raise TrackerNotConfigured("Aborting a message needs dramatiq-abort's Abortable middleware on the broker.")
        aborts.abort(message_id, mode, abort_timeout)

    def close(self) -> None:
        """Close the tracker's Redis connections, if the tracker made its client.

        Workers do it when they stop; producers may call it when they are done.
        """
        self._binding.close()

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
        return self.wiring.recovery.sweep(self.worker_id, dry_run=dry_run)

    # Hooks: the worker process ------------------------------------------------------

    def before_declare_actor(self, broker: Broker, actor: Actor[Any, Any]) -> None:
        self.policies.declare(actor.actor_name, actor.options)

    def after_declare_actor(self, broker: Broker, actor: Actor[Any, Any]) -> None:
        self.bind(broker)

    def after_declare_queue(self, broker: Broker, queue_name: str) -> None:
        self.bind(broker)
        process = self._process
        if process is not None:
            process.queue_declared()

    def before_worker_boot(self, broker: Broker, worker: Worker) -> None:
        wiring = self.bind(broker)
        with self._process_lock:
            process = self._process
            if process is None:
                process = self._process = TrackedProcess(wiring)
            if process.attach(worker):
                if self._rabbit:
                    watch_channels(broker, self._withheld)
                process.start()

    def before_worker_shutdown(self, broker: Broker, worker: Worker) -> None:
        process = self._process
        if process is not None and process.is_last(worker):
            process.stop_sweeping()

    def after_worker_shutdown(self, broker: Broker, worker: Worker) -> None:
        # The last Worker to stop deregisters this worker process and stops the tracker's threads.
        with self._process_lock:
            process = self._process
            if process is None or not process.detach(worker):
                return
            self._process = None
        unwatch_channels(process.wiring.broker)
        process.stop()
        self.close()

    def _abandon(self, *, flush: bool = True) -> str | None:
        """Stop this process's tracker threads without deregistering it, as a SIGKILL would: the narrow
        hook :mod:`dramatiq_tracker.testing` uses to declare an in-process worker dead.  Hooks called
        later find no process: nothing they do is recorded; a Worker started afterwards begins a new one.

        Returns:
          str|None: The abandoned worker id; None when no Worker was running.

        Raises:
          redis.RedisError: When ``flush`` cannot reach the tracker's Redis (the threads are stopped).
        """
        with self._process_lock:
            process, self._process = self._process, None
        return process.abandon(flush=flush) if process is not None else None

    def _forget_process_in_child(self) -> None:
        # (see forget_at_fork)
        process, self._process = self._process, None
        self._process_lock = threading.Lock()
        if process is not None:
            process.forget_in_child()

    # Hooks: each message ----------------------------------------------------------------

    def before_enqueue(self, broker: Broker, message: Message[Any], delay: int) -> None:
        """Stamp and lock a unique message when it is sent; mark a stale copy a fenced worker enqueues.

        Raises:
          DuplicateMessage: A unique message's lock is held by another message.
          ConfigurationError: One of the message's tracker options is invalid.
        """
        policy = self._by_actor.get(message.actor_name)
        if policy is not None and policy.unique is None and SPECIAL_OPTIONS.isdisjoint(message.options):
            process = self._process
            if process is None or (
                not process.fencing.revoked and _time() - process.recorder.last_beat <= process.recorder.stale_after
            ):
                return
        self._before_enqueue(broker, message, policy)

    def _before_enqueue(self, broker: Broker, message: Message[Any], policy: ActorPolicy | None) -> None:
        wiring = self.bind(broker)
        options = message.options
        process = self._process
        if process is not None:
            recorder = process.recorder
            if _time() - recorder.last_beat > recorder.stale_after:
                recorder.ensure_alive()
            if process.fencing.is_stale(message.message_id, attempt_of(options)):
                # A delayed copy this worker held before it was declared dead, moved to its queue
                # now: it was delivered again elsewhere, so this copy is skipped wherever it starts.
                options[REVOKED_OPTION] = True
                return
        if policy is None or not ACTOR_OPTIONS.isdisjoint(options):
            policy = self.policies.of_message(broker, message.actor_name, options)
        if policy.unique is not None:
            wiring.uniqueness.before_enqueue(broker, message, policy.unique, getattr(self._thread, "unique", None))

    def before_process_message(self, broker: Broker, message: MessageProxy) -> None:
        """Record a message starting, decide it if its start is at risk, take or release its lock.

        Raises:
          SkipMessage: For a message decided before it runs: a put-off duplicate, a stale copy,
            a quarantined message (failed too), a cancelled one, a uniqueness conflict.
        """
        proxy = message
        if self._rabbit and fetched_on_closed_channel(proxy):
            self._skip_closed_channel_copy(proxy)
        raw = proxy._message
        options = raw.options
        policy = self._by_actor.get(raw.actor_name) or self.policies.of_actor(broker, raw.actor_name)
        special = not SPECIAL_OPTIONS.isdisjoint(options)
        if special:
            policy = self.policies.of_message(broker, raw.actor_name, options)
        process = self._process
        delivery: Delivery | None = None
        if process is not None and policy.track:
            now = _time()
            recorder = process.recorder
            if now - recorder.last_beat > recorder.stale_after:
                recorder.ensure_alive()
            attempt = attempt_of(options) if special else 0
            # Starts decided before they run: at most once, marked by the tracker, redelivered by
            # RabbitMQ, or a copy this worker fetched before it was declared dead.
            at_risk = policy.at_most_once or (special and not AT_RISK_MARKS.isdisjoint(options))
            if not at_risk and process.fencing.revoked:
                at_risk = process.fencing.is_stale(raw.message_id, attempt)
            if not at_risk and self._rabbit:
                at_risk = vars(proxy).get("redelivered") is True
            delivery = process.registry.begin(proxy, policy, attempt, options.get("retries", 0), now, at_risk)
            proxy._tracker_delivery = delivery  # type: ignore[attr-defined]
            if at_risk:
                verdict = process.at_risk.admit(delivery)
                if verdict is not None:
                    if verdict == "fail":
                        proxy.fail()
                    quiet_skip(proxy)
                    raise SkipMessage()
                if self._rabbit and fetched_on_closed_channel(proxy):
                    # Its channel closed while it was decided (lock cleaners may take seconds): the server
                    # delivers it again, and that copy is put off behind this attempt until it ends here.
                    self._skip_closed_channel_copy(proxy)
        if policy.unique is not None or (special and not UNIQUE_MARKS.isdisjoint(options)):
            wiring = self.bind(broker)
            attempt = delivery.attempt if delivery is not None else attempt_of(options)
            worker_id = delivery.worker_id if delivery is not None else ""
            state: UniqueAttempt | None = None
            try:
                state = wiring.uniqueness.before_process(broker, proxy, policy.unique, attempt, worker_id)
            except DroppedDuplicate as skip:
                # Its end stores the duplicate error as its result again.
                state = skip.state
                raise
            finally:
                if delivery is not None:
                    delivery.unique = state
                elif state is not None:
                    proxy._tracker_unique = state  # type: ignore[attr-defined]
            self._thread.unique = state

    def _skip_closed_channel_copy(self, proxy: MessageProxy) -> None:
        # RabbitMQ requeued it when its channel closed, and delivers it again: this copy would run
        # beside that one.  Its ack is withheld too (see dramatiq_tracker.rabbitmq).
        self.logger.info(
            "Did not run message %r (actor %r): it was fetched on a RabbitMQ channel that has closed since, "
            "and the server delivers it again.",
            proxy.message_id,
            proxy.actor_name,
        )
        quiet_skip(proxy)
        raise SkipMessage()

    def _withheld(self, proxy: MessageProxy, completion: str) -> None:
        """An ack or nack was not sent: the channel that delivered the message has closed."""
        delivery = vars(proxy).get(_DELIVERY)
        process = self._process
        if delivery is None or process is None or not delivery.ran:
            self.logger.debug(
                "Did not %s message %r: the RabbitMQ channel that delivered it has closed.",
                completion,
                proxy.message_id,
            )
            return
        process.unconfirmed(delivery, completion)

    def after_process_message(
        self,
        broker: Broker,
        message: MessageProxy,
        *,
        result: Any | None = None,
        exception: BaseException | None = None,
    ) -> None:
        """The actor returned or raised: release a ``while_executing`` lock."""
        self._processed(message, returned=exception is None)

    def after_skip_message(self, broker: Broker, message: MessageProxy) -> None:
        """The message was skipped (it did not run): release a ``while_executing`` lock."""
        self._processed(message, returned=False, skipped=True)

    def _processed(self, proxy: MessageProxy, *, returned: bool, skipped: bool = False) -> None:
        found = vars(proxy)
        delivery = found.get(_DELIVERY)
        if delivery is not None:
            delivery.ran = not skipped
            if returned and not proxy.failed:
                delivery.succeeded = True
        state = delivery.unique if delivery is not None else found.get(_UNIQUE)
        if state is not None and state.holds:
            self.wiring.uniqueness.after_process(state)

    def before_ack(self, broker: Broker, message: MessageProxy) -> None:
        """A RedisBroker ack of a worker declared dead while alive may race its recovery's move
        (see ``TrackedProcess.before_ack`` in ``process.py``)."""
        process = self._process
        if process is not None and self._redis:
            process.before_ack(message, vars(message).get(_DELIVERY))

    def after_ack(self, broker: Broker, message: MessageProxy) -> None:
        self._end(message, "ack")

    def after_nack(self, broker: Broker, message: MessageProxy) -> None:
        self._end(message, "nack")

    def _end(self, proxy: MessageProxy, completion: str) -> None:
        """The message was acked or nacked: release its ``until_executed`` lock and its record."""
        found = vars(proxy)
        delivery = found.pop(_DELIVERY, None)
        state = delivery.unique if delivery is not None else found.pop(_UNIQUE, None)
        if state is not None:
            self._thread.unique = None
            wiring = self.wiring
            wiring.uniqueness.after_done(state, wiring.broker, proxy._message)
        if delivery is not None:
            process = self._process
            if process is not None:
                recorder = process.recorder
                if delivery.succeeded and _time() - recorder.last_beat > recorder.stale_after:
                    # Perhaps declared dead while it ran: if so, learn it now, so that this completion
                    # counts as a zombie's and the recovered copy is dropped before it starts.
                    recorder.ensure_alive()
                process.end(delivery, completion)


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
