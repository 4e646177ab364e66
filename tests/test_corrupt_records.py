"""Corrupt or foreign records in Redis are logged and skipped; no message is dropped."""

from __future__ import annotations

import dataclasses
import logging

import dramatiq
import pytest
import redis
from dramatiq.brokers.redis import RedisBroker
from dramatiq.message import Message

from dramatiq_tracker.host import HostFacts

from .conftest import Namespaces, Sweep
from .support import close_redis_broker, dead_pid, fake_dead_worker, reads


def test_an_unreadable_record_of_a_dead_worker_is_skipped_and_its_message_still_delivered(
    sweep: Sweep, caplog: pytest.LogCaptureFixture
) -> None:
    queue = sweep.names.queue
    info, messages = sweep.dead_worker(4)
    # Given one of its records was corrupted
    sweep.client.hset(sweep.tracker.store.keys.inflight(info.worker_id), messages[0].message_id, b"\x00garbage")

    # When it is recovered
    with caplog.at_level(logging.WARNING):
        report = sweep.tracker.recover()

    # Then every message is back on its queue, and the corrupt record was reported
    assert sorted(report.message_ids) == sorted(m.message_id for m in messages)
    assert sweep.client.llen("%s:%s" % (sweep.names.broker, queue)) == 4
    assert any("unreadable in-flight record" in r.getMessage() for r in caplog.records)
    assert info.worker_id not in reads(sweep.tracker).workers()


def test_an_undecodable_payload_is_moved_back_unchanged(sweep: Sweep, caplog: pytest.LogCaptureFixture) -> None:
    queue = sweep.names.queue
    _, messages = sweep.dead_worker(3)
    # Given a foreign payload that the current encoder cannot decode
    redis_id = messages[2].options["redis_message_id"]
    sweep.client.hset("%s:%s.msgs" % (sweep.names.broker, queue), redis_id, b"\x80not-json")

    with caplog.at_level(logging.WARNING):
        sweep.tracker.recover()

    queued = sweep.client.lrange("%s:%s" % (sweep.names.broker, queue), 0, -1)
    assert len(queued) == 3 and redis_id.encode() in queued
    assert sweep.client.hget("%s:%s.msgs" % (sweep.names.broker, queue), redis_id) == b"\x80not-json"
    assert any("does not decode" in r.getMessage() for r in caplog.records)


def test_an_orphan_whose_payload_is_gone_is_taken_out_of_the_acks_and_the_others_are_delivered(sweep: Sweep) -> None:
    queue = sweep.names.queue
    info, messages = sweep.dead_worker(3)
    # Given one orphan's payload was deleted behind the broker's back (an eviction, a hand)
    gone = messages[1].options["redis_message_id"]
    sweep.client.hdel("%s:%s.msgs" % (sweep.names.broker, queue), gone)

    report = sweep.tracker.recover()

    # Then the other two are back on the queue, nothing is queued for the missing one, and the dead
    # process's acks are empty: no later sweep or maintenance trips over it
    assert sorted(report.message_ids) == sorted([messages[0].message_id, messages[2].message_id])
    queued = [rid.decode() for rid in sweep.client.lrange("%s:%s" % (sweep.names.broker, queue), 0, -1)]
    assert len(queued) == 2 and gone not in queued
    acks = "%s:__acks__.%s.%s" % (sweep.names.broker, info.broker_id, queue)
    assert sweep.client.scard(acks) == 0
    assert info.worker_id not in reads(sweep.tracker).workers()


def test_an_unreadable_registration_is_reported_once_and_left_alone(
    sweep: Sweep, caplog: pytest.LogCaptureFixture
) -> None:
    here = HostFacts.current()
    keys = sweep.tracker.store.keys
    sweep.client.hset(keys.workers, "foreign", "{not json")
    sweep.client.sadd(keys.host(here.hostname), "foreign")
    sweep.client.zadd(keys.deadlines(sweep.tracker.identity_digest), {"foreign": 0})

    with caplog.at_level(logging.WARNING):
        sweep.tracker.recover()
        sweep.tracker.recover()

    assert [r.getMessage() for r in caplog.records].count(
        "Skipping worker 'foreign': its registration is unreadable (not JSON: Expecting property name enclosed "
        "in double quotes: line 1 column 2 (char 1))."
    ) == 1
    assert sweep.client.hexists(keys.workers, "foreign")


