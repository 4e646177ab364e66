"""Uniqueness locks and orphan recovery: surgical clearing, fencing, and no lock traffic without uniqueness."""

from __future__ import annotations

import collections
import logging
import os
import signal
import threading
import time

import dramatiq
import pytest
import redis
from dramatiq.brokers.redis import RedisBroker

from dramatiq_tracker import TrackerMiddleware
from dramatiq_tracker.orphans import Orphan
from dramatiq_tracker.scripts import ClaimRequest
from dramatiq_tracker.unique import compute_digest

from .conftest import Cluster, Namespaces
from .support import (
    BOUND,
    close_redis_broker,
    fake_dead_worker,
    kill,
    reads,
    wait_for,
)


def tracker_for(broker: RedisBroker, client: redis.Redis, namespace: str) -> TrackerMiddleware:
    tracker = TrackerMiddleware(client=client, namespace=namespace)
    broker.add_middleware(tracker)
    dramatiq.set_broker(broker)
    return tracker


def unique_options(mode: str, actor: str, queue: str, index: int) -> dict[str, object]:
    return {"unique_digest": compute_digest(actor, queue, (index,), {}), "unique_mode": mode}


def lock_keys(client: redis.Redis, namespace: str) -> list[bytes]:
    return list(client.scan_iter(match="{%s}:v1:lock:*" % namespace))


# Surgical clearing, no processes -----------------------------------------------------------


@pytest.mark.parametrize(("mode", "outcome"), [("while_executing", "deleted"), ("until_executed", "transferred")])
def test_recovery_releases_exactly_the_locks_its_orphans_own(
    redis_broker: RedisBroker, redis_client: redis.Redis, namespaces: Namespaces, mode: str, outcome: str
) -> None:
    tracker = tracker_for(redis_broker, redis_client, namespaces.tracker)
    store = reads(tracker)
    queue = namespaces.queue
    # Given a dead worker running a unique message that holds its lock
    options = unique_options(mode, "work", queue, 0)
    info, (orphan,) = fake_dead_worker(redis_broker, tracker.store, queue, 1, running=1, options=options)
    digest = str(options["unique_digest"])
    assert store.acquire_lock(digest, orphan.message_id, 0, mode, "work", queue, info.worker_id, None)[0] == "acquired"
    # And a live message of another worker holding its own lock
    live_digest = compute_digest("work", queue, (99,), {})
    store.acquire_lock(live_digest, "live-message", 0, mode, "work", queue, "live-worker", None)

    # When the dead worker is recovered
    (item,) = tracker.recover().recovered

    # Then the orphan's lock was released or passed to its next attempt, atomically with its claim
    assert item.lock == outcome and item.recoveries == 1 and item.attempt == 1
    lock = store.lock(digest)
    if mode == "while_executing":
        assert lock is None
    else:
        assert lock is not None and (lock.message_id, lock.attempt, lock.worker_id) == (orphan.message_id, 1, "")
    # And the live message's lock is untouched
    live = store.lock(live_digest)
    assert live is not None and (live.message_id, live.attempt, live.worker_id) == ("live-message", 0, "live-worker")


def test_a_lock_passed_to_an_orphan_that_its_zombie_acked_before_the_move_is_released(
    redis_broker: RedisBroker, redis_client: redis.Redis, namespaces: Namespaces
) -> None:
    tracker = tracker_for(redis_broker, redis_client, namespaces.tracker)
    store = reads(tracker)
    queue = namespaces.queue
    # Given a worker declared dead while it runs an until_executed message holding its lock
    options = unique_options("until_executed", "work", queue, 0)
    info, (orphan,) = fake_dead_worker(redis_broker, tracker.store, queue, 1, running=1, options=options)
    digest = str(options["unique_digest"])
    store.acquire_lock(digest, orphan.message_id, 0, "until_executed", "work", queue, info.worker_id, None)
    acks = "%s:__acks__.%s.%s" % (namespaces.broker, info.broker_id, queue)

    # When, while the sweeper cleans it (after the claim passed the lock on), the zombie completes and acks it
    def zombie_acks(claimed: Orphan) -> None:
        (redis_id,) = redis_client.smembers(acks)
        redis_client.srem(acks, redis_id)
        redis_client.hdel("%s:%s.msgs" % (namespaces.broker, queue), redis_id)

    tracker.add_lock_cleaner(zombie_acks)
    tracker.recover()

    # Then no copy is moved back, and the lock no copy would ever release is released
    assert redis_client.llen("%s:%s" % (namespaces.broker, queue)) == 0
    assert store.lock(digest) is None


