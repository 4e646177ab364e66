"""The tracker's Redis goes away during a run: messages keep flowing, nothing is lost."""

from __future__ import annotations

import collections
import dataclasses
import time

import pytest
import redis
from dramatiq.brokers.redis import RedisBroker
from dramatiq.message import Message

from dramatiq_tracker.ops.reads import InspectionStore
from dramatiq_tracker.records import WorkerInfo

from .conftest import Cluster, Namespaces, booted_stub_broker
from .support import RedisServer, close_redis_broker, reads, wait_for

pytestmark = pytest.mark.slow

OUTAGE_WARNING = "Tracker Redis is unreachable"


def send_sleeps(broker: RedisBroker, queue: str, seconds: float, count: int) -> list[str]:
    return [
        broker.enqueue(Message(queue_name=queue, actor_name="sleep", args=(seconds,), kwargs={}, options={})).message_id
        for _ in range(count)
    ]


def test_a_ten_second_outage_of_the_trackers_redis_loses_nothing_and_is_logged_once(
    redis_url: str, cluster: Cluster, tracker_server: RedisServer
) -> None:
    # Given a worker whose tracker uses its own Redis, while the broker uses another
    worker = cluster.spawn(threads=4, tracker_url=tracker_server.url)
    producer = RedisBroker(url=redis_url, namespace=cluster.names.broker)
    tracker_client = redis.Redis(port=tracker_server.port)
    cluster = dataclasses.replace(cluster, store=InspectionStore(tracker_client, cluster.names.tracker))
    (info,) = wait_for(
        lambda: [WorkerInfo.from_json(r) for r in cluster.store.workers().values()], 20, message="registered"
    )
    ids = send_sleeps(producer, cluster.names.queue, 0.2, 20)

    # When the tracker's Redis stops for 10 seconds, with messages sent during the outage
    time.sleep(0.5)
    tracker_server.stop()
    outage_started = time.monotonic()
    ids += send_sleeps(producer, cluster.names.queue, 0.2, 20)
    time.sleep(7.5)
    # (these four are still running when the tracker's Redis comes back)
    long_running = send_sleeps(producer, cluster.names.queue, 4, 4)
    ids += long_running
    time.sleep(max(0.0, 10 - (time.monotonic() - outage_started)))
    tracker_server.start()

    # Then the worker registers again, under the same id, and records what it has in flight
    wait_for(lambda: info.worker_id in cluster.store.workers(), 5, message="registered again")
    wait_for(
        lambda: set(cluster.store.inflight(info.worker_id)) == set(long_running), 5, message="in flight re-recorded"
    )
    # And no message was lost or run twice, and the worker never crashed
    wait_for(lambda: len(cluster.reported("done")) >= len(ids), 30, message="all done")
    time.sleep(0.3)
    assert collections.Counter(mid for mid, _, _ in cluster.reported("done")) == collections.Counter(ids)
    assert worker.process.poll() is None
    wait_for(lambda: cluster.store.inflight(info.worker_id) == {}, 5, message="nothing left in flight")
    # And the outage was logged once, as a warning
    log = worker.output()
    assert log.count(OUTAGE_WARNING) == 1, log
    assert "[WARNING] " + OUTAGE_WARNING in log.replace("[dramatiq_tracker.health.ConnectionHealth] ", "")
    assert "Tracker Redis is reachable again" in log
    # And it still stops cleanly
    assert worker.terminate() == 0
    assert cluster.store.workers() == {}
    tracker_client.close()
    close_redis_broker(producer)


def test_a_worker_starts_and_works_while_the_trackers_redis_is_down_and_registers_when_it_is_back(
    namespaces: Namespaces, caplog: pytest.LogCaptureFixture
) -> None:
    import threading

    import dramatiq
    from dramatiq import Worker

    # Given a tracker whose Redis is not running yet
    server = RedisServer()
    broker, tracker = booted_stub_broker(server.url, namespaces.tracker)
    done = threading.Semaphore(0)
    gate = threading.Event()

    @dramatiq.actor(broker=broker, max_retries=0)
    def work(wait: bool) -> None:
        if wait:
            gate.wait(10)
        done.release()

    worker = Worker(broker, worker_threads=2, worker_timeout=50)
    try:
        # When a worker starts and processes messages
        worker.start()
        for _ in range(5):
            work.send(False)
        assert all(done.acquire(timeout=5) for _ in range(5))
        work.send(True)
        # Then it works, and registers with what it has in flight once Redis is up
        server.start()
        store = reads(tracker)
        worker_id = tracker.worker_id
        assert worker_id is not None
        wait_for(lambda: worker_id in store.workers(), 5, message="registered")
        wait_for(lambda: len(store.inflight(worker_id)) == 1, 5, message="in flight recorded")
        gate.set()
        assert done.acquire(timeout=5)
        wait_for(lambda: store.inflight(worker_id) == {}, 5, message="done")
        assert [r.getMessage() for r in caplog.records].count(
            next(r.getMessage() for r in caplog.records if OUTAGE_WARNING in r.getMessage())
        ) == 1
    finally:
        gate.set()
        worker.stop()
        broker.close()
        server.close()
