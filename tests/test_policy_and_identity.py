"""What travels with a message, and who may recover whom: split worker pools, several apps in one
namespace, and brokers the tracker cannot see into."""

from __future__ import annotations

import dataclasses
import os
import signal
import time
from collections.abc import Callable, Iterator
from typing import Any

import dramatiq
import pytest
import redis
from dramatiq.brokers.redis import RedisBroker
from dramatiq.message import Message
from dramatiq.middleware import CurrentMessage

from dramatiq_tracker.ops.reads import InspectionStore

from .conftest import Cluster, Namespaces, StubApp
from .support import (
    BOUND,
    close_redis_broker,
    kill,
    kinds,
    reads,
    send,
    wait_for,
)


@pytest.mark.slow
def test_a_sweeper_that_does_not_import_an_at_most_once_actor_still_never_runs_its_orphan_again(
    cluster: Cluster, producer: RedisBroker
) -> None:
    # Given a pool of workers that runs an at-most-once actor (max_recoveries=0), running one of its messages
    cluster.spawn(threads=1, slow_seconds=60)
    (pool_x,) = cluster.wait_registered(1)
    (message_id,) = send(producer, cluster.names.queue, "once", 1)
    wait_for(lambda: message_id in cluster.store.inflight(pool_x.worker_id), 20, message="recorded before it runs")
    # And another pool on the same broker that consumes another queue and does not import that actor
    other_queue = cluster.names.queue + "_y"
    cluster.spawn(threads=1, env={"TEST_QUEUE": other_queue, "TEST_SKIP_ACTORS": "once"}, queues=[other_queue])
    cluster.wait_new_worker(pool_x)

    # When the first pool's worker dies and the other pool's sweeper recovers it
    kill(pool_x.pid)
    wait_for(lambda: "quarantined" in cluster.kinds(message_id), BOUND + 5, message="quarantined")

    # Then its own policy applied: dead-lettered, not delivered again with the middleware's default
    dead_letters = "%s:%s.XQ" % (cluster.names.broker, cluster.names.queue)
    assert cluster.client.zcard(dead_letters) == 1
    # And a worker of the first pool that starts afterwards never runs it again
    cluster.spawn(threads=1, slow_seconds=0.1)
    wait_for(lambda: len(cluster.store.workers()) == 2, 20, message="a new worker of the first pool")
    time.sleep(BOUND)
    assert [e[0] for e in cluster.reported("started")] == [message_id]
    assert cluster.store.message_history(message_id)["outcome"] == "quarantine"


@pytest.mark.slow
def test_every_app_sharing_a_namespace_recovers_its_own_dead_workers_within_the_bound(
    redis_url: str, cluster: Cluster
) -> None:
    # Given an app on one broker whose worker sweeps first and often (it would hold a shared lease forever)
    cluster.spawn(threads=1, env={"TEST_SWEEP_INTERVAL": "50"})
    (app_a,) = cluster.wait_registered(1)
    lease = "{%s}:v1:sweep-lease*" % cluster.names.tracker
    wait_for(lambda: list(cluster.store.client.scan_iter(match=lease)), 5, message="a lease held")
    # And a second app, on another broker namespace, with two workers, one of them running a message
    other = cluster.names.broker + ":b"
    env = {"TEST_BROKER_NAMESPACE": other}
    cluster.spawn(threads=1, slow_seconds=60, env=env)
    victim = cluster.wait_new_worker(app_a)
    other_broker = RedisBroker(url=redis_url, namespace=other)
    (message_id,) = send(other_broker, cluster.names.queue, "slow", 1)
    wait_for(lambda: len(cluster.reported("started")) == 1, 20, message="running")
    cluster.spawn(threads=1, slow_seconds=0.1, env=env)
    survivor = cluster.wait_new_worker(app_a, victim)

    # When that worker freezes
    frozen_at = time.time()
    os.kill(victim.pid, signal.SIGSTOP)
    try:
        # Then its own app's live worker recovers it within the bound
        cluster.wait_reported_by(survivor.pid, BOUND + 5, "recovered by its app")
        restarted = next(e for e in cluster.reported("started") if e[1] == survivor.pid)
        assert restarted[0] == message_id
        assert restarted[2] - frozen_at <= BOUND
    finally:
        kill(victim.pid)
        close_redis_broker(other_broker)


