"""Brokers with a tracker on test timings, the application's actors on them, in-process workers."""

from __future__ import annotations

import contextlib
import functools
import importlib
import threading
import weakref
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import dramatiq
import dramatiq.broker
import dramatiq.middleware
import dramatiq.worker
import redis
from dramatiq.middleware import Middleware

from ..brokers import REDIS, as_redis_broker, broker_kind
from ..middleware import TrackerMiddleware

if TYPE_CHECKING:
    from dramatiq import Broker, Worker
    from dramatiq.brokers.redis import RedisBroker
    from dramatiq.brokers.stub import StubBroker

from .config import _FIXTURE_MARK, DEFAULT_WORKER_THREADS, WORKER_TIMEOUT, TrackerTestConfig, TrackerTestError
from .flushing import RedisTestBroker, StubTestBroker
from .runs import RunRecorder

# Brokers ------------------------------------------------------------------------------------------


def _settings_of(tracker: TrackerMiddleware) -> dict[str, Any]:
    """The constructor arguments of an application's tracker that tests keep (all but the Redis,
    the namespace and the timings)."""
    settings = tracker.settings
    return {
        "max_recoveries": settings.max_recoveries,
        "history_ttl": settings.history_ttl,
        "events_maxlen": settings.events_maxlen,
        "preview_length": settings.preview_length,
        "broker_identity": settings.broker_identity,
        "lock_cleaners": list(tracker.lock_cleaners),
        "on_event": list(tracker.callbacks.callbacks),
        **settings.unique_defaults,
    }


def make_tracker(
    config: TrackerTestConfig, redis_url: str, namespace: str, *, like: TrackerMiddleware | None = None
) -> TrackerMiddleware:
    """A TrackerMiddleware on the test Redis and namespace, with the test timings.

    Parameters:
      like(TrackerMiddleware): The application's tracker, whose other settings (``max_recoveries``,
        uniqueness defaults, lock cleaners, event callbacks, ``broker_identity``, ...) are kept.
    """
    settings = _settings_of(like) if like is not None else {}
    return TrackerMiddleware(url=redis_url, namespace=namespace, **{**settings, **config.timings})


def _carried(middleware: Middleware) -> bool:
    """Whether a middleware of the application goes on the test brokers: all do but its tracker
    (replaced by the test's), a run recorder (the fixtures add their own) and a Worker's own hook."""
    return not isinstance(middleware, (TrackerMiddleware, RunRecorder)) and not isinstance(
        middleware, getattr(dramatiq.worker, "_WorkerMiddleware", ())
    )


def broker_middleware(
    config: TrackerTestConfig,
    tracker: TrackerMiddleware,
    app: Broker | None = None,
    middleware: Sequence[Middleware] = (),
) -> list[Middleware]:
    """The middleware of a test broker, in order, before its run recorder.

    With ``config.app_middleware`` (the default) and an application broker: the application's own
    middleware objects, in its order, with ``tracker`` where the application's tracker was (else
    last); otherwise Dramatiq's default middleware (new objects), then ``tracker``.  ``middleware`` goes
    just before ``tracker``.
    """
    if app is None or not config.app_middleware:
        return [*(m() for m in dramatiq.middleware.default_middleware), *middleware, tracker]
    stack: list[Middleware] = []
    for found in app.middleware:
        if isinstance(found, TrackerMiddleware) and tracker not in stack:
            stack += [*middleware, tracker]
        elif _carried(found):
            stack.append(found)
    if tracker not in stack:
        stack += [*middleware, tracker]
    return stack


#: The middleware objects booted in this process (``after_process_boot``), so that an application's
#: middleware, carried from test broker to test broker, boots once, as in a worker process.
_booted: weakref.WeakSet[Middleware] = weakref.WeakSet()


def _boot(broker: Broker) -> None:
    """``after_process_boot`` for each middleware of a test broker not booted yet in this process.

    A middleware whose boot starts a thread it keeps (TimeLimit's timer) and whose thread runs was
    booted by the application itself (a StubBroker module that calls ``emit_after("process_boot")``).
    """
    for middleware in broker.middleware:
        if middleware in _booted:
            continue
        _booted.add(middleware)
        if any(isinstance(v, threading.Thread) and v.ident is not None for v in vars(middleware).values()):
            continue
        try:
            middleware.after_process_boot(broker)
        except Exception:
            broker.logger.critical("Unexpected failure in after_process_boot of %r.", middleware, exc_info=True)


