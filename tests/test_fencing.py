"""A worker declared dead while alive (SIGSTOP, a GIL stall) resumes: what it fetched before runs
nowhere twice, and its late completion never releases a lock a later attempt holds."""

from __future__ import annotations

import collections
import os
import signal
import time

import dramatiq
import pytest
import redis
from dramatiq.brokers.redis import RedisBroker
from dramatiq.message import Message

from dramatiq_tracker import DuplicateMessage, TrackerMiddleware
from dramatiq_tracker.records import InflightRecord, WorkerInfo

from .conftest import Cluster, Namespaces, events
from .support import (
    BOUND,
    FAST,
    close_redis_broker,
    kill,
    send,
    stream,
    wait_for,
)

pytestmark = pytest.mark.slow


def starts(client: redis.Redis, names: Namespaces) -> collections.Counter[str]:
    return collections.Counter(mid for mid, _, _ in events(client, names, "started"))


def test_a_worker_declared_dead_while_stopped_runs_none_of_its_prefetched_or_delayed_copies_after_it_resumes(
    cluster: Cluster, producer: RedisBroker
) -> None:
    # Given a worker with one thread, running a 6 s message, with 3 more prefetched and a delayed one held
    cluster.spawn(threads=1, env={"dramatiq_queue_prefetch": "4"})
    (victim,) = cluster.wait_registered(1)
    (running,) = [producer.enqueue(Message(cluster.names.queue, "sleep", (6,), {}, {})).message_id]
    wait_for(lambda: len(cluster.reported("started")) == 1, 20, message="running")
    prefetched = send(producer, cluster.names.queue, "fast", 3)
    delayed = producer.enqueue(Message(cluster.names.queue, "fast", (99,), {}, {}), delay=4000).message_id
    wait_for(
        lambda: cluster.client.llen("%s:%s" % (cluster.names.broker, cluster.names.queue)) == 0, 10, message="fetched"
    )
    dq = "%s:%s.DQ" % (cluster.names.broker, cluster.names.queue)
    wait_for(lambda: cluster.client.llen(dq) == 0, 10, message="delayed one held")
    # And a live worker
    cluster.spawn(threads=4)
    survivor = cluster.wait_new_worker(victim)

    # When the victim is stopped past its heartbeat timeout, recovered, and then resumes
    os.kill(victim.pid, signal.SIGSTOP)
    try:
        wait_for(lambda: victim.worker_id in cluster.store.dead_workers(), BOUND + 5, message="declared dead")
        wait_for(
            lambda: all(starts(cluster.client, cluster.names)[mid] >= 1 for mid in prefetched),
            BOUND + 5,
            message="the prefetched ones delivered again",
        )
    finally:
        resumed_at = time.time()
        os.kill(victim.pid, signal.SIGCONT)

    # Then the victim learns it was declared dead, and its stale copies never start
    wait_for(lambda: "zombie-detected" in cluster.kinds(), 10, message="the zombie learns it")
    detected = next(e for e in stream(cluster.store) if e.kind == "zombie-detected")
    # (the running message ran on as a zombie: nothing stops a thread; it ends after 6 s)
    wait_for(lambda: starts(cluster.client, cluster.names)[delayed] >= 1, 15, message="the delayed one ran")
    wait_for(
        lambda: len([e for e in cluster.reported("done") if e[0] == running]) == 2,
        15,
        message="the running one done twice",
    )
    wait_for(lambda: cluster.kinds().count("stale-copy-skipped") >= 4, 10, message="4 stale copies skipped")
    counts = starts(cluster.client, cluster.names)
    assert {mid: counts[mid] for mid in [*prefetched, delayed]} == {mid: 1 for mid in [*prefetched, delayed]}
    assert all(pid == survivor.pid for mid, pid, _ in cluster.reported("started") if mid != running)
    # And it found out within one heartbeat interval (plus scheduling) of resuming
    delay = detected.at / 1000 - resumed_at
    print("fencing detected %.3f s after resuming" % delay)
    assert delay < FAST["heartbeat_interval"] / 1000 + 1


def unique_producer(redis_url: str, names: Namespaces) -> tuple[RedisBroker, dramatiq.Actor[..., None]]:
    broker = RedisBroker(url=redis_url, namespace=names.broker)
    broker.add_middleware(TrackerMiddleware(client=broker.client, namespace=names.tracker, **FAST))
    actor = dramatiq.actor(
        lambda index: None, broker=broker, actor_name="stall_at_start", queue_name=names.queue, unique=True
    )
    return broker, actor


