"""Recovery at its edges: Dramatiq's maintenance racing a move, a sweeper finishing another's job,
embedded Workers sharing a process, a broker that fails a deferral, duplicates and results,
and hosts without /proc."""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any

import dramatiq
import pytest
import redis
from dramatiq import Worker
from dramatiq.brokers.redis import MAINTENANCE_SCALE, RedisBroker
from dramatiq.brokers.stub import StubBroker
from dramatiq.message import Message
from dramatiq.middleware import CurrentMessage
from dramatiq.results import ResultFailure, Results
from dramatiq.results.backends import StubBackend

from dramatiq_tracker import TrackerMiddleware
from dramatiq_tracker.host import HostFacts
from dramatiq_tracker.recovery_claim import RecoveryClaim
from dramatiq_tracker.unique import compute_digest

from .conftest import Namespaces, Sweep, booted_stub_broker, make_tracker, running_worker
from .support import fake_dead_worker, kinds, reads, wait_for


def unique_options(actor: str, queue: str, index: int, mode: str = "until_executed") -> dict[str, object]:
    return {"unique_digest": compute_digest(actor, queue, (index,), {}), "unique_mode": mode}


def test_an_orphan_that_dramatiqs_maintenance_requeues_during_recovery_still_carries_its_marks(sweep: Sweep) -> None:
    queue = sweep.names.queue
    options = unique_options("work", queue, 0)
    _, (orphan,) = sweep.dead_worker(1, running=1, options=options)
    digest = str(options["unique_digest"])
    sweep.tracker.store.acquire_lock(digest, orphan.message_id, 0, "until_executed", "work", queue, "", None)
    # Given Dramatiq's own maintenance requeues the dead process's messages between the claim and the move
    redelivery = sweep.tracker.wiring.recovery.redelivery
    original = redelivery.broker_store.settle  # type: ignore[attr-defined]

    def maintenance_first(*args: Any, **kwargs: Any) -> Any:
        maintenance = RedisBroker(
            client=sweep.broker.client,
            namespace=sweep.broker.namespace,
            heartbeat_timeout=0,
            maintenance_chance=MAINTENANCE_SCALE,
        )
        maintenance.do_qsize(queue)
        return original(*args, **kwargs)

    redelivery.broker_store.settle = maintenance_first  # type: ignore[attr-defined]

    # When the dead worker is recovered
    sweep.tracker.recover()

    # Then the copy maintenance requeued, still waiting, was given its new attempt and recovery count
    (queued_id,) = sweep.client.lrange("%s:%s" % (sweep.names.broker, queue), 0, -1)
    queued = Message.decode(sweep.client.hget("%s:%s.msgs" % (sweep.names.broker, queue), queued_id))
    assert queued.message_id == orphan.message_id
    assert (queued.options["tracker_attempt"], queued.options["tracker_recoveries"]) == (1, 1)
    assert queued.options["redis_message_id"] == queued_id.decode()
    # And its lock, passed to that attempt, is released when that attempt completes
    lock = reads(sweep.tracker).lock(digest)
    assert lock is not None and lock.attempt == 1
    assert sweep.tracker.store.release_lock(digest, orphan.message_id, 1, "live-worker")


def test_an_older_attempt_releases_its_lock_only_from_a_worker_that_was_not_declared_dead(
    tracker: TrackerMiddleware, redis_client: redis.Redis
) -> None:
    store = reads(tracker)
    digest = "d" * 32
    store.acquire_lock(digest, "m1", 2, "until_executed", "work", "q", "", None)
    redis_client.zadd(store.keys.dead_workers, {"zombie": 1})
    # A zombie's late completion of an older attempt releases nothing
    assert not store.release_lock(digest, "m1", 1, "zombie")
    # A newer attempt than the lock's, or another message, neither
    assert not store.release_lock(digest, "m1", 3, "worker")
    assert not store.release_lock(digest, "other", 2, "worker")
    # A live worker that ran an older copy (one Dramatiq's maintenance requeued unmarked) does
    assert store.release_lock(digest, "m1", 1, "live-worker")
    assert store.lock(digest) is None


