"""Which Redis the tracker talks to.

The tracker's Redis may be a single server (``redis://``, ``rediss://`` with
TLS, ``unix://``), a Redis Cluster (``redis+cluster://host:port`` or a
``redis.cluster.RedisCluster`` client), or a Sentinel-managed master
(``redis+sentinel://host:port,host:port/service_name`` or a client from
``redis.sentinel.Sentinel(...).master_for(...)``).  Every key of a namespace
shares one hash tag, so all of the tracker's scripts run on a Cluster.
"""

from __future__ import annotations

import os
import threading
import urllib.parse
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import redis
import redis.cluster
import redis.sentinel
from dramatiq.logging import get_logger

from .brokers import REDIS, as_redis_broker, broker_kind
from .errors import ConfigurationError
from .redact import hide, redact

if TYPE_CHECKING:
    from dramatiq import Broker

#: The environment variable naming the tracker's Redis when no client or url is given.
URL_ENVIRONMENT_VARIABLE = "DRAMATIQ_TRACKER_REDIS_URL"

#: The Redis used when nothing else is configured and the broker is not a RedisBroker.
DEFAULT_URL = "redis://localhost:6379/0"

#: Socket timeouts of the clients the tracker makes, in seconds: a lost Redis must not hang its threads.
SOCKET_TIMEOUT = 5.0

_TIMEOUTS = {"socket_timeout": SOCKET_TIMEOUT, "socket_connect_timeout": SOCKET_TIMEOUT}


def is_redis_client(client: Any) -> bool:
    """Whether ``client`` is a client the tracker can use: ``redis.Redis`` or ``redis.cluster.RedisCluster``."""
    return isinstance(client, (redis.Redis, redis.cluster.RedisCluster))


def _hosts(netloc: str) -> tuple[str, list[tuple[str, int]]]:
    credentials, _, hosts = netloc.rpartition("@")
    found = []
    for host in hosts.split(","):
        name, _, port = host.strip().rpartition(":")
        if not name:
            name, port = port, "26379"
        if not name.strip("[]"):
            raise ValueError("a Sentinel's host is empty")
        found.append((name.strip("[]"), int(port)))
    return credentials, found


def client_from_url(url: str, *, setting: str = "url") -> redis.Redis:
    """A client for ``url`` with the tracker's timeouts.

    Raises:
      ConfigurationError: When the URL is not a Redis URL the tracker understands.
    """
    try:
        parsed = urllib.parse.urlsplit(url)
        scheme = parsed.scheme.lower()
        if scheme in ("redis+cluster", "rediss+cluster"):
            plain = urllib.parse.urlunsplit((scheme.partition("+")[0], *parsed[1:]))
            return redis.cluster.RedisCluster.from_url(plain, **_TIMEOUTS)  # type: ignore[return-value]
        if scheme in ("redis+sentinel", "rediss+sentinel"):
            credentials, hosts = _hosts(parsed.netloc)
            path = [part for part in parsed.path.split("/") if part]
            if not hosts or not path:
                raise ValueError("expected redis+sentinel://host:port[,host:port]/service_name[/db]")
            service, db = path[0], int(path[1]) if len(path) > 1 else 0
            username, _, password = credentials.partition(":")
            options: dict[str, Any] = {**_TIMEOUTS, "db": db, "ssl": scheme.startswith("rediss")}
            if password or username:
                options.update(username=urllib.parse.unquote(username) or None, password=urllib.parse.unquote(password))
            query = dict(urllib.parse.parse_qsl(parsed.query))
            sentinel_options = {**_TIMEOUTS}
            if "sentinel_password" in query:
                sentinel_options["password"] = query["sentinel_password"]  # type: ignore[assignment]
            # Typed as Any: redis-py's Sentinel is untyped before 8.2 and typed since.
            sentinel_class: Any = redis.sentinel.Sentinel
            master: redis.Redis = sentinel_class(hosts, sentinel_kwargs=sentinel_options, **options).master_for(service)
            return master
        if scheme not in ("redis", "rediss", "unix"):
            raise ValueError("unknown scheme %r (redis, rediss, unix, redis+cluster, redis+sentinel)" % scheme)
        return redis.Redis.from_url(url, **_TIMEOUTS)
    except ValueError as e:
        # Never the URL as given: it may hold a password.
        raise ConfigurationError(setting, "not a Redis URL (%s): %s" % (hide(str(e), url), redact(url))) from None


