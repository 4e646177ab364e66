"""What the operator tools say when the tracker's Redis cannot be used, whatever the client: one line
that names the Redis (its URL redacted) and what went wrong, in the words an operator acts on.

redis-py raises different errors per kind of client: a ``redis.RedisError`` for a single server, a
Sentinel master, TLS and unix sockets, but a ``RedisClusterException`` (not a ``RedisError``) when no
node of a Cluster answers, as the client is built.  :data:`CLIENT_ERRORS` catches them all;
:func:`explain` turns each into a sentence; :func:`misconfigured` tells a Redis that is away (it comes
back) from credentials or certificates that are wrong (they do not fix themselves).
"""

from __future__ import annotations

import ssl

import redis
import redis.exceptions
import redis.sentinel

#: Every error a Redis client of any kind raises when it cannot connect, authenticate or read.
CLIENT_ERRORS: tuple[type[BaseException], ...] = (redis.RedisError, redis.exceptions.RedisClusterException, OSError)

#: What redis-py says when a server needs a password and the client gave none (it says HELLO first).
_NO_PASSWORD = "HELLO must be called with the client already authenticated"
#: How redis-py's cluster client starts the message of a cluster no node of which answers.
_CLUSTER_PREFIX = "Redis Cluster cannot be connected. Please provide at least one reachable node: "
#: The most characters of a client's own message kept in a line.
MAX_DETAIL = 300


def _detail(error: BaseException | str) -> str:
    text = " ".join(str(error).split())
    return text if len(text) <= MAX_DETAIL else text[: MAX_DETAIL - 3] + "..."


def misconfigured(error: BaseException) -> bool:
    """Whether ``error`` says the connection settings are wrong (credentials refused or missing, a command
    the user may not run, a certificate that does not verify) rather than that Redis is away."""
    if isinstance(error, (redis.AuthenticationError, redis.exceptions.NoPermissionError)):
        return True
    if isinstance(error, redis.exceptions.AuthenticationWrongNumberOfArgsError):
        return True
    text = str(error)
    if isinstance(error, redis.ResponseError) and (text.startswith(("NOAUTH", "WRONGPASS", "NOPERM"))):
        return True
    return isinstance(error, ssl.SSLCertVerificationError) or "CERTIFICATE_VERIFY_FAILED" in text


def explain(error: BaseException, where: str) -> str:
    """One line saying why the tracker's Redis at ``where`` could not be read.

    Parameters:
      error(BaseException): What the client raised (one of :data:`CLIENT_ERRORS`).
      where(str): The Redis, as it may be printed (a redacted URL, or a description).
    """
    text = str(error)
    if isinstance(error, redis.sentinel.MasterNotFoundError):
        # Its message carries the repr of a connection pool: a kilobyte, and nothing an operator needs.
        service = text.split("'")[1] if text.count("'") >= 2 else "?"
        return (
            "cannot read the tracker's Redis at %s: no Sentinel answered with a master for service %r "
            "(the Sentinels are unreachable, or none of them monitors it)" % (where, service)
        )
    if isinstance(error, redis.exceptions.RedisClusterException):
        detail = text[len(_CLUSTER_PREFIX) :] if text.startswith(_CLUSTER_PREFIX) else text
        return "cannot read the tracker's Redis Cluster at %s: no node answered (%s)" % (where, _detail(detail))
    if _NO_PASSWORD in text:
        return "cannot read the tracker's Redis at %s: it needs a password, and the URL gives none" % where
    if isinstance(error, redis.AuthenticationError) or text.startswith(("WRONGPASS", "NOAUTH")):
        return "cannot read the tracker's Redis at %s: it refused the URL's credentials (%s)" % (where, _detail(error))
    if isinstance(error, redis.exceptions.NoPermissionError) or text.startswith("NOPERM"):
        return (
            "cannot read the tracker's Redis at %s: its user may not run a command the tracker needs (%s); "
            "see the ACL line in docs/operations.md" % (where, _detail(error))
        )
    if misconfigured(error):
        return "cannot read the tracker's Redis at %s: its TLS certificate does not verify (%s)" % (
            where,
            _detail(error),
        )
    if isinstance(error, redis.TimeoutError):
        return "cannot read the tracker's Redis at %s: no answer within the timeout (%s)" % (where, _detail(error))
    return "cannot read the tracker's Redis at %s: %s" % (where, _detail(error) or type(error).__name__)
