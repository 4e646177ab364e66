"""Presence: a worker process's death is known within about a second, wherever it ran.

Each worker keeps a Redis connection subscribed to a channel of its own; when its process dies the
kernel closes the socket and Redis drops the subscription at once.  These tests run workers with a
heartbeat_timeout far longer than presence needs (30 s), so that a recovery within seconds can only
come from presence; the dead worker runs in a namespace of its own (another hostname, or another pid
namespace with the same hostname), where the same-host check of /proc cannot see its process go.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
import redis
from dramatiq.brokers.redis import RedisBroker

from dramatiq_tracker.events import TrackerEvent
from dramatiq_tracker.keys import identity_digest
from dramatiq_tracker.ops.reads import InspectionStore
from dramatiq_tracker.records import WorkerInfo

from .conftest import Namespaces, events
from .support import (
    WorkerProcess,
    can_isolate,
    kill,
    registered,
    send,
    stream,
    wait_for,
    wait_new_worker,
    wait_registered,
)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not can_isolate(), reason="needs root and unshare, to run a worker as on another host"),
]

#: Timings under which only presence can tell a death within seconds.
PRESENCE_TIMINGS = {
    "TEST_HEARTBEAT_INTERVAL": "2000",
    "TEST_HEARTBEAT_TIMEOUT": "30000",
    "TEST_SWEEP_INTERVAL": "2000",
    "TEST_PRESENCE_GRACE": "1000",
}
#: How long after the namespace first saw its server nothing is judged (2 heartbeat intervals), in s.
SETTLE = 2 * 2.0
#: The presence bound of these timings: the grace, a check (a quarter of it) and the sweep of the
#: orphans, and a fetch by the survivor's consumer (Dramatiq polls an idle queue at most every second),
#: with slack for a loaded machine; far below heartbeat_timeout.
PRESENCE_BOUND = 1.0 + 0.25 + 1.0 + 6.0


def wait_settled(store: InspectionStore) -> None:
    """Wait until the server is not new to the namespace any more (see lua/_server.lua)."""

    def settled() -> bool:
        since = store.client.hget(store.keys.server, "since")
        return since is not None and store.server_time() - int(since) >= SETTLE * 1000

    wait_for(settled, SETTLE + 10, interval=0.1, message="the namespace to settle on its server")


def present(store: InspectionStore, info: WorkerInfo) -> bool:
    """Whether the server saw the worker's presence (it is then judged by it)."""
    return bool(store.client.hexists(store.keys.present(identity_digest(info.broker_identity)), info.worker_id))


def dead_event(store: InspectionStore, worker_id: str) -> TrackerEvent | None:
    return next((e for e in stream(store) if e.kind == "worker-dead" and e.worker_id == worker_id), None)


@pytest.mark.parametrize("isolation", ["host", "container"])
def test_a_worker_killed_where_its_process_cannot_be_seen_is_recovered_within_its_presence_grace(
    redis_client: redis.Redis,
    namespaces: Namespaces,
    spawn_worker: Callable[..., WorkerProcess],
    producer: RedisBroker,
    isolation: str,
) -> None:
    store = InspectionStore(redis_client, namespaces.tracker)
    # Given a worker running two messages on another host (or in a container that shares this
    # hostname but not its pids), and a survivor here
    victim_process = spawn_worker(threads=2, env=PRESENCE_TIMINGS, isolation=isolation)
    (victim,) = wait_registered(store, 1)
    sent = send(producer, namespaces.queue, "slow", 2)
    wait_for(lambda: len(events(redis_client, namespaces, "started")) == 2, 20, message="running")
    spawn_worker(threads=2, env=PRESENCE_TIMINGS)
    survivor = wait_new_worker(store, victim)
    wait_for(lambda: present(store, victim) and present(store, survivor), 10, message="their presence seen")
    wait_settled(store)
    assert {pid for _, pid, _ in events(redis_client, namespaces, "started")} == {victim.pid}

    # When its worker process is SIGKILLed
    killed = time.time()
    kill(victim_process.pid_of(victim))

    # Then both messages start again on the survivor within the presence bound, not heartbeat_timeout
    def restarted() -> list[float]:
        return [at for _, pid, at in events(redis_client, namespaces, "started") if pid == survivor.pid]

    wait_for(lambda: len(restarted()) == 2, PRESENCE_BOUND, message="orphans restarted")
    print("restarted %.2f s after the kill" % (max(restarted()) - killed))
    assert max(restarted()) - killed < PRESENCE_BOUND
    event = dead_event(store, victim.worker_id)
    assert event is not None and event.details["reason"] == "presence gone"
    assert sorted(m for m, pid, _ in events(redis_client, namespaces, "started") if pid == survivor.pid) == sorted(sent)
    assert [w.worker_id for w in registered(store)] == [survivor.worker_id]
