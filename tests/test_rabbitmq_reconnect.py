"""After a RabbitMQ connection loss, deliveries of the closed channel neither ack others nor run twice.

RabbitMQ numbers deliveries per channel, from 1.  When a worker's connection closes, Dramatiq opens a
new channel, whose tags start at 1 again, while the messages of the old channel run on and are acked
through the new consumer with their old tags: such an ack can land on another delivery of the new
channel (acked before it ran: lost if the worker then dies), and a prefetched copy of the old channel
runs beside its redelivery.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable

import pytest
import redis
from dramatiq.message import Message

from dramatiq_tracker.ops.cli.output import message_lines
from dramatiq_tracker.ops.inspection import Inspector
from dramatiq_tracker.ops.reads import InspectionStore

from .conftest import Namespaces, events
from .support import (
    BOUND,
    RABBITMQ_URL,
    WorkerProcess,
    close_rabbitmq_connections,
    kill,
    kinds,
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

#: How long a held message runs if the test never releases it, in seconds.
HOLD_LIMIT = 120

#: How long a worker takes to open a new channel after its connection closed: noticing it (Dramatiq's
#: worker_timeout, 1 s), Dramatiq's consumer restart delay (3 s), and slack for a loaded machine.
RECONNECT = 1 + 3 + 10


def queue_counts(queue_name: str) -> tuple[int, int]:
    """A RabbitMQ queue's ready and unacked message counts, as the server has them."""
    listed = subprocess.run(
        ["rabbitmqctl", "list_queues", "-q", "--no-table-headers", "name", "messages_ready", "messages_unacknowledged"],
        capture_output=True,
        text=True,
        check=True,
    )
    for line in listed.stdout.splitlines():
        name, ready, unacked = line.split()
        if name == queue_name:
            return int(ready), int(unacked)
    return 0, 0


def send(broker: object, queue_name: str, actor_name: str, *args: object) -> str:
    message = Message(queue_name=queue_name, actor_name=actor_name, args=args, kwargs={}, options={})
    return str(broker.enqueue(message).message_id)  # type: ignore[attr-defined]


def starts(redis_client: redis.Redis, namespaces: Namespaces, message_id: str) -> list[int]:
    return [pid for found, pid, _ in events(redis_client, namespaces, "started") if found == message_id]


def test_an_ack_sent_after_its_channel_closed_never_acks_another_delivery(
    redis_client: redis.Redis,
    namespaces: Namespaces,
    spawn_worker: Callable[..., WorkerProcess],
    rabbitmq: object,
) -> None:
    store = InspectionStore(redis_client, namespaces.tracker)
    # Given a worker (one thread, two prefetched) that ran a message (delivery tag 1) and runs a
    # second one (tag 2) when its connection is closed
    spawn_worker(kind="rabbitmq", threads=1, broker_url=RABBITMQ_URL)
    (worker,) = wait_registered(store, 1)
    first = send(rabbitmq, namespaces.queue, "fast", 0)
    wait_for(lambda: events(redis_client, namespaces, "done"), 20, message="first message done")
    running = send(rabbitmq, namespaces.queue, "held", HOLD_LIMIT)
    wait_for(lambda: starts(redis_client, namespaces, running), 20, message="running")
    assert close_rabbitmq_connections(worker.pid) >= 1

    # And the new channel holds the running message's redelivery (tag 1) and another message (tag 2)
    other = send(rabbitmq, namespaces.queue, "sleep", 2)
    wait_for(lambda: queue_counts(namespaces.queue) == (0, 2), RECONNECT, message="new channel")

    # When the running message ends (its ack carries tag 2 of the closed channel), and the worker is
    # killed as soon as it goes on to the next message
    release(redis_client, namespaces.report, running)
    wait_for(lambda: [m for m, _, _ in events(redis_client, namespaces, "done")] == [first, running], RECONNECT + 4)
    wait_for(
        lambda: len(starts(redis_client, namespaces, running)) > 1 or starts(redis_client, namespaces, other),
        BOUND + 10,
        message="the next message",
    )
    spawn_worker(kind="rabbitmq", threads=1, broker_url=RABBITMQ_URL)
    survivor = wait_new_worker(store, worker)
    kill(worker.pid)

    # Then the other message was not acked by that late ack: RabbitMQ delivers it again, and it runs
    wait_for(
        lambda: any(m == other for m, _, _ in events(redis_client, namespaces, "done")),
        BOUND + 2 + 10,
        message="the other message done",
    )
    assert survivor.pid in starts(redis_client, namespaces, other)
    # And the running message, completed before the redelivery of it started, ran once
    assert starts(redis_client, namespaces, running) == [worker.pid]
    assert "duplicate-dropped" in kinds(store, running)
    # And operators see why in its history
    with Inspector(client=redis_client, namespace=namespaces.tracker) as inspector:
        view = inspector.message(running)
    assert view is not None and view.history is not None
    assert view.history.unconfirmed_by.startswith(worker.worker_id + "|")
    assert (view.history.unconfirmed_attempt, view.history.unconfirmed_with) == (0, "ack")
    assert any("unconfirmed: its channel closed" in line for line in message_lines(view, 0))