def test_a_sweeper_that_finishes_an_interrupted_recovery_runs_the_lock_cleaners_too(sweep: Sweep) -> None:
    cleaned: list[str] = []
    sweep.tracker.add_lock_cleaner(lambda orphan: cleaned.append(orphan.message_id))
    info, messages = sweep.dead_worker(2, running=1)
    # Given a sweeper claimed the running orphan long ago and stopped before moving it
    parts = sweep.tracker.wiring
    token = RecoveryClaim.new_token()
    declared = sweep.tracker.store.declare_dead(
        info.worker_id, parts.digest, reason="process", retry_after=10_000, settle=0, grace=0, claim=token
    )
    claim = RecoveryClaim(sweep.tracker.store, parts.settings, parts.digest, info.worker_id, token, time.monotonic())
    candidates = parts.recovery.redelivery._found(
        info, parts.recovery.redelivery.parse_records(info, declared.records)
    )[0]  # type: ignore[attr-defined]
    running = [c for c in candidates if c.message_id == messages[0].message_id]
    parts.claims.claim(info, running, "deliver", claim=claim)
    # (its claim went takeover_after without renewal)
    sweep.client.hset(sweep.tracker.store.keys.recovery(info.worker_id), "renewed", 0)

    # When another sweeper takes the job over
    report = sweep.tracker.recover()

    # Then it moves the orphan and runs the cleaners on the running one it took over
    assert sorted(report.message_ids) == sorted(m.message_id for m in messages)
    assert cleaned == [messages[0].message_id]
    assert sweep.client.llen("%s:%s" % (sweep.names.broker, sweep.names.queue)) == 2


def test_embedded_workers_of_one_process_share_one_registration_until_the_last_stops(
    redis_url: str, namespaces: Namespaces
) -> None:
    broker, tracker = booted_stub_broker(redis_url, namespaces.tracker)
    dramatiq.actor(lambda: None, broker=broker, actor_name="a", queue_name="first")
    dramatiq.actor(lambda: None, broker=broker, actor_name="b", queue_name="second")
    first = Worker(broker, queues={"first"}, worker_threads=1, worker_timeout=50)
    second = Worker(broker, queues={"second"}, worker_threads=2, worker_timeout=50)
    try:
        # Given two embedded Workers of one process, on different queues
        first.start()
        second.start()
        store = tracker.store
        worker_id = tracker.worker_id
        assert worker_id is not None

        def registration() -> dict[str, Any]:
            import json

            raw = store.registration(worker_id)
            return json.loads(raw) if raw else {}

        # Then one registration consumes both queues
        wait_for(lambda: registration().get("queues") == ["first", "second"], 5, message="both queues")
        assert registration()["worker_threads"] == 3
        # And when the first stops, the process is still registered, with the second's queue
        first.stop()
        wait_for(lambda: registration().get("queues") == ["second"], 5, message="one queue left")
        # And the last one to stop deregisters it
        second.stop()
        assert store.registration(worker_id) is None
    finally:
        first.stop()
        second.stop()
        broker.close()
        tracker.close()


class FailingEnqueues(StubBroker):
    """A broker whose enqueue of a put-off duplicate fails, as a broker outage would make it."""

    fail = False

    def enqueue(self, message: Message[Any], *, delay: int | None = None) -> Message[Any]:
        if self.fail and message.options.get("tracker_deferred_behind"):
            raise ConnectionError("broker is down")
        return super().enqueue(message, delay=delay)