@pytest.mark.parametrize("mode", ["while_executing", "until_executed"])
def test_a_sweep_racing_with_the_redelivered_start_leaves_the_new_attempts_lock_alone(
    redis_broker: RedisBroker, redis_client: redis.Redis, namespaces: Namespaces, mode: str
) -> None:
    tracker = tracker_for(redis_broker, redis_client, namespaces.tracker)
    store = reads(tracker)
    queue = namespaces.queue
    options = unique_options(mode, "work", queue, 0)
    digest = str(options["unique_digest"])
    info, (orphan,) = fake_dead_worker(redis_broker, tracker.store, queue, 1, running=1, options=options)
    store.acquire_lock(digest, orphan.message_id, 0, mode, "work", queue, info.worker_id, None)
    # Given a first sweeper recovered the orphan, and its redelivery started and took its lock
    assert len(tracker.recover().recovered) == 1
    assert store.acquire_lock(digest, orphan.message_id, 1, mode, "work", queue, "new-worker", None)[0] in (
        "acquired",
        "owned",
    )

    # When a late sweeper claims the same orphan of the same dead worker
    (claim,) = store.claim_orphans(
        info.worker_id,
        tracker.identity_digest,
        [ClaimRequest(orphan.message_id, 0, digest, mode, 3)],
        mode="deliver",
        history_ttl=60_000,
    )

    # Then it counts nothing more and leaves the new attempt's lock alone
    assert claim.recoveries == 1 and claim.attempt == 1 and claim.lock == ""
    lock = store.lock(digest)
    assert lock is not None and (lock.attempt, lock.worker_id) == (1, "new-worker")


def test_a_failing_lock_cleaner_is_logged_and_the_orphan_delivered_anyway(
    redis_broker: RedisBroker, redis_client: redis.Redis, namespaces: Namespaces, caplog: pytest.LogCaptureFixture
) -> None:
    tracker = tracker_for(redis_broker, redis_client, namespaces.tracker)
    cleaned: list[str] = []

    def broken(orphan: object) -> None:
        raise RuntimeError("mutex server is down")

    tracker.add_lock_cleaner(broken)
    tracker.add_lock_cleaner(lambda orphan: cleaned.append(orphan.message_id))
    _, messages = fake_dead_worker(redis_broker, tracker.store, namespaces.queue, 2, running=1)

    with caplog.at_level(logging.WARNING):
        report = tracker.recover()

    # The failure is a warning naming the message, the next cleaner still ran, and both orphans went back
    (failure,) = [r for r in caplog.records if "Lock cleaner" in r.getMessage()]
    assert failure.levelno == logging.WARNING and messages[0].message_id in failure.getMessage()
    assert "mutex server is down" in failure.getMessage()
    assert cleaned == [messages[0].message_id]
    assert sorted(report.message_ids) == sorted(m.message_id for m in messages)
    assert redis_client.llen("%s:%s" % (namespaces.broker, namespaces.queue)) == 2


def test_without_unique_actors_no_lock_key_is_ever_touched(
    redis_url: str, redis_broker: RedisBroker, redis_client: redis.Redis, namespaces: Namespaces
) -> None:
    tracker = tracker_for(redis_broker, redis_client, namespaces.tracker)
    commands: list[str] = []
    stop = threading.Event()
    monitor_client = redis.Redis.from_url(redis_url)

    def watch() -> None:
        with monitor_client.monitor() as monitor:
            for command in monitor.listen():
                if namespaces.tracker in command["command"]:
                    commands.append(command["command"])
                if stop.is_set():
                    return

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    time.sleep(0.2)
    # When plain messages are sent, and a dead worker's orphans are recovered
    fake_dead_worker(redis_broker, tracker.store, namespaces.queue, 3)
    assert len(tracker.recover().recovered) == 3
    stop.set()
    redis_client.ping()
    redis_client.get("{%s}:v1:end-of-test" % namespaces.tracker)
    watcher.join(5)
    monitor_client.close()
    # Then the tracker did its work without a single lock key
    assert any("claim" in c or "EVALSHA" in c.upper() for c in commands), commands
    assert not [c for c in commands if ":v1:lock" in c or ":v1:locks" in c]


# Real worker processes ------------------------------------------------------------------