def test_a_late_completion_after_a_stall_at_start_never_releases_the_lock_of_the_next_attempt(
    redis_url: str, cluster: Cluster
) -> None:
    broker, actor = unique_producer(redis_url, cluster.names)
    # Given a worker that stops right after starting a unique message, before its record is written
    victim_process = cluster.spawn(threads=1, slow_seconds=0.2)
    (victim,) = cluster.wait_registered(1)
    message = actor.send(1)
    wait_for(lambda: len(cluster.reported("started")) == 1, 20, message="started, then stopped")
    assert cluster.store.inflight(victim.worker_id) == {}
    # And a live worker, whose copy runs for 8 s
    cluster.spawn(threads=2, slow_seconds=8)
    survivor = cluster.wait_new_worker(victim)
    try:
        # When the victim is recovered: its copy started again on the survivor, with a new attempt and the lock
        cluster.wait_reported_by(survivor.pid, BOUND + 5, "the successor started")
        (lock,) = cluster.store.locks()
        assert (lock.message_id, lock.attempt) == (message.message_id, 1)
        # (its record, written before it ran, names the lock, for a recovery of it and for operators)
        record = InflightRecord.from_json(
            cluster.store.inflight(survivor.worker_id)[message.message_id],
            message_id=message.message_id,
            worker_id=survivor.worker_id,
        )
        assert record.lock_digest_and_mode == (lock.digest, lock.mode)
        recovered = next(e for e in stream(cluster.store) if e.kind == "recovered")
        assert "not started" not in recovered.text and "not recorded running" in recovered.text
    finally:
        # And then the victim resumes and completes its old copy
        os.kill(victim.pid, signal.SIGCONT)
    cluster.wait_reported_by(victim.pid, 10, "zombie", "done")

    # Then the successor still holds the lock: a duplicate is refused while it runs
    assert not any(e[1] == survivor.pid for e in cluster.reported("done"))
    (lock,) = cluster.store.locks()
    assert (lock.message_id, lock.attempt) == (message.message_id, 1)
    with pytest.raises(DuplicateMessage):
        actor.send(1)
    # And when the successor completes, the lock is released
    wait_for(lambda: any(e[1] == survivor.pid for e in cluster.reported("done")), 15)
    wait_for(lambda: cluster.store.locks() == [], 5, message="lock released")
    actor.send(1)
    kill(victim_process.process.pid)
    close_redis_broker(broker)


def test_a_recovered_copy_that_has_not_started_when_the_zombie_completes_its_message_is_dropped(
    cluster: Cluster, producer: RedisBroker
) -> None:
    # Given a live worker busy for 8 s with one thread, and another worker running a 3 s message
    victim, message_id = busy_survivor_and_victim(cluster, producer, 3)
    wait_for(lambda: message_id in cluster.store.inflight(victim.worker_id), 20, message="running on the victim")

    # When the victim is stopped past its heartbeat timeout (its message is recovered and queued again,
    # waiting for a free thread), then resumes and completes its own copy before the recovered one starts
    os.kill(victim.pid, signal.SIGSTOP)
    try:
        wait_for(lambda: victim.worker_id in cluster.store.dead_workers(), BOUND + 5, message="declared dead")
    finally:
        os.kill(victim.pid, signal.SIGCONT)

    # Then the recovered copy is dropped when it starts: the message ran once
    wait_for(lambda: "duplicate-dropped" in cluster.kinds(message_id), 20, message="dropped")
    assert [e[0] for e in cluster.reported("started")].count(message_id) == 1
    assert [e[0] for e in cluster.reported("done")].count(message_id) == 1


def test_a_message_a_stopped_worker_completes_as_it_resumes_is_not_run_again_by_its_recovered_copy(
    cluster: Cluster, producer: RedisBroker
) -> None:
    # Given a live worker busy for 8 s, and another one running a 1.5 s message
    seconds = 1.5
    victim, message_id = busy_survivor_and_victim(cluster, producer, seconds)
    wait_for(lambda: cluster.starts(message_id), 20, message="running on the victim")
    started = time.monotonic()

    # When the victim is stopped until it is declared dead and its message's sleep is over, so that the
    # message completes the moment it resumes, before the victim's next heartbeat
    os.kill(victim.pid, signal.SIGSTOP)
    try:
        assert message_id not in [e[0] for e in cluster.reported("done")], "ended before the stop"
        wait_for(lambda: victim.worker_id in cluster.store.dead_workers(), BOUND + 5, message="declared dead")
        wait_for(lambda: time.monotonic() - started > seconds, seconds, message="its sleep over")
    finally:
        os.kill(victim.pid, signal.SIGCONT)

    # Then its completion counts as a zombie's, and the recovered copy is dropped before it starts
    wait_for(lambda: "duplicate-dropped" in cluster.kinds(message_id), 20, message="dropped")
    assert "zombie-completion" in cluster.kinds(message_id)
    assert len(cluster.starts(message_id)) == 1
    assert [e[0] for e in cluster.reported("done")].count(message_id) == 1


def busy_survivor_and_victim(cluster: Cluster, producer: RedisBroker, seconds: float) -> tuple[WorkerInfo, str]:
    """A worker with one thread busy for 8 s (prefetching nothing), and a second one, the victim,
    sent a message that sleeps ``seconds``: (the victim, the message id)."""
    one_at_a_time = {"dramatiq_queue_prefetch": "1"}
    cluster.spawn(threads=1, env=one_at_a_time)
    (survivor,) = cluster.wait_registered(1)
    producer.enqueue(Message(cluster.names.queue, "sleep", (8,), {}, {}))
    wait_for(lambda: len(cluster.reported("started")) == 1, 20, message="survivor busy")
    cluster.spawn(threads=1, env=one_at_a_time)
    victim = cluster.wait_new_worker(survivor)
    return victim, producer.enqueue(Message(cluster.names.queue, "sleep", (seconds,), {}, {})).message_id
