"""The set-up of a worker subprocess that :meth:`~dramatiq_tracker.testing.Crashes.spawn_worker` starts."""

from __future__ import annotations

import functools
import json
import os
from typing import TYPE_CHECKING, Any

import dramatiq
import dramatiq.broker

from ..brokers import REDIS, broker_kind
from ..middleware import TrackerMiddleware, find_tracker

if TYPE_CHECKING:
    from dramatiq.brokers.redis import RedisBroker

from .brokers import _client, import_app
from .config import WORKER_ENVIRONMENT_VARIABLE, TrackerTestError
from .runs import RunRecorder

# Worker subprocesses ------------------------------------------------------------------------------

#: The RedisBroker arguments a worker subprocess keeps from the application; the Redis and the
#: namespace are the test's.
_KEPT_BROKER_ARGUMENTS = {
    "middleware",
    "maintenance_chance",
    "heartbeat_timeout",
    "dead_message_ttl",
    "requeue_deadline",
    "requeue_interval",
}


def boot_worker() -> None:
    """Set up a worker subprocess: the ``dramatiq`` command's broker argument in
    :meth:`~dramatiq_tracker.testing.Crashes.spawn_worker` (``dramatiq dramatiq_tracker.testing.boot:boot_worker``).

    It reads :data:`~dramatiq_tracker.testing.WORKER_ENVIRONMENT_VARIABLE`, points every RedisBroker and
    TrackerMiddleware built from now on at the test Redis and namespaces with the test timings, imports the
    application, adds
    a :class:`~dramatiq_tracker.testing.RunRecorder` to its broker and makes that broker the global one.

    Raises:
      TrackerTestError: When the application's broker is not a RedisBroker.
      TrackerNotConfigured: When it has no TrackerMiddleware.
    """
    from dramatiq.brokers.redis import RedisBroker

    settings = json.loads(os.environ[WORKER_ENVIRONMENT_VARIABLE])
    url = settings["redis_url"]
    build_broker = RedisBroker.__init__
    build_tracker = TrackerMiddleware.__init__

    @functools.wraps(build_broker)
    def redirected_broker(self: RedisBroker, **arguments: Any) -> None:
        kept = {name: value for name, value in arguments.items() if name in _KEPT_BROKER_ARGUMENTS}
        build_broker(self, url=url, namespace=settings["broker_namespace"], **kept)  # type: ignore[no-untyped-call]

    @functools.wraps(build_tracker)
    def redirected_tracker(self: TrackerMiddleware, **arguments: Any) -> None:
        arguments.pop("client", None)
        overrides = {"url": url, "namespace": settings["tracker_namespace"], **settings["timings"]}
        build_tracker(self, **{**arguments, **overrides})

    RedisBroker.__init__ = redirected_broker  # type: ignore[method-assign]
    TrackerMiddleware.__init__ = redirected_tracker  # type: ignore[method-assign]
    broker = import_app(settings["app"])
    if broker_kind(broker) != REDIS:
        raise TrackerTestError("Worker subprocesses need an application on a RedisBroker; %r is not one." % broker)
    find_tracker(broker)
    broker.add_middleware(RunRecorder(client=_client(url), namespace=settings["tracker_namespace"]))
    dramatiq.set_broker(broker)
