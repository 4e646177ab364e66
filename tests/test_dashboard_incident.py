"""What the dashboard shows of an incident, true to the facts: every worker of the last incident, the one
whose messages were recovered first; a lock's owner where it runs; workers stopping and gone; the broker
identities no live worker sweeps; what the application's broker holds on each queue."""

from __future__ import annotations

import html
import json
import re
from collections.abc import Iterator

import pytest
import redis
from dramatiq.brokers.redis import RedisBroker

from dramatiq_tracker import TrackerMiddleware
from dramatiq_tracker.ops.dashboard import DashboardApp
from dramatiq_tracker.ops.inspection import Inspector
from dramatiq_tracker.ops.reads import InspectionStore

from .conftest import Namespaces
from .dashboard_seed import BROKER_IDENTITY, SeedRecord, add_events, bury, recovery_events, register_worker
from .dashboard_support import Client
from .support import send


@pytest.fixture
def inspector(redis_client: redis.Redis, namespaces: Namespaces) -> Iterator[Inspector]:
    with Inspector(client=redis_client, namespace=namespaces.tracker) as found:
        yield found


def section_ids(text: str) -> list[tuple[str, str]]:
    """(anchor, worker id) of each "what became of its messages" section, in page order."""
    return [
        (anchor, html.unescape(worker))
        for anchor, worker in re.findall(r'<section class="aftermath" id="([^"]+)" data-worker-id="([^"]*)"', text)
    ]


def test_the_overview_lists_every_worker_of_the_last_incident_the_one_with_orphans_first(
    redis_client: redis.Redis, store: InspectionStore, inspector: Inspector
) -> None:
    # Given an incident: a worker SIGKILLed with 3 messages, recovered on a survivor; a second worker
    # declared dead 5 s later while alive (fenced), with none; and an older death, an hour before
    now = store.server_time()
    register_worker(store, "survivor", [SeedRecord("m-%d" % i, "a", "q", now - 1000, attempt=1) for i in range(3)])
    orphans = [("m-%d" % i, "a", "q") for i in range(3)]
    add_events(redis_client, store, recovery_events("killed", "h", 1, [("old", "a", "q")], now - 3_600_000))
    add_events(redis_client, store, recovery_events("killed", "h", 1, orphans, now - 20_000))
    bury(store, "long-ago", now - 3_600_000)
    bury(store, "killed", now - 20_000)
    bury(store, "fenced", now - 15_000)
    redis_client.set(store.keys.fenced_as("fenced"), "fenced-2", px=60_000)

    page = Client(DashboardApp(inspector=inspector)).get("/")

    # Then both are shown, the one whose messages were recovered first (under the anchor the page had),
    # with where each message runs now; the older death is not part of it
    assert section_ids(page.text) == [("aftermath", "killed"), ("aftermath-2", "fenced")]
    assert "Last incident: 2 worker(s) declared dead" in page.text
    first = page.text.split('id="aftermath"', 1)[1].split("</section>", 1)[0]
    assert first.count('data-worker-id="survivor"') == 3
    second = page.text.split('id="aftermath-2"', 1)[1].split("</section>", 1)[0]
    assert "No message of it was recovered" in second and "fenced-2" in second


def test_the_locks_page_shows_where_an_owner_taken_at_send_runs(store: InspectionStore, inspector: Inspector) -> None:
    now = store.server_time()
    register_worker(store, "w-1", [SeedRecord("m-1", "a", "q", now, lock="d-1|until_executed")])
    store.acquire_lock("d-1", "m-1", 0, "until_executed", "a", "q", "", None)
    store.acquire_lock("d-2", "m-queued", 0, "until_executed", "a", "q", "", None)
    page = Client(DashboardApp(inspector=inspector)).get("/locks")
    running = re.findall(r'<tr data-digest="([^"]+)">.*?class="runs-on" data-worker-id="([^"]*)"', page.text, re.S)
    assert dict(running) == {"d-1": "w-1", "d-2": ""}
    assert "not recorded running" in page.text.split('data-digest="d-2"')[1] and "queued</span>" not in page.text


def test_workers_stopping_and_gone_and_what_no_live_worker_sweeps(
    redis_client: redis.Redis, store: InspectionStore, inspector: Inspector
) -> None:
    now = store.server_time()
    register_worker(store, "w-dead", [SeedRecord("m-1", "a", "q", now)], alive=False)
    page = Client(DashboardApp(inspector=inspector)).get("/")
    assert 'data-broker-identity="%s"' % BROKER_IDENTITY in page.text
    assert "No live worker sweeps broker" in page.text and "dramatiq-tracker recover --broker" in page.text
    register_worker(store, "w-stopping", [])
    raw = json.loads(store.registration("w-stopping") or "")
    redis_client.hset(store.keys.workers, "w-stopping", json.dumps({**raw, "stopping_at": now}))
    page = Client(DashboardApp(inspector=inspector)).get("/")
    figures = dict(re.findall(r'data-count="([a-z-]+)"><span class="value">([^<]*)</span>', page.text))
    assert (figures["stopping"], figures["alive"], figures["unresponsive"]) == ("1", "0", "1")
    assert "No live worker sweeps" not in page.text  # a stopping worker still sweeps
    assert figures["oldest-orphan"] != "\u2014"
    workers = Client(DashboardApp(inspector=inspector)).get("/workers")
    assert 'class="state state-stopping">stopping<' in workers.text


def test_with_the_applications_broker_the_overview_shows_what_each_queue_holds(
    redis_url: str, redis_client: redis.Redis, namespaces: Namespaces, producer: RedisBroker
) -> None:
    broker = RedisBroker(url=redis_url, namespace=namespaces.broker)
    broker.add_middleware(TrackerMiddleware(client=redis_client, namespace=namespaces.tracker))
    broker.declare_queue(namespaces.queue)
    send(producer, namespaces.queue, "slow", 2)
    try:
        page = Client(DashboardApp(broker)).get("/")
        rows = page.text.split('id="broker-queues"', 1)[1].split("</section>", 1)[0]
        cells = re.findall(r'<tr data-queue="([^"]+)"><td>[^<]*</td><td class="number">(\d+)</td>', rows)
        assert cells == [(namespaces.queue, "2")]
    finally:
        broker.close()
        broker.client.close()
