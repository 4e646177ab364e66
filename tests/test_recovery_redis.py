"""Orphan recovery on a real RedisBroker, with real ``dramatiq`` worker processes killed with SIGKILL."""

from __future__ import annotations

import collections
import os
import signal
import time

import pytest
from dramatiq.brokers.redis import MAINTENANCE_SCALE, RedisBroker
from dramatiq.message import Message

from dramatiq_tracker.brokers import withhold_ack
from dramatiq_tracker.keys import identity_digest
from dramatiq_tracker.records import WorkerInfo

from .conftest import Cluster
from .support import (
    BOUND,
    close_redis_broker,
    kill,
    send,
    wait_for,
)

pytestmark = pytest.mark.slow


def start_victim(
    cluster: Cluster, producer: RedisBroker, *, threads: int, messages: int
) -> tuple[WorkerInfo, list[str]]:
    """A worker process running ``threads`` slow messages with the rest of ``messages`` prefetched."""
    cluster.spawn(threads=threads, slow_seconds=120)
    (victim,) = cluster.wait_registered(1)
    ids = send(producer, cluster.names.queue, "slow", messages)
    wait_for(lambda: len(cluster.reported("started")) == threads, 20, message="victim busy")
    # Everything is fetched: running or prefetched, nothing left in the queue.
    wait_for(
        lambda: cluster.client.llen("%s:%s" % (cluster.names.broker, cluster.names.queue)) == 0,
        10,
        message="all fetched",
    )
    wait_for(lambda: len(cluster.store.inflight(victim.worker_id)) == threads, 5, message="records written")
    return victim, ids


def test_a_killed_workers_orphans_are_delivered_again_exactly_once_by_a_live_worker(
    redis_url: str, cluster: Cluster, producer: RedisBroker
) -> None:
    # Given a worker process running 10 slow messages with 10 more prefetched
    victim, ids = start_victim(cluster, producer, threads=10, messages=20)
    assert len(cluster.store.inflight(victim.worker_id)) == 10
    # And a second worker process that stays alive
    survivor_process = cluster.spawn(threads=20, slow_seconds=0.1)
    survivor = cluster.wait_new_worker(victim)

    # When the first one is SIGKILLed
    killed_at = time.time()
    kill(victim.pid)

    # Then the survivor starts every one of the 20 again, each exactly once, within the bound
    wait_for(lambda: len(cluster.reported("started", survivor.pid)) >= 20, BOUND + 5, message="20 redeliveries")
    restarts = cluster.reported("started", survivor.pid)
    assert collections.Counter(mid for mid, _, _ in restarts) == collections.Counter(ids)
    latest = max(at for _, _, at in restarts) - killed_at
    assert latest <= BOUND, "the last orphan started %.2f s after the kill" % latest

    # And once they are done, Dramatiq's own maintenance finds nothing left to requeue
    wait_for(lambda: len(cluster.reported("done")) == 20, 20, message="20 done")
    assert (
        cluster.client.exists("%s:__acks__.%s.%s" % (cluster.names.broker, victim.broker_id, cluster.names.queue)) == 0
    )
    survivor_process.terminate()
    maintenance = RedisBroker(
        url=redis_url, namespace=cluster.names.broker, heartbeat_timeout=1, maintenance_chance=MAINTENANCE_SCALE
    )
    for queue in (cluster.names.queue, cluster.names.queue + ".DQ"):
        maintenance.do_qsize(queue)
    close_redis_broker(maintenance)
    assert cluster.client.llen("%s:%s" % (cluster.names.broker, cluster.names.queue)) == 0
    assert len(cluster.reported("started")) == 30
    # And the dead worker is forgotten, but for its tombstone
    assert victim.worker_id not in cluster.store.workers()
    assert victim.worker_id in cluster.store.dead_workers()
    assert cluster.store.inflight(victim.worker_id) == {}


def test_a_stalled_workers_orphans_are_recovered_when_its_heartbeat_expires(
    cluster: Cluster, producer: RedisBroker
) -> None:
    # Given a worker running 3 slow messages, and a live one
    victim, ids = start_victim(cluster, producer, threads=3, messages=3)
    cluster.spawn(threads=4, slow_seconds=0.1)
    survivor = cluster.wait_new_worker(victim)

    # When the first one freezes, as a partitioned host or a frozen VM would: its process still exists
    stopped_at = time.time()
    os.kill(victim.pid, signal.SIGSTOP)
    try:
        # Then its heartbeat expires and its messages start again on the live worker within the bound
        wait_for(
            lambda: {e[0] for e in cluster.reported("started") if e[1] == survivor.pid} == set(ids),
            BOUND + 5,
            message="3 redeliveries",
        )
        restarted = cluster.reported("started", survivor.pid)
        assert len(restarted) == 3
        assert max(at for _, _, at in restarted) - stopped_at <= BOUND
        assert victim.worker_id in cluster.store.dead_workers()
    finally:
        kill(victim.pid)