def resolve_client(broker: Broker) -> redis.Redis:
    """The tracker's Redis when none was given: ``DRAMATIQ_TRACKER_REDIS_URL``, else
    the RedisBroker's own client, else ``redis://localhost:6379/0``."""
    url = os.environ.get(URL_ENVIRONMENT_VARIABLE)
    if url:
        return client_from_url(url, setting=URL_ENVIRONMENT_VARIABLE)
    if broker_kind(broker) == REDIS:
        return as_redis_broker(broker).client
    return client_from_url(DEFAULT_URL)


def delete_keys(client: redis.Redis, pattern: str) -> int:
    """Delete the keys matching ``pattern`` with SCAN (never KEYS, FLUSHDB or FLUSHALL: the Redis may be
    shared); returns how many were deleted."""
    deleted = 0
    batch: list[bytes] = []
    for key in client.scan_iter(match=pattern, count=1000):
        batch.append(key)
        if len(batch) >= 500:
            deleted += int(client.delete(*batch))
            batch.clear()
    if batch:
        deleted += int(client.delete(*batch))
    return deleted


class MasterWatch:
    """Which server a Sentinel-managed client's master is, asked of the Sentinels, and followed.

    After ``SENTINEL FAILOVER`` the old master keeps taking writes from the clients connected to it until
    Sentinel demotes it, about ten seconds later; a worker that stayed there would see its heartbeat expire
    on the new master, and a sweeper that stayed there would judge, by the presence it sees there, workers
    that moved.  So each heartbeat, and each judgment of a death, asks first; when the master moved,
    every connection goes to the new one at once, and the listeners are told (the presence connection
    subscribes again there, the worker writes its state again).

    Parameters:
      client(redis.Redis): The tracker's client; a no-op unless its pool is Sentinel-managed.
    """

    def __init__(self, client: Any) -> None:
        self.logger = get_logger(__name__, type(self))
        pool = getattr(client, "connection_pool", None)
        self.pool = pool if isinstance(pool, redis.sentinel.SentinelConnectionPool) else None
        #: Called, without arguments, once every connection moved to a new master.
        self.on_change: list[Callable[[], None]] = []
        self._address: tuple[Any, ...] | None = None
        self._lock = threading.Lock()

    def moved(self) -> bool:
        """Ask the Sentinels for the master; when it is not the one the client talked to, move there.

        Returns:
          bool: True when the master moved (a failover): nothing may be judged on what the old one said.

        Raises:
          redis.RedisError: When no Sentinel answers.
        """
        if self.pool is None:
            return False
        # Untyped before redis-py 8.2.
        discover: Any = self.pool.get_master_address
        address = tuple(discover())
        with self._lock:
            previous, self._address = self._address, address
        if previous is None or previous == address:
            return False
        self.logger.info(
            "The tracker's Redis master moved from %s to %s (a failover); reconnecting to it.",
            ":".join(map(str, previous)),
            ":".join(map(str, address)),
        )
        self._leave_others(address)
        for listener in self.on_change:
            listener()
        return True

    def _leave_others(self, master: tuple[Any, ...]) -> None:
        """Disconnect every connection of the pool that is not to ``master``: idle ones, and those in use
        on the old master (their command fails and is retried there).  Those already on the new master
        are left alone: cutting one under the thread that uses it (a heartbeat) stalled that thread for
        a whole socket timeout, longer than a short heartbeat_timeout."""
        # The pool's own lists: redis-py has no public way to reach its connections in use.
        pool: Any = self.pool
        with pool._lock:
            connections = [*pool._available_connections, *pool._in_use_connections]
        for connection in connections:
            if (getattr(connection, "host", None), getattr(connection, "port", None)) != master:
                connection.disconnect()
