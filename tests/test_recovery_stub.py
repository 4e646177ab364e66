"""Orphan recovery on StubBroker with embedded Workers: the stored payload is enqueued again.

A StubBroker lives in memory, so a worker cannot be killed without losing its
queues.  Death is simulated instead: the dead worker's tracker threads stop
without deregistering (its heartbeat lapses) and its actor threads never
finish, exactly what a SIGKILL leaves behind in Redis.
"""

from __future__ import annotations

import collections
import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any

import dramatiq
import pytest
from dramatiq.brokers.stub import StubBroker
from dramatiq.middleware import CurrentMessage

from dramatiq_tracker import Orphan, TrackerMiddleware
from dramatiq_tracker.records import InflightRecord

from .conftest import Namespaces, StubApp, booted_stub_broker, make_tracker, running_worker
from .support import BOUND, reads, wait_for

#: Two StubBrokers stand for two processes of one app: they share a broker identity.
IDENTITY = "test-app"


class App(StubApp):
    """A StubBroker with a tracker and an actor that reports its starts."""

    def __init__(self, redis_url: str, namespace: str, started: list[tuple[str, str, float]], name: str) -> None:
        super().__init__(redis_url, namespace, threads=3, broker_identity=IDENTITY)
        self.name = name
        self.cleaned: list[Orphan] = []
        self.tracker.add_lock_cleaner(self.cleaned.append)

        @dramatiq.actor(broker=self.broker, queue_name="work", max_retries=0)
        def work(index: int) -> None:
            message = CurrentMessage.get_current_message()
            assert message is not None
            started.append((message.message_id, name, time.time()))
            self.release.wait(30)

        self.work = work


@pytest.fixture
def apps(redis_url: str, namespaces: Namespaces) -> Iterator[tuple[App, App, list[tuple[str, str, float]]]]:
    started: list[tuple[str, str, float]] = []
    first, second = (
        App(redis_url, namespaces.tracker, started, "first"),
        App(redis_url, namespaces.tracker, started, "second"),
    )
    yield first, second, started
    for app in (first, second):
        app.close()


def test_a_dead_workers_running_messages_are_enqueued_again_exactly_once(
    apps: tuple[App, App, list[tuple[str, str, float]]],
) -> None:
    first, second, started = apps
    # Given a worker running 3 messages, their records written
    first.worker.start()
    ids = [first.work.send(index).message_id for index in range(3)]
    wait_for(lambda: len(started) == 3, 10, message="first busy")
    store = reads(first.tracker)
    worker_id = first.tracker.worker_id
    assert worker_id is not None
    wait_for(lambda: len(store.inflight(worker_id)) == 3, 5, message="records written")
    records = [
        InflightRecord.from_json(raw, message_id=mid, worker_id=worker_id)
        for mid, raw in store.inflight(worker_id).items()
    ]
    assert {r.message_id for r in records} == set(ids)
    # A StubBroker loses a dead consumer's messages: its records keep the payload
    assert all(r.payload and r.token for r in records)
    assert sorted(r.preview for r in records) == ["0", "1", "2"]

    # And a second worker that stays alive
    second.worker.start()
    second.release.set()

    # When the first one dies
    died_at = time.time()
    first.die()

    # Then the second one runs every message again, exactly once, within the bound
    wait_for(lambda: len([s for s in started if s[1] == "second"]) >= 3, BOUND + 5, message="3 redeliveries")
    time.sleep(0.5)
    again = [s for s in started if s[1] == "second"]
    assert collections.Counter(mid for mid, _, _ in again) == collections.Counter(ids)
    assert max(at for _, _, at in again) - died_at <= BOUND
    # And each orphan went through the lock cleaners once, before it was delivered again
    assert sorted(o.message_id for o in first.cleaned + second.cleaned) == sorted(ids)
    assert all(o.running and o.worker_id == worker_id and o.recoveries == 1 for o in second.cleaned)
    # And nothing is left in the outbox
    assert store.outbox(first.tracker.identity_digest) == {}
    assert worker_id in store.dead_workers() and worker_id not in store.workers()


@contextlib.contextmanager
def gated_actors(
    redis_url: str, namespace: str, threads: int, **actors: dict[str, Any]
) -> Iterator[tuple[TrackerMiddleware, dict[str, dramatiq.Actor[[], None]], threading.Semaphore]]:
    """Actors (by name, with their options) that run until the block ends, on a tracked StubBroker with a
    Worker of ``threads`` threads; yields the tracker, the actors, and a semaphore each start releases."""
    broker, tracker = booted_stub_broker(redis_url, namespace)
    gate = threading.Event()
    running = threading.Semaphore(0)

    def run_until_released() -> None:
        running.release()
        gate.wait(10)

    declared = {
        name: dramatiq.actor(run_until_released, broker=broker, actor_name=name, **options)
        for name, options in actors.items()
    }
    with running_worker(broker, threads=threads, release=gate):
        yield tracker, declared, running


def test_messages_of_actors_that_opt_out_are_not_tracked(redis_url: str, namespaces: Namespaces) -> None:
    # Given an actor with track=False next to a tracked one
    with gated_actors(redis_url, namespaces.tracker, 2, untracked={"track": False}, tracked={}) as (
        tracker,
        actors,
        running,
    ):
        actors["untracked"].send()
        message = actors["tracked"].send()
        assert running.acquire(timeout=5) and running.acquire(timeout=5)
        worker_id = tracker.worker_id
        assert worker_id is not None
        # When both are running, Then only the tracked one is recorded
        wait_for(lambda: reads(tracker).inflight(worker_id), 5, message="a record")
        time.sleep(0.1)
        assert list(reads(tracker).inflight(worker_id)) == [message.message_id]


