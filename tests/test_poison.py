"""Poison messages: a message that kills its worker every time is quarantined after max_recoveries."""

from __future__ import annotations

import time

import pytest
import redis
from dramatiq.brokers.redis import RedisBroker
from dramatiq.message import Message

from .conftest import Cluster, Namespaces
from .support import BOUND, WORKER_BOOT, close_redis_broker, keep_a_worker_alive, wait_for

pytestmark = pytest.mark.slow


def exhausted(client: redis.Redis, names: Namespaces) -> list[tuple[str, int, int]]:
    found = []
    for raw in client.lrange("%s:exhausted" % names.report, 0, -1):
        message_id, recoveries, limit = raw.decode().split("|")
        found.append((message_id, int(recoveries), int(limit)))
    return found


def test_a_message_that_kills_its_worker_runs_max_recoveries_plus_one_times_then_is_dead_lettered_on_redis(
    redis_url: str, cluster: Cluster
) -> None:
    # Given a message that SIGKILLs its worker after half a second of work, allowed 2 recoveries
    producer = RedisBroker(url=redis_url, namespace=cluster.names.broker)
    message = Message(
        queue_name=cluster.names.queue,
        actor_name="suicide",
        args=(0.5,),
        kwargs={},
        options={"max_recoveries": 2},
    )
    message_id = producer.enqueue(message).message_id

    # When workers keep being restarted as each one dies
    workers = keep_a_worker_alive(
        lambda: cluster.spawn(threads=1),
        lambda: bool(exhausted(cluster.client, cluster.names)),
        per_worker=WORKER_BOOT + BOUND + 5,
    )

    # Then it ran exactly three times, then went to the dead-letter queue instead
    runs = [e for e in cluster.reported("started") if e[0] == message_id]
    assert len(runs) == 3
    assert len(workers) == 4
    dead_letters = cluster.client.zrange("%s:%s.XQ" % (cluster.names.broker, cluster.names.queue), 0, -1)
    assert len(dead_letters) == 1
    payload = cluster.client.hget("%s:%s.XQ.msgs" % (cluster.names.broker, cluster.names.queue), dead_letters[0])
    assert Message.decode(payload).message_id == message_id
    assert cluster.client.llen("%s:%s" % (cluster.names.broker, cluster.names.queue)) == 0
    # And the on_recovery_exhausted actor ran once, told how many recoveries there were
    wait_for(lambda: len(exhausted(cluster.client, cluster.names)) == 1, 5)
    time.sleep(0.5)
    assert exhausted(cluster.client, cluster.names) == [(message_id, 3, 2)]
    # And the stream tells the story
    assert cluster.kinds(message_id) == ["recovered", "recovered", "quarantined"]
    assert cluster.store.message_history(message_id)["recoveries"] == "3"
    close_redis_broker(producer)


def test_an_at_most_once_actor_is_never_run_again_after_a_crash(redis_url: str, cluster: Cluster) -> None:
    # Given a message with max_recoveries=0 that kills its worker at once, before any background write
    producer = RedisBroker(url=redis_url, namespace=cluster.names.broker)
    options = {"max_recoveries": 0}
    message_id = producer.enqueue(
        Message(queue_name=cluster.names.queue, actor_name="suicide", args=(0,), kwargs={}, options=options)
    ).message_id

    # When workers keep being restarted
    def dead_lettered() -> bool:
        return cluster.client.zcard("%s:%s.XQ" % (cluster.names.broker, cluster.names.queue)) == 1

    keep_a_worker_alive(lambda: cluster.spawn(threads=1), dead_lettered, per_worker=WORKER_BOOT + BOUND + 5)

    # Then it ran once: its start was recorded before it ran, so the crash was seen
    assert len([e for e in cluster.reported("started") if e[0] == message_id]) == 1
    close_redis_broker(producer)


@pytest.mark.rabbitmq
def test_a_message_that_kills_its_worker_is_dead_lettered_on_rabbitmq_after_max_recoveries(
    cluster: Cluster, rabbitmq: object
) -> None:
    # Given workers whose default max_recoveries is 2, and a message that SIGKILLs its worker
    message = Message(queue_name=cluster.names.queue, actor_name="suicide", args=(0.5,), kwargs={}, options={})
    message_id = rabbitmq.enqueue(message).message_id  # type: ignore[attr-defined]

    # When workers keep being restarted as each one dies
    keep_a_worker_alive(
        lambda: cluster.spawn_rabbitmq(threads=1, env={"TEST_MAX_RECOVERIES": "2"}),
        lambda: bool(exhausted(cluster.client, cluster.names)),
        per_worker=WORKER_BOOT + BOUND + 5,
    )

    # Then RabbitMQ delivered it three times, then it went to its dead-letter queue, and the callback ran
    runs = [e for e in cluster.reported("started") if e[0] == message_id]
    assert len(runs) == 3
    channel = rabbitmq.channel  # type: ignore[attr-defined]
    wait_for(
        lambda: channel.queue_declare(cluster.names.queue + ".XQ", passive=True).method.message_count == 1,
        5,
        message="dead-lettered",
    )
    time.sleep(0.5)
    assert exhausted(cluster.client, cluster.names) == [(message_id, 3, 2)]
    assert cluster.kinds(message_id) == ["recovered", "recovered", "quarantined"]
