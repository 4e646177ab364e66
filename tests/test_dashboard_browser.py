"""The dashboard in a real headless Chromium, against a real Redis and real worker processes: a worker
SIGKILLed while its page is open shows dead, with its orphans recovered on their new worker, without a
reload; message data shows as text and runs nothing; a lock is deleted through the page; a read-only
dashboard refuses.  The screenshots of docs/dashboard.md come from here (UPDATE_SCREENSHOTS=1)."""

from __future__ import annotations

import os
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import dramatiq
import pytest
import redis
from dramatiq.brokers.redis import RedisBroker
from dramatiq.message import Message

from dramatiq_tracker import TrackerMiddleware
from dramatiq_tracker.events import LOCK_DELETED
from dramatiq_tracker.ops.dashboard import DashboardApp
from dramatiq_tracker.ops.inspection import Inspector
from dramatiq_tracker.ops.reads import InspectionStore
from dramatiq_tracker.records import WorkerInfo

from .conftest import Cluster, Namespaces
from .dashboard_seed import HOSTILE, HOSTILE_ATTRIBUTE, showcase
from .dashboard_support import Servers, chrome_or_skip
from .support import (
    BOUND,
    ROOT,
    close_redis_broker,
    delete_matching,
    kill,
    unique,
    wait_for,
)

pytestmark = [pytest.mark.browser]

#: How often the pages update themselves in these tests (the shortest allowed), in milliseconds.
REFRESH = 500
#: How long a page may take to show a change: a few updates, on a loaded machine.
SHOWN = 15
SCREENSHOTS = ROOT / "docs" / "images"
#: The token of the dashboards whose actions the tests take.
TOKEN = "browser-token"


@pytest.fixture(scope="module")
def chrome() -> Iterator[Any]:
    yield from chrome_or_skip()


@pytest.fixture
def serve(redis_client: redis.Redis) -> Iterator[Callable[..., str]]:
    """Serve a dashboard of a namespace over HTTP on a free port; returns its base URL."""
    servers = Servers()
    yield lambda namespace, **options: servers.start(
        DashboardApp(client=redis_client, namespace=namespace, refresh=REFRESH, **options)
    )
    servers.close()


@pytest.fixture
def unique_sender(redis_url: str, namespaces: Namespaces) -> Iterator[Callable[[int], str]]:
    """Send the worker app's ``unique_slow`` (until_executed) from a producer with a tracker, so that
    sending takes its lock; returns its message id."""
    broker = RedisBroker(url=redis_url, namespace=namespaces.broker)
    broker.add_middleware(TrackerMiddleware(client=broker.client, namespace=namespaces.tracker))
    actor = dramatiq.actor(
        lambda index: None, broker=broker, actor_name="unique_slow", queue_name=namespaces.queue, unique=True
    )
    yield lambda index: actor.send(index).message_id
    close_redis_broker(broker)


def busy_with_unique_messages(
    cluster: Cluster, send: Callable[[int], str], count: int, *, threads: int
) -> tuple[WorkerInfo, list[str]]:
    """Start the test's first worker and send it ``count`` unique messages (``unique_sender``); returns it
    and their ids once their records are written."""
    cluster.spawn(threads=threads, slow_seconds=60)
    (worker,) = cluster.wait_registered(1)
    ids = [send(index) for index in range(count)]
    wait_for(lambda: len(cluster.store.inflight(worker.worker_id)) == count, 20, message="recorded")
    return worker, ids


