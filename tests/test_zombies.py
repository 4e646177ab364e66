"""A worker whose heartbeat stalls while its message keeps running: recovered once, then fenced."""

from __future__ import annotations

import importlib.util

import dramatiq
import pytest
from dramatiq.brokers.redis import RedisBroker
from dramatiq.message import Message

from dramatiq_tracker import TrackerMiddleware

from .conftest import Cluster
from .support import (
    BOUND,
    FAST,
    close_redis_broker,
    wait_for,
)

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
