"""The inspection API reads a namespace from Redis alone: real worker processes, real records."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TypeVar

import pytest
import redis
from dramatiq.brokers.redis import RedisBroker

from dramatiq_tracker import ConfigurationError, TrackerMiddleware, TrackerNotConfigured
from dramatiq_tracker.events import LOCK_DELETED
from dramatiq_tracker.keys import identity_digest
from dramatiq_tracker.ops.actions import Operator, load_broker
from dramatiq_tracker.ops.inspection import ALIVE, DEAD, GONE, UNRESPONSIVE, Inspector, Unswept
from dramatiq_tracker.ops.reads import InspectionStore
from dramatiq_tracker.ops.views import PRESENCE_LOST, PROCESS_EXITED, Page
from dramatiq_tracker.records import InflightRecord, WorkerInfo

from .conftest import Cluster, Namespaces, events
from .support import BOUND, kill, wait_for

T = TypeVar("T")


@pytest.fixture
def inspector(redis_url: str, namespaces: Namespaces) -> Iterator[Inspector]:
    with Inspector(url=redis_url, namespace=namespaces.tracker) as found:
        yield found


def every_page(read: Callable[[str], Page[T]]) -> list[T]:
    """Every item of a listing, read one page at a time from the first cursor to the last."""
    seen: list[T] = []
    cursor = ""
    while True:
        page = read(cursor)
        seen += page.items
        cursor = page.cursor
        if not cursor:
            return seen


def started(client: redis.Redis, names: Namespaces) -> list[str]:
    return [message_id for message_id, _, _ in events(client, names, "started")]


def test_workers_and_their_messages_in_flight_are_listed_filtered_and_paged(
    cluster: Cluster, producer: RedisBroker, inspector: Inspector
) -> None:
    # Given a worker running three slow messages
    worker, ids = cluster.busy_worker(producer, 3, threads=4)

    # Then the inspector sees the worker alive, heartbeating, with three messages
    (view,) = inspector.workers().items
    assert (view.worker_id, view.state, view.pid, view.inflight) == (worker.worker_id, ALIVE, worker.pid, 3)
    assert view.queues == (cluster.names.queue,) and view.hostname == worker.hostname
    assert view.heartbeat_age is not None and view.heartbeat_age < 1000 and view.overdue is None
    # And each message, with its actor, queue, worker and how long it has been running
    records = inspector.inflight().items
    assert sorted(r.message_id for r in records) == sorted(ids)
    assert {(r.actor_name, r.queue_name, r.worker_id, r.worker_state) for r in records} == {
        ("slow", cluster.names.queue, worker.worker_id, ALIVE)
    }
    assert all(r.running_for >= 0 and r.attempt == 0 and r.preview.isdigit() for r in records)
    # Filtered by actor, queue, worker and age
    assert inspector.inflight(actor="fast").items == []
    assert inspector.inflight(queue="other").items == []
    assert len(inspector.inflight(worker_id=worker.worker_id).items) == 3
    assert inspector.inflight(worker_id="nobody").items == []
    assert inspector.inflight(older_than=3_600_000).items == []
    # And paged: one at a time, each exactly once
    seen = [r.message_id for r in every_page(lambda cursor: inspector.inflight(limit=1, cursor=cursor))]
    assert sorted(seen) == sorted(ids)
    # And the status adds them up
    status = inspector.status()
    assert status.workers[ALIVE] == 1 and status.inflight == 3 and status.orphans == 0
    ((queue),) = status.queues
    assert (queue.queue_name, queue.inflight, queue.orphans) == (cluster.names.queue, 3, 0)
    assert dict(status.actors) == {"slow": 3}
    # And the oldest of them are found on the server, oldest first
    oldest = inspector.oldest(2).items
    assert len(oldest) == 2 and {r.message_id for r in oldest} <= set(ids)
    assert oldest[0].running_for >= oldest[1].running_for and oldest[0].worker_id == worker.worker_id


def test_a_killed_worker_of_this_host_is_gone_at_once_with_its_orphans_waiting_then_dead_once_recovered(
    cluster: Cluster, producer: RedisBroker, inspector: Inspector
) -> None:
    # Given a worker running two messages, SIGKILLed, with no other worker to sweep
    victim, ids = cluster.busy_worker(producer, 2)
    kill(victim.pid)

    # Then it is gone at once (this host sees its process gone), before its heartbeat expires, and its
    # messages are orphans waiting, which no live worker sweeps
    # (the kernel takes a moment to tear a killed process down)
    view = wait_for(lambda: (v := inspector.worker(victim.worker_id)) and v.state == GONE and v, 5, message="gone")
    assert view.gone in (PROCESS_EXITED, PRESENCE_LOST)  # whichever is seen first, once workers keep a presence
    assert "is dead, not recovered yet: %s" % view.why_gone in view.unhealthy()
    orphans = inspector.orphans()
    assert sorted(o.message_id for o in orphans.items) == sorted(ids) and orphans.total == 2
    assert {(o.worker_id, o.worker_state, o.where, o.actor_name) for o in orphans.items} == {
        (victim.worker_id, GONE, "record", "slow")
    }
    status = inspector.status()
    assert status.workers[GONE] == 1 and status.workers[ALIVE] == 0 and status.orphans == 2
    assert status.queues[0].orphans == 2 and status.queues[0].oldest > 0
    assert status.oldest_orphan > 0
    assert status.unswept == [Unswept(victim.broker_identity, [victim.worker_id], 2)]
    # Its heartbeat then expires: still gone, and its orphans have waited since its last heartbeat
    wait_for(lambda: inspector.worker(victim.worker_id).overdue is not None, BOUND + 5, message="expired")
    assert inspector.worker(victim.worker_id).state == GONE

    # When another worker starts and recovers them
    cluster.spawn(threads=2, slow_seconds=60)
    survivor = cluster.wait_new_worker(victim)
    wait_for(lambda: inspector.orphans().total == 0, BOUND + 5, message="recovered")
    assert inspector.status().unswept == []

    # Then the victim is a tombstone (once the sweeper finished: its records go before its registration),
    # the messages run on the survivor, and history and counters say so
    wait_for(lambda: inspector.worker(victim.worker_id).state == DEAD, BOUND, message="tombstone")
    assert [w.worker_id for w in inspector.dead_workers()] == [victim.worker_id]
    wait_for(lambda: len(inspector.inflight(worker_id=survivor.worker_id).items) == 2, 20, message="running again")
    message = inspector.message(ids[0])
    assert message is not None and message.history is not None
    assert (message.history.recoveries, message.history.outcome) == (1, "deliver")
    assert message.history.orphaned_from == victim.worker_id and message.history.orphaned_running
    assert message.running is not None and message.running.worker_id == survivor.worker_id
    assert message.running.attempt == 1 and message.running.recoveries == 1
    assert "recovered" in [e.kind for e in message.events] and all(e.id for e in message.events)
    assert inspector.counters().of("recovered") == 2
    assert inspector.status().workers[DEAD] == 1
    assert inspector.message("no-such-message") is None


def test_a_worker_declared_dead_while_stopped_shows_fenced_with_the_id_it_goes_on_as(
    cluster: Cluster, producer: RedisBroker, inspector: Inspector
) -> None:
    victim, _, view = cluster.fenced_worker(inspector)
    # It goes on under its new id (registered right after it notes it)
    new = wait_for(lambda: (v := inspector.worker(view.fenced_as)) is not None and v.alive and v, 10, message="new id")
    assert new.pid == victim.pid
    assert inspector.worker("no-such-worker") is None


def test_locks_are_listed_filtered_and_paged(
    redis_url: str, namespaces: Namespaces, store: InspectionStore, inspector: Inspector
) -> None:
    for index in range(5):
        store.acquire_lock("digest-%d" % index, "m%d" % index, 0, "until_executed", "charge", "q", "", None)
    store.acquire_lock("digest-x", "mx", 0, "until_expired", "report", "q", "w1", 60_000)

    assert len(inspector.locks().items) == 6 and inspector.locks().total == 6
    assert [lock.digest for lock in inspector.locks(actor="report").items] == ["digest-x"]
    assert [lock.digest for lock in inspector.locks(owner="m3").items] == ["digest-3"]
    assert [lock.digest for lock in inspector.locks(owner="w1").items] == ["digest-x"]
    assert inspector.locks(older_than=3_600_000).items == []
    seen = [lock.digest for lock in every_page(lambda cursor: inspector.locks(limit=2, cursor=cursor))]
    assert sorted(seen) == sorted(["digest-%d" % i for i in range(5)] + ["digest-x"])
    assert inspector.lock("digest-x").ttl is not None and inspector.lock("nope") is None
    assert inspector.status().locks == 6


def test_corrupt_and_foreign_entries_are_reported_and_skipped_and_left_alone(
    cluster: Cluster, producer: RedisBroker, inspector: Inspector
) -> None:
    worker, (message_id,) = cluster.busy_worker(producer, 1, threads=2)
    keys = cluster.store.keys
    cluster.client.hset(keys.workers, "foreign", "not json")
    cluster.client.hset(keys.inflight(worker.worker_id), "garbage", '{"a": 1}')

    page = inspector.inflight()
    assert [r.message_id for r in page.items] == [message_id]
    assert {(p.field, p.reason.split(":")[0]) for p in page.problems} == {
        ("foreign", "unreadable registration"),
        ("garbage", "unreadable record"),
    }
    assert [w.worker_id for w in inspector.workers().items] == [worker.worker_id]
    status = inspector.status()
    assert status.inflight == 1 and {p.field for p in status.problems} == {"foreign", "garbage"}
    assert cluster.client.hget(keys.workers, "foreign") == b"not json"
    assert cluster.client.hget(keys.inflight(worker.worker_id), "garbage") is not None
    cluster.client.hdel(keys.inflight(worker.worker_id), "garbage")


def test_events_newest_first_paged_back_and_followed(
    namespaces: Namespaces, producer: RedisBroker, store: InspectionStore, inspector: Inspector
) -> None:
    assert inspector.last_event_id() == "0" and not inspector.has_data()
    store.append_events([{"kind": "recovered", "text": "t%d" % i, "message_id": "m%d" % i} for i in range(5)], {}, 100)
    newest = inspector.events(2)
    assert [e.text for e in newest] == ["t4", "t3"]
    assert [e.text for e in inspector.events(2, before=newest[-1].id)] == ["t2", "t1"]
    assert [e.text for e in inspector.events_after(newest[-1].id)] == ["t4"]
    assert inspector.events(10, kinds=["worker-dead"]) == []
    assert inspector.has_data()


def test_bad_settings_fail_at_construction_naming_the_setting(redis_url: str) -> None:
    with pytest.raises(ConfigurationError, match="namespace"):
        Inspector(url=redis_url, namespace="has space")
    with pytest.raises(ConfigurationError, match="url"):
        Inspector(url="http://example.com")
    with pytest.raises(ConfigurationError, match="client"):
        Inspector(client="redis://x")  # type: ignore[arg-type]
    unreachable = Inspector(url="redis://127.0.0.1:1/0")
    with pytest.raises(redis.ConnectionError):
        unreachable.status()
    unreachable.close()
    # A Redis Cluster client connects as it is made: the inspector is made all the same, and its reads
    # raise what the client raises
    cluster = Inspector(url="redis+cluster://127.0.0.1:1")
    with pytest.raises(redis.exceptions.RedisClusterException):
        cluster.status()
    cluster.close()
    # Cursors and event ids a page never gave are refused, not read as "start over"
    with Inspector(url=redis_url, namespace="cursors") as inspector:
        for bad in ("garbage", "1:x:w", "-1:0:w", "1:2:"):
            with pytest.raises(ConfigurationError, match="cursor"):
                inspector.inflight(cursor=bad)
        with pytest.raises(ConfigurationError, match="cursor"):
            inspector.workers(cursor="x")
        with pytest.raises(ConfigurationError, match="cursor"):
            inspector.locks(cursor="1x")
        with pytest.raises(ConfigurationError, match="before"):
            inspector.events(before="garbage")


def test_an_empty_namespace_reads_empty(inspector: Inspector) -> None:
    status = inspector.status()
    assert (status.inflight, status.orphans, status.locks, sum(status.workers.values())) == (0, 0, 0, 0)
    assert inspector.workers().items == [] and inspector.orphans().items == [] and inspector.counters().events == {}


def test_an_operator_deletes_a_lock_and_the_stream_says_who(store: InspectionStore, inspector: Inspector) -> None:
    store.acquire_lock("digest-1", "m1", 0, "until_executed", "charge", "q", "", None)
    operator = Operator(inspector, who="alice")

    deleted = operator.delete_lock("digest-1")

    assert deleted is not None and deleted.message_id == "m1" and inspector.lock("digest-1") is None
    (event,) = inspector.events(10, kinds=[LOCK_DELETED])
    assert event.details["by"] == "alice" and event.message_id == "m1" and "digest-1" in event.text
    assert operator.delete_lock("digest-1") is None
    assert inspector.counters().of(LOCK_DELETED) == 1


def test_recovering_and_aborting_need_the_applications_broker(
    redis_broker: RedisBroker, tracker: TrackerMiddleware, inspector: Inspector, namespaces: Namespaces
) -> None:
    with pytest.raises(TrackerNotConfigured, match="--broker"):
        Operator(inspector).recover()
    with pytest.raises(ConfigurationError, match="broker"):
        load_broker("no_such_module_here")
    with pytest.raises(ConfigurationError, match="broker"):
        load_broker("tests.support:ROOT")
    assert Operator(inspector, redis_broker).recover(dry_run=True).dry_run
    elsewhere = Inspector(client=inspector.client, namespace="other")
    with pytest.raises(ConfigurationError, match="namespace"):
        Operator(elsewhere, redis_broker).recover()


def registered_worker(store: InspectionStore, worker_id: str, started: list[int], *, alive: bool = True) -> list[str]:
    """Register a worker (without a process) with records started at these times; returns their ids."""
    info = WorkerInfo(worker_id, "host", 1, "1", "boot", "ns", ("q",), "redis", "identity", "", "", 1, 0, "0", "0")
    records = [
        InflightRecord("%s-m%d" % (worker_id, i), worker_id, "actor", "q", str(i), at) for i, at in enumerate(started)
    ]
    entries = [(r.message_id, "%s|0" % r.token, r.to_json()) for r in records]
    assert store.register(info, identity_digest("identity"), 60_000 if alive else 1, entries)[0] == "ok"
    return [r.message_id for r in records]


def test_the_oldest_messages_in_flight_are_found_across_workers_oldest_first(
    redis_client: redis.Redis, store: InspectionStore, inspector: Inspector
) -> None:
    # Given two workers whose records interleave in age, and an unreadable record
    now = inspector.server_time()
    a = registered_worker(store, "worker-a", [now - 5_000, now - 50_000, now - 1_000])
    b = registered_worker(store, "worker-b", [now - 30_000, now - 60_000])
    redis_client.hset(store.keys.inflight("worker-b"), "garbage", "not json")

    # Then the oldest come first, whichever worker runs them, the unreadable one skipped
    assert [r.message_id for r in inspector.oldest(3).items] == [b[1], a[1], b[0]]
    assert [r.message_id for r in inspector.oldest(10).items] == [b[1], a[1], b[0], a[0], a[2]]
    first = inspector.oldest(1).items[0]
    assert first.worker_id == "worker-b" and first.running_for >= 60_000
    assert inspector.oldest(0).items == []


def test_a_namespace_has_data_once_anything_of_a_tracker_was_written(
    store: InspectionStore, inspector: Inspector
) -> None:
    assert not inspector.has_data()
    store.acquire_lock("digest-1", "m1", 0, "until_executed", "charge", "q", "", None)
    assert inspector.has_data()


def test_a_namespace_whose_workers_all_left_still_has_data(store: InspectionStore, inspector: Inspector) -> None:
    registered_worker(store, "worker-a", [])
    info = WorkerInfo.from_json(store.registration("worker-a") or "")
    store.deregister(info, identity_digest("identity"))
    assert inspector.workers().items == [] and inspector.has_data()


def test_a_check_judges_the_workers_of_a_host_or_one_worker(store: InspectionStore, inspector: Inspector) -> None:
    # (Workers without a process: a host whose processes this one cannot see.)
    registered_worker(store, "worker-a", [])
    registered_worker(store, "worker-b", [], alive=False)
    wait_for(lambda: inspector.worker("worker-b").state == UNRESPONSIVE, 5, message="expired")

    assert inspector.check(worker_id="worker-a").healthy
    host = inspector.check(hostname="host")
    assert not host.healthy and [w.worker_id for w in host.workers] == ["worker-a", "worker-b"]
    (reason,) = host.reasons
    assert reason.startswith("worker 'worker-b' (host 'host', pid 1) is unresponsive: its heartbeat expired")
    assert not inspector.check(hostname="elsewhere").healthy
    assert inspector.check(hostname="elsewhere", min_workers=0).healthy
    (reason,) = inspector.check(worker_id="nobody").reasons
    assert reason == "worker 'nobody' is not registered in namespace %r" % inspector.namespace
    with pytest.raises(ConfigurationError, match="check"):
        inspector.check()


def test_worker_states_are_read_on_the_server_with_odd_values_reported(
    redis_client: redis.Redis, store: InspectionStore, inspector: Inspector
) -> None:
    registered_worker(store, "worker-a", [inspector.server_time()] * 3)
    digest = identity_digest("identity")
    (state,) = store.worker_states([("worker-a", digest)])
    assert state.last_beat is not None and state.declared_dead_at is None and state.deadline is not None
    assert state.deadline > state.last_beat and state.inflight == 3 and not state.beat_unreadable
    assert state.subscribers is None and state.absent_since is None  # its presence was never seen
    # A deadline that never comes, a heartbeat that is not a number: heartbeating, never overdue, and said
    redis_client.zadd(store.keys.deadlines(digest), {"worker-a": "inf"})
    redis_client.set(store.keys.heartbeat("worker-a"), "?", px=60_000)
    (state,) = store.worker_states([("worker-a", digest)])
    assert (state.last_beat, state.beat_unreadable, state.deadline, state.inflight) == (None, True, None, 3)
    page = inspector.workers()
    (view,) = page.items
    assert (view.state, view.overdue, view.inflight, view.heartbeat_age, view.swept) == (ALIVE, None, 3, None, False)
    reasons = {problem.key: problem.reason for problem in page.problems}
    assert reasons[store.keys.heartbeat("worker-a")].startswith("unreadable heartbeat")
    assert "no sweep finds it" in reasons[store.keys.deadlines(digest)]
    assert store.worker_states([]) == []