def queued_messages(client: redis.Redis, names: Namespaces, queue: str) -> list[Message[object]]:
    ids = client.lrange("%s:%s" % (names.broker, queue), 0, -1)
    return [Message.decode(p) for p in client.hmget("%s:%s.msgs" % (names.broker, queue), ids)]


def test_every_moved_orphan_carries_a_new_attempt_and_its_recovery_count_under_a_new_redis_id(sweep: Sweep) -> None:
    queue = sweep.names.queue
    _, messages = sweep.dead_worker(3)

    sweep.tracker.recover()

    # The two running orphans say they were recovered once; the prefetched one, never counted, is
    # marked too: every copy recovery moves gets a new attempt, so that a copy the dead worker may
    # still hold (were it alive after all) is known to be stale, and its next start is recorded first
    by_id = {m.message_id: m for m in queued_messages(sweep.client, sweep.names, queue)}
    for index, message in enumerate(messages):
        moved = by_id[message.message_id]
        assert moved.options["tracker_recoveries"] == (1 if index < 2 else 0)
        assert moved.options["tracker_attempt"] == 1
        # under a new redis message id: the old copy's ack can only ever miss
        assert moved.options["redis_message_id"] != message.options["redis_message_id"]
        assert dataclasses.replace(moved, options={}) == dataclasses.replace(message, options={})
    assert sweep.client.hlen("%s:%s.msgs" % (sweep.names.broker, queue)) == 3


def test_the_global_recover_function_uses_the_brokers_tracker(sweep: Sweep) -> None:
    sweep.dead_worker(2)
    from dramatiq_tracker import recover

    assert len(recover(sweep.broker).recovered) == 2
    dramatiq.set_broker(sweep.broker)
    assert recover().recovered == []


def test_a_dead_workers_delayed_messages_go_back_to_their_delay_queue_with_a_new_attempt(sweep: Sweep) -> None:
    queue = sweep.names.queue
    # Given a dead worker that held a delayed message (fetched from the delay queue, waiting for its eta)
    info, _ = sweep.dead_worker(1, running=0)
    delayed = sweep.broker.enqueue(
        Message(queue_name=queue, actor_name="work", args=(9,), kwargs={}, options={}), delay=60_000
    )
    dead = RedisBroker(client=sweep.broker.client, namespace=sweep.broker.namespace)
    dead.broker_id = info.broker_id
    dead.do_fetch(queue + ".DQ", 1)
    assert sweep.client.scard("%s:__acks__.%s.%s.DQ" % (sweep.names.broker, info.broker_id, queue)) == 1

    # When it is recovered
    report = sweep.tracker.recover()

    # Then the delayed message is back on the delay queue with its eta, and the other one on its queue
    assert delayed.message_id in report.message_ids and len(report.message_ids) == 2
    (moved,) = queued_messages(sweep.client, sweep.names, queue + ".DQ")
    assert moved.options["eta"] == delayed.options["eta"]
    assert moved.options["tracker_attempt"] == 1
    assert dataclasses.replace(moved, options={}) == dataclasses.replace(delayed, options={})
    close_redis_broker(dead)


