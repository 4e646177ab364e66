"""At-risk starts at their edges: a retry after a false death, twin put-off copies whose twin dies, and an
actor that forks a child that outlives its worker."""

from __future__ import annotations

import collections
import shutil
import time

import pytest
from dramatiq.brokers.redis import RedisBroker
from dramatiq.message import Message

from dramatiq_tracker.records import InflightRecord

from .conftest import Cluster
from .support import (
    BOUND,
    can_isolate,
    enqueue,
    kill,
    wait_for,
)
from .test_presence import PRESENCE_BOUND, PRESENCE_TIMINGS, dead_event, present, wait_settled

pytestmark = [pytest.mark.slow]

DEBUG = {"TEST_DEBUG": "1"}

needs_rabbitmq = [
    pytest.mark.rabbitmq,
    pytest.mark.skipif(not shutil.which("rabbitmqctl"), reason="needs rabbitmqctl"),
]


@pytest.mark.rabbitmq
def test_a_retry_of_an_at_most_once_message_whose_worker_was_declared_dead_while_alive_runs(
    cluster: Cluster, rabbitmq: object
) -> None:
    # Given two workers, and an at-most-once message retried by Dramatiq whose first try stalls its
    # worker's heartbeat past heartbeat_timeout (a sweeper declares it dead while it runs) and fails
    cluster.spawn_rabbitmq(threads=2)
    (first,) = cluster.wait_registered(1)
    cluster.spawn_rabbitmq(threads=2)
    cluster.wait_new_worker(first)
    message_id = enqueue(rabbitmq, cluster.names.queue, "stall_then_fail", 2.5)

    # Then its retry, a new attempt made by Dramatiq, runs: it is no orphan of the worker declared dead
    wait_for(lambda: cluster.reported("done"), 30, message="the retry done")
    assert [m for m, _, _ in cluster.reported("done")] == [message_id]
    assert len([m for m, _, _ in cluster.reported("started")]) == 2
    assert "quarantined" not in cluster.kinds(message_id)


@pytest.mark.rabbitmq
def test_twin_put_off_copies_whose_awaited_attempt_dies_run_once_between_them(
    cluster: Cluster, rabbitmq: object
) -> None:
    # Given a worker running a message, and two copies of it put off behind its attempt (as a deferral
    # whose own ack was withheld on a connection close leaves them), waiting on two other workers
    victim_process = cluster.spawn_rabbitmq(threads=1, env=DEBUG)
    (victim,) = cluster.wait_registered(1)
    message = Message(queue_name=cluster.names.queue, actor_name="held", args=(120,), kwargs={}, options={})
    message_id = rabbitmq.enqueue(message).message_id  # type: ignore[attr-defined]
    raw = wait_for(lambda: cluster.store.inflight(victim.worker_id).get(message_id), 20, message="recorded")
    record = InflightRecord.from_json(raw, message_id=message_id, worker_id=victim.worker_id)
    for _ in range(2):
        copy = message.copy(options={"tracker_deferred_behind": record.attempt_id})
        rabbitmq.enqueue(copy)  # type: ignore[attr-defined]
    cluster.spawn_rabbitmq(threads=2, env=DEBUG)
    other = cluster.wait_new_worker(victim)
    cluster.spawn_rabbitmq(threads=2, env=DEBUG)
    cluster.wait_new_worker(victim, other)
    wait_for(lambda: cluster.kinds(message_id).count("duplicate-deferred") >= 2, 20, message="both put off")

    # When the running copy's worker dies: its own redelivery and both put-off copies come back
    kill(victim_process.pid_of(victim))

    # Then the message runs again once between them, not three times
    wait_for(lambda: len(cluster.reported("started")) >= 2, BOUND + 20, message="run again")
    time.sleep(3 * BOUND)
    counts = collections.Counter(m for m, _, _ in cluster.reported("started"))
    assert counts == {message_id: 2}, counts


@pytest.mark.skipif(not can_isolate(), reason="needs root and unshare, to run a worker as on another host")
def test_a_child_an_actor_forked_does_not_keep_its_dead_worker_present(cluster: Cluster, producer: RedisBroker) -> None:
    # Given a worker on another host running an actor that forked a child, which outlives it and sends
    # messages through the broker it inherited, and a survivor
    victim_process = cluster.spawn(threads=2, env=PRESENCE_TIMINGS, isolation="host")
    (victim,) = cluster.wait_registered(1)
    enqueue(producer, cluster.names.queue, "fork_and_hold", 120)
    wait_for(lambda: cluster.client.llen("%s:forked" % cluster.names.report), 20, message="forked")
    wait_for(lambda: cluster.reported("started"), 20, message="running")
    cluster.spawn(threads=2, env=PRESENCE_TIMINGS)
    survivor = cluster.wait_new_worker(victim)
    wait_for(
        lambda: present(cluster.store, victim) and present(cluster.store, survivor), 10, message="their presence seen"
    )
    wait_settled(cluster.store)

    # When the worker process is SIGKILLed, its child running on
    killed = time.time()
    kill(victim_process.pid_of(victim))

    # Then it is known dead by its presence within the grace: the child holds no copy of its connection,
    # and its sends do not heartbeat for it
    wait_for(lambda: dead_event(cluster.store, victim.worker_id), PRESENCE_BOUND, message="declared dead")
    event = dead_event(cluster.store, victim.worker_id)
    assert event is not None and event.details["reason"] == "presence gone"
    assert event.at / 1000 - killed < PRESENCE_BOUND
    assert cluster.client.llen("%s:%s_child" % (cluster.names.broker, cluster.names.queue)) > 0
