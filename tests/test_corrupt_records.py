"""Corrupt or foreign records in Redis are logged and skipped; no message is dropped."""

from __future__ import annotations

import dataclasses
import logging

import dramatiq
import pytest
import redis
from dramatiq.brokers.redis import RedisBroker
from dramatiq.message import Message

from dramatiq_tracker import TrackerMiddleware
from dramatiq_tracker.host import HostFacts

from .conftest import Namespaces
from .fakes import fake_dead_worker


def test_an_unreadable_record_of_a_dead_worker_is_skipped_and_its_message_still_delivered(
    redis_broker: RedisBroker,
    redis_client: redis.Redis,
    namespaces: Namespaces,
    caplog: pytest.LogCaptureFixture,
    tracker: TrackerMiddleware,
) -> None:
    broker = redis_broker
    queue = namespaces.queue
    info, messages = fake_dead_worker(broker, tracker, queue, 4)
    # Given one of its records was corrupted
    redis_client.hset(tracker.store.keys.inflight(info.worker_id), messages[0].message_id, b"\x00garbage")

    # When it is recovered
    with caplog.at_level(logging.WARNING):
        report = tracker.recover()

    # Then every message is back on its queue, and the corrupt record was reported
    assert sorted(report.message_ids) == sorted(m.message_id for m in messages)
    assert redis_client.llen("%s:%s" % (namespaces.broker, queue)) == 4
    assert any("unreadable in-flight record" in r.getMessage() for r in caplog.records)
    assert info.worker_id not in tracker.store.workers()


def test_an_undecodable_payload_is_moved_back_unchanged(
    redis_broker: RedisBroker,
    redis_client: redis.Redis,
    namespaces: Namespaces,
    caplog: pytest.LogCaptureFixture,
    tracker: TrackerMiddleware,
) -> None:
    broker = redis_broker
    queue = namespaces.queue
    _, messages = fake_dead_worker(broker, tracker, queue, 3)
    # Given a foreign payload that the current encoder cannot decode
    redis_id = messages[2].options["redis_message_id"]
    redis_client.hset("%s:%s.msgs" % (namespaces.broker, queue), redis_id, b"\x80not-json")

    with caplog.at_level(logging.WARNING):
        tracker.recover()

    queued = redis_client.lrange("%s:%s" % (namespaces.broker, queue), 0, -1)
    assert len(queued) == 3 and redis_id.encode() in queued
    assert redis_client.hget("%s:%s.msgs" % (namespaces.broker, queue), redis_id) == b"\x80not-json"
    assert any("does not decode" in r.getMessage() for r in caplog.records)


def test_an_unreadable_registration_is_reported_once_and_left_alone(
    redis_broker: RedisBroker,
    redis_client: redis.Redis,
    namespaces: Namespaces,
    caplog: pytest.LogCaptureFixture,
    tracker: TrackerMiddleware,
) -> None:
    here = HostFacts.current()
    keys = tracker.store.keys
    redis_client.hset(keys.workers, "foreign", "{not json")
    redis_client.sadd(keys.host(here.hostname), "foreign")
    redis_client.zadd(keys.deadlines, {"foreign": 0})

    with caplog.at_level(logging.WARNING):
        tracker.recover()
        tracker.recover()

    assert [r.getMessage() for r in caplog.records].count(
        "Skipping worker 'foreign': its registration is unreadable (not JSON: Expecting property name enclosed "
        "in double quotes: line 1 column 2 (char 1))."
    ) == 1
    assert redis_client.hexists(keys.workers, "foreign")


def test_registered_recoveries_mark_the_redelivered_payload(
    redis_broker: RedisBroker, redis_client: redis.Redis, namespaces: Namespaces, tracker: TrackerMiddleware
) -> None:
    broker = redis_broker
    queue = namespaces.queue
    _, messages = fake_dead_worker(broker, tracker, queue, 3)

    tracker.recover()

    # The two running orphans say they were recovered once; the prefetched one, never counted, is
    # marked too, so that its next start is recorded before it runs (a crash at once is then seen)
    for index, message in enumerate(messages):
        raw = redis_client.hget("%s:%s.msgs" % (namespaces.broker, queue), message.options["redis_message_id"])
        decoded = Message.decode(raw)
        expected = 1 if index < 2 else 0
        assert decoded.options.get("tracker_recoveries") == expected
        assert dataclasses.replace(decoded, options={}) == dataclasses.replace(message, options={})


def test_the_global_recover_function_uses_the_brokers_tracker(
    redis_broker: RedisBroker, redis_client: redis.Redis, namespaces: Namespaces, tracker: TrackerMiddleware
) -> None:
    broker = redis_broker
    fake_dead_worker(broker, tracker, namespaces.queue, 2)
    from dramatiq_tracker import recover

    assert len(recover(broker).recovered) == 2
    dramatiq.set_broker(broker)
    assert recover().recovered == []


def test_a_dead_workers_delayed_messages_go_back_to_their_delay_queue_unchanged(
    redis_broker: RedisBroker, redis_client: redis.Redis, namespaces: Namespaces, tracker: TrackerMiddleware
) -> None:
    broker = redis_broker
    queue = namespaces.queue
    # Given a dead worker that held a delayed message (fetched from the delay queue, waiting for its eta)
    info, _ = fake_dead_worker(broker, tracker, queue, 1, running=0)
    delayed = broker.enqueue(
        Message(queue_name=queue, actor_name="work", args=(9,), kwargs={}, options={}), delay=60_000
    )
    dead = RedisBroker(client=broker.client, namespace=broker.namespace)
    dead.broker_id = info.broker_id
    dead.do_fetch(queue + ".DQ", 1)
    assert redis_client.scard("%s:__acks__.%s.%s.DQ" % (namespaces.broker, info.broker_id, queue)) == 1

    # When it is recovered
    report = tracker.recover()

    # Then the delayed message is back on the delay queue, unchanged, and the other one on its queue
    assert delayed.message_id in report.message_ids and len(report.message_ids) == 2
    (redis_id,) = redis_client.lrange("%s:%s.DQ" % (namespaces.broker, queue), 0, -1)
    payload = redis_client.hget("%s:%s.DQ.msgs" % (namespaces.broker, queue), redis_id)
    assert Message.decode(payload) == delayed
