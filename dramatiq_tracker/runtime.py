"""The tracker's machinery behind the middleware's hooks: which Redis and broker
it is bound to, the worker session, and what happens around each message.

Dramatiq tells a middleware its broker only through hooks, so most parts are
made lazily, on the first hook that brings the broker.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

import dramatiq
from dramatiq.middleware import SkipMessage

from .abort import AbortBridge
from .connection import resolve_client
from .errors import TrackerError, TrackerNotConfigured
from .events import Events
from .health import ConnectionHealth
from .orphans import LockCleaners, OrphanHandling
from .quarantine import OPTIONS as QUARANTINE_OPTIONS
from .quarantine import Quarantine
from .quarantine import validate_options as validate_quarantine_options
from .recorder import FAIL, Delivery
from .recovery import Recovery
from .session import WorkerSession
from .store import TrackerStore
from .unique import UniqueAttempt, Uniqueness, attempt_of

if TYPE_CHECKING:
    from collections.abc import Mapping

    import redis
    from dramatiq import Broker, MessageProxy, Middleware, Worker
    from dramatiq.message import Message

    from .settings import TrackerSettings


class TrackerRuntime:
    """Everything a TrackerMiddleware runs, in one process.

    Parameters:
      middleware(Middleware): The middleware this runtime serves (to find its broker).
      settings(TrackerSettings)
      client(redis.Redis|None): The tracker's client, or None to resolve it from the broker.
      owns_client(bool): Whether the tracker made the client, and so closes it.
      cleaners(LockCleaners)
      unique_defaults(Mapping): The middleware's default uniqueness options.
      events_maxlen(int)
    """

    def __init__(
        self,
        middleware: Middleware,
        settings: TrackerSettings,
        client: redis.Redis | None,
        owns_client: bool,
        cleaners: LockCleaners,
        unique_defaults: Mapping[str, Any],
        events_maxlen: int,
    ) -> None:
        self.middleware = middleware
        self.settings = settings
        self.cleaners = cleaners
        self.health = ConnectionHealth()
        self.uniqueness = Uniqueness(unique_defaults, lambda: self.store, self.health)
        self.events = Events(lambda: self.store, self.health, events_maxlen, lambda: self.worker_id)
        self._client = client
        self._owns_client = owns_client
        self._store: TrackerStore | None = None
        self._broker: Broker | None = None
        self._session: WorkerSession | None = None
        self._session_lock = threading.Lock()
        self._recovery: Recovery | None = None
        self._quarantine: Quarantine | None = None
        self._aborts: AbortBridge | None = None
        self._local = threading.local()
        self._actor_tracks: dict[str, bool] = {}

    # Binding ---------------------------------------------------------------------------

    @property
    def store(self) -> TrackerStore:
        """The tracker's store.

        Raises:
          TrackerError: Before the middleware is added to a broker.
        """
        return self._store or self.bind(self.broker())

    def broker(self) -> Broker:
        """The broker the middleware is added to.

        Raises:
          TrackerError: Before it is added to one.
        """
        # Before any hook, the global broker may be ours.
        if self._broker is not None:
            return self._broker
        broker = dramatiq.get_broker()
        if self.middleware not in broker.middleware:
            raise TrackerError("This tracker is not added to a broker yet; add it with broker.add_middleware().")
        return broker

    def bind(self, broker: Broker) -> TrackerStore:
        """Bind to the broker: pick the tracker's Redis (the broker's own client by default)."""
        if self._store is None:
            self._broker = broker
            if self._client is None:
                self._client = resolve_client(broker)
                self._owns_client = self._client is not getattr(broker, "client", None)
            self._store = TrackerStore(self._client, self.settings.namespace)
        return self._store

    def recovery(self) -> Recovery:
        """The recovery of dead workers, shared by the session's sweeper and on-demand sweeps."""
        if self._recovery is None:
            broker = self.broker()
            handling = OrphanHandling(self.cleaners, self.events, self.quarantine(), self.aborts())
            self._recovery = Recovery(broker, self.bind(broker), self.settings, handling)
            self._recovery.own_worker_id = lambda: self.worker_id
        return self._recovery

    def quarantine(self) -> Quarantine:
        if self._quarantine is None:
            self._quarantine = Quarantine(self.broker(), self.settings.max_recoveries)
        return self._quarantine

    def aborts(self) -> AbortBridge:
        """The dramatiq-abort bridge; looked for again until found, as Abortable may be added late."""
        if self._aborts is None or not self._aborts.available:
            self._aborts = AbortBridge(self.broker(), self._remember_abort)
        return self._aborts

    def _remember_abort(self, message_id: str, mode: str) -> None:
        self.store.remember_abort(message_id, mode, self.settings.history_ttl)

    def abort(self, message_id: str, mode: str, abort_timeout: int) -> None:
        """Cancel or abort a message through dramatiq-abort, remembering the request.

        Raises:
          TrackerNotConfigured: When the broker has no dramatiq-abort ``Abortable`` middleware.
        """
        aborts = self.aborts()
        if not aborts.available:
            raise TrackerNotConfigured("Aborting a message needs dramatiq-abort's Abortable middleware on the broker.")
        aborts.abort(message_id, mode, abort_timeout)

    # The worker session ---------------------------------------------------------------

    @property
    def worker_id(self) -> str | None:
        session = self._session
        return session.worker_id if session else None

    def start_session(self, broker: Broker, worker: Worker) -> None:
        """Register this worker process and start the tracker's threads."""
        store = self.bind(broker)
        self.aborts()
        with self._session_lock:
            if self._session is None:
                self._session = WorkerSession(broker, worker, store, self.settings, self.recovery(), self.health)
                self._session.start()

    def queue_declared(self, broker: Broker, queue_name: str) -> None:
        self.bind(broker)
        session = self._session
        if session is not None:
            session.queue_declared(queue_name)

    def stop_sweeping(self) -> None:
        session = self._session
        if session is not None:
            session.stop_sweeping()

    def stop_session(self) -> None:
        """Deregister this worker process and stop the tracker's threads."""
        with self._session_lock:
            session, self._session = self._session, None
        if session is not None:
            session.stop()
        self.close()

    def close(self) -> None:
        """Close the tracker's Redis client if the tracker made it; it reconnects if used again."""
        if self._owns_client and self._client is not None:
            self._client.close()

    # Around each message ----------------------------------------------------------------

    def validate_actor(self, actor_name: str, options: Mapping[str, Any]) -> None:
        validate_quarantine_options(options)
        self.uniqueness.validate_actor(actor_name, options)

    def before_enqueue(self, broker: Broker, message: Message[Any]) -> None:
        self.bind(broker)
        if not QUARANTINE_OPTIONS.isdisjoint(message.options):
            validate_quarantine_options(message.options)
        self.uniqueness.before_enqueue(broker, message, getattr(self._local, "unique", None))

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

    def before_process(self, broker: Broker, message: MessageProxy) -> None:
        """Record a message starting, and take or release its uniqueness lock.

        Raises:
          SkipMessage: For a message decided before it runs: a put-off duplicate, a
            quarantined message (failed too), a cancelled one, a uniqueness conflict.
        """
        local, session = self._local, self._session
        delivery: Delivery | None = getattr(local, "delivery", None)
        if delivery is not None and session is not None:
            session.end(delivery)
        local.delivery = local.unique = delivery = None
        options, actor_name = message.options, message.actor_name
        if session is not None and self._tracks(broker, actor_name, options):
            max_recoveries = self.quarantine().max_recoveries(actor_name, options)
            local.delivery = delivery = session.begin(message, options, max_recoveries)
            if delivery.verdict is not None:
                if delivery.verdict == FAIL:
                    message.fail()
                raise SkipMessage()
        if self.uniqueness.applies(broker, actor_name, options):
            attempt = delivery.recoveries if delivery is not None else attempt_of(options)
            worker_id = session.worker_id if session is not None else ""
            local.unique = self.uniqueness.before_process(broker, message, attempt, worker_id)

    def after_process(self, message: MessageProxy) -> None:
        """The actor returned, raised or was skipped: release a ``while_executing`` lock."""
        state: UniqueAttempt | None = getattr(self._local, "unique", None)
        if state is not None and state.message_id == message.message_id:
            self.uniqueness.after_process(state)

    def end(self, message: MessageProxy) -> None:
        """The message was acked or nacked: release its ``until_executed`` lock and its record."""
        local = self._local
        state: UniqueAttempt | None = getattr(local, "unique", None)
        if state is not None and state.message_id == message.message_id:
            local.unique = None
            self.uniqueness.after_done(state)
        delivery: Delivery | None = getattr(local, "delivery", None)
        if delivery is None or delivery.message is not message:
            return
        local.delivery = None
        session = self._session
        if session is not None:
            session.end(delivery)
