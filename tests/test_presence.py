"""Presence: a worker process's death is known within about a second, wherever it ran.

Each worker keeps a Redis connection subscribed to a channel of its own; when its process dies the
kernel closes the socket and Redis drops the subscription at once.  These tests run workers with a
heartbeat_timeout far longer than presence needs (30 s), so that a recovery within seconds can only
come from presence; the dead worker runs in a namespace of its own (another hostname, or another pid
namespace with the same hostname), where the same-host check of /proc cannot see its process go.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import pytest
from dramatiq.brokers.redis import RedisBroker
from dramatiq.message import Message

from dramatiq_tracker.events import TrackerEvent
from dramatiq_tracker.keys import identity_digest
from dramatiq_tracker.ops.reads import InspectionStore
from dramatiq_tracker.records import WorkerInfo

from .conftest import Cluster
from .support import (
    RABBITMQ_URL,
    WorkerProcess,
    can_isolate,
    kill,
    registered,
    send,
    stream,
    wait_for,
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
#: A restarted worker's bound: its boot (a dramatiq process, 1-2 s, more on a loaded machine), a quarter
#: of the grace after it first finds its predecessor's presence gone, and the fetch.
BOOT_BOUND = 4.0 + 0.25 + 0.25 + 1.0 + 6.0
#: On RabbitMQ the server redelivers at once; the tracker waits for half the grace (the redelivery
#: already says the connection closed), then the claim; with slack for a loaded machine.
RABBITMQ_BOUND = 0.5 + 0.25 + 5.0
#: The package's default timings.
DEFAULT_TIMINGS = {
    "TEST_HEARTBEAT_INTERVAL": "5000",
    "TEST_HEARTBEAT_TIMEOUT": "15000",
    "TEST_SWEEP_INTERVAL": "5000",
    "TEST_FLUSH_INTERVAL": "50",
    "TEST_PRESENCE_GRACE": "1000",
}
DEFAULT_SETTLE = 2 * 5.0


def wait_settled(store: InspectionStore, settle: float = SETTLE) -> None:
    """Wait until the server is not new to the namespace any more (see lua/_server.lua)."""

    def settled() -> bool:
        since = store.client.hget(store.keys.server, "since")
        return since is not None and store.server_time() - int(since) >= settle * 1000

    wait_for(settled, settle + 10, interval=0.1, message="the namespace to settle on its server")


def enqueue(broker: Any, queue_name: str, actor_name: str, *args: object) -> str:
    """Send one message; returns its id."""
    message = Message(queue_name=queue_name, actor_name=actor_name, args=args, kwargs={}, options={})
    return str(broker.enqueue(message).message_id)


def present(store: InspectionStore, info: WorkerInfo) -> bool:
    """Whether the server saw the worker's presence (it is then judged by it)."""
    return bool(store.client.hexists(store.keys.present(identity_digest(info.broker_identity)), info.worker_id))


def dead_event(store: InspectionStore, worker_id: str) -> TrackerEvent | None:
    return next((e for e in stream(store) if e.kind == "worker-dead" and e.worker_id == worker_id), None)


def running_two_beside_a_survivor(
    cluster: Cluster, producer: RedisBroker, timings: dict[str, str], isolation: str = ""
) -> tuple[WorkerProcess, WorkerInfo, WorkerInfo, list[str]]:
    """A worker running two ``slow`` messages (isolated as given), and a survivor here, their presence
    seen and the namespace settled: the victim's process, the victim, the survivor, the messages."""
    victim_process = cluster.spawn(threads=2, env=timings, isolation=isolation)
    (victim,) = cluster.wait_registered(1)
    sent = send(producer, cluster.names.queue, "slow", 2)
    wait_for(lambda: len(cluster.reported("started")) == 2, 20, message="running")
    cluster.spawn(threads=2, env=timings)
    survivor = cluster.wait_new_worker(victim)
    wait_for(
        lambda: present(cluster.store, victim) and present(cluster.store, survivor), 10, message="their presence seen"
    )
    wait_settled(cluster.store)
    return victim_process, victim, survivor, sent


