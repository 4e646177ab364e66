"""Poison messages: a message that kills its worker every time is quarantined after max_recoveries."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
import redis
from dramatiq.brokers.redis import RedisBroker
from dramatiq.message import Message

from dramatiq_tracker.ops.reads import InspectionStore

from .conftest import Namespaces, events
from .support import RABBITMQ_URL, WorkerProcess, close_redis_broker, keep_a_worker_alive, kinds, wait_for

pytestmark = pytest.mark.slow


def exhausted(client: redis.Redis, names: Namespaces) -> list[tuple[str, int, int]]:
    found = []
    for raw in client.lrange("%s:exhausted" % names.report, 0, -1):
        message_id, recoveries, limit = raw.decode().split("|")
        found.append((message_id, int(recoveries), int(limit)))
    return found


def test_a_message_that_kills_its_worker_runs_max_recoveries_plus_one_times_then_is_dead_lettered_on_redis(
    redis_url: str,
    redis_client: redis.Redis,
    namespaces: Namespaces,
    spawn_worker: Callable[..., WorkerProcess],
) -> None:
    store = InspectionStore(redis_client, namespaces.tracker)
    # Given a message that SIGKILLs its worker after half a second of work, allowed 2 recoveries
    producer = RedisBroker(url=redis_url, namespace=namespaces.broker)
    message = Message(
        queue_name=namespaces.queue,
        actor_name="suicide",
        args=(0.5,),
        kwargs={},
        options={"max_recoveries": 2},
    )
    message_id = producer.enqueue(message).message_id

    # When workers keep being restarted as each one dies
    workers = keep_a_worker_alive(
        lambda: spawn_worker(threads=1), lambda: bool(exhausted(redis_client, namespaces)), timeout=60
    )

    # Then it ran exactly three times, then went to the dead-letter queue instead
    runs = [e for e in events(redis_client, namespaces, "started") if e[0] == message_id]
    assert len(runs) == 3
    assert len(workers) == 4
    dead_letters = redis_client.zrange("%s:%s.XQ" % (namespaces.broker, namespaces.queue), 0, -1)
    assert len(dead_letters) == 1
    payload = redis_client.hget("%s:%s.XQ.msgs" % (namespaces.broker, namespaces.queue), dead_letters[0])
    assert Message.decode(payload).message_id == message_id
    assert redis_client.llen("%s:%s" % (namespaces.broker, namespaces.queue)) == 0
    # And the on_recovery_exhausted actor ran once, told how many recoveries there were
    wait_for(lambda: len(exhausted(redis_client, namespaces)) == 1, 5)
    time.sleep(0.5)
    assert exhausted(redis_client, namespaces) == [(message_id, 3, 2)]
    # And the stream tells the story
    assert kinds(store, message_id) == ["recovered", "recovered", "quarantined"]
    assert store.message_history(message_id)["recoveries"] == "3"
    close_redis_broker(producer)


def test_an_at_most_once_actor_is_never_run_again_after_a_crash(
    redis_url: str,
    redis_client: redis.Redis,
    namespaces: Namespaces,
    spawn_worker: Callable[..., WorkerProcess],
) -> None:
    # Given a message with max_recoveries=0 that kills its worker at once, before any background write
    producer = RedisBroker(url=redis_url, namespace=namespaces.broker)
    options = {"max_recoveries": 0}
    message_id = producer.enqueue(
        Message(queue_name=namespaces.queue, actor_name="suicide", args=(0,), kwargs={}, options=options)
    ).message_id

    # When workers keep being restarted
    def dead_lettered() -> bool:
        return redis_client.zcard("%s:%s.XQ" % (namespaces.broker, namespaces.queue)) == 1

    keep_a_worker_alive(lambda: spawn_worker(threads=1), dead_lettered, timeout=30)

    # Then it ran once: its start was recorded before it ran, so the crash was seen
    assert len([e for e in events(redis_client, namespaces, "started") if e[0] == message_id]) == 1
    close_redis_broker(producer)


@pytest.mark.rabbitmq
def test_a_message_that_kills_its_worker_is_dead_lettered_on_rabbitmq_after_max_recoveries(
    redis_client: redis.Redis,
    namespaces: Namespaces,
    spawn_worker: Callable[..., WorkerProcess],
    rabbitmq: object,
) -> None:
    store = InspectionStore(redis_client, namespaces.tracker)
    # Given workers whose default max_recoveries is 2, and a message that SIGKILLs its worker
    message = Message(queue_name=namespaces.queue, actor_name="suicide", args=(0.5,), kwargs={}, options={})
    message_id = rabbitmq.enqueue(message).message_id  # type: ignore[attr-defined]

    # When workers keep being restarted as each one dies
    keep_a_worker_alive(
        lambda: spawn_worker(kind="rabbitmq", threads=1, broker_url=RABBITMQ_URL, env={"TEST_MAX_RECOVERIES": "2"}),
        lambda: bool(exhausted(redis_client, namespaces)),
        timeout=60,
    )

    # Then RabbitMQ delivered it three times, then it went to its dead-letter queue, and the callback ran
    runs = [e for e in events(redis_client, namespaces, "started") if e[0] == message_id]
    assert len(runs) == 3
    channel = rabbitmq.channel  # type: ignore[attr-defined]
    wait_for(
        lambda: channel.queue_declare(namespaces.queue + ".XQ", passive=True).method.message_count == 1,
        5,
        message="dead-lettered",
    )
    time.sleep(0.5)
    assert exhausted(redis_client, namespaces) == [(message_id, 3, 2)]
    assert kinds(store, message_id) == ["recovered", "recovered", "quarantined"]
