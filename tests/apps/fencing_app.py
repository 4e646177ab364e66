"""The Dramatiq app of tests/test_sweeper_fencing.py: a slow, reporting lock cleaner and a held actor.

Everything comes from environment variables that ``tests/conftest.py`` (``spawn_worker``) sets.
``TEST_BROKER_KIND`` is "redis" (a RedisBroker) or "outbox": a third-party broker class that only
delegates to a RedisBroker (:class:`WrappedRedisBroker`), so that the tracker classifies it as
"other" and recovers a dead worker's orphans through its outbox, enqueueing their stored payloads
again.  All processes of a test share a ``broker_identity``, so that any of them may recover
another's orphans.  Dramatiq's own maintenance of the RedisBroker never requeues a dead worker's
messages during a test (its ``heartbeat_timeout`` is ten minutes): only the tracker recovers them.

Reports, as JSON lists in the report Redis (``TEST_REPORT_PREFIX``):

- ``:runs``: each start of ``hold``: message id, pid, attempt, recovered (bool), time;
- ``:cleaner``: each lock cleaner call, a "start" record before it works and an "end" record after:
  pid, message id, the orphan's attempt, time.

``TEST_CLEANER_SECONDS`` is how long each cleaner call works.  ``TEST_CLEANER_SIGNAL`` ("stop" or
"kill") makes the first cleaner call of the whole test (whichever process makes it) SIGSTOP or
SIGKILL its own process right after reporting its start: the claiming sweeper is frozen or killed
inside its first cleaner call, at a well-defined moment.  ``TEST_ENQUEUE_SIGNAL`` ("stop") makes the first
copy enqueued again from the outbox SIGSTOP its process inside the broker's enqueue (reported in
``:enqueue``): after every check its sweeper makes, before the copy reaches the queue.
"""

from __future__ import annotations

import json
import os
import signal
import time
from typing import Any

import dramatiq
import redis
from dramatiq.broker import Broker, Consumer
from dramatiq.brokers.redis import RedisBroker
from dramatiq.common import dq_name
from dramatiq.message import Message
from dramatiq.middleware import CurrentMessage

from dramatiq_tracker import Orphan
from tests.apps.environment import tracker_from_environment

KIND = os.environ["TEST_BROKER_KIND"]
QUEUE = os.environ["TEST_QUEUE"]
REPORT_PREFIX = os.environ["TEST_REPORT_PREFIX"]
report = redis.Redis.from_url(os.environ["TEST_REPORT_URL"])

#: Dramatiq's own recovery of a dead RedisBroker process's messages, pushed past any test.
DRAMATIQ_HEARTBEAT_TIMEOUT = 600_000


class WrappedRedisBroker(Broker):
    """A broker of its own class (not a RedisBroker subclass) that delegates to a RedisBroker.

    The inner broker has no middleware: every hook is emitted once, by this broker, as Dramatiq's
    brokers emit them, so that the middleware sees this broker and nothing else.
    """

    def __init__(self, inner: RedisBroker, middleware: list[Any] | None = None) -> None:
        super().__init__(middleware=middleware)
        self.inner = inner
        self.queues: set[str] = set()  # type: ignore[assignment]

    def close(self) -> None:
        self.inner.close()

    def consume(self, queue_name: str, prefetch: int = 1, timeout: int = 5000) -> Consumer:
        return self.inner.consume(queue_name, prefetch, timeout)

    def declare_queue(self, queue_name: str) -> None:
        if queue_name not in self.queues:
            self.emit_before("declare_queue", queue_name)
            self.inner.declare_queue(queue_name)
            self.queues.add(queue_name)
            self.emit_after("declare_queue", queue_name)
            delayed = dq_name(queue_name)
            self.delay_queues.add(delayed)
            self.emit_after("declare_delay_queue", delayed)

    def enqueue(self, message: Message[Any], *, delay: int | None = None) -> Message[Any]:
        # The hooks see the message before the inner broker copies it (with its redis_message_id,
        # and its eta when delayed); what they change in its options travels with the copy.
        if ENQUEUE_SIGNAL and "tracker_copy" in message.options:
            # The first copy enqueued again from the outbox in the whole test stops its process here,
            # inside the broker's enqueue: after every check the sweeper can make.
            _signal_once("enqueue", message_id=message.message_id)
        self.emit_before("enqueue", message, delay)
        enqueued = self.inner.enqueue(message, delay=delay)
        self.emit_after("enqueue", enqueued, delay)
        return enqueued

    def get_declared_queues(self) -> set[str]:
        return set(self.queues)

    def flush(self, queue_name: str) -> None:
        self.inner.flush(queue_name)

    def flush_all(self) -> None:
        self.inner.flush_all()

    def join(self, queue_name: str, *, timeout: int | None = None) -> None:
        self.inner.join(queue_name, timeout=timeout)