def _finish(broker: Broker, client: redis.Redis, namespace: str) -> None:
    broker.add_middleware(RunRecorder(client=client, namespace=namespace))
    setattr(broker, _FIXTURE_MARK, True)
    _boot(broker)


def make_stub_broker(
    config: TrackerTestConfig,
    redis_url: str,
    namespace: str,
    *,
    app: Broker | None = None,
    like: TrackerMiddleware | None = None,
    middleware: Sequence[Middleware] = (),
) -> StubBroker:
    """A StubBroker with a tracker on the test Redis and namespace (:func:`~dramatiq_tracker.testing.make_tracker`),
    then a :class:`~dramatiq_tracker.testing.RunRecorder`.  Its ``flush`` and ``flush_all`` release the
    uniqueness locks of the messages they drop.

    Parameters:
      app(Broker): The application's broker: its middleware, in order, with the test tracker in place
        of its tracker (see ``broker_middleware()``; ``config.app_middleware``).
      like(TrackerMiddleware): The tracker whose settings are kept (default: ``app``'s).
      middleware(list[Middleware]): More middleware, just before the tracker.

    Close it with :func:`~dramatiq_tracker.testing.close_broker`.
    """
    tracker = make_tracker(config, redis_url, namespace, like=like or _tracker_of(app))
    broker = StubTestBroker(middleware=broker_middleware(config, tracker, app, middleware))
    _finish(broker, _client(redis_url), namespace)
    return broker


def make_redis_broker(
    config: TrackerTestConfig,
    redis_url: str,
    namespace: str,
    broker_namespace: str,
    *,
    app: Broker | None = None,
    like: TrackerMiddleware | None = None,
    middleware: Sequence[Middleware] = (),
) -> RedisBroker:
    """A RedisBroker on the test Redis and ``broker_namespace``, with its middleware as
    :func:`~dramatiq_tracker.testing.make_stub_broker`'s, then a :class:`~dramatiq_tracker.testing.RunRecorder`.

    Close it with :func:`~dramatiq_tracker.testing.close_broker`; its keys are deleted with ``delete_keys(client,
    broker_namespace + ":*")``.
    """
    tracker = make_tracker(config, redis_url, namespace, like=like or _tracker_of(app))
    stack = broker_middleware(config, tracker, app, middleware)
    broker = RedisTestBroker(url=redis_url, namespace=broker_namespace, middleware=stack)  # type: ignore[no-untyped-call]
    _finish(broker, _client(redis_url), namespace)
    return broker


def _client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_timeout=10, socket_connect_timeout=5)


def close_broker(broker: Broker) -> None:
    """Close a broker made by :func:`~dramatiq_tracker.testing.make_stub_broker` or
    :func:`~dramatiq_tracker.testing.make_redis_broker`, its tracker's and
    its run recorder's Redis connections included."""
    for middleware in broker.middleware:
        if isinstance(middleware, (TrackerMiddleware, RunRecorder)):
            middleware.close()
    broker.close()
    if broker_kind(broker) == REDIS:
        # RedisBroker.close() leaves its client, and the pool of a client made from a URL, open.
        client = as_redis_broker(broker).client
        client.close()
        client.connection_pool.disconnect()


