"""A redelivery of a message still running on a live worker is not run beside it, and not lost."""

from __future__ import annotations

import time

from .conftest import CLOSES_RABBITMQ_CONNECTIONS, Cluster
from .support import (
    FAST,
    close_rabbitmq_connections,
    kill,
    registered,
    wait_for,
)

pytestmark = CLOSES_RABBITMQ_CONNECTIONS


def start_long_message(cluster: Cluster, broker: object) -> tuple[str, int, str]:
    """A ``held`` message running on a RabbitMQ worker, recorded: it runs until the test releases it."""
    worker, message_id = cluster.rabbitmq_worker_running(broker, "held", HOLD_LIMIT, threads=2)
    wait_for(lambda: message_id in cluster.store.inflight(worker.worker_id), 5, message="recorded")
    return message_id, worker.pid, worker.worker_id


#: How long a held message runs if the test never releases it, in seconds.
HOLD_LIMIT = 120


def test_a_rabbitmq_redelivery_of_a_running_message_waits_for_it_instead_of_running_beside_it(
    cluster: Cluster, rabbitmq: object
) -> None:
    # Given a worker running a message that outlasts the worker's reconnection (its only consumer)
    message_id, pid, _ = start_long_message(cluster, rabbitmq)

    # When its connection is closed under it (as RabbitMQ's consumer_timeout does): the server redelivers
    # to the worker's new channel (Dramatiq notices within 1 s and reopens after 3 s of restart delay)
    assert close_rabbitmq_connections(pid) >= 1

    # Then the redelivery is put off, not run beside the running copy
    wait_for(lambda: "duplicate-deferred" in cluster.kinds(message_id), 30, message="deferred")
    # And once the running copy completes, the put-off delivery is dropped: the message ran once.  Bound:
    # a put-off of heartbeat_timeout or two, the delay consumer's restart after its connection was closed
    # (Dramatiq's 3 s), and slack for a loaded machine.
    cluster.release(message_id)
    put_off = FAST["heartbeat_timeout"] / 1000
    wait_for(lambda: "duplicate-dropped" in cluster.kinds(message_id), 2 * put_off + 3 + 20, message="dropped")
    assert [e[0] for e in cluster.reported("started")] == [message_id]
    assert [e[0] for e in cluster.reported("done")] == [message_id]


def test_a_put_off_redelivery_is_not_lost_if_the_running_copy_then_dies(cluster: Cluster, rabbitmq: object) -> None:
    # Given a running message whose redelivery was put off behind it
    message_id, pid, worker_id = start_long_message(cluster, rabbitmq)
    assert close_rabbitmq_connections(pid) >= 1
    wait_for(lambda: "duplicate-deferred" in cluster.kinds(message_id), 30, message="deferred")
    cluster.spawn_rabbitmq(threads=2, slow_seconds=0.1)
    survivor = cluster.wait_new_worker(*[w for w in registered(cluster.store) if w.worker_id == worker_id])

    # When the worker running it dies
    kill(pid)

    # Then the put-off delivery runs it again, as the dead worker's orphan
    cluster.wait_reported_by(survivor.pid, 15, "recovered run")
    assert "recovered" in cluster.kinds(message_id)
    time.sleep(1)
    assert cluster.starts(message_id) == [pid, survivor.pid]


def test_a_failing_message_whose_nack_is_lost_with_its_connection_still_reaches_the_dead_letter_queue(
    cluster: Cluster, rabbitmq: object
) -> None:
    # Given a worker running a message of an actor that will fail (max_retries=0), and a second worker
    worker, message_id = cluster.rabbitmq_worker_running(rabbitmq, "fail_when_released", HOLD_LIMIT, threads=2)
    cluster.spawn_rabbitmq(threads=2)
    cluster.wait_new_worker(worker)

    # When its connection is closed while it runs: the server redelivers it, and the failing copy's
    # nack never reaches the server ("not in known tags")
    assert close_rabbitmq_connections(worker.pid) >= 1
    wait_for(lambda: "duplicate-deferred" in cluster.kinds(message_id), 30, message="deferred")
    cluster.release(message_id)

    # Then the redelivery, put off behind the failing copy, is dead-lettered as the failure would have
    # been: the message ran once and ends in its dead-letter queue, as with plain Dramatiq
    channel = rabbitmq.channel  # type: ignore[attr-defined]
    wait_for(
        lambda: channel.queue_declare(cluster.names.queue + ".XQ", passive=True).method.message_count == 1,
        30,
        message="dead-lettered",
    )
    assert "duplicate-dead-lettered" in cluster.kinds(message_id)
    assert [e[0] for e in cluster.reported("started")] == [message_id]
