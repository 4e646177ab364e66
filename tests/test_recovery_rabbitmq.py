"""Orphan recovery on a real RabbitMQ: the server's redelivery is the only delivery."""

from __future__ import annotations

import collections
import time
from collections.abc import Callable

import pytest
import redis
from dramatiq.message import Message

from dramatiq_tracker.ops.reads import InspectionStore

from .conftest import Namespaces, events
from .support import BOUND, RABBITMQ_URL, WorkerProcess, kill, wait_for, wait_new_worker, wait_registered

pytestmark = [pytest.mark.slow, pytest.mark.rabbitmq]


def test_a_killed_workers_messages_come_back_once_from_rabbitmq_and_are_accounted_for(
    redis_client: redis.Redis,
    namespaces: Namespaces,
    spawn_worker: Callable[..., WorkerProcess],
    rabbitmq: object,
) -> None:
    store = InspectionStore(redis_client, namespaces.tracker)
    # Given a worker process running 10 slow messages with 10 more prefetched from RabbitMQ
    spawn_worker(kind="rabbitmq", threads=10, slow_seconds=120, broker_url=RABBITMQ_URL)
    (victim,) = wait_registered(store, 1)
    ids = []
    for index in range(20):
        message = Message(queue_name=namespaces.queue, actor_name="slow", args=(index,), kwargs={}, options={})
        ids.append(rabbitmq.enqueue(message).message_id)  # type: ignore[attr-defined]
    wait_for(lambda: len(events(redis_client, namespaces, "started")) == 10, 30, message="victim busy")
    wait_for(lambda: len(store.inflight(victim.worker_id)) == 10, 5, message="records written")
    running = {mid for mid, _, _ in events(redis_client, namespaces, "started")}
    # And a second worker process that stays alive
    spawn_worker(kind="rabbitmq", threads=20, slow_seconds=0.1, broker_url=RABBITMQ_URL)
    survivor = wait_new_worker(store, victim)

    # When the first one is SIGKILLed
    killed_at = time.time()
    kill(victim.pid)

    # Then RabbitMQ delivers each of the 20 again to the survivor, once
    def on_survivor() -> list[tuple[str, int, float]]:
        return [e for e in events(redis_client, namespaces, "started") if e[1] == survivor.pid]

    wait_for(lambda: len(on_survivor()) >= 20, BOUND + 10, message="20 redeliveries")
    assert max(at for _, _, at in on_survivor()) - killed_at <= BOUND
    # And the tracker never publishes a copy: nothing else starts after a full recovery cycle
    time.sleep(BOUND)
    assert collections.Counter(mid for mid, _, _ in on_survivor()) == collections.Counter(ids)
    assert len(events(redis_client, namespaces, "started")) == 30

    # And the recoveries of the 10 that were running are counted, once each
    wait_for(lambda: victim.worker_id not in store.workers(), 10, message="dead worker forgotten")
    assert victim.worker_id in store.dead_workers()
    for message_id in ids:
        history = store.message_history(message_id)
        expected = "1" if message_id in running else None
        assert history.get("recoveries") == expected, (message_id, history)
        assert "awaiting_from" not in history