def test_a_restarted_worker_recovers_the_dead_processs_orphans_within_a_second_of_booting(
    cluster: Cluster, producer: RedisBroker
) -> None:
    # Given a worker with a long heartbeat timeout, running 4 messages with 4 prefetched, SIGKILLed
    slow_expiry = {
        "TEST_HEARTBEAT_INTERVAL": "10000",
        "TEST_HEARTBEAT_TIMEOUT": "60000",
        "TEST_SWEEP_INTERVAL": "30000",
    }
    cluster.spawn(threads=4, slow_seconds=120, env=slow_expiry)
    (victim,) = cluster.wait_registered(1)
    ids = send(producer, cluster.names.queue, "slow", 8)
    wait_for(lambda: len(cluster.reported("started")) == 4, 20, message="victim busy")
    wait_for(lambda: len(cluster.store.inflight(victim.worker_id)) == 4, 5, message="records written")
    kill(victim.pid)

    # When a worker restarts on this host, long before the dead one's heartbeat expires
    cluster.spawn(threads=8, slow_seconds=0.1, env=slow_expiry)
    survivor = cluster.wait_new_worker(victim)

    # Then it delivers all 8 again within a second of booting
    wait_for(
        lambda: len(cluster.reported("started", survivor.pid)) >= 8,
        10,
        message="8 redeliveries",
    )
    restarted = cluster.reported("started", survivor.pid)
    assert sorted(mid for mid, _, _ in restarted) == sorted(ids)
    booted = survivor.started_at / 1000
    assert max(at for _, _, at in restarted) - booted <= 1.0


def test_a_gracefully_stopped_worker_leaves_no_orphans_and_no_registration(
    cluster: Cluster, producer: RedisBroker
) -> None:
    # Given a worker processing short messages, with more waiting
    worker = cluster.spawn(threads=2, slow_seconds=0.3)
    (info,) = cluster.wait_registered(1)
    send(producer, cluster.names.queue, "slow", 6)
    wait_for(lambda: len(cluster.reported("started")) >= 2, 20, message="busy")

    # When it is stopped with SIGTERM
    assert worker.terminate() == 0

    # Then it deregistered and left nothing that looks like an orphan
    assert cluster.store.workers() == {}
    assert cluster.store.inflight(info.worker_id) == {}
    assert info.worker_id not in cluster.store.dead_workers()
    assert cluster.client.exists(cluster.store.keys.heartbeat(info.worker_id)) == 0
    assert cluster.store.deadlines(identity_digest(info.broker_identity)) == {}
    # And its note beside the broker's keys is gone too
    assert not cluster.client.hexists(
        "%s:__tracker__.%s" % (cluster.names.broker, cluster.names.tracker), info.broker_id
    )
    assert not list(cluster.client.scan_iter(match="%s:__acks__.%s.*" % (cluster.names.broker, info.broker_id)))
    started = cluster.reported("started")
    done = cluster.reported("done")
    assert sorted(e[0] for e in started) == sorted(e[0] for e in done)


def test_a_withheld_ack_leaves_the_message_in_the_acks_set_for_the_recovery_that_moves_it(
    redis_broker: RedisBroker, cluster: Cluster
) -> None:
    # Given a message a RedisBroker consumer fetched (in its acks set, its payload stored)
    redis_broker.declare_queue(cluster.names.queue)
    sent = redis_broker.enqueue(Message(queue_name=cluster.names.queue, actor_name="a", args=(), kwargs={}, options={}))
    consumer = redis_broker.consume(cluster.names.queue, prefetch=1, timeout=1000)
    try:
        fetched = wait_for(lambda: next(consumer), 5, message="the message fetched")
        redis_message_id = fetched.options["redis_message_id"]
        acks = "%s:__acks__.%s.%s" % (cluster.names.broker, redis_broker.broker_id, cluster.names.queue)
        payloads = "%s:%s.msgs" % (cluster.names.broker, cluster.names.queue)
        assert cluster.client.sismember(acks, redis_message_id)
        # When a worker declared dead skips it as a stale copy: its ack is withheld, then Dramatiq acks it
        withhold_ack(fetched)
        consumer.ack(fetched)
        # Then the id is still in the acks set, and its payload stored: the recovery moves it from there
        assert cluster.client.sismember(acks, redis_message_id)
        assert cluster.client.hexists(payloads, redis_message_id)
        assert fetched.message_id == sent.message_id
    finally:
        consumer.close()
