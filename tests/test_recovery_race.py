"""Many sweepers racing over one dead worker deliver each orphan exactly once."""

from __future__ import annotations

import collections
import threading

import pytest
import redis
from dramatiq.brokers.redis import RedisBroker
from dramatiq.message import Message

from dramatiq_tracker import Orphan, RecoveryReport, TrackerMiddleware
from dramatiq_tracker.ops.reads import InspectionStore

from .conftest import Cluster
from .support import FAST, kill, process_gone, send, wait_for

pytestmark = pytest.mark.slow

SWEEPERS = 5


def test_five_sweepers_racing_over_one_dead_workers_100_orphans_deliver_each_exactly_once(
    redis_url: str, cluster: Cluster, producer: RedisBroker
) -> None:
    # Given a worker process that fetched 100 messages (50 running, 50 prefetched) and was SIGKILLed
    cluster.spawn(threads=50, slow_seconds=120)
    (victim,) = cluster.wait_registered(1)
    ids = send(producer, cluster.names.queue, "slow", 100)
    wait_for(lambda: len(cluster.reported("started")) == 50, 30, message="50 running")
    wait_for(
        lambda: cluster.client.llen("%s:%s" % (cluster.names.broker, cluster.names.queue)) == 0, 10, message="fetched"
    )
    wait_for(lambda: len(cluster.store.inflight(victim.worker_id)) == 50, 5, message="50 records")
    kill(victim.pid)
    wait_for(lambda: process_gone(victim.pid), 5, message="victim gone")

    # When five sweepers, each with its own broker, tracker and connections, recover at the same moment
    cleaned: list[Orphan] = []
    barrier = threading.Barrier(SWEEPERS)
    reports: list[RecoveryReport] = []

    def sweep() -> None:
        client = redis.Redis.from_url(redis_url)
        broker = RedisBroker(client=client, namespace=cluster.names.broker)
        tracker = TrackerMiddleware(client=client, namespace=cluster.names.tracker, **FAST)
        broker.add_middleware(tracker)
        tracker.add_lock_cleaner(cleaned.append)
        broker.declare_queue(cluster.names.queue)
        barrier.wait()
        try:
            reports.append(tracker.recover())
        finally:
            client.close()

    threads = [threading.Thread(target=sweep) for _ in range(SWEEPERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)

    # Then every orphan is back on its queue exactly once, and reported once
    recovered = [orphan.message_id for report in reports for orphan in report.recovered]
    assert collections.Counter(recovered) == collections.Counter(ids)
    queued = cluster.client.lrange("%s:%s" % (cluster.names.broker, cluster.names.queue), 0, -1)
    assert len(queued) == 100 and len(set(queued)) == 100
    payloads = cluster.client.hmget("%s:%s.msgs" % (cluster.names.broker, cluster.names.queue), queued)
    assert sorted(Message.decode(p).message_id for p in payloads) == sorted(ids)
    assert (
        cluster.client.exists("%s:__acks__.%s.%s" % (cluster.names.broker, victim.broker_id, cluster.names.queue)) == 0
    )
    # And each running orphan went through the lock cleaners exactly once, counted as one recovery
    assert len(cleaned) == 50 and len({o.message_id for o in cleaned}) == 50
    assert all(o.running and o.recoveries == 1 for o in cleaned)
    for message_id in {o.message_id for o in cleaned}:
        assert cluster.store.message_history(message_id)["recoveries"] == "1"
    # And the dead worker is forgotten
    assert cluster.store.workers() == {}


def test_the_sweep_lease_lets_one_worker_per_broker_identity_sweep_per_interval(store: InspectionStore) -> None:
    # Given one sweeper holding the lease of its broker identity
    assert store.acquire_lease("app-a", "first", 500)
    # Then another cannot take it, while the holder renews it
    assert not store.acquire_lease("app-a", "second", 500)
    assert store.acquire_lease("app-a", "first", 500)
    # And a sweeper of another broker identity has a lease of its own
    assert store.acquire_lease("app-b", "other", 500)
    # And only the holder can give it back
    assert not store.release_lease("app-a", "second")
    assert store.release_lease("app-a", "first")
    assert store.acquire_lease("app-a", "second", 100)
    wait_for(lambda: store.acquire_lease("app-a", "third", 100), 2, message="the lease expires")