def import_app(spec: str) -> Broker:
    """The broker of an application, named as for the ``dramatiq`` command: ``"module"`` (its ``broker``
    attribute, else the global broker once it is imported) or ``"module:name"`` (a broker, or a
    function that sets the global broker), optionally followed by more modules to import once the
    broker is set, space-separated, as the command takes them (``"django_dramatiq.setup orders.tasks"``).

    Raises:
      TrackerTestError: When it cannot be imported or names no broker.
    """
    broker_spec, *modules = spec.split() or [""]
    module_name, _, attribute = broker_spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise TrackerTestError("Cannot import the application %r (tracker_app): %s" % (spec, e)) from e
    found: Any
    if attribute:
        try:
            found = functools.reduce(getattr, attribute.split("."), module)
        except AttributeError:
            raise TrackerTestError("The application module %r has no %r." % (module_name, attribute)) from None
        if callable(found) and not isinstance(found, dramatiq.Broker):
            found()
            found = dramatiq.broker.global_broker
    else:
        found = getattr(module, "broker", None)
        if not isinstance(found, dramatiq.Broker):
            found = dramatiq.broker.global_broker
    if not isinstance(found, dramatiq.Broker):
        raise TrackerTestError(
            "The application %r names no broker: give its broker as 'module:broker', or set the global "
            "broker in the module (dramatiq.set_broker)." % spec
        )
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as e:
            raise TrackerTestError("Cannot import the module %r of the application %r: %s" % (name, spec, e)) from e
    return found


@contextlib.contextmanager
def installed(broker: Broker, app: Broker | None = None) -> Iterator[Broker]:
    """Make ``broker`` the global broker, and declare on it every actor of ``app`` (bound to it for the
    while); restore both after.

    Raises:
      TrackerTestError: When another test broker is installed already (one per test).
    """
    previous = dramatiq.broker.global_broker
    if previous is not None and getattr(previous, _FIXTURE_MARK, False):
        raise TrackerTestError(
            "This test uses two tracker test brokers (%r is installed already): use one of "
            "tracker_stub_broker, tracker_redis_broker and tracker_broker per test." % previous
        )
    moved: list[tuple[Any, Broker]] = []
    try:
        if app is not None and app is not broker:
            for name in sorted(app.get_declared_actors()):
                actor = app.get_actor(name)
                moved.append((actor, actor.broker))
                actor.broker = broker
                broker.declare_actor(actor)
        dramatiq.set_broker(broker)
        yield broker
    finally:
        for actor, original in moved:
            actor.broker = original
        dramatiq.broker.global_broker = previous


def application_broker(config: TrackerTestConfig, app: str | None = None) -> Broker | None:
    """The broker whose actors the test brokers take: ``app``, else the ``tracker_app`` option, else the
    global broker if one is set (a broker the test helpers made excepted)."""
    spec = app or config.app
    if spec:
        return import_app(spec)
    current = dramatiq.broker.global_broker
    if current is None or getattr(current, _FIXTURE_MARK, False):
        return None
    return current


def _tracker_of(broker: Broker | None) -> TrackerMiddleware | None:
    if broker is None:
        return None
    return next((m for m in broker.middleware if isinstance(m, TrackerMiddleware)), None)


# In-process workers --------------------------------------------------------------------------------

#: Workers already stopped (by a crash or a fixture), so that stopping them again does nothing.
_stopped: weakref.WeakSet[Worker] = weakref.WeakSet()

#: The running workers :func:`~dramatiq_tracker.testing.start_worker` started, per broker.
_running: weakref.WeakKeyDictionary[Broker, weakref.WeakSet[Worker]] = weakref.WeakKeyDictionary()


def start_worker(broker: Broker, *, threads: int = DEFAULT_WORKER_THREADS) -> Worker:
    """Start an in-process ``dramatiq.Worker`` on ``broker``; stop it with
    :func:`~dramatiq_tracker.testing.stop_worker`."""
    worker = dramatiq.Worker(broker, worker_threads=threads, worker_timeout=WORKER_TIMEOUT)
    worker.start()
    _running.setdefault(broker, weakref.WeakSet()).add(worker)
    return worker


def stop_worker(worker: Worker, timeout: int = 10_000) -> None:
    """Stop an in-process worker (once), and take its consumer hook off its broker, so that a queue
    declared later does not start a consumer for a stopped worker.

    Parameters:
      timeout(int): How long its threads may take to finish their messages, in milliseconds.
    """
    if worker in _stopped:
        return
    _stopped.add(worker)
    worker.stop(timeout)
    _unhook(worker)


def _unhook(worker: Worker) -> None:
    """Take a stopped worker's consumer hook off its broker, and forget it."""
    broker = worker.broker
    broker.middleware[:] = [m for m in broker.middleware if getattr(m, "worker", None) is not worker]
    _running.get(broker, weakref.WeakSet()).discard(worker)