# Brokers the tracker cannot see into (StubBroker) ------------------------------------------


class App(StubApp):
    """A StubBroker app with a tracker and a Worker; two apps of one identity stand for two processes."""

    def __init__(self, redis_url: str, namespace: str, actor_name: str, **tracker_options: object) -> None:
        super().__init__(redis_url, namespace, threads=2, **tracker_options)
        self.started: list[str] = []

        def work(index: int) -> None:
            message = CurrentMessage.get_current_message()
            assert message is not None
            self.started.append(message.message_id)
            self.release.wait(30)

        self.actor = dramatiq.actor(work, broker=self.broker, actor_name=actor_name, max_retries=0)

    def run_one(self) -> tuple[Message[Any], str]:
        """Start the worker and send it a message; returns the message and the worker's id once it runs
        and its record is written."""
        self.worker.start()
        message = self.actor.send(1)
        wait_for(lambda: self.started, 10, message="running")
        worker_id = self.tracker.worker_id
        assert worker_id is not None
        wait_for(lambda: message.message_id in reads(self.tracker).inflight(worker_id), 5, message="recorded")
        return message, worker_id


@pytest.fixture
def apps(redis_url: str, namespaces: Namespaces) -> Iterator[Callable[..., App]]:
    made: list[App] = []

    def make(actor_name: str, **options: object) -> App:
        made.append(App(redis_url, namespaces.tracker, actor_name, **options))
        return made[-1]

    yield make
    for app in made:
        app.close()


def test_another_apps_sweeper_never_takes_an_orphan_its_broker_cannot_deliver(apps: Callable[..., App]) -> None:
    # Given two apps on StubBrokers (in-memory: each is its own broker) sharing a tracker namespace
    first, other = apps("first_work"), apps("other_work")
    message, worker_id = first.run_one()
    other.worker.start()

    # When the first app's worker dies
    first.die()
    time.sleep(BOUND + 1)

    # Then the other app's sweeper left its orphan alone: it did not enqueue it onto its own broker,
    # where it would have been dead-lettered for want of its actor
    assert other.broker.dead_letters == []
    assert message.message_id in reads(first.tracker).inflight(worker_id)
    assert "recovered" not in kinds(first.tracker.store, message.message_id)


def test_processes_of_one_app_on_an_opaque_broker_recover_each_other_given_a_broker_identity(
    apps: Callable[..., App],
) -> None:
    # Given two processes of one app (broker_identity says they share a broker), and another app
    first, second = apps("work", broker_identity="app-a"), apps("work", broker_identity="app-a")
    other = apps("other_work", broker_identity="app-b")
    message, _ = first.run_one()
    second.worker.start()
    other.worker.start()
    second.release.set()

    # When the first dies
    first.die()

    # Then its own app's other process runs the message again, and the other app never touches it
    wait_for(lambda: message.message_id in second.started, BOUND + 5, message="recovered by its app")
    assert other.broker.dead_letters == [] and other.started == []


