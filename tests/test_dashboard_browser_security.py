"""The dashboard in a real headless Chromium where a browser's behaviour is the point: a page of another
site whose name resolves to this machine (DNS rebinding) reads nothing, a form of another site posted by
the browser of a logged-in operator changes nothing, a page that could not read Redis loads itself again
until it can, times show in UTC whatever the browser's time zone, and a wide table scrolls sideways
inside its section while the arguments stay readable.

Chromium maps the other site's name to 127.0.0.1 (``--host-resolver-rules``), and runs in Tokyo's time
zone."""

from __future__ import annotations

import functools
import http.server
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from dramatiq_tracker.ops.dashboard import DashboardApp
from dramatiq_tracker.ops.inspection import Inspector
from dramatiq_tracker.ops.reads import InspectionStore

from .conftest import Namespaces
from .dashboard_seed import SeedRecord, register_worker
from .dashboard_support import Servers, chrome_or_skip
from .support import RedisServer
from .test_dashboard_browser import REFRESH, SHOWN, read, until

pytestmark = [pytest.mark.browser]

#: The other site: a name Chromium resolves to 127.0.0.1.
ELSEWHERE = "evil.example"
TOKEN = "browser-token"
TIME_ZONE = "Asia/Tokyo"


@pytest.fixture(scope="module")
def chrome() -> Iterator[Any]:
    rules = "--host-resolver-rules=MAP %s 127.0.0.1" % ELSEWHERE
    yield from chrome_or_skip([rules], {"TZ": TIME_ZONE})


@pytest.fixture
def serve() -> Iterator[Callable[..., str]]:
    """Serve a dashboard over HTTP on a free port of 127.0.0.1; returns its base URL."""
    servers = Servers()
    yield lambda **options: servers.start(DashboardApp(refresh=REFRESH, **options))
    servers.close()