def test_a_message_prefetched_on_a_closed_channel_does_not_run_beside_its_redelivery(
    redis_client: redis.Redis,
    namespaces: Namespaces,
    spawn_worker: Callable[..., WorkerProcess],
    rabbitmq: object,
) -> None:
    store = InspectionStore(redis_client, namespaces.tracker)
    # Given a worker (one thread) running a message and holding another, prefetched, not started
    spawn_worker(kind="rabbitmq", threads=1, broker_url=RABBITMQ_URL)
    (worker,) = wait_registered(store, 1)
    running = send(rabbitmq, namespaces.queue, "held", HOLD_LIMIT)
    wait_for(lambda: starts(redis_client, namespaces, running), 20, message="running")
    prefetched = send(rabbitmq, namespaces.queue, "fast", 0)
    wait_for(lambda: queue_counts(namespaces.queue) == (0, 2), 10, message="prefetched")

    # When its connection is closed: RabbitMQ delivers both again, on the worker's new channel
    assert close_rabbitmq_connections(worker.pid) >= 1
    wait_for(lambda: queue_counts(namespaces.queue) == (0, 2), RECONNECT, message="new channel")
    release(redis_client, namespaces.report, running)

    # Then the copy prefetched on the closed channel does not run: its redelivery does, once
    wait_for(
        lambda: any(m == prefetched for m, _, _ in events(redis_client, namespaces, "done")),
        RECONNECT + 2 + BOUND + 10,
        message="prefetched message done",
    )
    wait_for(lambda: queue_counts(namespaces.queue) == (0, 0), BOUND + 10, message="queue drained")
    assert starts(redis_client, namespaces, prefetched) == [worker.pid]
    assert starts(redis_client, namespaces, running) == [worker.pid]


def test_a_dead_workers_message_redelivered_again_while_it_runs_elsewhere_waits_for_that_run(
    redis_client: redis.Redis,
    namespaces: Namespaces,
    spawn_worker: Callable[..., WorkerProcess],
    rabbitmq: object,
) -> None:
    store = InspectionStore(redis_client, namespaces.tracker)
    # Given a message that runs again on a survivor after its worker was killed (claimed as its orphan)
    spawn_worker(kind="rabbitmq", threads=2, broker_url=RABBITMQ_URL)
    (first,) = wait_registered(store, 1)
    message_id = send(rabbitmq, namespaces.queue, "held", HOLD_LIMIT)
    wait_for(lambda: starts(redis_client, namespaces, message_id), 20, message="running")
    spawn_worker(kind="rabbitmq", threads=2, broker_url=RABBITMQ_URL)
    spawn_worker(kind="rabbitmq", threads=2, broker_url=RABBITMQ_URL)
    wait_registered(store, 3)
    kill(first.pid)
    wait_for(lambda: len(starts(redis_client, namespaces, message_id)) == 2, BOUND + 10, message="run again")
    assert "recovered" in kinds(store, message_id)
    survivor = starts(redis_client, namespaces, message_id)[1]

    # When the survivor's connection is closed while it runs the message: RabbitMQ delivers it once more
    assert close_rabbitmq_connections(survivor) >= 1

    # Then that delivery waits for the survivor's run instead of running beside it, and is dropped after
    wait_for(lambda: "duplicate-deferred" in kinds(store, message_id), RECONNECT, message="deferred")
    assert starts(redis_client, namespaces, message_id) == [first.pid, survivor]
    release(redis_client, namespaces.report, message_id)
    wait_for(lambda: "duplicate-dropped" in kinds(store, message_id), BOUND + 10, message="dropped")
    assert starts(redis_client, namespaces, message_id) == [first.pid, survivor]
