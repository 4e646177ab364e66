"""Which Redis the tracker talks to."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import redis

from .brokers import REDIS, as_redis_broker, broker_kind
from .errors import ConfigurationError

if TYPE_CHECKING:
    from dramatiq import Broker

#: The environment variable naming the tracker's Redis when no client or url is given.
URL_ENVIRONMENT_VARIABLE = "DRAMATIQ_TRACKER_REDIS_URL"

#: The Redis used when nothing else is configured and the broker is not a RedisBroker.
DEFAULT_URL = "redis://localhost:6379/0"

#: Socket timeouts of the clients the tracker makes, in seconds: a lost Redis must not hang its threads.
SOCKET_TIMEOUT = 5.0


def client_from_url(url: str, *, setting: str = "url") -> redis.Redis:
    """A client for ``url`` with the tracker's timeouts.

    Raises:
      ConfigurationError: When the URL is not a Redis URL.
    """
    try:
        return redis.Redis.from_url(url, socket_timeout=SOCKET_TIMEOUT, socket_connect_timeout=SOCKET_TIMEOUT)
    except ValueError as e:
        raise ConfigurationError(setting, "not a Redis URL (%s): %r" % (e, url)) from None


def resolve_client(broker: Broker) -> redis.Redis:
    """The tracker's Redis when none was given: ``DRAMATIQ_TRACKER_REDIS_URL``, else
    the RedisBroker's own client, else ``redis://localhost:6379/0``."""
    url = os.environ.get(URL_ENVIRONMENT_VARIABLE)
    if url:
        return client_from_url(url, setting=URL_ENVIRONMENT_VARIABLE)
    if broker_kind(broker) == REDIS:
        return as_redis_broker(broker).client
    return client_from_url(DEFAULT_URL)
