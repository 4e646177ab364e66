"""What the test apps make from their environment variables: the broker and the tracker."""

from __future__ import annotations

import logging
import os
from typing import Any

import dramatiq

from dramatiq_tracker import TrackerMiddleware


def broker_from_environment(prefix: str) -> dramatiq.Broker:
    """A RedisBroker or a RabbitmqBroker, as ``<prefix>_BROKER_KIND`` says, on ``<prefix>_BROKER_URL``
    (and ``<prefix>_BROKER_NAMESPACE``, for Redis).

    Raises:
      RuntimeError: An unknown broker kind.
    """
    kind = os.environ[prefix + "_BROKER_KIND"]
    if kind == "redis":
        from dramatiq.brokers.redis import RedisBroker

        return RedisBroker(url=os.environ[prefix + "_BROKER_URL"], namespace=os.environ[prefix + "_BROKER_NAMESPACE"])
    if kind == "rabbitmq":
        from dramatiq.brokers.rabbitmq import RabbitmqBroker

        return RabbitmqBroker(url=os.environ[prefix + "_BROKER_URL"])
    raise RuntimeError("unknown %s_BROKER_KIND %r" % (prefix, kind))


def tracker_from_environment(**settings: Any) -> TrackerMiddleware:
    """The tracker of a test's worker process: the Redis, namespace, timings and presence its ``TEST_*``
    variables say (the tests' fast timings by default), with more ``settings``; with ``TEST_DEBUG=1``,
    the tracker logs at DEBUG."""
    if os.environ.get("TEST_DEBUG") == "1":
        logging.getLogger("dramatiq_tracker").setLevel(logging.DEBUG)
    return TrackerMiddleware(
        url=os.environ["TEST_TRACKER_URL"],
        namespace=os.environ["TEST_TRACKER_NAMESPACE"],
        heartbeat_interval=int(os.environ.get("TEST_HEARTBEAT_INTERVAL", "200")),
        heartbeat_timeout=int(os.environ.get("TEST_HEARTBEAT_TIMEOUT", "1000")),
        sweep_interval=int(os.environ.get("TEST_SWEEP_INTERVAL", "500")),
        flush_interval=int(os.environ.get("TEST_FLUSH_INTERVAL", "20")),
        presence=os.environ.get("TEST_PRESENCE", "1") == "1",
        presence_grace=int(os.environ.get("TEST_PRESENCE_GRACE", "1000")),
        **settings,
    )