def unique_producer(redis_url: str, names: Namespaces) -> tuple[RedisBroker, dict[str, dramatiq.Actor[..., None]]]:
    """A producer with the worker app's unique actors (tests/apps/worker_app.py), so that send() locks."""
    broker = RedisBroker(url=redis_url, namespace=names.broker)
    broker.add_middleware(TrackerMiddleware(client=broker.client, namespace=names.tracker))
    actors = {
        "unique_slow": dramatiq.actor(lambda index: None, broker=broker, actor_name="unique_slow",
                                      queue_name=names.queue, unique=True),
        "unique_running": dramatiq.actor(lambda index: None, broker=broker, actor_name="unique_running",
                                         queue_name=names.queue, unique="while_executing"),
    }  # fmt: skip
    return broker, actors


@pytest.mark.slow
def test_a_killed_worker_s_unique_messages_come_back_at_once_and_leave_no_lock(
    redis_url: str, cluster: Cluster
) -> None:
    producer, actors = unique_producer(redis_url, cluster.names)
    # Given a worker running an until_executed and a while_executing message, both locked, no TTL
    cluster.spawn(threads=2, slow_seconds=120)
    (victim,) = cluster.wait_registered(1)
    ids = [actors["unique_slow"].send(0).message_id, actors["unique_running"].send(0).message_id]
    wait_for(lambda: len(cluster.reported("started")) == 2, 20, message="victim busy")
    wait_for(lambda: len(cluster.store.locks()) == 2, 5, message="both locks held")
    wait_for(lambda: len(cluster.store.inflight(victim.worker_id)) == 2, 5, message="records written")
    cluster.spawn(threads=4, slow_seconds=0.2)
    survivor = cluster.wait_new_worker(victim)

    # When it is SIGKILLed
    killed_at = time.time()
    kill(victim.pid)

    # Then both start again on the survivor within the recovery bound, not after a lock TTL
    def done() -> list[tuple[str, int, float]]:
        return cluster.reported("done", survivor.pid)

    wait_for(lambda: len(done()) == 2, BOUND + 5, message="both done on the survivor")
    restarted = cluster.reported("started", survivor.pid)
    assert collections.Counter(mid for mid, _, _ in restarted) == collections.Counter(ids)
    assert max(at for _, _, at in restarted) - killed_at <= BOUND
    # And afterwards no lock key is left: the while_executing one goes as its actor returns, just
    # after the "done" event the actor itself writes
    wait_for(lambda: cluster.store.locks() == [], 5, message="both locks released")
    assert lock_keys(cluster.client, cluster.names.tracker) == []
    close_redis_broker(producer)


@pytest.mark.slow
def test_a_zombies_late_completion_does_not_release_its_successors_lock(redis_url: str, cluster: Cluster) -> None:
    producer, actors = unique_producer(redis_url, cluster.names)
    # Given a worker running an until_executed message for 3 s, and a live worker whose copy takes 5 s
    zombie = cluster.spawn(threads=1, slow_seconds=3)
    (victim,) = cluster.wait_registered(1)
    message_id = actors["unique_slow"].send(0).message_id
    wait_for(lambda: len(cluster.reported("started")) == 1, 20, message="victim busy")
    started_at = cluster.reported("started")[0][2]
    wait_for(lambda: len(cluster.store.inflight(victim.worker_id)) == 1, 5, message="record written")
    cluster.spawn(threads=1, slow_seconds=5)
    survivor = cluster.wait_new_worker(victim)

    # When the first freezes past its heartbeat timeout, its message is recovered by the live one
    os.kill(victim.pid, signal.SIGSTOP)
    try:
        cluster.wait_reported_by(survivor.pid, BOUND + 5, "the successor started")
        (lock,) = cluster.store.locks()
        assert (lock.message_id, lock.attempt) == (message_id, 1)
    finally:
        # And then it wakes up and completes its copy: a zombie's late completion
        os.kill(victim.pid, signal.SIGCONT)
    cluster.wait_reported_by(victim.pid, 10, "zombie done", "done")
    assert time.time() - started_at < 6, "the successor should still be running"

    # Then the successor's lock is still held, by the successor's attempt
    time.sleep(0.3)
    (lock,) = cluster.store.locks()
    assert (lock.message_id, lock.attempt) == (message_id, 1)
    # And the zombie learned that it was declared dead
    wait_for(lambda: "declared dead while it was alive" in zombie.output(), 5, message="fencing logged")
    # And the successor releases its lock when it completes
    cluster.wait_reported_by(survivor.pid, 10, "successor", "done")
    wait_for(lambda: cluster.store.locks() == [], 5, message="lock released")
    close_redis_broker(producer)
