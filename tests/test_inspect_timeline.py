"""What the dashboard reads beyond the CLI's needs, through the same inspection API: events counted over
time, where given messages run now, and the events about one worker."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from dramatiq_tracker import ConfigurationError
from dramatiq_tracker.events import QUARANTINED, RECOVERED, WORKER_DEAD, TrackerEvent
from dramatiq_tracker.ops.inspection import ALIVE, Inspector
from dramatiq_tracker.ops.reads import InspectionStore

from .conftest import Namespaces
from .dashboard_seed import SeedRecord, add_events, recovery_events, register_worker


@pytest.fixture
def inspector(redis_url: str, namespaces: Namespaces) -> Iterator[Inspector]:
    with Inspector(url=redis_url, namespace=namespaces.tracker) as found:
        yield found


def test_the_timeline_counts_events_by_kind_in_buckets_aligned_on_their_width(
    redis_client: redis.Redis, store: InspectionStore, inspector: Inspector
) -> None:
    # Given recoveries 50 and 10 minutes ago, a quarantine 10 minutes ago, and a recovery 2 hours ago
    now = store.server_time()
    minute = 60_000
    old = [(now - 120 * minute, TrackerEvent(kind=RECOVERED, text="old"))]
    recent = [(now - 50 * minute, TrackerEvent(kind=RECOVERED, text="a"))]
    recent += [(now - 10 * minute, TrackerEvent(kind=RECOVERED, text="b%d" % i)) for i in range(3)]
    recent += [(now - 10 * minute + 1, TrackerEvent(kind=QUARANTINED, text="q"))]
    add_events(redis_client, store, old + recent)

    # When they are counted over the last hour, by minute
    timeline = inspector.timeline([RECOVERED, QUARANTINED, WORKER_DEAD], window=60 * minute, buckets=60)

    # Then the buckets end at the next whole minute, and each event is in its own minute
    assert timeline.step == minute and timeline.start % minute == 0 and timeline.buckets == 60
    assert timeline.start <= now - 59 * minute and timeline.end >= now
    assert timeline.complete and timeline.total(RECOVERED) == 4 and timeline.total(QUARANTINED) == 1
    assert timeline.counts[WORKER_DEAD] == [0] * 60
    assert timeline.counts[RECOVERED][(now - 50 * minute - timeline.start) // minute] == 1
    assert timeline.counts[RECOVERED][(now - 10 * minute - timeline.start) // minute] == 3
    # And a read limit below the events in the window says the count is partial
    partial = inspector.timeline([RECOVERED], window=60 * minute, limit=2)
    assert not partial.complete and partial.total(RECOVERED) == 1  # the newest two: the quarantine, a recovery
    with pytest.raises(ConfigurationError, match="timeline"):
        inspector.timeline([RECOVERED], buckets=0)


def test_running_says_where_each_message_runs_now_in_one_read(store: InspectionStore, inspector: Inspector) -> None:
    now = store.server_time()
    register_worker(store, "w1", [SeedRecord("m1", "charge", "q", now - 5_000, lock="d1|until_executed")], pid=11)
    register_worker(store, "w2", [SeedRecord("m2", "resize", "q", now - 1_000, attempt=1, recoveries=1)], pid=22)

    found = inspector.running(["m1", "m2", "queued-only", "m1"])

    assert set(found) == {"m1", "m2"}
    assert (found["m1"].worker_id, found["m1"].pid, found["m1"].lock_digest) == ("w1", 11, "d1")
    assert (found["m2"].worker_id, found["m2"].attempt, found["m2"].worker_state) == ("w2", 1, ALIVE)
    assert found["m1"].running_for >= 5_000
    assert inspector.running([]) == {}


def test_events_are_filtered_by_worker_and_by_time(
    redis_client: redis.Redis, store: InspectionStore, inspector: Inspector
) -> None:
    now = store.server_time()
    add_events(redis_client, store, recovery_events("dead-1", "h", 1, [("m1", "a", "q")], now - 60_000))
    add_events(redis_client, store, recovery_events("dead-2", "h", 2, [("m2", "a", "q"), ("m3", "a", "q")], now))

    assert [e.message_id for e in inspector.events(100, worker_id="dead-2", kinds=[RECOVERED])] == ["m3", "m2"]
    assert [e.kind for e in inspector.events(100, worker_id="dead-1")] == [WORKER_DEAD, RECOVERED]
    assert {e.worker_id for e in inspector.events(100, since=now - 1_000)} == {"dead-2"}
    assert inspector.events(100, worker_id="nobody") == []


def test_status_counts_plain_and_escaped_records_alike_and_reports_the_rest(
    redis_client: redis.Redis, store: InspectionStore, inspector: Inspector
) -> None:
    # Records are summed on the server, plain ones by pattern and any other by decoding them
    now = store.server_time()
    seeds = [
        SeedRecord("plain", "charge", "q", now - 5_000),
        SeedRecord("escaped", 'we"ird\\actor', 'q"2', now - 9_000),
        SeedRecord("unicode", "r\u00e9sum\u00e9", "q", now - 1_000),
    ]
    register_worker(store, "w1", seeds)
    redis_client.hset(store.keys.inflight("w1"), "short", '["charge","q",1,"0"]')
    redis_client.hset(store.keys.inflight("w1"), "garbage", "not json")

    status = inspector.status()

    assert dict(status.actors) == {"charge": 1, 'we"ird\\actor': 1, "r\u00e9sum\u00e9": 1}
    assert {q.queue_name: q.inflight for q in status.queues} == {"q": 2, 'q"2': 1}
    assert {q.queue_name: q.oldest >= 9_000 for q in status.queues} == {"q": False, 'q"2': True}
    assert sorted(p.field for p in status.problems) == ["garbage", "short"]


def test_inflight_filters_on_the_server_and_still_reports_unreadable_records(
    redis_client: redis.Redis, store: InspectionStore, inspector: Inspector
) -> None:
    now = store.server_time()
    seeds = [SeedRecord("plain-%d" % i, "charge", "q", now - 1_000 * i) for i in range(1, 6)]
    seeds.append(SeedRecord("escaped", 'we"ird', 'q"2', now - 60_000))
    register_worker(store, "w1", seeds)
    register_worker(store, "w2", [SeedRecord("other", "charge", "q2", now - 30_000)])
    register_worker(store, "w3", [])
    redis_client.hset(store.keys.inflight("w1"), "garbage", "not json")

    def ids(**filters: object) -> list[str]:
        return sorted(view.message_id for view in inspector.inflight(**filters).items)  # type: ignore[arg-type]

    assert ids(actor='we"ird') == ["escaped"] and ids(queue='q"2') == ["escaped"]
    assert ids(actor="charge") == ["other", "plain-1", "plain-2", "plain-3", "plain-4", "plain-5"]
    assert ids(actor="charge", queue="q", older_than=2_500) == ["plain-3", "plain-4", "plain-5"]
    assert ids(older_than=20_000) == ["escaped", "other"]
    assert ids(actor="nobody") == []
    assert [p.field for p in inspector.inflight(actor="nobody").problems] == ["garbage"]
    # Paged, each exactly once
    seen, cursor = [], ""
    while True:
        page = inspector.inflight(actor="charge", limit=2, cursor=cursor)
        seen += [view.message_id for view in page.items]
        if not page.cursor:
            break
        cursor = page.cursor
    assert sorted(seen) == ids(actor="charge")
