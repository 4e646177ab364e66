"""A worker declared dead while alive (SIGSTOP, a GIL stall) resumes: what it fetched before runs
nowhere twice, and its late completion never releases a lock a later attempt holds."""

from __future__ import annotations

import collections
import os
import signal
import time
from collections.abc import Callable

import dramatiq
import pytest
import redis
from dramatiq.brokers.redis import RedisBroker
from dramatiq.message import Message

from dramatiq_tracker import DuplicateMessage, TrackerMiddleware
from dramatiq_tracker.ops.reads import InspectionStore
from dramatiq_tracker.records import InflightRecord, WorkerInfo

from .conftest import Namespaces, events
from .support import (
    BOUND,
    FAST,
    WorkerProcess,
    close_redis_broker,
    kill,
    kinds,
    send,
    stream,
    wait_for,
    wait_new_worker,
    wait_registered,
)

pytestmark = pytest.mark.slow


def starts(client: redis.Redis, names: Namespaces) -> collections.Counter[str]:
    return collections.Counter(mid for mid, _, _ in events(client, names, "started"))


def test_a_worker_declared_dead_while_stopped_runs_none_of_its_prefetched_or_delayed_copies_after_it_resumes(
    redis_client: redis.Redis,
    namespaces: Namespaces,
    spawn_worker: Callable[..., WorkerProcess],
    producer: RedisBroker,
    store: InspectionStore,
) -> None:
    # Given a worker with one thread, running a 6 s message, with 3 more prefetched and a delayed one held
    spawn_worker(threads=1, env={"dramatiq_queue_prefetch": "4"})
    (victim,) = wait_registered(store, 1)
    (running,) = [producer.enqueue(Message(namespaces.queue, "sleep", (6,), {}, {})).message_id]
    wait_for(lambda: len(events(redis_client, namespaces, "started")) == 1, 20, message="running")
    prefetched = send(producer, namespaces.queue, "fast", 3)
    delayed = producer.enqueue(Message(namespaces.queue, "fast", (99,), {}, {}), delay=4000).message_id
    wait_for(lambda: redis_client.llen("%s:%s" % (namespaces.broker, namespaces.queue)) == 0, 10, message="fetched")
    dq = "%s:%s.DQ" % (namespaces.broker, namespaces.queue)
    wait_for(lambda: redis_client.llen(dq) == 0, 10, message="delayed one held")
    # And a live worker
    spawn_worker(threads=4)
    survivor = wait_new_worker(store, victim)

    # When the victim is stopped past its heartbeat timeout, recovered, and then resumes
    os.kill(victim.pid, signal.SIGSTOP)
    try:
        wait_for(lambda: victim.worker_id in store.dead_workers(), BOUND + 5, message="declared dead")
        wait_for(
            lambda: all(starts(redis_client, namespaces)[mid] >= 1 for mid in prefetched),
            BOUND + 5,
            message="the prefetched ones delivered again",
        )
    finally:
        resumed_at = time.time()
        os.kill(victim.pid, signal.SIGCONT)

    # Then the victim learns it was declared dead, and its stale copies never start
    wait_for(lambda: "zombie-detected" in kinds(store), 10, message="the zombie learns it")
    detected = next(e for e in stream(store) if e.kind == "zombie-detected")
    # (the running message ran on as a zombie: nothing stops a thread; it ends after 6 s)
    wait_for(lambda: starts(redis_client, namespaces)[delayed] >= 1, 15, message="the delayed one ran")
    wait_for(
        lambda: len([e for e in events(redis_client, namespaces, "done") if e[0] == running]) == 2,
        15,
        message="the running one done twice",
    )
    wait_for(lambda: kinds(store).count("stale-copy-skipped") >= 4, 10, message="4 stale copies skipped")
    counts = starts(redis_client, namespaces)
    assert {mid: counts[mid] for mid in [*prefetched, delayed]} == {mid: 1 for mid in [*prefetched, delayed]}
    assert all(pid == survivor.pid for mid, pid, _ in events(redis_client, namespaces, "started") if mid != running)
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
    redis_url: str,
    redis_client: redis.Redis,
    namespaces: Namespaces,
    spawn_worker: Callable[..., WorkerProcess],
    store: InspectionStore,
) -> None:
    broker, actor = unique_producer(redis_url, namespaces)
    # Given a worker that stops right after starting a unique message, before its record is written
    victim_process = spawn_worker(threads=1, slow_seconds=0.2)
    (victim,) = wait_registered(store, 1)
    message = actor.send(1)
    wait_for(lambda: len(events(redis_client, namespaces, "started")) == 1, 20, message="started, then stopped")
    assert store.inflight(victim.worker_id) == {}
    # And a live worker, whose copy runs for 8 s
    spawn_worker(threads=2, slow_seconds=8)
    survivor = wait_new_worker(store, victim)
    try:
        # When the victim is recovered: its copy started again on the survivor, with a new attempt and the lock
        wait_for(
            lambda: any(e[1] == survivor.pid for e in events(redis_client, namespaces, "started")),
            BOUND + 5,
            message="the successor started",
        )
        (lock,) = store.locks()
        assert (lock.message_id, lock.attempt) == (message.message_id, 1)
        # (its record, written before it ran, names the lock, for a recovery of it and for operators)
        record = InflightRecord.from_json(
            store.inflight(survivor.worker_id)[message.message_id],
            message_id=message.message_id,
            worker_id=survivor.worker_id,
        )
        assert record.lock_digest_and_mode == (lock.digest, lock.mode)
        recovered = next(e for e in stream(store) if e.kind == "recovered")
        assert "not started" not in recovered.text and "not recorded running" in recovered.text
    finally:
        # And then the victim resumes and completes its old copy
        os.kill(victim.pid, signal.SIGCONT)
    wait_for(lambda: any(e[1] == victim.pid for e in events(redis_client, namespaces, "done")), 10, message="zombie")

    # Then the successor still holds the lock: a duplicate is refused while it runs
    assert not any(e[1] == survivor.pid for e in events(redis_client, namespaces, "done"))
    (lock,) = store.locks()
    assert (lock.message_id, lock.attempt) == (message.message_id, 1)
    with pytest.raises(DuplicateMessage):
        actor.send(1)
    # And when the successor completes, the lock is released
    wait_for(lambda: any(e[1] == survivor.pid for e in events(redis_client, namespaces, "done")), 15)
    wait_for(lambda: store.locks() == [], 5, message="lock released")
    actor.send(1)
    kill(victim_process.process.pid)
    close_redis_broker(broker)


