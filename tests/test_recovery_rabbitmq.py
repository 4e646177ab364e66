"""Orphan recovery on a real RabbitMQ: the server's redelivery is the only delivery."""

from __future__ import annotations

import collections
import time

import pytest
from dramatiq.message import Message

from .conftest import Cluster
from .support import BOUND, RABBITMQ_URL, kill, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.rabbitmq]


def test_a_killed_workers_messages_come_back_once_from_rabbitmq_and_are_accounted_for(
    cluster: Cluster, rabbitmq: object
) -> None:
    # Given a worker process running 10 slow messages with 10 more prefetched from RabbitMQ
    cluster.spawn(kind="rabbitmq", threads=10, slow_seconds=120, broker_url=RABBITMQ_URL)
    (victim,) = cluster.wait_registered(1)
    ids = []
    for index in range(20):
        message = Message(queue_name=cluster.names.queue, actor_name="slow", args=(index,), kwargs={}, options={})
        ids.append(rabbitmq.enqueue(message).message_id)  # type: ignore[attr-defined]
    wait_for(lambda: len(cluster.reported("started")) == 10, 30, message="victim busy")
    wait_for(lambda: len(cluster.store.inflight(victim.worker_id)) == 10, 5, message="records written")
    running = {mid for mid, _, _ in cluster.reported("started")}
    # And a second worker process that stays alive
    cluster.spawn(kind="rabbitmq", threads=20, slow_seconds=0.1, broker_url=RABBITMQ_URL)
    survivor = cluster.wait_new_worker(victim)

    # When the first one is SIGKILLed
    killed_at = time.time()
    kill(victim.pid)

    # Then RabbitMQ delivers each of the 20 again to the survivor, once
    wait_for(lambda: len(cluster.reported("started", survivor.pid)) >= 20, BOUND + 10, message="20 redeliveries")
    assert max(at for _, _, at in cluster.reported("started", survivor.pid)) - killed_at <= BOUND
    # And the tracker never publishes a copy: nothing else starts after a full recovery cycle
    time.sleep(BOUND)
    assert collections.Counter(cluster.reported_by(survivor.pid)) == collections.Counter(ids)
    assert len(cluster.reported("started")) == 30

    # And the recoveries of the 10 that were running are counted, once each
    wait_for(lambda: victim.worker_id not in cluster.store.workers(), 10, message="dead worker forgotten")
    assert victim.worker_id in cluster.store.dead_workers()
    for message_id in ids:
        history = cluster.store.message_history(message_id)
        expected = "1" if message_id in running else None
        assert history.get("recoveries") == expected, (message_id, history)
        assert "awaiting_from" not in history