@pytest.mark.parametrize("isolation", ["host", "container"])
def test_a_worker_killed_where_its_process_cannot_be_seen_is_recovered_within_its_presence_grace(
    cluster: Cluster, producer: RedisBroker, isolation: str
) -> None:
    # Given a worker running two messages on another host (or in a container that shares this
    # hostname but not its pids), and a survivor here
    victim_process, victim, survivor, sent = running_two_beside_a_survivor(
        cluster, producer, PRESENCE_TIMINGS, isolation
    )
    assert {pid for _, pid, _ in cluster.reported("started")} == {victim.pid}

    # When its worker process is SIGKILLed
    killed = time.time()
    kill(victim_process.pid_of(victim))

    # Then both messages start again on the survivor within the presence bound, not heartbeat_timeout
    def restarted() -> list[float]:
        return [at for _, pid, at in cluster.reported("started") if pid == survivor.pid]

    wait_for(lambda: len(restarted()) == 2, PRESENCE_BOUND, message="orphans restarted")
    print("restarted %.2f s after the kill" % (max(restarted()) - killed))
    assert max(restarted()) - killed < PRESENCE_BOUND
    event = dead_event(cluster.store, victim.worker_id)
    assert event is not None and event.details["reason"] == "presence gone"
    assert sorted(m for m, pid, _ in cluster.reported("started") if pid == survivor.pid) == sorted(sent)
    assert [w.worker_id for w in registered(cluster.store)] == [survivor.worker_id]
    # And the operators' recovery latency counted both, from the loss of its presence to their new start
    counters = {k.decode(): int(v) for k, v in cluster.client.hgetall(cluster.store.keys.counters).items()}
    assert counters["recovery_latency_count"] == 2
    assert 0 < counters["recovery_latency_sum_ms"] <= 2 * (max(restarted()) - killed) * 1000 + 500
    buckets = {k: v for k, v in counters.items() if k.startswith("recovery_latency_le:")}
    assert sum(buckets.values()) == 2
    assert all(k != "recovery_latency_le:inf" and int(k.partition(":")[2]) <= 5000 for k in buckets)


def test_a_dead_sweep_lease_holder_is_judged_within_its_presence_grace_not_its_lease(
    cluster: Cluster, producer: RedisBroker
) -> None:
    # Given a worker that holds the sweep lease (a long sweep_interval: its lease lasts 13.5 s) running
    # two messages, and a survivor past its own boot (when it judges without the lease)
    sweep_interval = 15.0
    timings = {**PRESENCE_TIMINGS, "TEST_SWEEP_INTERVAL": str(int(sweep_interval * 1000))}
    victim_process, victim, survivor, sent = running_two_beside_a_survivor(cluster, producer, timings)
    digest = identity_digest(victim.broker_identity)

    def lease_holder() -> str:
        raw = cluster.client.get(cluster.store.keys.sweep_lease(digest))
        return raw.decode().partition("|")[2] if raw else ""

    # (the survivor's boot window, a sweep_interval, is over)
    time.sleep(sweep_interval + 1)
    wait_for(lambda: lease_holder() == victim.worker_id, sweep_interval, message="the victim holds the lease")
    # (and renewed it lately: left alone, it would keep presence unjudged for 12 s or more)
    lease_key = cluster.store.keys.sweep_lease(digest)
    wait_for(lambda: cluster.client.pttl(lease_key) > 12_000, sweep_interval, interval=0.05, message="a renewal")

    # When the lease holder is SIGKILLed
    killed = time.time()
    kill(victim_process.pid_of(victim))

    # Then the survivor takes the lease over within a grace of its presence gone, and both messages
    # start again on it within the presence bound (a grace more: the takeover), not the lease's 12 s
    def restarted() -> list[float]:
        return [at for _, pid, at in cluster.reported("started") if pid == survivor.pid]

    bound = PRESENCE_BOUND + 1.0
    wait_for(lambda: len(restarted()) == 2, bound, message="orphans restarted")
    print("restarted %.2f s after the kill" % (max(restarted()) - killed))
    assert max(restarted()) - killed < bound
    assert lease_holder() == survivor.worker_id
    assert sorted(m for m, pid, _ in cluster.reported("started") if pid == survivor.pid) == sorted(sent)


def test_a_restarted_container_recovers_its_predecessors_orphans_at_boot(
    cluster: Cluster, producer: RedisBroker
) -> None:
    # Given the only worker, in a container, running two messages
    victim_process = cluster.spawn(threads=2, env=PRESENCE_TIMINGS, isolation="container")
    (victim,) = cluster.wait_registered(1)
    send(producer, cluster.names.queue, "slow", 2)
    wait_for(lambda: len(cluster.reported("started")) == 2, 20, message="running")
    wait_for(lambda: present(cluster.store, victim), 10, message="its presence seen")
    wait_settled(cluster.store)

    # When it is SIGKILLed and its container restarts: same hostname, a new pid namespace
    killed = time.time()
    kill(victim_process.pid_of(victim))
    cluster.spawn(threads=2, env=PRESENCE_TIMINGS, isolation="container")
    cluster.wait_new_worker(victim)

    # Then the new worker recovers its predecessor's orphans as soon as it boots (a quarter of the
    # grace after it first finds its presence gone), not after heartbeat_timeout (pids repeat across
    # containers: the starts after the kill are the successor's)
    def restarted() -> list[float]:
        return [at for _, _, at in cluster.reported("started") if at > killed]

    wait_for(lambda: len(restarted()) == 2, BOOT_BOUND, message="orphans restarted by the successor")
    event = dead_event(cluster.store, victim.worker_id)
    assert event is not None and event.details["reason"] == "presence gone"
    print("restarted %.2f s after the kill" % (max(restarted()) - killed))


