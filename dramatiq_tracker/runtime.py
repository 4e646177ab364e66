"""The tracker's machinery behind the middleware's hooks.

Dramatiq tells a middleware its broker only through hooks, so the machinery
is built, once and explicitly, by :func:`build` when the first hook brings
the broker (:meth:`TrackerRuntime.bind`).  The per-message path lives here
too: it resolves each actor's policy once, then per message does one clock
read and one registry insert, and one removal at the end.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from typing import TYPE_CHECKING, Any

import dramatiq
from dramatiq.logging import get_logger
from dramatiq.middleware import SkipMessage

from .abort import AbortBridge
from .broker_store import BrokerStore
from .brokers import RABBITMQ, REDIS, BrokerFacts, as_redis_broker
from .connection import resolve_client
from .errors import TrackerError, TrackerNotConfigured
from .events import EventCallbacks, Events
from .health import ConnectionHealth
from .keys import identity_digest
from .options import ACTOR_OPTIONS, AT_RISK_MARKS, REVOKED_OPTION, SPECIAL_OPTIONS, UNIQUE_MARKS, attempt_of
from .orphans import Claims, LockCleaner, LockCleaners, Quarantine, Settlement
from .policies import Policies
from .rabbitmq import fetched_on_closed_channel, unwatch_channels, watch_channels
from .recovery import Recovery
from .redelivery import redelivery_for
from .session import WorkerSession
from .store import TrackerStore
from .unique import QUIET_SKIP_ATTRIBUTE, DroppedDuplicate, UniqueAttempt, Uniqueness, quiet_skip

if TYPE_CHECKING:
    import redis
    from dramatiq import Broker, MessageProxy, Middleware, Worker
    from dramatiq.message import Message

    from .policies import ActorPolicy
    from .registry import Delivery
    from .settings import TrackerSettings

_time = time.time

#: The attribute of a message proxy that holds its delivery, and that of an untracked unique one.
_DELIVERY = "_tracker_delivery"
_UNIQUE = "_tracker_unique"


@dataclasses.dataclass(frozen=True)
class TrackerParts:
    """The tracker's machinery in one process, bound to its broker; built once by :func:`build`."""

    broker: Broker
    settings: TrackerSettings
    facts: BrokerFacts
    digest: str
    store: TrackerStore
    broker_store: BrokerStore | None
    health: ConnectionHealth
    events: Events
    policies: Policies
    uniqueness: Uniqueness
    aborts: AbortBridge
    quarantine: Quarantine
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
    own_worker_id: Any,
) -> TrackerParts:
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
    quarantine = Quarantine(broker, policies)
    lock_cleaners = LockCleaners(events, cleaners)
    settlement = Settlement(events, quarantine)
    claims = Claims(broker, store, settings, digest, policies, aborts)
    redelivery = redelivery_for(facts.kind, broker, store, settings, claims, lock_cleaners)
    recovery = Recovery(
        broker, store, settings, facts.identity, redelivery, settlement, events, own_worker_id, broker_store
    )
    return TrackerParts(
        broker=broker,
        settings=settings,
        facts=facts,
        digest=digest,
        store=store,
        broker_store=broker_store,
        health=health,
        events=events,
        policies=policies,
        uniqueness=Uniqueness(store, health),
        aborts=aborts,
        quarantine=quarantine,
        cleaners=lock_cleaners,
        settlement=settlement,
        claims=claims,
        recovery=recovery,
    )


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