def test_unreadable_vanished_and_foreign_workers_never_keep_a_dead_worker_waiting(sweep: Sweep) -> None:
    # Given more than a page of dead workers of another app (another broker) sharing the namespace
    other_broker = RedisBroker(client=sweep.broker.client, namespace=sweep.names.broker + ":other")
    pid = dead_pid()
    for index in range(120):
        fake_dead_worker(
            other_broker, sweep.tracker.store, sweep.names.queue, 1, running=0, worker_id="foreign-%d" % index, pid=pid
        )
    # And more than a page of unreadable and vanished registrations due before a real dead worker
    keys = sweep.tracker.store.keys
    deadlines = keys.deadlines(sweep.tracker.identity_digest)
    for index in range(150):
        sweep.client.zadd(deadlines, {"corrupt-%d" % index: index, "vanished-%d" % index: index})
        sweep.client.hset(keys.workers, "corrupt-%d" % index, "{not json")
    _, messages = sweep.dead_worker(2, worker_id="real-dead")
    sweep.client.zadd(deadlines, {"real-dead": 1000})

    # When a sweep runs
    report = sweep.tracker.recover()

    # Then the real dead worker is recovered, the vanished ones are gone from the index,
    # and the unreadable ones are moved out of the way
    assert report.dead_workers == ["real-dead"]
    assert sorted(report.message_ids) == sorted(m.message_id for m in messages)
    assert sweep.tracker.store.due_workers(sweep.tracker.identity_digest, 1000) == []
    assert sweep.client.zcard(deadlines) == 150
    # And the other app's dead workers are left to that app's sweepers
    assert len([wid for wid in reads(sweep.tracker).workers() if wid.startswith("foreign-")]) == 120


def dump(client: redis.Redis, *patterns: str) -> dict[bytes, object]:
    """Every key matching the patterns, with its type and its whole value."""
    found: dict[bytes, object] = {}
    for pattern in patterns:
        for key in client.scan_iter(match=pattern):
            kind = client.type(key).decode()
            value = {
                "string": lambda k: client.get(k),
                "hash": lambda k: client.hgetall(k),
                "set": lambda k: sorted(client.smembers(k)),
                "zset": lambda k: client.zrange(k, 0, -1, withscores=True),
                "list": lambda k: client.lrange(k, 0, -1),
                "stream": lambda k: client.xrange(k),
            }[kind](key)
            found[key] = (kind, value, client.pttl(key) > 0)
    return found


def test_a_dry_run_changes_nothing_and_the_sweep_then_does_exactly_what_it_listed(sweep: Sweep) -> None:
    # Given a dead worker with 2 running orphans and 2 prefetched, one of them cancelled
    info, messages = sweep.dead_worker(4, running=2)
    sweep.tracker.store.note_history(messages[3].message_id, 60_000, {"abort": "cancel"})
    patterns = ("{%s}:*" % sweep.names.tracker, "%s:*" % sweep.names.broker)
    before = dump(sweep.client, *patterns)

    # When a dry run is asked for
    plan = sweep.tracker.recover(dry_run=True)

    # Then nothing changed, and it says what it would do
    assert dump(sweep.client, *patterns) == before
    assert plan.dry_run and plan.dead_workers == [info.worker_id]
    planned = {o.message_id: (o.outcome, o.running, o.attempt) for o in plan.recovered}
    assert planned == {
        messages[0].message_id: ("redelivered", True, 1),
        messages[1].message_id: ("redelivered", True, 1),
        messages[2].message_id: ("redelivered", False, 1),
        messages[3].message_id: ("dropped", False, 1),
    }
    # And the sweep then does exactly that
    report = sweep.tracker.recover()
    assert report.dead_workers == plan.dead_workers
    assert {o.message_id: (o.outcome, o.running, o.attempt) for o in report.recovered} == planned


def test_a_dry_run_lists_a_worker_both_gone_and_expired_once_as_the_sweep_recovers_it(sweep: Sweep) -> None:
    # Given a dead worker of this host (its process gone) whose heartbeat has expired too
    info, messages = sweep.dead_worker(3, running=2)
    keys, digest = sweep.tracker.store.keys, sweep.tracker.identity_digest
    sweep.client.delete(keys.heartbeat(info.worker_id))
    sweep.client.zadd(keys.deadlines(digest), {info.worker_id: 0})

    # Then a dry run lists it once, as the sweep then recovers it once
    plan = sweep.tracker.recover(dry_run=True)
    assert plan.dead_workers == [info.worker_id] and len(plan.recovered) == 3
    report = sweep.tracker.recover()
    assert report.dead_workers == plan.dead_workers
    assert sorted(report.message_ids) == sorted(plan.message_ids) == sorted(m.message_id for m in messages)