def test_a_message_option_overrides_the_actor_option(redis_url: str, namespaces: Namespaces) -> None:
    with gated_actors(redis_url, namespaces.tracker, 1, untracked={"track": False}) as (tracker, actors, running):
        message = actors["untracked"].send_with_options(track=True)
        assert running.acquire(timeout=5)
        worker_id = tracker.worker_id
        assert worker_id is not None
        wait_for(lambda: list(reads(tracker).inflight(worker_id)) == [message.message_id], 5, message="recorded")


@pytest.mark.parametrize("skipper_first", [False, True], ids=["skipped-after-tracker", "skipped-before-tracker"])
def test_records_are_removed_when_messages_are_acked_nacked_or_skipped(
    redis_url: str, namespaces: Namespaces, skipper_first: bool
) -> None:
    # Given actors that succeed, fail (to the dead letters) and get skipped, by a middleware
    # placed before the tracker (which then sees the skip but not the start) or after it
    broker = StubBroker()
    tracker: TrackerMiddleware = make_tracker(redis_url, namespaces.tracker)

    class Skipper(dramatiq.Middleware):
        def before_process_message(self, broker: dramatiq.Broker, message: dramatiq.MessageProxy) -> None:
            if message.actor_name == "skipped":
                raise dramatiq.middleware.SkipMessage()

    for middleware in (Skipper(), tracker) if skipper_first else (tracker, Skipper()):
        broker.add_middleware(middleware)
    broker.emit_after("process_boot")

    @dramatiq.actor(broker=broker, max_retries=0)
    def succeeds() -> None:
        time.sleep(0.1)

    @dramatiq.actor(broker=broker, max_retries=0)
    def fails() -> None:
        time.sleep(0.1)
        raise RuntimeError("expected")

    @dramatiq.actor(broker=broker, max_retries=0)
    def skipped() -> None:
        raise AssertionError("never runs")

    with running_worker(broker, threads=4) as worker:
        worker_id = tracker.worker_id
        assert worker_id is not None
        for _ in range(5):
            succeeds.send()
            fails.send()
            skipped.send()
        broker.join(succeeds.queue_name, fail_fast=False)
        worker.join()
        # When the recorder has flushed, Then nothing is left in flight
        time.sleep(0.2)
        assert reads(tracker).inflight(worker_id) == {}
        assert tracker.store.client.hlen(tracker.store.keys.running) == 0
        assert len(broker.dead_letters) == 5


def test_an_at_most_once_message_of_a_dead_worker_is_dead_lettered_not_run_again(
    redis_url: str, namespaces: Namespaces
) -> None:
    started: list[tuple[str, str, float]] = []
    first = App(redis_url, namespaces.tracker, started, "first")
    second = App(redis_url, namespaces.tracker, started, "second")
    try:
        # Given a worker running an at-most-once message (max_recoveries=0)
        first.worker.start()
        message = first.work.send_with_options(args=(0,), max_recoveries=0)
        wait_for(lambda: len(started) == 1, 10, message="running")
        worker_id = first.tracker.worker_id
        assert worker_id is not None
        # (its start was recorded before it ran, not in the background)
        assert message.message_id in reads(first.tracker).inflight(worker_id)
        second.worker.start()
        second.release.set()

        # When the worker dies
        first.die()

        # Then the message is dead-lettered by the live worker instead of run again
        wait_for(lambda: len(second.broker.dead_letters) == 1, BOUND + 5, message="dead-lettered")
        assert second.broker.dead_letters[0].message_id == message.message_id
        assert [s[1] for s in started] == ["first"]
    finally:
        for app in (first, second):
            app.close()


def test_a_record_written_before_its_message_runs_survives_a_registration_made_at_the_same_moment(
    redis_url: str, namespaces: Namespaces, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given an at-most-once actor, whose messages are recorded by their worker thread before they run,
    # and a tracker's Redis slow to answer registrations (which replace the worker's whole registry)
    broker, tracker = booted_stub_broker(redis_url, namespaces.tracker)
    release = threading.Event()

    @dramatiq.actor(broker=broker, queue_name="once", max_retries=0, max_recoveries=0)
    def once(index: int) -> None:
        release.wait(30)

    with running_worker(broker, tracker, threads=2, release=release):
        store = tracker.store
        register = store.register

        def slow_register(*args: object, **kwargs: object) -> object:
            registering.set()
            time.sleep(0.3)
            return register(*args, **kwargs)  # type: ignore[arg-type]

        registering = threading.Event()
        monkeypatch.setattr(store, "register", slow_register)

        # When the worker registers again (a queue declared late, lost writes) just as a message starts
        broker.declare_queue("declared_late")
        assert registering.wait(5)
        message = once.send(1)

        # Then, once both are done, the message's record is in Redis: it would be recovered
        worker_id = tracker.worker_id
        assert worker_id is not None
        wait_for(
            lambda: "declared_late" in (reads(tracker).registration(worker_id) or ""), 10, message="registered again"
        )
        wait_for(lambda: message.message_id in reads(tracker).inflight(worker_id), 5, message="recorded")
        assert message.message_id in reads(tracker).inflight(worker_id)
