"""After a RabbitMQ connection loss, deliveries of the closed channel neither ack others nor run twice.

RabbitMQ numbers deliveries per channel, from 1.  When a worker's connection closes, Dramatiq opens a
new channel, whose tags start at 1 again, while the messages of the old channel run on and are acked
through the new consumer with their old tags: such an ack can land on another delivery of the new
channel (acked before it ran: lost if the worker then dies), and a prefetched copy of the old channel
runs beside its redelivery.
"""

from __future__ import annotations

import subprocess

from dramatiq_tracker.ops.cli.output import message_lines
from dramatiq_tracker.ops.inspection import Inspector

from .conftest import CLOSES_RABBITMQ_CONNECTIONS, Cluster
from .support import (
    BOUND,
    close_rabbitmq_connections,
    enqueue,
    kill,
    wait_for,
)

pytestmark = CLOSES_RABBITMQ_CONNECTIONS

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


def test_an_ack_sent_after_its_channel_closed_never_acks_another_delivery(cluster: Cluster, rabbitmq: object) -> None:
    # Given a worker (one thread, two prefetched) that ran a message (delivery tag 1) and runs a
    # second one (tag 2) when its connection is closed
    cluster.spawn_rabbitmq(threads=1)
    (worker,) = cluster.wait_registered(1)
    first = enqueue(rabbitmq, cluster.names.queue, "fast", 0)
    wait_for(lambda: cluster.reported("done"), 20, message="first message done")
    running = enqueue(rabbitmq, cluster.names.queue, "held", HOLD_LIMIT)
    wait_for(lambda: cluster.starts(running), 20, message="running")
    assert close_rabbitmq_connections(worker.pid) >= 1

    # And the new channel holds the running message's redelivery (tag 1) and another message (tag 2)
    other = enqueue(rabbitmq, cluster.names.queue, "sleep", 2)
    wait_for(lambda: queue_counts(cluster.names.queue) == (0, 2), RECONNECT, message="new channel")

    # When the running message ends (its ack carries tag 2 of the closed channel), and the worker is
    # killed as soon as it goes on to the next message
    cluster.release(running)
    wait_for(lambda: [m for m, _, _ in cluster.reported("done")] == [first, running], RECONNECT + 4)
    wait_for(
        lambda: len(cluster.starts(running)) > 1 or cluster.starts(other),
        BOUND + 10,
        message="the next message",
    )
    cluster.spawn_rabbitmq(threads=1)
    survivor = cluster.wait_new_worker(worker)
    kill(worker.pid)

    # Then the other message was not acked by that late ack: RabbitMQ delivers it again, and it runs
    wait_for(
        lambda: any(m == other for m, _, _ in cluster.reported("done")),
        BOUND + 2 + 10,
        message="the other message done",
    )
    assert survivor.pid in cluster.starts(other)
    # And the running message, completed before the redelivery of it started, ran once
    assert cluster.starts(running) == [worker.pid]
    assert "duplicate-dropped" in cluster.kinds(running)
    # And operators see why in its history
    with Inspector(client=cluster.client, namespace=cluster.names.tracker) as inspector:
        view = inspector.message(running)
    assert view is not None and view.history is not None
    assert view.history.unconfirmed_by.startswith(worker.worker_id + "|")
    assert (view.history.unconfirmed_attempt, view.history.unconfirmed_with) == (0, "ack")
    assert any("unconfirmed: its channel closed" in line for line in message_lines(view, 0))


def test_a_message_prefetched_on_a_closed_channel_does_not_run_beside_its_redelivery(
    cluster: Cluster, rabbitmq: object
) -> None:
    # Given a worker (one thread) running a message and holding another, prefetched, not started
    worker, running = cluster.rabbitmq_worker_running(rabbitmq, "held", HOLD_LIMIT, threads=1)
    prefetched = enqueue(rabbitmq, cluster.names.queue, "fast", 0)
    wait_for(lambda: queue_counts(cluster.names.queue) == (0, 2), 10, message="prefetched")

    # When its connection is closed: RabbitMQ delivers both again, on the worker's new channel
    assert close_rabbitmq_connections(worker.pid) >= 1
    wait_for(lambda: queue_counts(cluster.names.queue) == (0, 2), RECONNECT, message="new channel")
    cluster.release(running)

    # Then the copy prefetched on the closed channel does not run: its redelivery does, once
    wait_for(
        lambda: any(m == prefetched for m, _, _ in cluster.reported("done")),
        RECONNECT + 2 + BOUND + 10,
        message="prefetched message done",
    )
    wait_for(lambda: queue_counts(cluster.names.queue) == (0, 0), BOUND + 10, message="queue drained")
    assert cluster.starts(prefetched) == [worker.pid]
    assert cluster.starts(running) == [worker.pid]


def test_a_dead_workers_message_redelivered_again_while_it_runs_elsewhere_waits_for_that_run(
    cluster: Cluster, rabbitmq: object
) -> None:
    # Given a message that runs again on a survivor after its worker was killed (claimed as its orphan)
    first, message_id = cluster.rabbitmq_worker_running(rabbitmq, "held", HOLD_LIMIT, threads=2)
    cluster.spawn_rabbitmq(threads=2)
    cluster.spawn_rabbitmq(threads=2)
    cluster.wait_registered(3)
    kill(first.pid)
    wait_for(lambda: len(cluster.starts(message_id)) == 2, BOUND + 10, message="run again")
    assert "recovered" in cluster.kinds(message_id)
    survivor = cluster.starts(message_id)[1]

    # When the survivor's connection is closed while it runs the message: RabbitMQ delivers it once more
    assert close_rabbitmq_connections(survivor) >= 1

    # Then that delivery waits for the survivor's run instead of running beside it, and is dropped after
    wait_for(lambda: "duplicate-deferred" in cluster.kinds(message_id), RECONNECT, message="deferred")
    assert cluster.starts(message_id) == [first.pid, survivor]
    cluster.release(message_id)
    wait_for(lambda: "duplicate-dropped" in cluster.kinds(message_id), BOUND + 10, message="dropped")
    assert cluster.starts(message_id) == [first.pid, survivor]
