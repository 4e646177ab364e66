"""At-risk starts at their edges: a retry after a false death, twin put-off copies whose twin dies, and an
actor that forks a child that outlives its worker."""

from __future__ import annotations

import collections
import shutil
import time
from collections.abc import Callable

import pytest
import redis
from dramatiq.brokers.redis import RedisBroker
from dramatiq.message import Message

from dramatiq_tracker.ops.reads import InspectionStore
from dramatiq_tracker.records import InflightRecord

from .conftest import Namespaces, events
from .support import (
    BOUND,
    RABBITMQ_URL,
    WorkerProcess,
    can_isolate,
    kill,
    kinds,
    wait_for,
    wait_new_worker,
    wait_registered,
)
from .test_presence import PRESENCE_BOUND, PRESENCE_TIMINGS, dead_event, present, wait_settled

pytestmark = [pytest.mark.slow]

DEBUG = {"TEST_DEBUG": "1"}

needs_rabbitmq = [
    pytest.mark.rabbitmq,
    pytest.mark.skipif(not shutil.which("rabbitmqctl"), reason="needs rabbitmqctl"),
]


def enqueue(broker: object, queue: str, actor: str, *args: object, **options: object) -> str:
    message = Message(queue_name=queue, actor_name=actor, args=args, kwargs={}, options=options)
    return str(broker.enqueue(message).message_id)  # type: ignore[attr-defined]


@pytest.mark.rabbitmq
def test_a_retry_of_an_at_most_once_message_whose_worker_was_declared_dead_while_alive_runs(
    redis_client: redis.Redis,
    namespaces: Namespaces,
    spawn_worker: Callable[..., WorkerProcess],
    rabbitmq: object,
) -> None:
    store = InspectionStore(redis_client, namespaces.tracker)
    # Given two workers, and an at-most-once message retried by Dramatiq whose first try stalls its
    # worker's heartbeat past heartbeat_timeout (a sweeper declares it dead while it runs) and fails
    spawn_worker(kind="rabbitmq", threads=2, broker_url=RABBITMQ_URL)
    (first,) = wait_registered(store, 1)
    spawn_worker(kind="rabbitmq", threads=2, broker_url=RABBITMQ_URL)
    wait_new_worker(store, first)
    message_id = enqueue(rabbitmq, namespaces.queue, "stall_then_fail", 2.5)

    # Then its retry, a new attempt made by Dramatiq, runs: it is no orphan of the worker declared dead
    wait_for(lambda: events(redis_client, namespaces, "done"), 30, message="the retry done")
    assert [m for m, _, _ in events(redis_client, namespaces, "done")] == [message_id]
    assert len([m for m, _, _ in events(redis_client, namespaces, "started")]) == 2
    assert "quarantined" not in kinds(store, message_id)


@pytest.mark.rabbitmq
def test_twin_put_off_copies_whose_awaited_attempt_dies_run_once_between_them(
    redis_client: redis.Redis,
    namespaces: Namespaces,
    spawn_worker: Callable[..., WorkerProcess],
    rabbitmq: object,
) -> None:
    store = InspectionStore(redis_client, namespaces.tracker)
    # Given a worker running a message, and two copies of it put off behind its attempt (as a deferral
    # whose own ack was withheld on a connection close leaves them), waiting on two other workers
    victim_process = spawn_worker(kind="rabbitmq", threads=1, broker_url=RABBITMQ_URL, env=DEBUG)
    (victim,) = wait_registered(store, 1)
    message = Message(queue_name=namespaces.queue, actor_name="held", args=(120,), kwargs={}, options={})
    message_id = rabbitmq.enqueue(message).message_id  # type: ignore[attr-defined]
    raw = wait_for(lambda: store.inflight(victim.worker_id).get(message_id), 20, message="recorded")
    record = InflightRecord.from_json(raw, message_id=message_id, worker_id=victim.worker_id)
    for _ in range(2):
        copy = message.copy(options={"tracker_deferred_behind": record.attempt_id})
        rabbitmq.enqueue(copy)  # type: ignore[attr-defined]
    spawn_worker(kind="rabbitmq", threads=2, broker_url=RABBITMQ_URL, env=DEBUG)
    other = wait_new_worker(store, victim)
    spawn_worker(kind="rabbitmq", threads=2, broker_url=RABBITMQ_URL, env=DEBUG)
    wait_new_worker(store, victim, other)
    wait_for(lambda: kinds(store, message_id).count("duplicate-deferred") >= 2, 20, message="both put off")

    # When the running copy's worker dies: its own redelivery and both put-off copies come back
    kill(victim_process.pid_of(victim))

    # Then the message runs again once between them, not three times
    wait_for(lambda: len(events(redis_client, namespaces, "started")) >= 2, BOUND + 20, message="run again")
    time.sleep(3 * BOUND)
    counts = collections.Counter(m for m, _, _ in events(redis_client, namespaces, "started"))
    assert counts == {message_id: 2}, counts


@pytest.mark.skipif(not can_isolate(), reason="needs root and unshare, to run a worker as on another host")
def test_a_child_an_actor_forked_does_not_keep_its_dead_worker_present(
    redis_client: redis.Redis,
    namespaces: Namespaces,
    spawn_worker: Callable[..., WorkerProcess],
    producer: RedisBroker,
) -> None:
    store = InspectionStore(redis_client, namespaces.tracker)
    # Given a worker on another host running an actor that forked a child, which outlives it and sends
    # messages through the broker it inherited, and a survivor
    victim_process = spawn_worker(threads=2, env=PRESENCE_TIMINGS, isolation="host")
    (victim,) = wait_registered(store, 1)
    enqueue(producer, namespaces.queue, "fork_and_hold", 120)
    wait_for(lambda: redis_client.llen("%s:forked" % namespaces.report), 20, message="forked")
    wait_for(lambda: events(redis_client, namespaces, "started"), 20, message="running")
    spawn_worker(threads=2, env=PRESENCE_TIMINGS)
    survivor = wait_new_worker(store, victim)
    wait_for(lambda: present(store, victim) and present(store, survivor), 10, message="their presence seen")
    wait_settled(store)

    # When the worker process is SIGKILLed, its child running on
    killed = time.time()
    kill(victim_process.pid_of(victim))

    # Then it is known dead by its presence within the grace: the child holds no copy of its connection,
    # and its sends do not heartbeat for it
    wait_for(lambda: dead_event(store, victim.worker_id), PRESENCE_BOUND, message="declared dead")
    event = dead_event(store, victim.worker_id)
    assert event is not None and event.details["reason"] == "presence gone"
    assert event.at / 1000 - killed < PRESENCE_BOUND
    assert redis_client.llen("%s:%s_child" % (namespaces.broker, namespaces.queue)) > 0
