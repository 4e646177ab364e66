"""Worker processes that share one RedisBroker ``broker_id``: the broker was built before a fork (an
application server that preloads its app and runs embedded workers, tests/apps/forked_workers.py).
Their acks sets and Dramatiq's heartbeat are shared, so Dramatiq's own maintenance never gives a dead
one's messages back while a sibling lives; the tracker recovers what it recorded running."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
import redis
from dramatiq.brokers.redis import RedisBroker

from dramatiq_tracker.ops.reads import InspectionStore

from .conftest import Namespaces, events
from .support import BOUND, WorkerProcess, kill, registered, send, wait_for, wait_new_worker, wait_registered

pytestmark = pytest.mark.slow

FORKED = "tests.apps.forked_workers --"


def test_a_dead_process_sharing_its_broker_id_with_a_live_sibling_has_its_running_message_recovered(
    redis_client: redis.Redis,
    namespaces: Namespaces,
    spawn_worker: Callable[..., WorkerProcess],
    producer: RedisBroker,
) -> None:
    store = InspectionStore(redis_client, namespaces.tracker)
    # Given two worker processes forked after their broker was built, each running one message
    spawn_worker(threads=1, app=FORKED)
    first, second = wait_registered(store, 2)
    assert first.broker_id == second.broker_id and first.pid != second.pid
    sent = send(producer, namespaces.queue, "slow", 2)
    wait_for(lambda: len(events(redis_client, namespaces, "started")) == 2, 20, message="both running")
    runs = {message_id: pid for message_id, pid, _ in events(redis_client, namespaces, "started")}
    assert set(runs.values()) == {first.pid, second.pid}
    victim = first
    (orphan,) = [message_id for message_id, pid in runs.items() if pid == victim.pid]
    wait_for(lambda: orphan in store.inflight(victim.worker_id), 5, message="its start recorded")

    # When one of them is SIGKILLed, and a worker of its own starts beside the survivor
    kill(victim.pid)
    spawn_worker(threads=2)
    fresh = wait_new_worker(store, first, second)

    # Then the message it ran starts again there, and the sibling's goes on where it runs, not moved
    def restarted() -> list[str]:
        return [message_id for message_id, pid, _ in events(redis_client, namespaces, "started") if pid == fresh.pid]

    wait_for(lambda: restarted() == [orphan], BOUND + 20, message="the dead process's message restarted")
    time.sleep(2 * BOUND)  # no second recovery, and the sibling's message is left alone
    started = events(redis_client, namespaces, "started")
    assert sorted(message_id for message_id, _, _ in started) == sorted([*sent, orphan])
    assert victim.worker_id not in [w.worker_id for w in registered(store)]
    assert second.worker_id in [w.worker_id for w in registered(store)]
