"""A dead worker made by hand in real Redis, for recovery tests that need no processes."""

from __future__ import annotations

import subprocess
import sys

from dramatiq.brokers.redis import RedisBroker
from dramatiq.message import Message

from dramatiq_tracker import TrackerMiddleware
from dramatiq_tracker.brokers import BrokerFacts
from dramatiq_tracker.host import HostFacts
from dramatiq_tracker.records import InflightRecord, WorkerInfo, encode_payload


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def fake_dead_worker(
    broker: RedisBroker,
    tracker: TrackerMiddleware,
    queue: str,
    count: int,
    *,
    running: int = 2,
    actor_name: str = "work",
    options: dict[str, object] | None = None,
) -> tuple[WorkerInfo, list[Message[object]]]:
    """A worker of this host whose process is gone, as if SIGKILLed, with ``count`` messages
    fetched, the first ``running`` of them recorded as running."""
    dead = RedisBroker(client=broker.client, namespace=broker.namespace)
    messages = [
        broker.enqueue(
            Message(queue_name=queue, actor_name=actor_name, args=(i,), kwargs={}, options=dict(options or {}))
        )
        for i in range(count)
    ]
    dead.do_fetch(queue, count)
    here = HostFacts.current()
    info = WorkerInfo(
        worker_id="dead-worker",
        hostname=here.hostname,
        pid=dead_pid(),
        process_started="1",
        boot_id=here.boot_id,
        pid_namespace=here.pid_namespace,
        queues=(queue,),
        broker_kind="redis",
        broker_identity=BrokerFacts.of(broker).identity,
        broker_id=dead.broker_id,
        broker_namespace=broker.namespace,
        worker_threads=1,
        started_at=0,
        tracker_version="0",
        dramatiq_version="0",
    )
    records = []
    for index, message in enumerate(messages[:running]):
        payload, encoding = encode_payload(message.encode())
        redis_id = message.options["redis_message_id"]
        record = InflightRecord(
            message.message_id, "work", queue, redis_id, info.worker_id, str(index), 0, 0, payload, encoding
        )
        records.append(record)
    assert tracker.store.register(info, records, 60_000) == "ok"
    return info, messages
