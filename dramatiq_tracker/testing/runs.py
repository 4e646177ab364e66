"""What ran: a middleware that writes every start and end of a message to the test Redis."""

from __future__ import annotations

import dataclasses
import json
import os
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import redis
from dramatiq.logging import get_logger
from dramatiq.middleware import Middleware

from ..keys import namespaced_key

if TYPE_CHECKING:
    from dramatiq import Broker, MessageProxy


# What ran, as the tests see it -------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Run:
    """One thing that happened to a message in a worker (a start, or how it ended).

    Parameters:
      event(str): "started", "succeeded", "failed" or "skipped".
      message_id(str)
      actor_name(str)
      queue_name(str)
      pid(int): The worker process.
      about(str): For an ``on_recovery_exhausted`` (or any) actor sent a message's ``asdict()``
        as its first argument: that message's id; else "".
    """

    event: str
    message_id: str
    actor_name: str
    queue_name: str
    pid: int
    about: str = ""


def runs_key(namespace: str) -> str:
    """The Redis list where :class:`~dramatiq_tracker.testing.RunRecorder` writes, in a tracker namespace."""
    return namespaced_key(namespace, "testing", "runs")


def read_runs(client: redis.Redis, namespace: str) -> list[Run]:
    """Every :class:`~dramatiq_tracker.testing.Run` recorded in ``namespace``, oldest first."""
    found = []
    for raw in client.lrange(runs_key(namespace), 0, -1):
        data = json.loads(raw)
        found.append(Run(**data))
    return found


class RunRecorder(Middleware):
    """Records each start and end of a message in Redis, so that tests see what ran, in this process
    and in worker subprocesses alike.  The fixtures add it last, after the tracker: a message the
    tracker skips (a quarantined copy, a put-off duplicate) never starts.

    It also knows what each thread of this process runs, for :meth:`~dramatiq_tracker.testing.Crashes.crash`.

    Parameters:
      client(redis.Redis): The test Redis; the recorder does not close it.
      namespace(str): The test's tracker namespace.
    """

    def __init__(self, *, client: redis.Redis, namespace: str) -> None:
        self.logger = get_logger(__name__, type(self))
        self.client = client
        self.key = runs_key(namespace)
        self.pid = os.getpid()
        self._lock = threading.Lock()
        #: The message each thread of this process is running, by thread id.
        self._current: dict[int, MessageProxy] = {}
        #: Messages abandoned by a crash (by object id): how they end is not recorded.
        self._abandoned: set[int] = set()
        self._closed = False

    def _write(self, event: str, message: MessageProxy) -> None:
        if self._closed:
            # A thread that outlived its test (an actor stuck past the worker's stop) writes nothing
            # into a namespace that was deleted.
            return
        about = ""
        if message.args and isinstance(message.args[0], dict):
            about = str(message.args[0].get("message_id", ""))
        run = Run(event, message.message_id, message.actor_name, message.queue_name, self.pid, about)
        self.client.rpush(self.key, json.dumps(dataclasses.asdict(run)))

    def before_process_message(self, broker: Broker, message: MessageProxy) -> None:
        with self._lock:
            self._current[threading.get_ident()] = message
        self._write("started", message)

    def after_process_message(
        self,
        broker: Broker,
        message: MessageProxy,
        *,
        result: Any | None = None,
        exception: BaseException | None = None,
    ) -> None:
        self._end(message, "succeeded" if exception is None and not message.failed else "failed")

    def after_skip_message(self, broker: Broker, message: MessageProxy) -> None:
        self._end(message, "skipped")

    def _end(self, message: MessageProxy, event: str) -> None:
        with self._lock:
            if self._current.get(threading.get_ident()) is message:
                del self._current[threading.get_ident()]
            elif event == "skipped":
                return  # skipped before it started here
            if id(message) in self._abandoned:
                return
        self._write(event, message)

    def abandon(self, thread_ids: set[int], then: Callable[[], None]) -> list[MessageProxy]:
        """Mark what ``thread_ids`` run now as abandoned by a crash, and call ``then`` in the same
        critical section (a message that ends meanwhile is then either abandoned, or not running)."""
        with self._lock:
            abandoned = [message for thread, message in self._current.items() if thread in thread_ids]
            self._abandoned.update(id(message) for message in abandoned)
            then()
            return abandoned

    def is_abandoned(self, message: MessageProxy) -> bool:
        with self._lock:
            return id(message) in self._abandoned

    def close(self) -> None:
        """Record nothing more, and close the client."""
        self._closed = True
        self.client.close()


def find_run_recorder(broker: Broker) -> RunRecorder | None:
    """The :class:`~dramatiq_tracker.testing.RunRecorder` of ``broker``, if it has one."""
    for middleware in broker.middleware:
        if isinstance(middleware, RunRecorder):
            return middleware
    return None