def test_a_duplicate_that_cannot_be_put_off_is_dead_lettered_rather_than_run_beside_its_twin(
    redis_url: str, namespaces: Namespaces, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dramatiq_tracker import at_risk

    monkeypatch.setattr(at_risk, "DEFERRAL_RETRY_SECONDS", 0.3)
    broker = FailingEnqueues()
    broker.add_middleware(CurrentMessage())
    tracker = make_tracker(redis_url, namespaces.tracker)
    broker.add_middleware(tracker)
    broker.emit_after("process_boot")
    gate = threading.Event()
    runs: list[str] = []

    @dramatiq.actor(broker=broker, max_retries=0)
    def work() -> None:
        runs.append("run")
        gate.wait(10)

    with running_worker(broker, tracker, threads=2, release=gate):
        # Given a message running, and a second delivery of it (as RabbitMQ redelivers on a connection loss)
        message = work.send()
        wait_for(lambda: runs, 5, message="running")
        wait_for(lambda: message.message_id in reads(tracker).inflight(tracker.worker_id or ""), 5, message="recorded")
        broker.fail = True
        broker.enqueue(message.copy(options={"tracker_attempt": 0}))
        # When the duplicate cannot be put off because the broker fails
        wait_for(lambda: broker.dead_letters, 10, message="dead-lettered")
        # Then it is dead-lettered, never run beside the running copy
        assert runs == ["run"]
        assert "deferral-failed" in kinds(tracker.store, message.message_id)


def test_a_dropped_duplicates_result_says_it_was_a_duplicate(
    redis_url: str, namespaces: Namespaces, caplog: pytest.LogCaptureFixture
) -> None:
    broker = StubBroker()
    backend = StubBackend()
    broker.add_middleware(Results(backend=backend))
    tracker = make_tracker(redis_url, namespaces.tracker)
    broker.add_middleware(tracker)
    broker.emit_after("process_boot")

    @dramatiq.actor(broker=broker, unique=True, unique_on_conflict="drop", store_results=True)
    def work(index: int) -> int:
        return index * 2

    worker = Worker(broker, worker_threads=1, worker_timeout=50)
    try:
        first = work.send(1)
        duplicate = work.send(1)
        worker.start()
        broker.join(work.queue_name)
        worker.join()
        assert first.get_result(backend=backend) == 2
        with pytest.raises(ResultFailure, match="duplicates message"):
            duplicate.get_result(backend=backend)
        # And Dramatiq's "was skipped" warning is left out for it: the tracker logs why instead
        assert not [r for r in caplog.records if "was skipped" in r.getMessage()]
    finally:
        worker.stop()
        broker.close()
        tracker.close()


def test_a_put_off_while_executing_duplicate_is_not_reported_as_skipped_by_dramatiq(
    redis_url: str, namespaces: Namespaces, caplog: pytest.LogCaptureFixture
) -> None:
    broker, tracker = booted_stub_broker(redis_url, namespaces.tracker)
    gate = threading.Event()
    runs: list[int] = []

    @dramatiq.actor(broker=broker, unique="while_executing", unique_delay=100, max_retries=0)
    def work(index: int) -> None:
        runs.append(index)
        gate.wait(10)

    with running_worker(broker, tracker, threads=2, release=gate):
        with caplog.at_level(logging.INFO):
            work.send(1)
            wait_for(lambda: runs, 5, message="running")
            work.send(1)
            wait_for(lambda: any("Delaying message" in r.getMessage() for r in caplog.records), 5)
            gate.set()
            wait_for(lambda: len(runs) == 2, 10, message="the duplicate ran once the first was done")
        assert not [r for r in caplog.records if "was skipped" in r.getMessage()]


def test_where_proc_is_missing_no_process_is_judged_gone_and_no_signal_is_sent(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def refuse(*args: Any) -> None:
        raise AssertionError("os.kill must not be called")

    monkeypatch.setattr(os, "kill", refuse)
    here = HostFacts("host", os.getpid(), "", "", "")
    gone = HostFacts("host", 999_999, "", "", "")
    assert not here.knows_processes
    assert not here.process_is_gone(gone)
    assert not here.process_is_gone(here)


@pytest.mark.parametrize("when", ["at-construction", "before-binding", "after-binding"])
def test_a_failing_lock_cleaner_is_always_reported_whatever_the_construction_order(
    redis_broker: RedisBroker,
    redis_client: redis.Redis,
    namespaces: Namespaces,
    caplog: pytest.LogCaptureFixture,
    when: str,
) -> None:
    def broken(orphan: object) -> None:
        raise RuntimeError("mutex server is down")

    tracker = TrackerMiddleware(
        client=redis_client, namespace=namespaces.tracker, lock_cleaners=[broken] if when == "at-construction" else []
    )
    if when == "before-binding":
        tracker.add_lock_cleaner(broken)
    redis_broker.add_middleware(tracker)
    dramatiq.set_broker(redis_broker)
    if when == "after-binding":
        tracker.wiring  # noqa: B018 - binds the machinery first
        tracker.add_lock_cleaner(broken)
    fake_dead_worker(redis_broker, tracker.store, namespaces.queue, 1, running=1)

    with caplog.at_level(logging.WARNING):
        tracker.recover()

    assert [r.getMessage() for r in caplog.records if "mutex server is down" in r.getMessage()]
    assert "lock-cleaner-failed" in kinds(tracker.store)
