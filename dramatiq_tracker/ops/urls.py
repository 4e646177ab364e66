"""Redis URLs as the operator tools print and log them: every secret masked.

A URL may carry a password in its user information (``redis://user:pw@host``) and in its query
string (``?password=...``, ``?sentinel_password=...``, which redis-py reads, and any parameter named
like a secret).  :func:`redact` replaces each of them with ``***``; every URL the command line,
the exporter and the dashboard print or log goes through it.
"""

from __future__ import annotations

from typing import Any

from ..redact import MASK, SECRET_WORDS, UNREADABLE, hide, is_secret, redact

__all__ = ["MASK", "SECRET_WORDS", "UNREADABLE", "describe_client", "hide", "is_secret", "redact"]


def describe_client(client: Any) -> str:
    """Where a Redis client connects, without its credentials: ``redis://host:port/db``, ``unix://path``,
    ``redis+cluster://host:port`` (a node), or the Sentinel service it follows."""
    import redis.cluster
    import redis.sentinel

    from ..brokers import describe_redis_client

    if isinstance(client, redis.cluster.RedisCluster):
        node = client.get_default_node()  # type: ignore[no-untyped-call]
        return "redis+cluster://%s:%s" % (node.host, node.port) if node is not None else "a Redis Cluster"
    pool = client.connection_pool
    if isinstance(pool, redis.sentinel.SentinelConnectionPool):
        return "the master of Sentinel service %r" % pool.service_name
    return describe_redis_client(client)
