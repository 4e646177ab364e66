"""What the inspection API says of a worker and of what it reads, told true: a worker whose presence
connection closed is dead before its heartbeat expires, one shutting down is stopping, one no sweep can
find says why; a field that does not hold what it should is reported, not read as 0; a lock says where
its owner runs; the recovery latency the workers count reads as a histogram.

The workers here are registered by hand (as tests/dashboard_seed.py does), and their presence is a real
Pub/Sub subscription of this test, on the channel a worker subscribes to."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator

import pytest
import redis
from dramatiq.brokers.redis import RedisBroker

from dramatiq_tracker.connection import delete_keys
from dramatiq_tracker.keys import identity_digest
from dramatiq_tracker.ops.inspection import ALIVE, GONE, STOPPING, UNRESPONSIVE, Inspector, Unswept
from dramatiq_tracker.ops.reads import InspectionStore
from dramatiq_tracker.ops.views import LATENCY_BOUNDS, PRESENCE_LOST

from .conftest import Cluster, Namespaces
from .dashboard_seed import BROKER_IDENTITY, LATENCY_COUNTERS, SeedRecord, register_worker
from .servers import RedisClusterServers
from .support import send, wait_for


@pytest.fixture
def inspector(redis_client: redis.Redis, namespaces: Namespaces) -> Iterator[Inspector]:
    with Inspector(client=redis_client, namespace=namespaces.tracker) as found:
        yield found


DIGEST = identity_digest(BROKER_IDENTITY)


def present(client: redis.Redis, store: InspectionStore, worker_id: str, beat: int) -> None:
    """List a worker as present, as a sweeper does once the server saw its presence."""
    client.hset(store.keys.present(DIGEST), worker_id, beat)


def test_a_worker_whose_presence_connection_closed_is_dead_before_its_heartbeat_expires(
    redis_url: str, redis_client: redis.Redis, store: InspectionStore, inspector: Inspector
) -> None:
    # Given a worker whose heartbeat lasts a minute, listed as present, with its channel subscribed
    now = store.server_time()
    register_worker(store, "w-present", [SeedRecord("m-1", "a", "q", now)])
    present(redis_client, store, "w-present", now)
    subscriber = redis.Redis.from_url(redis_url).pubsub()
    subscriber.subscribe(store.keys.presence_prefix + "w-present")
    try:
        wait_for(lambda: inspector.worker("w-present").state == ALIVE, 5, message="present")
        assert inspector.status().orphans == 0
    finally:
        # When its connection closes, as a killed process's does
        subscriber.close()

    # Then it is dead, not recovered yet, at once; its record is an orphan, waiting since its absence
    view = wait_for(lambda: (v := inspector.worker("w-present")).state == GONE and v, 5, message="gone")
    assert view.gone == PRESENCE_LOST and view.heartbeat_age is not None and view.overdue is None
    assert view.unhealthy().endswith(
        "is dead, not recovered yet: its presence connection to the tracker's Redis closed"
    )
    redis_client.hset(store.keys.absent(DIGEST), "w-present", "%d|%d" % (now - 4000, now))
    status = inspector.status()
    assert status.workers[GONE] == 1 and status.orphans == 1 and status.oldest_orphan >= 4000
    (orphan,) = inspector.orphans().items
    assert (orphan.worker_state, orphan.waiting_for >= 4000) == (GONE, True)
    # A worker not listed as present is judged by its heartbeat alone
    register_worker(store, "w-unlisted", [], alive=False)
    assert inspector.worker("w-unlisted").state == UNRESPONSIVE


def test_a_worker_shutting_down_is_stopping_not_alive_and_a_bad_stopping_time_is_reported(
    redis_client: redis.Redis, store: InspectionStore, inspector: Inspector
) -> None:
    # Given a registration that says its worker began a graceful shutdown (SIGTERM)
    now = store.server_time()
    register_worker(store, "w-stopping", [SeedRecord("m-1", "a", "q", now)])
    raw = json.loads(store.registration("w-stopping") or "")
    redis_client.hset(store.keys.workers, "w-stopping", json.dumps({**raw, "stopping_at": now - 2000}))

    # Then it is stopping: heartbeating, its message is no orphan, and a probe does not fail it
    view = inspector.worker("w-stopping")
    assert view is not None and (view.state, view.stopping_at, view.alive) == (STOPPING, now - 2000, True)
    status = inspector.status()
    assert (status.workers[STOPPING], status.workers[ALIVE], status.orphans) == (1, 0, 0)
    assert inspector.check(worker_id="w-stopping").healthy

    # A stopping time that is not one is reported, and read as not stopping
    redis_client.hset(store.keys.workers, "w-stopping", json.dumps({**raw, "stopping_at": "soon"}))
    page = inspector.workers()
    assert page.items[0].state == ALIVE
    (problem,) = page.problems
    assert (problem.field, problem.reason) == (
        "w-stopping",
        "field 'stopping_at' is not a time in ms: 'soon' (read as not stopping)",
    )


def test_a_real_worker_given_sigterm_is_stopping_until_it_is_gone(
    cluster: Cluster, inspector: Inspector, producer: RedisBroker
) -> None:
    # Given a worker running a message longer than its shutdown timeout (5 s)
    process = cluster.spawn(threads=1)
    (info,) = cluster.wait_registered(1)
    send(producer, cluster.names.queue, "slow", 1)
    wait_for(lambda: cluster.client.llen("%s:started" % cluster.names.report) == 1, 20, message="running")
    # When it is told to stop, as an orchestrator would
    sent = time.time()
    process.process.send_signal(signal.SIGTERM)
    # Then while it waits for its message it is stopping, since about then
    view = wait_for(
        lambda: (found := inspector.worker(info.worker_id)) is not None and found.state == STOPPING and found,
        5,
        message="stopping",
    )
    assert abs(view.stopping_at / 1000 - sent) < 3
    assert view.alive


def test_a_registration_no_sweep_can_find_says_so_and_its_orphans_are_not_called_unswept(
    redis_client: redis.Redis, store: InspectionStore, inspector: Inspector
) -> None:
    # Given a registration with a record but no heartbeat and no heartbeat deadline (written by hand)
    now = store.server_time()
    register_worker(store, "w-stranded", [SeedRecord("m-1", "a", "q", now)], alive=False)
    redis_client.zrem(store.keys.deadlines(DIGEST), "w-stranded")

    # Then its record is an orphan, and the status says why no sweep will ever take it
    status = inspector.status()
    assert status.orphans == 1 and status.unswept == []
    (problem,) = status.problems
    assert problem.key == store.keys.deadlines(DIGEST) and problem.field == "w-stranded"
    assert "no sweep finds it, and `recover` does not see it, so its 1 records wait for ever" in problem.reason
    assert inspector.worker("w-stranded").swept is False
    assert [p.field for p in inspector.orphans().problems] == ["w-stranded"]


def test_orphans_of_a_broker_no_live_worker_sweeps_are_named_with_their_workers(
    store: InspectionStore, inspector: Inspector
) -> None:
    now = store.server_time()
    register_worker(store, "w-dead", [SeedRecord("m-%d" % i, "a", "q", now) for i in range(3)], alive=False)
    assert inspector.status().unswept == [Unswept(BROKER_IDENTITY, ["w-dead"], 3)]
    # Once a live worker of the same broker runs, it sweeps them
    register_worker(store, "w-live", [])
    assert inspector.status().unswept == []


def test_fields_that_do_not_hold_a_number_are_reported_not_read_as_zero(
    redis_client: redis.Redis, store: InspectionStore, inspector: Inspector
) -> None:
    # Given a message history, a lock and a counter written by hand, with words where numbers go
    keys = store.keys
    redis_client.hset(keys.message("m-1"), mapping={"recoveries": "abc", "attempt": "2", "orphaned_at": "x"})
    store.acquire_lock("d-1", "m-1", 0, "until_executed", "charge", "q", "", None)
    redis_client.hset(keys.lock("d-1"), "acquired_at", "never")
    redis_client.hset(keys.counters, mapping={"recovered": "many", "quarantined": "2"})

    # Then each is reported where it was read, and shown as unknown
    view = inspector.message("m-1")
    assert view is not None and view.history is not None
    assert (view.history.recoveries, view.history.attempt, view.history.orphaned_at) == (0, 2, None)
    assert {(p.key, p.field) for p in view.problems} == {
        (keys.message("m-1"), "recoveries"),
        (keys.message("m-1"), "orphaned_at"),
    }
    assert "not a whole number: 'abc'" in next(p.reason for p in view.problems if p.field == "recoveries")
    page = inspector.locks()
    (lock,) = page.items
    assert lock.acquired_at == 0 and inspector.locks(older_than=1).items == []  # not "held 57 years"
    assert [(p.key, p.field) for p in page.problems] == [(keys.lock("d-1"), "acquired_at")]
    status = inspector.status()
    assert status.counters.of("recovered") == 0 and status.counters.of("quarantined") == 2
    assert (keys.counters, "recovered") in {(p.key, p.field) for p in status.problems}


def test_a_lock_says_where_its_owner_runs_though_it_was_taken_as_the_message_was_sent(
    redis_client: redis.Redis, store: InspectionStore, inspector: Inspector
) -> None:
    # Given an until_executed lock, taken by no worker, whose message now runs on a worker
    now = store.server_time()
    register_worker(store, "w-1", [SeedRecord("m-1", "a", "q", now, lock="d-1|until_executed")])
    store.acquire_lock("d-1", "m-1", 0, "until_executed", "a", "q", "", None)
    store.acquire_lock("d-2", "m-queued", 0, "until_executed", "a", "q", "", None)

    locks = {lock.digest: lock for lock in inspector.locks().items}
    assert (locks["d-1"].worker_id, locks["d-1"].running_on) == ("", "w-1")
    assert (locks["d-2"].worker_id, locks["d-2"].running_on) == ("", "")
    assert [lock.digest for lock in inspector.locks(owner="w-1").items] == ["d-1"]
    assert inspector.lock("d-1").running_on == "w-1"


def test_the_recovery_latency_reads_as_cumulative_buckets(
    redis_client: redis.Redis, store: InspectionStore, inspector: Inspector
) -> None:
    assert inspector.counters().latency_buckets() == [(b / 1000, 0) for b in LATENCY_BOUNDS] + [(float("inf"), 0)]
    redis_client.hset(store.keys.counters, mapping={**LATENCY_COUNTERS, "recovered": 8})
    counters = inspector.counters()
    buckets = dict(counters.latency_buckets())
    assert (buckets[0.25], buckets[0.5], buckets[2.0], buckets[3.0], buckets[120.0], buckets[float("inf")]) == (
        0,
        2,
        2,
        7,
        7,
        8,
    )
    assert (counters.recovery_latency_sum_ms, counters.recovery_latency_count) == (20_000, 8)
    # Its fields are no event kinds
    assert dict(counters.events) == {"recovered": 8}


def test_on_a_redis_cluster_a_workers_sharded_presence_is_counted_on_the_namespaces_node(
    redis_cluster: RedisClusterServers, namespaces: Namespaces
) -> None:
    # Given a tracker namespace on a Redis Cluster, and a worker present through a sharded subscription
    client = redis_cluster.client()
    store = InspectionStore(client, namespaces.tracker)
    try:
        now = store.server_time()
        register_worker(store, "w-present", [SeedRecord("m-1", "a", "q", now)])
        client.hset(store.keys.present(DIGEST), "w-present", now)
        subscriber = client.pubsub()
        subscriber.ssubscribe(store.keys.presence_prefix + "w-present")
        with Inspector(client=client, namespace=namespaces.tracker) as inspector:
            try:
                wait_for(lambda: inspector.worker("w-present").state == ALIVE, 10, message="present")
            finally:
                subscriber.close()
            # Then once the subscription closes, the worker is gone
            view = wait_for(lambda: (v := inspector.worker("w-present")).state == GONE and v, 10, message="gone")
            assert view.gone == PRESENCE_LOST
    finally:
        delete_keys(client, "{%s}:*" % namespaces.tracker)
        client.close()
