"""A worker whose heartbeat stalls while its message keeps running: recovered once, then fenced."""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import signal
import time

import dramatiq
import pytest
import redis
from dramatiq.brokers.redis import RedisBroker
from dramatiq.message import Message

from dramatiq_tracker import TrackerMiddleware
from dramatiq_tracker.ops.reads import InspectionStore

from .conftest import Cluster
from .support import BOUND, FAST, RedisServer, close_redis_broker, kill, send, stream, wait_for

pytestmark = pytest.mark.slow

HAS_ABORT = importlib.util.find_spec("dramatiq_abort") is not None


@pytest.mark.parametrize(
    "abortable",
    [
        False,
        pytest.param(True, marks=[pytest.mark.abort, pytest.mark.skipif(not HAS_ABORT, reason="no dramatiq-abort")]),
    ],
    ids=["completes-as-a-zombie", "aborted-as-a-zombie"],
)
def test_a_worker_whose_heartbeat_stalls_is_fenced_and_its_late_completion_changes_nothing(
    redis_url: str, cluster: Cluster, abortable: bool
) -> None:
    env = {}
    if abortable:
        env = {"TEST_ABORTABLE": "1", "TEST_ABORT_NAMESPACE": "%s:aborts:" % cluster.names.broker}
    actor_name = "abortable_partitioned" if abortable else "partitioned"
    # Given a worker running a unique message for 4 s, whose heartbeat thread stalls for 2.5 s meanwhile
    # (it prefetches nothing more, so that the recovered copy goes to the live worker)
    zombie = cluster.spawn(threads=1, env={**env, "dramatiq_queue_prefetch": "1"})
    (victim,) = cluster.wait_registered(1)
    producer = RedisBroker(url=redis_url, namespace=cluster.names.broker)
    producer.add_middleware(TrackerMiddleware(client=producer.client, namespace=cluster.names.tracker, **FAST))
    actor = dramatiq.actor(
        lambda seconds, pause: None, broker=producer, actor_name=actor_name, queue_name=cluster.names.queue, unique=True
    )
    message: Message[None] = actor.send(4, 2.5)
    wait_for(lambda: len(cluster.reported("started")) == 1, 20, message="running")
    cluster.spawn(threads=1, env=env)
    survivor = cluster.wait_new_worker(victim)

    # When its heartbeat expires, the message is recovered once and starts again on the live worker
    cluster.wait_reported_by(survivor.pid, BOUND + 5, "the successor started")
    successor = next(w for w in [survivor] if message.message_id in cluster.store.inflight(w.worker_id))
    assert cluster.store.message_history(message.message_id)["recoveries"] == "1"

    # Then the stalled worker finds out when its heartbeat resumes, and its copy ends as a zombie's
    wait_for(lambda: "zombie-detected" in cluster.kinds(), 10, message="zombie detected")
    if abortable:
        wait_for(lambda: any(e[1] == victim.pid for e in cluster.reported("aborted")), 10)
        assert "zombie-aborted" in cluster.kinds(message.message_id)
    else:
        wait_for(lambda: any(e[1] == victim.pid for e in cluster.reported("done")), 10)
        wait_for(lambda: "zombie-completion" in cluster.kinds(message.message_id), 5, message="zombie completion")
    assert "declared dead while it was alive" in zombie.output()
    # And the successor's record and lock remain its own
    assert not any(e[1] == survivor.pid for e in cluster.reported("done"))
    assert message.message_id in cluster.store.inflight(successor.worker_id)
    (lock,) = cluster.store.locks()
    assert (lock.message_id, lock.attempt) == (message.message_id, 1)
    # And once the successor completes, the lock is released and the message was recovered once
    wait_for(lambda: any(e[1] == survivor.pid for e in cluster.reported("done")), 10)
    wait_for(lambda: cluster.store.locks() == [], 5, message="lock released")
    assert cluster.store.message_history(message.message_id)["recoveries"] == "1"
    assert cluster.kinds(message.message_id).count("recovered") == 1
    close_redis_broker(producer)


def test_a_worker_declared_dead_that_resumes_fetches_and_dies_unregistered_is_recovered_from_its_broker(
    cluster: Cluster, producer: RedisBroker, tracker_server: RedisServer
) -> None:
    tracker_client = redis.Redis(port=tracker_server.port)
    cluster = dataclasses.replace(cluster, store=InspectionStore(tracker_client, cluster.names.tracker))
    # Given an idle worker declared dead while stopped (its recovery done: it held nothing), and a survivor
    victim_process = cluster.spawn(threads=2, slow_seconds=60, tracker_url=tracker_server.url)
    (victim,) = cluster.wait_registered(1)
    survivor_process = cluster.spawn(threads=2, slow_seconds=60, tracker_url=tracker_server.url)
    survivor = cluster.wait_new_worker(victim)
    victim_pid, survivor_pid = victim_process.pid_of(victim), survivor_process.pid_of(survivor)
    os.kill(victim_pid, signal.SIGSTOP)
    wait_for(
        lambda: victim.worker_id in cluster.store.dead_workers() and victim.worker_id not in cluster.store.workers(),
        BOUND + 5,
        message="declared dead and recovered",
    )
    # When it resumes while the tracker's Redis does not answer, fetches two messages (the survivor
    # stopped meanwhile, so that it takes none), and is SIGKILLed before it could register again
    os.kill(survivor_pid, signal.SIGSTOP)
    try:
        ids = send(producer, cluster.names.queue, "slow", 2)
        acks = "%s:__acks__.%s.%s" % (cluster.names.broker, victim.broker_id, cluster.names.queue)
        pause = 3.0
        tracker_client.execute_command("CLIENT", "PAUSE", int(pause * 1000), "WRITE")
        paused_at = time.monotonic()
        os.kill(victim_pid, signal.SIGCONT)
        wait_for(lambda: cluster.client.scard(acks) == 2, pause / 2, message="the resumed worker fetched both")
        kill(victim_pid)
        assert time.monotonic() - paused_at < pause, "the worker may have registered again"
    finally:
        os.kill(survivor_pid, signal.SIGCONT)

    # Then the survivor finds what it fetched in its broker acks, where no registration pointed, and
    # starts both again once its heartbeat_timeout of silence on the broker has passed
    wait_for(lambda: sorted(cluster.reported_by(survivor.pid)) == sorted(ids), pause + BOUND + 5, message="recovered")
    assert cluster.client.scard(acks) == 0
    adopted = [e for e in stream(cluster.store) if e.kind == "worker-adopted" and e.worker_id == victim.worker_id]
    assert adopted and adopted[0].details["resumed"] == "1"
    tracker_client.close()