@pytest.mark.parametrize("stall", ["sigstop", "gil"])
def test_a_ten_second_stall_keeps_the_socket_open_and_is_no_death(
    cluster: Cluster, producer: RedisBroker, stall: str
) -> None:
    # Given a worker on another host, at the default timings, and a live peer (consuming another queue)
    victim_process = cluster.spawn(threads=2, env=DEFAULT_TIMINGS, isolation="host")
    (victim,) = cluster.wait_registered(1)
    cluster.spawn(threads=2, env={**DEFAULT_TIMINGS, "TEST_QUEUE": cluster.names.queue + "_other"})
    peer = cluster.wait_new_worker(victim)
    wait_for(lambda: present(cluster.store, victim) and present(cluster.store, peer), 15, message="their presence seen")
    wait_settled(cluster.store, DEFAULT_SETTLE)
    pid = victim_process.pid_of(victim)

    # When the worker process stalls for 10 s (frozen, or a C call holding the GIL), below heartbeat_timeout
    if stall == "sigstop":
        message_id = enqueue(producer, cluster.names.queue, "held", 60)
        wait_for(lambda: len(cluster.reported("started")) == 1, 20, message="running")
        os.kill(pid, signal.SIGSTOP)
        time.sleep(10)
        os.kill(pid, signal.SIGCONT)
        cluster.release(message_id)
    else:
        message_id = enqueue(producer, cluster.names.queue, "hold_gil", 10)
        wait_for(lambda: len(cluster.reported("started")) == 1, 20, message="running")

    # Then it completes on its worker, once, and nobody was declared dead
    wait_for(lambda: cluster.reported("done"), 30, message="done")
    # (beyond what presence needs to judge: a grace, a check and a sweep)
    time.sleep(2)
    assert [(m, p) for m, p, _ in cluster.reported("started")] == [(message_id, victim.pid)]
    assert "worker-dead" not in cluster.kinds() and "recovered" not in cluster.kinds()
    assert {w.worker_id for w in registered(cluster.store)} == {victim.worker_id, peer.worker_id}


@pytest.mark.rabbitmq
def test_on_rabbitmq_the_redeliveries_of_a_dead_workers_messages_run_at_once_not_put_off(
    cluster: Cluster, rabbitmq: object
) -> None:
    # Given a worker on another host running two messages, and a live peer with two threads
    victim_process = cluster.spawn(
        kind="rabbitmq", threads=2, broker_url=RABBITMQ_URL, env=PRESENCE_TIMINGS, isolation="host"
    )
    (victim,) = cluster.wait_registered(1)
    ids = [enqueue(rabbitmq, cluster.names.queue, "slow", 0) for _ in range(2)]
    wait_for(lambda: len(cluster.reported("started")) == 2, 20, message="both running")
    cluster.spawn_rabbitmq(threads=2, env=PRESENCE_TIMINGS)
    peer = cluster.wait_new_worker(victim)
    wait_for(lambda: present(cluster.store, victim) and present(cluster.store, peer), 10, message="their presence seen")
    wait_settled(cluster.store)

    # When the worker is SIGKILLed: RabbitMQ delivers both messages again at once, to the peer's two
    # threads, which judge the dead worker side by side (one declares it dead while the other judges)
    killed = time.time()
    kill(victim_process.pid_of(victim))

    # Then both redeliveries run on the peer within about half the grace, as recoveries, neither put
    # off behind a copy that looks alive until heartbeat_timeout
    def restarted() -> list[float]:
        return [at for _, pid, at in cluster.reported("started") if pid == peer.pid]

    wait_for(lambda: len(restarted()) == 2, RABBITMQ_BOUND, message="both run again on the peer")
    print("restarted %s s after the kill" % ", ".join("%.2f" % (at - killed) for at in restarted()))
    assert not any("duplicate-deferred" in cluster.kinds(message_id) for message_id in ids)
    wait_for(
        lambda: all("recovered" in cluster.kinds(message_id) for message_id in ids), 5, message="counted as recoveries"
    )
    assert victim.worker_id in cluster.store.dead_workers()
    # and the death's event says what told it: presence, at the redelivery (a later sweep finishes it)
    sweep_bound = int(PRESENCE_TIMINGS["TEST_SWEEP_INTERVAL"]) / 1000 + 5
    wait_for(lambda: dead_event(cluster.store, victim.worker_id) is not None, sweep_bound, message="worker-dead")
    death = dead_event(cluster.store, victim.worker_id)
    assert death is not None and death.details["reason"] == "presence gone", death
