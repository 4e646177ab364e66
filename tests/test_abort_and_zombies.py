"""dramatiq-abort integration and zombie fencing, with real worker processes."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator

import pytest
from dramatiq.brokers.redis import RedisBroker
from dramatiq.message import Message

from dramatiq_tracker import TrackerMiddleware

from .conftest import Cluster, Namespaces, events
from .support import (
    BOUND,
    FAST,
    close_redis_broker,
    kill,
    wait_for,
)

dramatiq_abort = pytest.importorskip("dramatiq_abort")
pytestmark = [pytest.mark.slow, pytest.mark.abort]

#: Long timings: recovery only comes from a worker booting on this host (the pid check).
SLOW_EXPIRY = {"TEST_HEARTBEAT_INTERVAL": "10000", "TEST_HEARTBEAT_TIMEOUT": "60000", "TEST_SWEEP_INTERVAL": "30000"}


def abort_env(names: Namespaces, ttl: int = 90_000) -> dict[str, str]:
    return {"TEST_ABORTABLE": "1", "TEST_ABORT_NAMESPACE": "%s:aborts:" % names.broker, "TEST_ABORT_TTL": str(ttl)}


class Producer:
    """An application process: a broker with dramatiq-abort and (optionally) the tracker."""

    def __init__(self, redis_url: str, names: Namespaces, *, ttl: int, tracked: bool) -> None:
        from dramatiq_abort import Abortable
        from dramatiq_abort.backends import RedisBackend

        self.broker = RedisBroker(url=redis_url, namespace=names.broker)
        self.abortable = Abortable(
            backend=RedisBackend(client=self.broker.client, namespace="%s:aborts:" % names.broker), abort_ttl=ttl
        )
        self.broker.add_middleware(self.abortable)
        self.tracker = (
            TrackerMiddleware(client=self.broker.client, namespace=names.tracker, **FAST) if tracked else None
        )
        if self.tracker is not None:
            self.broker.add_middleware(self.tracker)
        self.broker.declare_queue(names.queue)
        self.queue = names.queue

    def send(self, actor_name: str, *args: object) -> str:
        message = Message(queue_name=self.queue, actor_name=actor_name, args=args, kwargs={}, options={})
        return self.broker.enqueue(message).message_id

    def close(self) -> None:
        close_redis_broker(self.broker)


@pytest.fixture
def producers(redis_url: str, namespaces: Namespaces) -> Iterator[Callable[..., Producer]]:
    made: list[Producer] = []

    def make(*, ttl: int = 90_000, tracked: bool = True) -> Producer:
        made.append(Producer(redis_url, namespaces, ttl=ttl, tracked=tracked))
        return made[-1]

    yield make
    for producer in made:
        producer.close()


@pytest.mark.parametrize("mode", ["cancel", "abort"])
def test_a_cancelled_message_whose_worker_dies_is_not_run_again_even_after_the_abort_ttl(
    cluster: Cluster, producers: Callable[..., Producer], mode: str
) -> None:
    # Given a worker running a long message, and a cancel or abort request of it that lives 500 ms
    ttl = 500
    cluster.spawn(threads=1, env={**abort_env(cluster.names, ttl), **SLOW_EXPIRY})
    (victim,) = cluster.wait_registered(1)
    producer = producers(ttl=ttl)
    message_id = producer.send("slow", 0)
    wait_for(lambda: len(cluster.reported("started")) == 1, 20, message="running")
    assert producer.tracker is not None
    producer.tracker.abort(message_id, mode=mode)
    # (an abort interrupts a running message at once; a cancel leaves it running)
    time.sleep(0.3)

    # When its worker is SIGKILLed, and it is recovered after dramatiq-abort forgot the request
    kill(victim.pid)
    time.sleep(ttl / 1000 + 0.5)
    assert not cluster.client.exists("%s:aborts:cancel:%s" % (cluster.names.broker, message_id))
    cluster.spawn(threads=1, slow_seconds=0.1, env={**abort_env(cluster.names, ttl), **SLOW_EXPIRY})
    cluster.wait_new_worker(victim)

    # Then it is dropped instead of delivered again
    wait_for(lambda: "abort-honoured" in cluster.kinds(message_id), 10, message="abort honoured")
    time.sleep(0.5)
    assert len([e for e in cluster.reported("started") if e[0] == message_id]) == 1
    assert cluster.client.llen("%s:%s" % (cluster.names.broker, cluster.names.queue)) == 0
    assert cluster.client.hlen("%s:%s.msgs" % (cluster.names.broker, cluster.names.queue)) == 0
    assert cluster.store.message_history(message_id)["abort"] == mode


def test_a_cancel_sent_by_a_process_without_the_tracker_is_honoured_within_its_ttl(
    cluster: Cluster, producers: Callable[..., Producer]
) -> None:
    # Given a worker running a long message, cancelled by plain dramatiq-abort from an untracked process
    cluster.spawn(threads=1, env={**abort_env(cluster.names), **SLOW_EXPIRY})
    (victim,) = cluster.wait_registered(1)
    producer = producers(tracked=False)
    message_id = producer.send("slow", 0)
    wait_for(lambda: len(cluster.reported("started")) == 1, 20, message="running")
    dramatiq_abort.abort(message_id, middleware=producer.abortable, mode=dramatiq_abort.middleware.AbortMode.CANCEL)

    # When its worker is SIGKILLed and another boots
    kill(victim.pid)
    cluster.spawn(threads=1, slow_seconds=0.1, env={**abort_env(cluster.names), **SLOW_EXPIRY})

    # Then the recovery sees the pending cancel without consuming it, and drops the message
    wait_for(lambda: "abort-honoured" in cluster.kinds(message_id), 10, message="abort honoured")
    assert cluster.client.llen("%s:aborts:cancel:%s" % (cluster.names.broker, message_id)) == 1
    time.sleep(0.5)
    assert len([e for e in cluster.reported("started") if e[0] == message_id]) == 1


def test_a_zombies_abortable_copy_is_aborted_when_it_learns_it_was_declared_dead(
    cluster: Cluster, producers: Callable[..., Producer]
) -> None:
    # Given a worker running an abortable message, and a live worker
    zombie = cluster.spawn(threads=1, env=abort_env(cluster.names))
    (victim,) = cluster.wait_registered(1)
    producer = producers()
    message_id = producer.send("abortable_sleep", 4)
    wait_for(lambda: len(cluster.reported("started")) == 1, 20, message="running")
    wait_for(lambda: len(cluster.store.inflight(victim.worker_id)) == 1, 5, message="recorded")
    cluster.spawn(threads=1, env=abort_env(cluster.names))
    survivor = cluster.wait_new_worker(victim)

    # When it freezes past its heartbeat timeout, its message starts again elsewhere, and it resumes
    os.kill(victim.pid, signal.SIGSTOP)
    try:
        cluster.wait_reported_by(survivor.pid, BOUND + 5, "the successor started")
    finally:
        os.kill(victim.pid, signal.SIGCONT)

    # Then the zombie learns it, aborts its own copy, and the successor runs to completion
    cluster.wait_reported_by(victim.pid, 10, "abort", "aborted")
    cluster.wait_reported_by(survivor.pid, 15, "done", "done")
    assert not cluster.reported("done", victim.pid)
    assert "zombie-detected" in cluster.kinds() and "zombie-aborted" in cluster.kinds(message_id)
    assert "declared dead while it was alive" in zombie.output()


def test_a_recovered_copy_put_off_behind_its_zombie_runs_when_the_zombie_fails_and_is_never_aborted_for_it(
    cluster: Cluster, producers: Callable[..., Producer]
) -> None:
    # Given the only worker of a queue, with threads to spare, running two abortable messages whose first
    # attempt fails when it ends (a recovered attempt succeeds)
    cluster.spawn(threads=4, env=abort_env(cluster.names))
    (victim,) = cluster.wait_registered(1)
    producer = producers(tracked=True)
    ids = [producer.send("abortable_fail_first", 3) for _ in range(2)]
    wait_for(lambda: len(cluster.store.inflight(victim.worker_id)) == 2, BOUND + 5, message="both recorded")

    # When it freezes past its heartbeat timeout, is recovered (its messages go back to its queue), and
    # resumes: its spare threads fetch the recovered copies while its zombie copies still run here
    os.kill(victim.pid, signal.SIGSTOP)
    try:
        tracker = producer.tracker
        assert tracker is not None
        recovered: list[str] = []
        wait_for(
            lambda: recovered.extend(tracker.recover().message_ids) or sorted(recovered) == sorted(ids),
            BOUND + 5,
            message="recovered",
        )
    finally:
        os.kill(victim.pid, signal.SIGCONT)

    # Then each message completes, on its recovered attempt: the abort meant for a zombie never lands on
    # the copy that replaced it, and a zombie's failure does not dead-letter the copy put off behind it
    def reported(event: str) -> list[str]:
        return sorted(mid for mid, _, _ in events(cluster.client, cluster.names, event))

    wait_for(lambda: reported("done") == sorted(ids), 2 * BOUND + 15, message="each done")
    assert "duplicate-dead-lettered" not in cluster.kinds()
    # And none of them runs a third time, or completes twice, within another recovery bound
    deadline = time.monotonic() + BOUND
    while time.monotonic() < deadline:
        assert reported("done") == sorted(ids)
        assert all(reported("started").count(mid) <= 2 for mid in ids)
        time.sleep(0.1)