class TrackerRuntime:
    """Everything a TrackerMiddleware runs, in one process.

    Parameters:
      middleware(Middleware): The middleware this runtime serves (to find its broker before binding).
      settings(TrackerSettings)
      client(redis.Redis|None): The tracker's client, or None to resolve it from the broker.
      owns_client(bool): Whether the tracker made the client, and so closes it.
      cleaners(list): The middleware's lock cleaners (the list itself: later additions count).
      callbacks(EventCallbacks): The application's event callbacks.
    """

    def __init__(
        self,
        middleware: Middleware,
        settings: TrackerSettings,
        client: redis.Redis | None,
        owns_client: bool,
        cleaners: list[LockCleaner],
        callbacks: EventCallbacks,
    ) -> None:
        self.logger = get_logger(__name__, type(self))
        self.middleware = middleware
        self.settings = settings
        self.policies = Policies(settings)
        self._cleaners = cleaners
        self._callbacks = callbacks
        self._client = client
        self._owns_client = owns_client
        self._bind_lock = threading.Lock()
        self._parts: TrackerParts | None = None
        self._session: WorkerSession | None = None
        self._session_lock = threading.Lock()
        # The per-message path reads these directly.
        self._by_actor = self.policies._by_actor
        self._stale_after = settings.stale_after / 1000
        self._rabbit = False
        #: The uniqueness state of the message this thread processes, for its retries sent meanwhile.
        self._thread = threading.local()

    # Binding ---------------------------------------------------------------------------

    @property
    def parts(self) -> TrackerParts:
        """The tracker's machinery.

        Raises:
          TrackerError: Before the middleware is added to a broker.
        """
        return self._parts or self.bind(self.broker())

    @property
    def store(self) -> TrackerStore:
        return self.parts.store

    def broker(self) -> Broker:
        """The broker the middleware is added to.

        Raises:
          TrackerError: Before it is added to one.
        """
        if self._parts is not None:
            return self._parts.broker
        # Before any hook, the global broker may be ours.
        broker = dramatiq.get_broker()
        if self.middleware not in broker.middleware:
            raise TrackerError("This tracker is not added to a broker yet; add it with broker.add_middleware().")
        return broker

    def bind(self, broker: Broker) -> TrackerParts:
        """Bind to the broker: pick the tracker's Redis (the broker's own client by default) and
        build the machinery, once."""
        parts = self._parts
        if parts is not None:
            return parts
        with self._bind_lock:
            if self._parts is None:
                if self._client is None:
                    self._client = resolve_client(broker)
                    self._owns_client = self._client is not getattr(broker, "client", None)
                self._parts = build(
                    broker,
                    self.settings,
                    self._client,
                    self.policies,
                    self._cleaners,
                    self._callbacks,
                    self.current_worker_id,
                )
                self._rabbit = self._parts.facts.kind == RABBITMQ
                install_quiet_skips()
            return self._parts

    def abort(self, message_id: str, mode: str, abort_timeout: int) -> None:
        """Cancel or abort a message through dramatiq-abort, remembering the request.

        Raises:
          TrackerNotConfigured: When the broker has no dramatiq-abort ``Abortable`` middleware.
        """
        aborts = self.parts.aborts
        if not aborts.available:
            raise TrackerNotConfigured("Aborting a message needs dramatiq-abort's Abortable middleware on the broker.")
        aborts.abort(message_id, mode, abort_timeout)

    def close(self) -> None:
        """Close the tracker's Redis client if the tracker made it; it reconnects if used again."""
        if self._owns_client and self._client is not None:
            self._client.close()

    # The worker session ---------------------------------------------------------------

    def current_worker_id(self) -> str | None:
        """This process's worker id while a Worker runs, else None."""
        session = self._session
        return session.worker_id if session is not None else None

    def start_session(self, broker: Broker, worker: Worker) -> None:
        """Register this worker process (or add a Worker to it) and start the tracker's threads."""
        parts = self.bind(broker)
        with self._session_lock:
            session = self._session
            if session is None:
                session = self._session = WorkerSession(parts)
            if session.attach(worker):
                if self._rabbit:
                    watch_channels(broker, self._withheld)
                session.start()

    def queue_declared(self, broker: Broker) -> None:
        self.bind(broker)
        session = self._session
        if session is not None:
            session.queue_declared()

    def stop_sweeping(self, worker: Worker) -> None:
        session = self._session
        if session is not None and session._workers == [worker]:
            session.stop_sweeping()

    def stop_session(self, worker: Worker) -> None:
        """Remove a Worker; the last one deregisters this worker process and stops the tracker's threads."""
        with self._session_lock:
            session = self._session
            if session is None or not session.detach(worker):
                return
            self._session = None
        unwatch_channels(session.parts.broker)
        session.stop()
        self.close()

    def abandon_session(self, *, flush: bool = True) -> str | None:
        """Stop this process's tracker threads without deregistering it, as a SIGKILL would: for tests
        (see :mod:`dramatiq_tracker.testing`) that declare an in-process worker dead.

        Its heartbeat stops, so it is declared dead once its heartbeat key expires, and its in-flight
        records stay for recovery to find.  Hooks called later by its worker threads find no session:
        nothing they do is recorded.  A Worker started afterwards begins a new session, under a new
        worker id.

        Parameters:
          flush(bool): Write what the recorder still holds in memory first, so that every message
            running now is known to recovery, however soon after its start this is called.

        Returns:
          str|None: The abandoned worker id; None when no Worker was running.

        Raises:
          redis.RedisError: When ``flush`` cannot reach the tracker's Redis (the threads are stopped).
        """
        with self._session_lock:
            session = self._session
            self._session = None
        if session is None:
            return None
        session.sweeper.stop()
        if flush:
            session.recorder.stop_and_flush()
        else:
            session.recorder.stop()
        return session.worker_id

    # Around each message ----------------------------------------------------------------

    def declare_actor(self, actor_name: str, options: dict[str, Any]) -> None:
        self.policies.declare(actor_name, options)

    def before_enqueue(self, broker: Broker, message: Message[Any], delay: int | None) -> None:
        """Stamp and lock a unique message when it is sent; mark a stale copy a fenced worker enqueues.

        Raises:
          DuplicateMessage: A unique message's lock is held by another message.
          ConfigurationError: One of the message's tracker options is invalid.
        """
        policy = self._by_actor.get(message.actor_name)
        if policy is not None and policy.unique is None and SPECIAL_OPTIONS.isdisjoint(message.options):
            session = self._session
            if session is None or (not session.revoked and _time() - session.recorder.last_beat <= self._stale_after):
                return
        self._before_enqueue(broker, message, policy)

    def _before_enqueue(self, broker: Broker, message: Message[Any], policy: ActorPolicy | None) -> None:
        parts = self._parts or self.bind(broker)
        options = message.options
        session = self._session
        if session is not None:
            recorder = session.recorder
            if _time() - recorder.last_beat > self._stale_after:
                recorder.ensure_alive()
            if session.revoked and session.admission.is_stale(message.message_id, attempt_of(options)):
                # A delayed copy this worker held before it was declared dead, moved to its queue
                # now: it was delivered again elsewhere, so this copy is skipped wherever it starts.
                options[REVOKED_OPTION] = True
                return
        if policy is None or not ACTOR_OPTIONS.isdisjoint(options):
            policy = self.policies.of_message(broker, message.actor_name, options)
        if policy.unique is not None:
            parts.uniqueness.before_enqueue(broker, message, policy.unique, getattr(self._thread, "unique", None))

    def before_process(self, broker: Broker, proxy: MessageProxy) -> None:
        """Record a message starting, decide it if its start is at risk, take or release its lock.

        Raises:
          SkipMessage: For a message decided before it runs: a put-off duplicate, a stale copy,
            a quarantined message (failed too), a cancelled one, a uniqueness conflict.
        """
        if self._rabbit and fetched_on_closed_channel(proxy):
            self._skip_closed_channel_copy(proxy)
        message = proxy._message
        options = message.options
        policy = self._by_actor.get(message.actor_name) or self.policies.of_actor(broker, message.actor_name)
        special = not SPECIAL_OPTIONS.isdisjoint(options)
        if special:
            policy = self.policies.of_message(broker, message.actor_name, options)
        session = self._session
        delivery: Delivery | None = None
        if session is not None and policy.track:
            now = _time()
            recorder = session.recorder
            if now - recorder.last_beat > self._stale_after:
                recorder.ensure_alive()
            attempt = attempt_of(options) if special else 0
            # Starts decided before they run: at most once, marked by the tracker, redelivered by
            # RabbitMQ, or a copy this worker fetched before it was declared dead.
            at_risk = policy.at_most_once or (special and not AT_RISK_MARKS.isdisjoint(options))
            if not at_risk and session.revoked:
                at_risk = session.admission.is_stale(message.message_id, attempt)
            if not at_risk and self._rabbit:
                at_risk = vars(proxy).get("redelivered") is True
            delivery = session.registry.begin(proxy, policy, attempt, options.get("retries", 0), now, at_risk)
            proxy._tracker_delivery = delivery  # type: ignore[attr-defined]
            if at_risk:
                verdict = session.admission.admit(delivery)
                if verdict is not None:
                    if verdict == "fail":
                        proxy.fail()
                    quiet_skip(proxy)
                    raise SkipMessage()
        if policy.unique is not None or (special and not UNIQUE_MARKS.isdisjoint(options)):
            parts = self._parts or self.bind(broker)
            attempt = delivery.attempt if delivery is not None else attempt_of(options)
            worker_id = delivery.worker_id if delivery is not None else ""
            state: UniqueAttempt | None = None
            try:
                state = parts.uniqueness.before_process(broker, proxy, policy.unique, attempt, worker_id)
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
        # beside that one.  Its ack is withheld too (see dramatiq_tracker.channels).
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
        session = self._session
        if delivery is None or session is None or not delivery.ran:
            self.logger.debug(
                "Did not %s message %r: the RabbitMQ channel that delivered it has closed.",
                completion,
                proxy.message_id,
            )
            return
        session.unconfirmed(delivery, completion)

    def after_process(self, proxy: MessageProxy, returned: bool, *, skipped: bool = False) -> None:
        """The actor returned, raised or was skipped: release a ``while_executing`` lock.

        Parameters:
          returned(bool): The actor ran and returned (no exception, not skipped).
          skipped(bool): It was skipped (it did not run).
        """
        found = vars(proxy)
        delivery = found.get(_DELIVERY)
        if delivery is not None:
            delivery.ran = not skipped
            if returned and not proxy.failed:
                delivery.succeeded = True
        state = delivery.unique if delivery is not None else found.get(_UNIQUE)
        if state is not None and state.holds:
            self.parts.uniqueness.after_process(state)

    def end(self, proxy: MessageProxy, completion: str) -> None:
        """The message was acked or nacked: release its ``until_executed`` lock and its record."""
        found = vars(proxy)
        delivery = found.pop(_DELIVERY, None)
        state = delivery.unique if delivery is not None else found.pop(_UNIQUE, None)
        if state is not None:
            self._thread.unique = None
            self.parts.uniqueness.after_done(state, self.parts.broker, proxy._message)
        if delivery is not None:
            session = self._session
            if session is not None:
                if delivery.succeeded and _time() - session.recorder.last_beat > self._stale_after:
                    # Perhaps declared dead while it ran: if so, learn it now, so that this completion
                    # counts as a zombie's and the recovered copy is dropped before it starts.
                    session.recorder.ensure_alive()
                session.end(delivery, completion)
