"""Decisions a guarantee rests on fail closed while the tracker's Redis does not answer: an at-most-once
message never runs twice, and a put-off redelivery never runs beside the copy it waits for.  Plain
messages keep running meanwhile (tests/test_outage.py)."""

from __future__ import annotations

import collections
import dataclasses
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from dramatiq_tracker.ops.reads import InspectionStore

from .conftest import CLOSES_RABBITMQ_CONNECTIONS, Cluster
from .support import (
    RedisServer,
    WorkerProcess,
    close_rabbitmq_connections,
    enqueue,
    kill,
    wait_for,
)

pytestmark = CLOSES_RABBITMQ_CONNECTIONS

#: A heartbeat_timeout shorter than the outage: live workers' heartbeats expire while Redis is paused.
TIMINGS = {
    "TEST_HEARTBEAT_INTERVAL": "1000",
    "TEST_HEARTBEAT_TIMEOUT": "3000",
    "TEST_SWEEP_INTERVAL": "1000",
    "TEST_FLUSH_INTERVAL": "20",
}
#: How long the tracker's Redis stops answering, in seconds: longer than heartbeat_timeout, and long
#: enough for a start to give up recording it (a heartbeat holding the recorder's lock times out after
#: the clients' 5 s socket timeout, then the start's own call does).
LONG_PAUSE = 14.0


@pytest.fixture
def tracker_redis() -> Iterator[RedisServer]:
    server = RedisServer().start()
    yield server
    server.close()


@pytest.fixture
def outage(cluster: Cluster, tracker_redis: RedisServer, rabbitmq: object) -> Cluster:
    """The test's cluster, its workers on RabbitMQ with :data:`TIMINGS`, their tracker on ``tracker_redis``."""

    def spawn(**options: Any) -> WorkerProcess:
        return cluster.spawn_rabbitmq(tracker_url=tracker_redis.url, env=TIMINGS, **options)

    store = InspectionStore(redis.Redis(port=tracker_redis.port), cluster.names.tracker)
    return dataclasses.replace(cluster, spawn=spawn, store=store)


def pause(server: RedisServer, seconds: float) -> float:
    """``CLIENT PAUSE``: the server stops answering every client, the connections stay open."""
    with redis.Redis(port=server.port) as admin:
        admin.execute_command("CLIENT", "PAUSE", int(seconds * 1000), "ALL")
    return time.monotonic() + seconds


def test_an_at_most_once_message_started_while_the_trackers_redis_is_paused_never_runs_twice(
    outage: Cluster, rabbitmq: object, tracker_redis: RedisServer
) -> None:
    # Given a worker, and its tracker's Redis paused
    worker = outage.spawn(threads=1)
    (info,) = outage.wait_registered(1)
    resumes = pause(tracker_redis, LONG_PAUSE)

    # When an at-most-once message is delivered during the pause, and the worker is SIGKILLed once it
    # gave up recording it (the clients' socket timeout, after a heartbeat that held the recorder's
    # lock timed out too), or once the pause nears its end
    message_id = enqueue(rabbitmq, outage.names.queue, "once", 0)
    wait_for(
        lambda: outage.reported("started") or time.monotonic() > resumes - 1,
        LONG_PAUSE,
        message="a start, or the end of the pause",
    )
    kill(worker.pid_of(info))
    outage.spawn(threads=1)
    wait_for(lambda: time.monotonic() > resumes, LONG_PAUSE + 1)

    # Then, once the tracker's Redis answers again, it runs once at most: it was not run blind
    successor = outage.wait_new_worker(info, timeout=30)
    wait_for(lambda: outage.reported("started"), 30, message="run once the outage is over")
    time.sleep(2)
    starts = outage.starts(message_id)
    assert starts == [successor.pid], starts


def test_a_put_off_redelivery_never_runs_beside_its_running_copy_across_an_outage(
    outage: Cluster, rabbitmq: object, tracker_redis: RedisServer
) -> None:
    # Given a worker running a long message (recorded), and a second worker
    first_process = outage.spawn(threads=1)
    (first,) = outage.wait_registered(1)
    message_id = enqueue(rabbitmq, outage.names.queue, "held", 120)
    wait_for(lambda: message_id in outage.store.inflight(first.worker_id), 20, message="recorded")
    outage.spawn(threads=1)
    second = outage.wait_new_worker(first)

    # When the tracker's Redis stops answering for longer than heartbeat_timeout, and the first worker's
    # RabbitMQ connection closes meanwhile: the server redelivers the message to the second worker
    resumes = pause(tracker_redis, LONG_PAUSE)
    assert close_rabbitmq_connections(first_process.pid_of(first)) >= 1
    wait_for(lambda: time.monotonic() > resumes, LONG_PAUSE + 1)

    # Then, during and after the outage, the redelivery is put off, never run beside the running copy
    wait_for(lambda: "duplicate-deferred" in outage.kinds(message_id), 30, message="put off")
    time.sleep(3 * 3)
    assert [pid for m, pid, _ in outage.reported("started")] == [first.pid]
    # And once the running copy completes, the put-off one is dropped: it ran once
    outage.release(message_id)
    wait_for(lambda: "duplicate-dropped" in outage.kinds(message_id), 30, message="dropped")
    counts = collections.Counter(m for m, _, _ in outage.reported("started"))
    assert counts == {message_id: 1}
    assert second.worker_id in outage.store.workers()
