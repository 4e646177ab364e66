"""The Dramatiq app that ``benchmarks/recovery.py`` runs in real ``dramatiq`` worker processes.

Not meant to be run by hand: everything comes from environment variables
that the benchmark sets, so that every run has namespaces and queues of its own.

- ``BENCH_BROKER_KIND``: "redis" (a RedisBroker) or "rabbitmq" (a RabbitmqBroker).
- ``BENCH_BROKER_URL``, ``BENCH_BROKER_NAMESPACE`` (RedisBroker only): the broker.
- ``BENCH_HOME_QUEUE``: the queue the actors are declared on (nothing is sent there: every
  victim has a queue of its own, and the messages name their actor, not a queue).
- ``BENCH_QUEUES``: more queues to consume, comma-separated, declared at import.
- ``BENCH_TRACKER_URL``, ``BENCH_TRACKER_NAMESPACE``: add a TrackerMiddleware with its DEFAULT
  timings and presence on; an empty namespace runs plain Dramatiq.
- ``BENCH_REPORT_URL``, ``BENCH_REPORT_PREFIX``: the Redis where the processes report what they do.
- ``BENCH_ROLE``: "victim", "peer" or "restart"; a peer also declares, at run time, the queues
  the benchmark pushes to ``<prefix>:declare``, so that it consumes a victim's queue only once the
  victim holds its messages (Dramatiq adds a consumer for a queue declared after boot).
- ``BENCH_SLOW_SECONDS``: how long ``slow`` sleeps in this process.

Reports (RPUSH, fields separated by ``|``), each naming the process by hostname, pid and a random
token (pids repeat across pid namespaces):

- ``<prefix>:boot``: role, hostname, pid, token, tracker worker id, sweeper token, time.
- ``<prefix>:started`` and ``<prefix>:done``: message id, hostname, pid, token, time.
- ``<prefix>:declared``: queue, token.
"""

from __future__ import annotations

import ctypes
import os
import socket
import threading
import time
import uuid
from typing import Any

import dramatiq
import redis
from dramatiq.middleware import CurrentMessage, Middleware

from dramatiq_tracker import TrackerMiddleware

KIND = os.environ["BENCH_BROKER_KIND"]
BROKER_URL = os.environ["BENCH_BROKER_URL"]
HOME_QUEUE = os.environ["BENCH_HOME_QUEUE"]
QUEUES = [name for name in os.environ.get("BENCH_QUEUES", "").split(",") if name]
TRACKER_NAMESPACE = os.environ.get("BENCH_TRACKER_NAMESPACE", "")
REPORT_PREFIX = os.environ["BENCH_REPORT_PREFIX"]
ROLE = os.environ["BENCH_ROLE"]
SLOW_SECONDS = float(os.environ.get("BENCH_SLOW_SECONDS", "3600"))

report = redis.Redis.from_url(os.environ["BENCH_REPORT_URL"])
_token: tuple[int, str] | None = None


def token() -> str:
    """A random name for this process, made in it (not in a parent that forked it)."""
    global _token
    if _token is None or _token[0] != os.getpid():
        _token = (os.getpid(), uuid.uuid4().hex[:10])
    return _token[1]


def whoami() -> str:
    return "%s|%d|%s" % (socket.gethostname(), os.getpid(), token())


broker: dramatiq.Broker
if KIND == "redis":
    from dramatiq.brokers.redis import RedisBroker

    # Dramatiq's defaults: heartbeat_timeout 60 s, maintenance_chance 1000 per million.
    broker = RedisBroker(url=BROKER_URL, namespace=os.environ["BENCH_BROKER_NAMESPACE"])
elif KIND == "rabbitmq":
    from dramatiq.brokers.rabbitmq import RabbitmqBroker

    broker = RabbitmqBroker(url=BROKER_URL)
else:
    raise RuntimeError("unknown BENCH_BROKER_KIND %r" % KIND)
broker.add_middleware(CurrentMessage())
tracker: TrackerMiddleware | None = None
if TRACKER_NAMESPACE:
    # The tracker's defaults: heartbeat_interval 5 s, heartbeat_timeout 15 s, sweep_interval 5 s,
    # presence on with a grace of 1 s.
    tracker = TrackerMiddleware(url=os.environ["BENCH_TRACKER_URL"], namespace=TRACKER_NAMESPACE)
    broker.add_middleware(tracker)


def sweeper_token() -> str:
    """The token this process's sweeper holds the sweep lease with (private: "" if it moved)."""
    sweeper = getattr(getattr(tracker, "_process", None), "sweeper", None)
    return str(getattr(sweeper, "token", ""))


class BootReport(Middleware):
    """Tell the benchmark who this worker process is once its consumers run; a peer then declares
    the queues it is told to."""

    def after_worker_boot(self, broker: dramatiq.Broker, worker: Any) -> None:
        worker_id = (tracker.worker_id if tracker is not None else None) or ""
        report.rpush(
            "%s:boot" % REPORT_PREFIX,
            "%s|%s|%s|%s|%f" % (ROLE, whoami(), worker_id, sweeper_token(), time.time()),
        )
        if ROLE == "peer":
            threading.Thread(target=declare_when_told, name="bench-declare", daemon=True).start()


def declare_when_told() -> None:
    while True:
        try:
            found = report.blpop(["%s:declare" % REPORT_PREFIX], timeout=1)
        except redis.RedisError:
            time.sleep(0.1)
            continue
        if found is not None:
            queue = found[1].decode()
            broker.declare_queue(queue)
            report.rpush("%s:declared" % REPORT_PREFIX, "%s|%s" % (queue, token()))


broker.add_middleware(BootReport())
dramatiq.set_broker(broker)
for name in QUEUES:
    broker.declare_queue(name)


def _report(event: str) -> None:
    message = CurrentMessage.get_current_message()
    assert message is not None
    report.rpush("%s:%s" % (REPORT_PREFIX, event), "%s|%s|%f" % (message.message_id, whoami(), time.time()))


@dramatiq.actor(queue_name=HOME_QUEUE, max_retries=0)
def slow(index: int) -> None:
    """The killed victim's messages: it sleeps for an hour, everyone else not at all."""
    _report("started")
    time.sleep(SLOW_SECONDS)
    _report("done")


@dramatiq.actor(queue_name=HOME_QUEUE, max_retries=0)
def held(limit: float) -> None:
    """Run until the benchmark releases the message (``<prefix>:release:<message id>``), or ``limit`` s.

    When the benchmark sets ``<prefix>:gil:<message id>`` to N, hold the GIL for N seconds, as a C
    call that never releases it: every thread of this process stops (the tracker's too) while its
    sockets stay open.
    """
    _report("started")
    message = CurrentMessage.get_current_message()
    assert message is not None
    release, gil = ("%s:%s:%s" % (REPORT_PREFIX, what, message.message_id) for what in ("release", "gil"))
    deadline = time.monotonic() + limit
    while not report.exists(release) and time.monotonic() < deadline:
        hold = report.getdel(gil)
        if hold is not None:
            ctypes.PyDLL(None).sleep(int(hold))
        time.sleep(0.05)
    _report("done")