inner = RedisBroker(
    url=os.environ["TEST_BROKER_URL"],
    namespace=os.environ["TEST_BROKER_NAMESPACE"],
    heartbeat_timeout=DRAMATIQ_HEARTBEAT_TIMEOUT,
    middleware=[] if KIND == "outbox" else None,
)
broker: Broker
if KIND == "redis":
    broker = inner
elif KIND == "outbox":
    broker = WrappedRedisBroker(inner)
else:
    raise RuntimeError("unknown TEST_BROKER_KIND %r" % KIND)

broker.add_middleware(CurrentMessage())

tracker = tracker_from_environment(broker_identity=os.environ["TEST_BROKER_IDENTITY"])
broker.add_middleware(tracker)
dramatiq.set_broker(broker)

CLEANER_SECONDS = float(os.environ.get("TEST_CLEANER_SECONDS", "0"))
CLEANER_SIGNAL = os.environ.get("TEST_CLEANER_SIGNAL", "")
ENQUEUE_SIGNAL = os.environ.get("TEST_ENQUEUE_SIGNAL", "")


def _push(event: str, **fields: Any) -> None:
    report.rpush("%s:%s" % (REPORT_PREFIX, event), json.dumps({"pid": os.getpid(), "at": time.time(), **fields}))


def _signal_once(event: str, **fields: Any) -> None:
    """Report ``event``; the first time in the whole test, SIGSTOP this process right after."""
    _push(event, **fields)
    if report.set("%s:signalled" % REPORT_PREFIX, os.getpid(), nx=True, ex=600):
        os.kill(os.getpid(), signal.SIGSTOP)


def clean(orphan: Orphan) -> None:
    """The lock cleaner: reports its start, works CLEANER_SECONDS, reports its end."""
    _push("cleaner", phase="start", message_id=orphan.message_id, attempt=orphan.attempt)
    # The first cleaner call of the test, in whichever process makes it, may stop or kill its process.
    if CLEANER_SIGNAL and report.set("%s:signalled" % REPORT_PREFIX, os.getpid(), nx=True, ex=600):
        os.kill(os.getpid(), signal.SIGSTOP if CLEANER_SIGNAL == "stop" else signal.SIGKILL)
    time.sleep(CLEANER_SECONDS)
    _push("cleaner", phase="end", message_id=orphan.message_id, attempt=orphan.attempt)


tracker.add_lock_cleaner(clean)


@dramatiq.actor(queue_name=QUEUE, max_retries=0)
def hold(index: int, first_seconds: float, recovered_seconds: float) -> None:
    """Report this run's start, then work: ``first_seconds`` on a first delivery, ``recovered_seconds``
    on a copy the tracker delivered again."""
    message = CurrentMessage.get_current_message()
    assert message is not None
    recovered = "tracker_recoveries" in message.options
    _push(
        "runs",
        message_id=message.message_id,
        attempt=message.options.get("tracker_attempt", 0),
        recovered=recovered,
    )
    time.sleep(recovered_seconds if recovered else first_seconds)


@dramatiq.actor(queue_name=QUEUE, max_retries=0, unique=True)
def unique_hold(index: int, first_seconds: float, recovered_seconds: float) -> None:
    """``hold``, unique (``until_executed``): its lock is passed to its next attempt when it is recovered."""
    hold.fn(index, first_seconds, recovered_seconds)