def test_a_recovered_copy_that_has_not_started_when_the_zombie_completes_its_message_is_dropped(
    redis_client: redis.Redis,
    namespaces: Namespaces,
    spawn_worker: Callable[..., WorkerProcess],
    producer: RedisBroker,
    store: InspectionStore,
) -> None:
    # Given a live worker busy for 8 s with one thread, and another worker running a 3 s message
    victim, message_id = busy_survivor_and_victim(redis_client, namespaces, spawn_worker, producer, store, 3)
    wait_for(lambda: message_id in store.inflight(victim.worker_id), 20, message="running on the victim")

    # When the victim is stopped past its heartbeat timeout (its message is recovered and queued again,
    # waiting for a free thread), then resumes and completes its own copy before the recovered one starts
    os.kill(victim.pid, signal.SIGSTOP)
    try:
        wait_for(lambda: victim.worker_id in store.dead_workers(), BOUND + 5, message="declared dead")
    finally:
        os.kill(victim.pid, signal.SIGCONT)

    # Then the recovered copy is dropped when it starts: the message ran once
    wait_for(lambda: "duplicate-dropped" in kinds(store, message_id), 20, message="dropped")
    assert [e[0] for e in events(redis_client, namespaces, "started")].count(message_id) == 1
    assert [e[0] for e in events(redis_client, namespaces, "done")].count(message_id) == 1


def test_a_message_a_stopped_worker_completes_as_it_resumes_is_not_run_again_by_its_recovered_copy(
    redis_client: redis.Redis,
    namespaces: Namespaces,
    spawn_worker: Callable[..., WorkerProcess],
    producer: RedisBroker,
    store: InspectionStore,
) -> None:
    # Given a live worker busy for 8 s, and another one running a 1.5 s message
    seconds = 1.5
    victim, message_id = busy_survivor_and_victim(redis_client, namespaces, spawn_worker, producer, store, seconds)
    wait_for(lambda: message_id in kinds_started(redis_client, namespaces), 20, message="running on the victim")
    started = time.monotonic()

    # When the victim is stopped until it is declared dead and its message's sleep is over, so that the
    # message completes the moment it resumes, before the victim's next heartbeat
    os.kill(victim.pid, signal.SIGSTOP)
    try:
        assert message_id not in [e[0] for e in events(redis_client, namespaces, "done")], "ended before the stop"
        wait_for(lambda: victim.worker_id in store.dead_workers(), BOUND + 5, message="declared dead")
        wait_for(lambda: time.monotonic() - started > seconds, seconds, message="its sleep over")
    finally:
        os.kill(victim.pid, signal.SIGCONT)

    # Then its completion counts as a zombie's, and the recovered copy is dropped before it starts
    wait_for(lambda: "duplicate-dropped" in kinds(store, message_id), 20, message="dropped")
    assert "zombie-completion" in kinds(store, message_id)
    assert kinds_started(redis_client, namespaces).count(message_id) == 1
    assert [e[0] for e in events(redis_client, namespaces, "done")].count(message_id) == 1


def kinds_started(client: redis.Redis, names: Namespaces) -> list[str]:
    return [mid for mid, _, _ in events(client, names, "started")]


def busy_survivor_and_victim(
    client: redis.Redis,
    names: Namespaces,
    spawn_worker: Callable[..., WorkerProcess],
    producer: RedisBroker,
    store: InspectionStore,
    seconds: float,
) -> tuple[WorkerInfo, str]:
    """A worker with one thread busy for 8 s (prefetching nothing), and a second one, the victim,
    sent a message that sleeps ``seconds``: (the victim, the message id)."""
    one_at_a_time = {"dramatiq_queue_prefetch": "1"}
    spawn_worker(threads=1, env=one_at_a_time)
    (survivor,) = wait_registered(store, 1)
    producer.enqueue(Message(names.queue, "sleep", (8,), {}, {}))
    wait_for(lambda: len(events(client, names, "started")) == 1, 20, message="survivor busy")
    spawn_worker(threads=1, env=one_at_a_time)
    victim = wait_new_worker(store, survivor)
    return victim, producer.enqueue(Message(names.queue, "sleep", (seconds,), {}, {})).message_id
