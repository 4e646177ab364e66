"""A redelivery of a message still running on a live worker is not run beside it, and not lost."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable

import pytest
import redis
from dramatiq.message import Message

from dramatiq_tracker.ops.reads import InspectionStore

from .conftest import Namespaces, events
from .support import (
    FAST,
    RABBITMQ_URL,
    WorkerProcess,
    close_rabbitmq_connections,
    kill,
    kinds,
    registered,
    release,
    wait_for,
    wait_new_worker,
    wait_registered,
)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.rabbitmq,
    pytest.mark.skipif(not shutil.which("rabbitmqctl"), reason="needs rabbitmqctl to close a connection"),
]


def start_long_message(
    redis_client: redis.Redis,
    namespaces: Namespaces,
    spawn_worker: Callable[..., WorkerProcess],
    broker: object,
    store: InspectionStore,
) -> tuple[str, int, str]:
    """A ``held`` message running on a RabbitMQ worker, recorded: it runs until the test releases it."""
    spawn_worker(kind="rabbitmq", threads=2, broker_url=RABBITMQ_URL)
    (worker,) = wait_registered(store, 1)
    message = Message(queue_name=namespaces.queue, actor_name="held", args=(HOLD_LIMIT,), kwargs={}, options={})
    message_id = broker.enqueue(message).message_id  # type: ignore[attr-defined]
    wait_for(lambda: len(events(redis_client, namespaces, "started")) == 1, 20, message="running")
    wait_for(lambda: message_id in store.inflight(worker.worker_id), 5, message="recorded")
    return message_id, worker.pid, worker.worker_id


#: How long a held message runs if the test never releases it, in seconds.
HOLD_LIMIT = 120


def test_a_rabbitmq_redelivery_of_a_running_message_waits_for_it_instead_of_running_beside_it(
    redis_client: redis.Redis,
    namespaces: Namespaces,
    spawn_worker: Callable[..., WorkerProcess],
    rabbitmq: object,
) -> None:
    store = InspectionStore(redis_client, namespaces.tracker)
    # Given a worker running a message that outlasts the worker's reconnection (its only consumer)
    message_id, pid, _ = start_long_message(redis_client, namespaces, spawn_worker, rabbitmq, store)

    # When its connection is closed under it (as RabbitMQ's consumer_timeout does): the server redelivers
    # to the worker's new channel (Dramatiq notices within 1 s and reopens after 3 s of restart delay)
    assert close_rabbitmq_connections(pid) >= 1

    # Then the redelivery is put off, not run beside the running copy
    wait_for(lambda: "duplicate-deferred" in kinds(store, message_id), 30, message="deferred")
    # And once the running copy completes, the put-off delivery is dropped: the message ran once.  Bound:
    # a put-off of heartbeat_timeout or two, the delay consumer's restart after its connection was closed
    # (Dramatiq's 3 s), and slack for a loaded machine.
    release(redis_client, namespaces.report, message_id)
    put_off = FAST["heartbeat_timeout"] / 1000
    wait_for(lambda: "duplicate-dropped" in kinds(store, message_id), 2 * put_off + 3 + 20, message="dropped")
    assert [e[0] for e in events(redis_client, namespaces, "started")] == [message_id]
    assert [e[0] for e in events(redis_client, namespaces, "done")] == [message_id]


def test_a_put_off_redelivery_is_not_lost_if_the_running_copy_then_dies(
    redis_client: redis.Redis,
    namespaces: Namespaces,
    spawn_worker: Callable[..., WorkerProcess],
    rabbitmq: object,
) -> None:
    store = InspectionStore(redis_client, namespaces.tracker)
    # Given a running message whose redelivery was put off behind it
    message_id, pid, worker_id = start_long_message(redis_client, namespaces, spawn_worker, rabbitmq, store)
    assert close_rabbitmq_connections(pid) >= 1
    wait_for(lambda: "duplicate-deferred" in kinds(store, message_id), 30, message="deferred")
    spawn_worker(kind="rabbitmq", threads=2, broker_url=RABBITMQ_URL, slow_seconds=0.1)
    survivor = wait_new_worker(store, *[w for w in registered(store) if w.worker_id == worker_id])

    # When the worker running it dies
    kill(pid)

    # Then the put-off delivery runs it again, as the dead worker's orphan
    wait_for(
        lambda: any(e[1] == survivor.pid for e in events(redis_client, namespaces, "started")),
        15,
        message="recovered run",
    )
    assert "recovered" in kinds(store, message_id)
    time.sleep(1)
    starts = [e for e in events(redis_client, namespaces, "started") if e[0] == message_id]
    assert [e[1] for e in starts] == [pid, survivor.pid]


def test_a_failing_message_whose_nack_is_lost_with_its_connection_still_reaches_the_dead_letter_queue(
    redis_client: redis.Redis,
    namespaces: Namespaces,
    spawn_worker: Callable[..., WorkerProcess],
    rabbitmq: object,
) -> None:
    store = InspectionStore(redis_client, namespaces.tracker)
    # Given a worker running a message of an actor that will fail (max_retries=0), and a second worker
    spawn_worker(kind="rabbitmq", threads=2, broker_url=RABBITMQ_URL)
    (worker,) = wait_registered(store, 1)
    message = Message(
        queue_name=namespaces.queue, actor_name="fail_when_released", args=(HOLD_LIMIT,), kwargs={}, options={}
    )
    message_id = rabbitmq.enqueue(message).message_id  # type: ignore[attr-defined]
    wait_for(lambda: len(events(redis_client, namespaces, "started")) == 1, 20, message="running")
    spawn_worker(kind="rabbitmq", threads=2, broker_url=RABBITMQ_URL)
    wait_new_worker(store, worker)

    # When its connection is closed while it runs: the server redelivers it, and the failing copy's
    # nack never reaches the server ("not in known tags")
    assert close_rabbitmq_connections(worker.pid) >= 1
    wait_for(lambda: "duplicate-deferred" in kinds(store, message_id), 30, message="deferred")
    release(redis_client, namespaces.report, message_id)

    # Then the redelivery, put off behind the failing copy, is dead-lettered as the failure would have
    # been: the message ran once and ends in its dead-letter queue, as with plain Dramatiq
    channel = rabbitmq.channel  # type: ignore[attr-defined]
    wait_for(
        lambda: channel.queue_declare(namespaces.queue + ".XQ", passive=True).method.message_count == 1,
        30,
        message="dead-lettered",
    )
    assert "duplicate-dead-lettered" in kinds(store, message_id)
    assert [e[0] for e in events(redis_client, namespaces, "started")] == [message_id]