def test_a_quarantined_unique_message_leaves_no_lock_on_a_broker_without_a_dead_letter_path(
    apps: Callable[..., App], redis_url: str, namespaces: Namespaces
) -> None:
    # Given two processes of one app with a unique, at-most-once actor, one running a message of it
    first, second = apps("work", broker_identity="app-a"), apps("work", broker_identity="app-a")

    def declare(app: App) -> dramatiq.Actor[[int], None]:
        def unique_once(index: int) -> None:
            app.started.append("unique %d" % index)
            app.release.wait(30)

        return dramatiq.actor(unique_once, broker=app.broker, unique=True, max_recoveries=0, max_retries=0)

    actors = {app: declare(app) for app in (first, second)}
    first.worker.start()
    message = actors[first].send(1)
    wait_for(lambda: first.started, 10, message="running")
    assert len(first.tracker.store.locks()) == 1
    second.release.set()
    second.worker.start()

    # When it dies, and the other process quarantines its message (it may not run twice)
    first.die()
    wait_for(lambda: second.broker.dead_letters, BOUND + 5, message="dead-lettered")
    assert second.broker.dead_letters[0].message_id == message.message_id
    assert second.started == []

    # Then no lock is left (the copy sent to be dead-lettered took none), and the same message may be sent again
    wait_for(lambda: first.tracker.store.locks() == [], 5, message="no lock left")
    actors[second].send(1)
    wait_for(lambda: second.started == ["unique 1"], 5, message="the new message ran")


@pytest.mark.slow
def test_a_worker_that_died_while_the_trackers_redis_restarted_empty_is_still_recovered(
    redis_url: str, cluster: Cluster, producer: RedisBroker, tracker_server: object
) -> None:
    from .support import RedisServer

    assert isinstance(tracker_server, RedisServer)
    tracker_client = redis.Redis(port=tracker_server.port)
    cluster = dataclasses.replace(cluster, store=InspectionStore(tracker_client, cluster.names.tracker))
    # Given a worker running 2 messages with 2 prefetched, and a live one, tracked in a Redis of their own
    cluster.spawn(threads=2, slow_seconds=60, tracker_url=tracker_server.url)
    (victim,) = cluster.wait_registered(1)
    ids = send(producer, cluster.names.queue, "slow", 4)
    wait_for(lambda: len(cluster.reported("started")) == 2, 20, message="running")
    cluster.spawn(threads=4, slow_seconds=0.1, tracker_url=tracker_server.url)
    survivor = cluster.wait_new_worker(victim)

    # When the tracker's Redis goes down, the worker dies meanwhile, and the tracker's Redis comes back empty
    tracker_server.stop()
    kill(victim.pid)
    time.sleep(0.5)
    tracker_server.start()
    back_at = time.time()

    # Then the live worker registers again, and the dead one, unknown to the tracker now, is found from
    # the broker's own records and recovered: each of its messages starts again once on the live worker
    def restarted() -> list[str]:
        return cluster.reported_by(survivor.pid)

    wait_for(lambda: sorted(restarted()) == sorted(ids), BOUND + 5, message="recovered after the restart")
    last = max(e[2] for e in cluster.reported("started") if e[1] == survivor.pid)
    assert last - back_at <= BOUND + 1
    assert "worker-adopted" in cluster.kinds()
    assert (
        cluster.client.scard("%s:__acks__.%s.%s" % (cluster.names.broker, victim.broker_id, cluster.names.queue)) == 0
    )
    tracker_client.close()


# A message running over a retry ---------------------------------------------------------------


@pytest.mark.slow
def test_a_retry_that_starts_before_its_failed_attempt_is_written_off_is_not_taken_for_a_duplicate(
    cluster: Cluster, producer: RedisBroker
) -> None:
    # Given a worker whose records lag a whole 1.5 s, and an at-most-once actor that fails its first try
    slow_writes = {"TEST_FLUSH_INTERVAL": "1500", "TEST_HEARTBEAT_INTERVAL": "2000", "TEST_HEARTBEAT_TIMEOUT": "4000"}
    cluster.spawn(threads=2, env=slow_writes)
    cluster.wait_registered(1)

    # When its message fails and Dramatiq retries it at once
    (message_id,) = send(producer, cluster.names.queue, "flaky", 1)

    # Then the retry runs (it is not put off behind the failed try, then dropped) and completes
    wait_for(lambda: cluster.reported("done"), 10, message="the retry done")
    assert [e[0] for e in cluster.reported("started")] == [message_id, message_id]
    assert "duplicate-deferred" not in cluster.kinds(message_id)
