"""Worker processes that share one RedisBroker ``broker_id``: the broker was built before a fork (an
application server that preloads its app and runs embedded workers, tests/apps/forked_workers.py).
Their acks sets and Dramatiq's heartbeat are shared, so Dramatiq's own maintenance never gives a dead
one's messages back while a sibling lives; the tracker recovers what it recorded running."""

from __future__ import annotations

import time

import pytest
from dramatiq.brokers.redis import RedisBroker

from .conftest import Cluster
from .support import BOUND, kill, registered, send, wait_for

pytestmark = pytest.mark.slow

FORKED = "tests.apps.forked_workers --"


def test_a_dead_process_sharing_its_broker_id_with_a_live_sibling_has_its_running_message_recovered(
    cluster: Cluster, producer: RedisBroker
) -> None:
    # Given two worker processes forked after their broker was built, each running one message
    cluster.spawn(threads=1, app=FORKED)
    first, second = cluster.wait_registered(2)
    assert first.broker_id == second.broker_id and first.pid != second.pid
    sent = send(producer, cluster.names.queue, "slow", 2)
    wait_for(lambda: len(cluster.reported("started")) == 2, 20, message="both running")
    runs = {message_id: pid for message_id, pid, _ in cluster.reported("started")}
    assert set(runs.values()) == {first.pid, second.pid}
    victim = first
    (orphan,) = [message_id for message_id, pid in runs.items() if pid == victim.pid]
    wait_for(lambda: orphan in cluster.store.inflight(victim.worker_id), 5, message="its start recorded")

    # When one of them is SIGKILLed, and a worker of its own starts beside the survivor
    kill(victim.pid)
    cluster.spawn(threads=2)
    fresh = cluster.wait_new_worker(first, second)

    # Then the message it ran starts again there, and the sibling's goes on where it runs, not moved
    def restarted() -> list[str]:
        return [message_id for message_id, pid, _ in cluster.reported("started") if pid == fresh.pid]

    wait_for(lambda: restarted() == [orphan], BOUND + 20, message="the dead process's message restarted")
    time.sleep(2 * BOUND)  # no second recovery, and the sibling's message is left alone
    started = cluster.reported("started")
    assert sorted(message_id for message_id, _, _ in started) == sorted([*sent, orphan])
    assert victim.worker_id not in [w.worker_id for w in registered(cluster.store)]
    assert second.worker_id in [w.worker_id for w in registered(cluster.store)]
