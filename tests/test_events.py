"""Events: the log line, the capped stream entry and the callbacks say the same thing."""

from __future__ import annotations

import logging

import dramatiq
import pytest
import redis
from dramatiq.brokers.redis import RedisBroker

from dramatiq_tracker import ConfigurationError, TrackerMiddleware
from dramatiq_tracker.events import RECOVERED, WORKER_DEAD, TrackerEvent

from .conftest import Namespaces
from .support import fake_dead_worker, reads


def test_each_recovery_is_logged_streamed_and_passed_to_callbacks_identically(
    redis_broker: RedisBroker, redis_client: redis.Redis, namespaces: Namespaces, caplog: pytest.LogCaptureFixture
) -> None:
    received: list[TrackerEvent] = []
    broken_calls: list[TrackerEvent] = []

    def broken(event: TrackerEvent) -> None:
        broken_calls.append(event)
        raise RuntimeError("alerting is down")

    tracker = TrackerMiddleware(client=redis_client, namespace=namespaces.tracker, on_event=[broken, received.append])
    redis_broker.add_middleware(tracker)
    dramatiq.set_broker(redis_broker)
    info, messages = fake_dead_worker(redis_broker, tracker.store, namespaces.queue, 2, running=1)

    with caplog.at_level(logging.DEBUG):
        tracker.recover()

    # The callbacks got every event, even after one of them failed
    assert [e.kind for e in received] == [RECOVERED, RECOVERED, WORKER_DEAD]
    assert len(broken_calls) == 3
    recovered = [e for e in received if e.kind == RECOVERED]
    assert {e.message_id for e in recovered} == {m.message_id for m in messages}
    assert all(e.worker_id == info.worker_id and e.actor_name == "work" for e in recovered)
    # The stream holds the same events, newest first
    streamed = tracker.recent_events()
    assert [e.to_fields() for e in reversed(streamed)] == [e.to_fields() for e in received]
    # And the log lines say the same thing: one per orphan at debug, the dead worker's summary at warning
    logged = [r for r in caplog.records if r.name == "dramatiq_tracker.events.Events"]
    lines = [r for r in logged if not r.getMessage().startswith("Event callback")]
    assert [r.getMessage() for r in lines] == [e.text for e in received]
    assert [r.levelno for r in lines] == [logging.DEBUG, logging.DEBUG, logging.WARNING]
    assert "2 of its messages settled" in lines[-1].getMessage()
    # And the counters count them
    assert reads(tracker).counters() == {RECOVERED: 2, WORKER_DEAD: 1}
    assert any("alerting is down" in (r.exc_text or "") for r in caplog.records)


def test_the_stream_is_capped(redis_broker: RedisBroker, redis_client: redis.Redis, namespaces: Namespaces) -> None:
    tracker = TrackerMiddleware(client=redis_client, namespace=namespaces.tracker, events_maxlen=10)
    redis_broker.add_middleware(tracker)
    dramatiq.set_broker(redis_broker)
    for index in range(300):
        tracker.wiring.events.emit("test", "event %d", index)
    assert 10 <= redis_client.xlen(tracker.store.keys.events) < 300


def test_invalid_event_settings_fail_at_construction() -> None:
    with pytest.raises(ConfigurationError) as info:
        TrackerMiddleware(on_event=[42])  # type: ignore[list-item]
    assert info.value.setting == "on_event"
    with pytest.raises(ConfigurationError) as info:
        TrackerMiddleware(events_maxlen=0)
    assert info.value.setting == "events_maxlen"


def test_aborting_without_dramatiq_abort_says_what_is_missing(
    redis_broker: RedisBroker, redis_client: redis.Redis, namespaces: Namespaces, tracker: TrackerMiddleware
) -> None:
    from dramatiq_tracker import TrackerNotConfigured

    with pytest.raises(TrackerNotConfigured, match="Abortable"):
        tracker.abort("some-message")
    with pytest.raises(ConfigurationError) as info:
        tracker.abort("some-message", mode="kill")
    assert info.value.setting == "mode"
