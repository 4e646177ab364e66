"""Orphan recovery on a real RabbitMQ: the server's redelivery is the only delivery."""

from __future__ import annotations

import collections
import time

import pytest
import redis
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from dramatiq.message import Message

from dramatiq_tracker import Orphan, TrackerMiddleware
from dramatiq_tracker.host import HostFacts
from dramatiq_tracker.records import InflightRecord, WorkerInfo

from .conftest import Cluster, Namespaces
from .support import BOUND, FAST, RABBITMQ_URL, dead_pid, kill, wait_for

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


def test_a_sweep_that_counts_a_running_orphan_recovered_while_another_attempt_runs_it_calls_its_cleaners(
    redis_client: redis.Redis, namespaces: Namespaces, rabbitmq: RabbitmqBroker
) -> None:
    cleaned: list[Orphan] = []
    tracker = TrackerMiddleware(
        client=redis_client, namespace=namespaces.tracker, lock_cleaners=[cleaned.append], **FAST
    )
    rabbitmq.add_middleware(tracker)
    wiring = tracker.bind(rabbitmq)
    # Given a dead worker of this host that recorded a message running (a redelivery it recorded before
    # it decided, put aside as the message's first attempt still runs on a live worker)
    here = HostFacts.current()
    info = WorkerInfo(
        worker_id="dead-redelivery", hostname=here.hostname, pid=dead_pid(), process_started="1",
        boot_id=here.boot_id, pid_namespace=here.pid_namespace, queues=(namespaces.queue,),
        broker_kind="rabbitmq", broker_identity=wiring.facts.identity, broker_id="", broker_namespace="",
        worker_threads=1, started_at=0, tracker_version="0", dramatiq_version="0",
    )  # fmt: skip
    record = InflightRecord(
        message_id="m1", worker_id=info.worker_id, actor_name="work", queue_name=namespaces.queue, token="1",
        started_at=0, max_recoveries=3,
    )  # fmt: skip
    store = tracker.store
    assert store.register(info, wiring.digest, 60_000, [("m1", "1|0", record.to_json())])[0] == "ok"
    redis_client.hset(store.keys.running, "m1", "live-worker|7|0")

    # When a sweep recovers it
    report = tracker.recover()

    # Then its orphan is counted as recovered, and its lock cleaners ran for it, once
    assert report.dead_workers == [info.worker_id]
    assert [orphan.message_id for orphan in report.recovered] == ["m1"]
    assert [(orphan.message_id, orphan.worker_id) for orphan in cleaned] == [("m1", info.worker_id)]