def until(driver: Any, condition: Callable[[Any], Any], timeout: float, message: str) -> Any:
    """Wait in the browser, polling the page as it is (never reloading it).  The live part of a page is
    swapped every update, so an element found a moment ago may be gone: then look again."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(driver, timeout, poll_frequency=0.1, ignored_exceptions=(StaleElementReferenceException,))
    return wait.until(condition, message)


def read(driver: Any, selector: str, what: str = "innerText") -> Any:
    """A property of the element ``selector`` selects, or None, read at once in the page (never stale)."""
    script = "const found = document.querySelector(arguments[0]); return found ? found[arguments[1]] : null;"
    return driver.execute_script(script, selector, what)


def click(driver: Any, selector: str) -> bool:
    """Click the element ``selector`` selects, found afresh (the live part may have been swapped)."""
    driver.find_element("css selector", selector).click()
    return True


def runs_on(driver: Any) -> dict[str, str]:
    """message id -> worker id it runs on now, from the "what became of its messages" table."""
    script = """
        const rows = document.querySelectorAll('#aftermath tr[data-message-id]');
        return Array.from(rows, row => [row.dataset.messageId, row.querySelector('.runs-on').dataset.workerId]);
    """
    return dict(driver.execute_script(script))


def updates(driver: Any) -> int:
    return int(driver.find_element("id", "live").get_attribute("data-updates"))


@pytest.mark.slow
def test_a_worker_killed_while_its_page_is_open_shows_dead_its_orphans_recovered_and_their_new_worker(
    chrome: Any, serve: Callable[..., str], cluster: Cluster, unique_sender: Callable[[int], str]
) -> None:
    # Given a worker running two unique messages, each holding its lock, and a second worker idle
    victim, ids = busy_with_unique_messages(cluster, unique_sender, 2, threads=2)
    assert len(cluster.store.locks()) == 2
    cluster.spawn(threads=4, slow_seconds=60)
    survivor = cluster.wait_new_worker(victim)
    base = serve(cluster.names.tracker)

    # And the overview and the victim's page open in the browser
    chrome.get(base + "/")
    overview = chrome.current_window_handle
    chrome.execute_script("window.openedOnce = true")
    chrome.switch_to.new_window("tab")
    chrome.get(base + "/worker?id=" + urllib.parse.quote(victim.worker_id))
    chrome.execute_script("window.openedOnce = true")
    assert read(chrome, "#worker", "dataset")["state"] == "alive"
    shown = chrome.execute_script(
        "return Array.from(document.querySelectorAll('#messages tr[data-message-id]'), row => row.dataset.messageId)"
    )
    assert set(ids) <= set(shown)

    # When the worker is SIGKILLed
    kill(victim.pid)

    # Then, without a reload, its page shows it dead, and each of its messages delivered again and
    # running on the survivor, holding its lock again
    until(
        chrome,
        lambda d: (read(d, "#worker", "dataset") or {}).get("state") == "dead",
        BOUND + SHOWN,
        "the victim shown dead",
    )
    until(chrome, lambda d: runs_on(d) == dict.fromkeys(ids, survivor.worker_id), BOUND + SHOWN, "running again")
    with Inspector(client=cluster.client, namespace=cluster.names.tracker) as inspector:
        locks = {lock.message_id: lock for lock in inspector.locks().items}
        for message_id in ids:
            row = read(chrome, '#aftermath tr[data-message-id="%s"]' % message_id)
            lock = locks.get(message_id)
            assert lock is not None
            assert (lock.message_id, lock.attempt) == (message_id, 1)
            assert "delivered again" in row and lock.digest in row
    assert chrome.execute_script("return window.openedOnce") is True and updates(chrome) > 0

    # And so does the overview, open since before the kill
    chrome.switch_to.window(overview)
    until(
        chrome,
        lambda d: (
            read(d, '#aftermath[data-worker-id="%s"]' % victim.worker_id, "id") == "aftermath"
            and runs_on(d) == dict.fromkeys(ids, survivor.worker_id)
        ),
        SHOWN,
        "the overview's last dead worker",
    )
    assert read(chrome, '[data-count="dead"] .value') == "1"
    assert read(chrome, '[data-count="orphans"] .value') == "0"
    assert chrome.execute_script("return window.openedOnce") is True
    chrome.close()
    chrome.switch_to.window(chrome.window_handles[0])


@pytest.mark.slow
def test_message_data_shows_as_text_and_runs_nothing(
    chrome: Any, serve: Callable[..., str], cluster: Cluster, producer: RedisBroker
) -> None:
    # Given a real message whose arguments are markup, beside a namespace full of markup
    cluster.spawn(threads=2, slow_seconds=60, env={"TEST_PREVIEW_LENGTH": "200"})
    (worker,) = cluster.wait_registered(1)
    message = Message(
        queue_name=cluster.names.queue, actor_name="slow", args=([HOSTILE, HOSTILE_ATTRIBUTE],), kwargs={}, options={}
    )
    message_id = producer.enqueue(message).message_id
    wait_for(lambda: message_id in cluster.store.inflight(worker.worker_id), 20, message="recorded")
    names = showcase(cluster.client, cluster.store, hostile=True)
    base = serve(cluster.names.tracker, allow_actions=True, token=TOKEN)
    chrome.get(base + "/?token=" + TOKEN)  # logs in: actions need the token
    quoted = urllib.parse.quote

    pages = ["/", "/workers", "/inflight", "/locks", "/events", "/message?id=" + message_id]
    pages += ["/worker?id=" + quoted(names["dead"]), "/worker?id=" + quoted(names["live"])]
    pages += ["/inflight?actor=" + quoted(names["actor"]), "/locks/delete?digest=" + names["digest"]]
    for path in pages:
        chrome.get(base + path)
        if path != pages[-1]:  # a confirmation does not update itself
            until(chrome, lambda d: updates(d) >= 1, SHOWN, "a live update of %s" % path)
        # Then nothing of theirs became markup: no alert, no image, only our two script elements
        assert chrome.execute_script("return document.querySelectorAll('img').length") == 0, path
        assert chrome.execute_script("return document.querySelectorAll('script').length") == 2, path
        assert chrome.execute_script("return typeof window.alert") == "function"
        from selenium.common.exceptions import NoAlertPresentException

        with pytest.raises(NoAlertPresentException):
            chrome.switch_to.alert.text  # noqa: B018
        body = read(chrome, "body")
        assert HOSTILE in body or path in ("/locks/delete?digest=" + names["digest"],), path

    # And the real message's arguments read as its worker recorded them (reprs, cut to 30 characters each)
    chrome.get(base + "/message?id=" + message_id)
    preview = read(chrome, "#running .preview")
    with Inspector(client=cluster.client, namespace=cluster.names.tracker) as inspector:
        assert preview == inspector.running([message_id])[message_id].preview
    assert HOSTILE in preview and "><img src" in preview


@pytest.mark.slow
def test_a_lock_is_deleted_through_the_page(
    chrome: Any, serve: Callable[..., str], cluster: Cluster, unique_sender: Callable[[int], str]
) -> None:
    # Given a unique message running on a worker, holding its lock, and a dashboard with actions enabled
    _, (message_id,) = busy_with_unique_messages(cluster, unique_sender, 1, threads=1)
    (lock,) = cluster.store.locks()
    key = cluster.store.keys.lock(lock.digest)
    base = serve(cluster.names.tracker, allow_actions=True, token=TOKEN)

    # When it is deleted from the locks page, and confirmed (once logged in: actions need the token)
    chrome.get(base + "/locks?token=" + TOKEN)
    until(chrome, lambda d: click(d, 'tr[data-digest="%s"] a.danger' % lock.digest), SHOWN, "the delete link")
    until(chrome, lambda d: d.find_elements("id", "confirm"), SHOWN, "the confirmation")
    assert cluster.client.exists(key)  # asking changed nothing
    chrome.find_element("id", "confirm").click()

    # Then the page says so, and the lock is gone from Redis, with an event saying who
    until(chrome, lambda d: d.find_elements("id", "done"), SHOWN, "the result")
    assert "deleted" in read(chrome, "#done")
    assert not cluster.client.exists(key)
    with Inspector(client=cluster.client, namespace=cluster.names.tracker) as inspector:
        assert inspector.lock(lock.digest) is None and inspector.locks().items == []
        (event,) = inspector.events(10, kinds=[LOCK_DELETED])
        assert (event.details["by"], event.message_id) == ("dashboard", message_id)
    chrome.get(base + "/locks")
    assert chrome.execute_script("return document.querySelectorAll('tr[data-digest]').length") == 0


def test_a_read_only_dashboard_offers_no_action_and_its_endpoints_refuse(
    chrome: Any, serve: Callable[..., str], store: InspectionStore, redis_client: redis.Redis, namespaces: Namespaces
) -> None:
    store.acquire_lock("feedc0ffee", "m-1", 0, "until_executed", "charge_card", "payments", "", None)
    base = serve(namespaces.tracker)
    chrome.get(base + "/locks")
    assert read(chrome, 'tr[data-digest="feedc0ffee"]', "tagName") == "TR"
    assert chrome.execute_script("return document.querySelectorAll('a.danger, form[method=post]').length") == 0

    # Even a request made from the page itself is refused, and changes nothing
    script = """
        const done = arguments[arguments.length - 1];
        const post = {method: 'POST', body: new URLSearchParams({digest: 'feedc0ffee', csrf_token: 'x'})};
        Promise.all([
            fetch('/locks/delete', post), fetch('/locks/delete?digest=feedc0ffee'), fetch('/recover', {method: 'POST'}),
            fetch('/message/abort?id=m-1&mode=abort'),
        ]).then(replies => done(replies.map(reply => reply.status)));
    """
    assert chrome.execute_async_script(script) == [403, 403, 403, 403]
    assert redis_client.exists(store.keys.lock("feedc0ffee"))
    with Inspector(client=redis_client, namespace=namespaces.tracker) as inspector:
        assert inspector.events(10) == []


def test_screenshots_of_every_page(
    chrome: Any, serve: Callable[..., str], redis_client: redis.Redis, tmp_path: Path
) -> None:
    """Screenshots of a seeded namespace; written to docs/images/ with UPDATE_SCREENSHOTS=1."""
    namespace = unique("shop")
    store = InspectionStore(redis_client, namespace)
    try:
        names = showcase(redis_client, store)
        base = serve(namespace, allow_actions=True, token=TOKEN)
        chrome.get(base + "/?token=" + TOKEN)
        quoted = urllib.parse.quote
        pages = {
            "overview": "/",
            "workers": "/workers",
            "worker": "/worker?id=" + quoted(names["dead"]),
            "inflight": "/inflight",
            "message": "/message?id=" + names["recovered"],
            "locks": "/locks",
            "events": "/events",
        }
        target = SCREENSHOTS if os.environ.get("UPDATE_SCREENSHOTS") == "1" else tmp_path
        target.mkdir(parents=True, exist_ok=True)
        for name, path in pages.items():
            chrome.set_window_size(1280, 900)
            chrome.get(base + path)
            until(chrome, lambda d: updates(d) >= 1, SHOWN, "a live update of %s" % path)
            height = chrome.execute_script("return document.documentElement.scrollHeight")
            chrome.set_window_size(1280, min(max(int(height), 600), 1800))
            written = target / ("dashboard-%s.png" % name)
            assert chrome.save_screenshot(str(written)), name
            data = written.read_bytes()
            assert data.startswith(b"\x89PNG") and len(data) > 20_000, name
    finally:
        delete_matching(redis_client, "{%s}:*" % namespace)
        chrome.set_window_size(1280, 1000)