@pytest.fixture
def elsewhere(tmp_path: Path) -> Iterator[Callable[[str], str]]:
    """Serve a page of the other site (its own server, its own port); returns its URL under ELSEWHERE."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    handler.log_message = lambda *args: None  # type: ignore[method-assign]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()

    def page(html: str) -> str:
        (tmp_path / "page.html").write_text(html, encoding="utf-8")
        return "http://%s:%d/page.html" % (ELSEWHERE, server.server_address[1])

    yield page
    server.shutdown()
    server.server_close()


def test_a_page_of_another_site_that_resolves_here_reads_nothing(
    chrome: Any, serve: Callable[..., str], redis_client: redis.Redis, namespaces: Namespaces, store: InspectionStore
) -> None:
    # Given a dashboard without a token on this machine, showing a message's arguments
    register_worker(store, "w-1", [SeedRecord("m-1", "charge", "q", store.server_time(), "('card 4242',)")])
    base = serve(client=redis_client, namespace=namespaces.tracker)
    chrome.get(base + "/inflight")
    assert "card 4242" in read(chrome, "body")

    # When the browser reaches it under another site's name (DNS rebinding: the other site's pages, its
    # scripts included, would then read it as their own)
    port = urllib.parse.urlsplit(base).port
    for path in ("/inflight", "/api/status", "/workers"):
        chrome.get("http://%s:%d%s" % (ELSEWHERE, port, path))
        body = read(chrome, "body")
        # Then it answers nothing of the namespace
        assert "is not served as host" in body and "card 4242" not in body and namespaces.tracker not in body, path


def test_a_form_of_another_site_posted_by_a_logged_in_browser_changes_nothing(
    chrome: Any,
    serve: Callable[..., str],
    elsewhere: Callable[[str], str],
    redis_client: redis.Redis,
    namespaces: Namespaces,
    store: InspectionStore,
) -> None:
    # Given an operator logged in to a dashboard with actions, a lock, and the CSRF token of the session
    store.acquire_lock("d-1", "m-1", 0, "until_executed", "charge", "q", "", None)
    base = serve(client=redis_client, namespace=namespaces.tracker, allow_actions=True, token=TOKEN)
    chrome.get(base + "/locks/delete?digest=d-1&token=" + TOKEN)
    csrf = chrome.find_element("css selector", "input[name=csrf_token]").get_attribute("value")

    # When a page of another site posts the form, token included (the worst case: it learnt it)
    form = """<!doctype html><form method="post" action="%s/locks/delete">
        <input name="digest" value="d-1"><input name="csrf_token" value="%s"></form>
        <script>document.forms[0].submit()</script>""" % (base, csrf)
    chrome.get(elsewhere(form))
    until(chrome, lambda d: d.current_url.startswith(base), SHOWN, "the post")

    # Then the dashboard refuses it and the lock is held: the browser says where it came from
    until(chrome, lambda d: "Not allowed" in (read(d, "h1") or ""), SHOWN, "the refusal")
    with Inspector(client=redis_client, namespace=namespaces.tracker) as inspector:
        assert inspector.lock("d-1") is not None and inspector.events(10) == []
    # While the same form, from the dashboard's own page, deletes it
    chrome.get(base + "/locks/delete?digest=d-1")
    chrome.find_element("id", "confirm").click()
    until(chrome, lambda d: d.find_elements("id", "done") or d.find_elements("id", "refused"), SHOWN, "the deletion")
    assert chrome.find_elements("id", "done"), read(chrome, "body")
    assert not redis_client.exists(store.keys.lock("d-1"))


def test_a_page_that_could_not_read_redis_loads_itself_again_until_it_can(
    chrome: Any, serve: Callable[..., str], tracker_server: RedisServer
) -> None:
    # Given a dashboard whose Redis is down
    tracker_server.stop()
    base = serve(url=tracker_server.url, namespace="down")
    chrome.get(base + "/workers")
    assert read(chrome, "h1") == "Redis unreachable" and "loads itself again" in read(chrome, "#retrying")

    # When Redis is back, the page shows the workers, without anyone reloading it
    tracker_server.start()
    until(chrome, lambda d: read(d, "#registered h2") == "Registered workers", 30, "the page, loaded again")
    assert chrome.current_url == base + "/workers"


def test_times_show_in_utc_whatever_the_browsers_time_zone(
    chrome: Any, serve: Callable[..., str], redis_client: redis.Redis, namespaces: Namespaces
) -> None:
    base = serve(client=redis_client, namespace=namespaces.tracker)
    chrome.get(base + "/")
    assert chrome.execute_script("return Intl.DateTimeFormat().resolvedOptions().timeZone") == TIME_ZONE
    status = until(
        chrome, lambda d: (text := read(d, "#live-status")) and text.startswith("updated ") and text, SHOWN, "an update"
    )
    shown = status.removeprefix("updated ")
    assert shown.endswith(" UTC")
    hour = int(shown[:2])
    now = time.gmtime()
    assert hour in (now.tm_hour, (now.tm_hour - 1) % 24), (shown, now)
    assert chrome.execute_script("return new Date().getHours()") != hour  # not the browser's own time


def test_a_wide_table_scrolls_in_its_section_and_the_arguments_stay_readable(
    chrome: Any, serve: Callable[..., str], redis_client: redis.Redis, namespaces: Namespaces, store: InspectionStore
) -> None:
    now = store.server_time()
    preview = "({'customer': 'ACME Corporation Ltd', 'items': [1, 2, 3, 4, 5], 'note': 'deliver before noon'},)"
    records = [
        SeedRecord("m-%d-%s" % (i, "x" * 30), "a_rather_long_actor_name", "a_long_queue_name", now, preview)
        for i in range(3)
    ]
    register_worker(store, "w-1-" + "y" * 40, records, hostname="a-long-host-name.example.internal")
    base = serve(client=redis_client, namespace=namespaces.tracker)
    try:
        chrome.set_window_size(800, 900)
        chrome.get(base + "/inflight")
        until(chrome, lambda d: read(d, "td.preview"), SHOWN, "the table")
        # The page itself does not scroll sideways; the table does, inside its section
        assert chrome.execute_script("return document.documentElement.scrollWidth <= window.innerWidth")
        assert chrome.execute_script(
            "const box = document.querySelector('#inflight .table-scroll'); return box.scrollWidth > box.clientWidth"
        )
        # And the arguments get a readable width, wrapped at words, whole on hover
        width = chrome.execute_script("return document.querySelector('td.preview').getBoundingClientRect().width")
        lines = chrome.execute_script(
            "const cell = document.querySelector('td.preview code');return cell.getClientRects().length"
        )
        assert width >= 200 and lines <= 4, (width, lines)
        assert read(chrome, "td.preview", "title") == preview
    finally:
        chrome.set_window_size(1280, 1000)
