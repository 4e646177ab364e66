"""The dashboard as a WSGI application, called in-process against a real Redis: what each page shows,
that message data is escaped, that it is read-only unless told otherwise, CSRF, the token, mounting,
and the standalone command.  tests/test_dashboard_browser.py drives it in a real browser."""

from __future__ import annotations

import contextlib
import html
import json
import re
import socket
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from dramatiq.brokers.redis import RedisBroker
from markupsafe import escape

from dramatiq_tracker import ConfigurationError, TrackerMiddleware
from dramatiq_tracker.events import ABORT_REQUESTED, LOCK_DELETED, TrackerEvent
from dramatiq_tracker.keys import identity_digest
from dramatiq_tracker.ops.cli import build_parser
from dramatiq_tracker.ops.dashboard import (
    DEFAULT_HOST,
    DEFAULT_PORT,
    DEFAULT_REFRESH,
    DashboardApp,
    make_wsgi_middleware,
)
from dramatiq_tracker.ops.dashboard.charts import nice_ceiling, timeline_chart
from dramatiq_tracker.ops.dashboard.pages import TimelineCache
from dramatiq_tracker.ops.formatting import duration
from dramatiq_tracker.ops.inspection import Inspector
from dramatiq_tracker.ops.reads import InspectionStore
from dramatiq_tracker.ops.views import Timeline

from .conftest import Namespaces
from .dashboard_seed import (
    BROKER_IDENTITY,
    HOSTILE,
    HOSTILE_ATTRIBUTE,
    SeedRecord,
    add_events,
    register_worker,
    showcase,
)
from .dashboard_support import Client, Reply
from .support import ROOT, close_redis_broker, fake_dead_worker, free_port, wait_for


@pytest.fixture
def inspector(redis_client: redis.Redis, namespaces: Namespaces) -> Iterator[Inspector]:
    with Inspector(client=redis_client, namespace=namespaces.tracker) as found:
        yield found


PAGES = ("/", "/workers", "/inflight", "/locks", "/events", "/message")


def dashboard(inspector: Inspector, **options: Any) -> Client:
    return Client(DashboardApp(inspector=inspector, **options))


#: The token of the dashboards whose actions the tests take.
TOKEN = "s3cret token"


def logged_in(client: Client) -> Client:
    """``client`` with the login cookie of :data:`TOKEN` (``?token=`` once)."""
    assert client.get("/", token=TOKEN).status == 303
    return client


def acting(inspector: Inspector | None = None, **options: Any) -> Client:
    """A dashboard with actions enabled (they need its token), logged in."""
    if inspector is not None:
        options["inspector"] = inspector
    return logged_in(Client(DashboardApp(allow_actions=True, token=TOKEN, **options)))


def counts(reply: Reply) -> dict[str, str]:
    """The overview's figures, by name."""
    found = re.findall(r'data-count="([a-z]+)"><span class="value">([^<]*)</span>', reply.text)
    return dict(found)


def rows(reply: Reply, section: str) -> dict[str, str]:
    """message id -> the worker it runs on now, from a page's "what became of its messages" table."""
    part = reply.text.split('id="%s"' % section, 1)[1].split("</section>", 1)[0]
    return {
        html.unescape(message_id): html.unescape(worker_id)
        for message_id, worker_id in re.findall(
            r'<tr data-message-id="([^"]*)">.*?class="runs-on[^"]*" data-worker-id="([^"]*)"', part, flags=re.S
        )
    }


# What the pages show -------------------------------------------------------------------------


def test_the_overview_adds_up_the_namespace_and_says_what_became_of_the_last_dead_workers_messages(
    redis_client: redis.Redis, store: InspectionStore, inspector: Inspector
) -> None:
    # Given a namespace with live, unresponsive and dead workers, locks and an hour of events
    names = showcase(redis_client, store)

    reply = dashboard(inspector).get("/")

    # Then the figures are those of the inspection API
    assert reply.status == 200
    figures = counts(reply)
    assert figures.pop("oldest").startswith("1 min ")  # 95 s and counting
    assert figures == {
        "alive": "3",
        "stopping": "0",
        "gone": "0",
        "unresponsive": "1",
        "recovering": "0",
        "dead": "2",
        "fenced": "0",
        "inflight": "10",
        "orphans": "2",
        "locks": "5",
    }
    # And the chart shows the hour's recoveries, drawn on the server
    chart = reply.text.split('id="recoveries"', 1)[1].split("</section>", 1)[0]
    assert "<svg" in chart and chart.count('class="series-recovered"') == 2 and "10 recovered" in chart
    assert 'class="series-quarantined"' in chart and "1 quarantined" in chart
    # And the last worker that died, with each of its messages and the worker running it now
    assert 'data-worker-id="%s"' % names["dead"] in reply.text
    assert rows(reply, "aftermath") == {
        names["recovered"]: names["live"],
        "3f0c1a9e-recovered-1": names["live"],
        "3f0c1a9e-recovered-2": names["busy"],
    }
    assert names["digest"] in reply.text.split('id="aftermath"', 1)[1]
    # And the unresponsive worker, with its orphans waiting
    troubled = reply.text.split('id="troubled"', 1)[1].split("</section>", 1)[0]
    assert names["unresponsive"] in troubled and "unresponsive" in troubled
    # And messages in flight by queue and by actor
    assert ">payments</a>" in reply.text and ">charge_card</a>" in reply.text


def test_every_page_shows_its_part_of_the_namespace(
    redis_client: redis.Redis, store: InspectionStore, inspector: Inspector
) -> None:
    names = showcase(redis_client, store)
    client = dashboard(inspector)

    workers = client.get("/workers")
    assert workers.status == 200 and names["busy"] in workers.text and names["dead"] in workers.text
    assert "c2d9-charge-0" in workers.text and "and 2 more" in workers.text  # its messages
    assert "31337" in workers.text and "payments" in workers.text

    worker = client.get("/worker", id=names["busy"])
    assert worker.status == 200 and worker.text.count("<tr data-message-id=") == 5
    dead = client.get("/worker", id=names["dead"])
    assert dead.status == 200 and 'data-state="dead"' in dead.text
    assert rows(dead, "aftermath")[names["recovered"]] == names["live"]
    assert client.get("/worker", id="nobody").status == 404
    assert client.get("/worker").status == 404

    inflight = client.get("/inflight")
    assert inflight.status == 200 and inflight.text.count("<tr data-message-id=") == 10
    assert client.get("/inflight", actor="charge_card").text.count("<tr data-message-id=") == 4
    assert client.get("/inflight", queue="batch").text.count("<tr data-message-id=") == 2
    assert client.get("/inflight", worker=names["live"]).text.count("<tr data-message-id=") == 3
    assert client.get("/inflight", older_than="60").text.count("<tr data-message-id=") == 3
    bad = client.get("/inflight", older_than="soon")
    assert bad.status == 200 and "must be a number of seconds" in bad.text

    message = client.get("/message", id=names["recovered"])
    assert message.status == 200 and 'data-worker-id="%s"' % names["live"] in message.text
    assert names["digest"] in message.text and "lock-released" in message.text
    assert client.get("/message").status == 200
    assert client.get("/message", id="never-seen").status == 404

    locks = client.get("/locks")
    assert locks.status == 200 and locks.text.count("<tr data-digest=") == 5 and "5 held" in locks.text
    assert client.get("/locks", actor="charge_card").text.count("<tr data-digest=") == 4
    assert client.get("/locks", owner=names["recovered"]).text.count("<tr data-digest=") == 1
    assert client.get("/locks", owner=names["busy"]).text.count("<tr data-digest=") == 4
    assert client.get("/locks", older_than="3600").text.count("<tr data-digest=") == 0

    events = client.get("/events")
    assert events.status == 200 and events.text.count("<tr data-event-id=") == 14
    quarantined = client.get("/events", kind="quarantined")
    assert quarantined.text.count("<tr data-event-id=") == 1
    newest = re.findall(r'<tr data-event-id="([^"]+)"', events.text)
    older = client.get("/events", before=newest[4])
    assert re.findall(r'<tr data-event-id="([^"]+)"', older.text) == newest[5:]

    status = json.loads(client.get("/api/status").text)
    assert status["inflight"] == 10 and status["workers"]["alive"] == 3 and status["locks"] == 5
    assert client.get("/no-such-page").status == 404
    assert client.request("POST", "/").status == 405


def test_listings_are_paged_with_the_inspectors_cursors(store: InspectionStore, inspector: Inspector) -> None:
    now = store.server_time()
    register_worker(store, "w-1", [SeedRecord("m-%03d" % i, "a", "q", now) for i in range(70)])
    client = dashboard(inspector)

    first = client.get("/inflight")
    cursor = re.search(r'href="/inflight\?cursor=([^"]+)" rel="next"', first.text)
    assert first.text.count("<tr data-message-id=") == 50 and cursor
    second = client.get("/inflight", cursor=urllib.parse.unquote(html.unescape(cursor.group(1))))
    assert second.text.count("<tr data-message-id=") == 20 and 'rel="next"' not in second.text
    seen = re.findall(r'<tr data-message-id="([^"]+)"', first.text + second.text)
    assert sorted(seen) == ["m-%03d" % i for i in range(70)]


def test_a_page_updates_itself_from_its_live_part(
    redis_client: redis.Redis, store: InspectionStore, inspector: Inspector
) -> None:
    showcase(redis_client, store)
    client = dashboard(inspector)
    for path in PAGES[:-1]:
        page, live = client.get(path), client.get(path, _live="1")
        assert live.status == 200 and "<html" not in live.text and '<div id="live"' not in live.text
        inner = page.text.split('<div id="live" data-updates="0">', 1)[1].rsplit("</div>\n</main>", 1)[0]
        assert inner.strip()[:200] == live.text.strip()[:200], path
        settings = re.search(r'<script type="application/json" id="dashboard-settings">(.*?)</script>', page.text)
        assert settings and json.loads(settings.group(1))["refresh"] == DEFAULT_REFRESH
    # Without live updates the script has nothing to do
    still = dashboard(inspector, refresh=0).get("/")
    assert json.loads(re.findall(r'id="dashboard-settings">(.*?)</script>', still.text)[0])["refresh"] == 0


# Message data is user data ---------------------------------------------------------------------


def test_message_data_and_names_are_escaped_everywhere(
    redis_client: redis.Redis, store: InspectionStore, inspector: Inspector
) -> None:
    # Given markup in message arguments, actor, queue, host and worker names and event texts
    names = showcase(redis_client, store, hostile=True)
    client = acting(inspector)
    pages = [client.get(path) for path in PAGES]
    pages += [client.get(path, _live="1") for path in PAGES]
    pages += [
        client.get("/worker", id=names["dead"]),
        client.get("/worker", id=names["live"]),
        client.get("/message", id=names["recovered"]),
        client.get("/inflight", actor=names["actor"]),
        client.get("/locks/delete", digest=names["digest"]),
        client.get("/message", id=HOSTILE),
        client.get("/no-such-page" + HOSTILE),
    ]
    for reply in pages:
        # Then no markup of theirs reaches a page, and every bit of it shows as text
        assert "<script>alert" not in reply.text and "<img" not in reply.text and "onerror=alert(2)>" not in reply.text
        assert reply.text.count("<script") == 0 or reply.text.count("<script") == 2  # ours: the file and its JSON
    overview, inflight = pages[0], pages[2]
    assert escape(names["dead"]) in overview.text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in inflight.text
    assert escape("(7, %r)" % (HOSTILE_ATTRIBUTE,)) in inflight.text
    assert escape(names["actor"]) in inflight.text


def test_json_in_a_page_cannot_close_its_script_element(redis_client: redis.Redis) -> None:
    # A namespace may hold any character but braces and whitespace: "</script>" included.
    namespace = "ns</script><script>alert(1)</script>"
    with Inspector(client=redis_client, namespace=namespace) as hostile:
        reply = dashboard(hostile).get("/")
    assert reply.status == 200 and "<script>alert(1)" not in reply.text
    settings = re.findall(r'<script type="application/json" id="dashboard-settings">(.*?)</script>', reply.text)
    assert json.loads(settings[0])["namespace"] == namespace
    assert "\\u003c/script\\u003e" in settings[0]


# Safe by default -------------------------------------------------------------------------------


def test_every_answer_carries_the_security_headers(redis_client: redis.Redis, inspector: Inspector) -> None:
    client = dashboard(inspector)
    replies = [client.get(path) for path in PAGES]
    replies += [client.get("/nope"), client.get("/locks/delete", digest="x"), client.get("/static/dashboard.js")]
    replies += [dashboard(inspector, token="t").get("/"), client.get("/api/status")]
    for reply in replies:
        policy = reply.header("Content-Security-Policy")
        assert "frame-ancestors 'none'" in policy and "script-src 'self'" in policy
        assert "unsafe-inline" not in policy and "unsafe-eval" not in policy
        assert reply.header("X-Frame-Options") == "DENY" and reply.header("X-Content-Type-Options") == "nosniff"
        assert reply.header("Referrer-Policy") == "same-origin"
    assert client.get("/").header("Cache-Control") == "no-store"
    head = client.request("HEAD", "/workers")
    assert head.status == 200 and head.body == b"" and int(head.header("Content-Length")) > 1000
    assert client.get("/static/dashboard.css").header("Content-Type").startswith("text/css")
    assert client.get("/static/../app.py").status == 404
    # Nor does any template use inline script, event handlers or style attributes
    templates = sorted((ROOT / "dramatiq_tracker" / "ops" / "dashboard" / "templates").glob("*.html"))
    assert templates
    for template in templates:
        source = template.read_text()
        assert not re.search(r"\son[a-z]+=|\sstyle=|<style|<script>|javascript:", source), template.name
        assert "|safe" not in source, template.name


def test_with_actions_disabled_the_action_endpoints_refuse_and_change_nothing(
    store: InspectionStore, inspector: Inspector
) -> None:
    # Given a lock, and a read-only dashboard
    store.acquire_lock("d1", "m1", 0, "until_executed", "charge", "q", "", None)
    client = dashboard(inspector)
    assert "/locks/delete" not in client.get("/locks").text and "Recover now" not in client.get("/").text

    # When every action is asked for, confirmed or not, with or without a token
    replies = [
        client.get("/locks/delete", digest="d1"),
        client.post("/locks/delete", {"digest": "d1", "csrf_token": "x"}),
        client.get("/recover"),
        client.post("/recover", {}),
        client.get("/message/abort", id="m1", mode="abort"),
        client.post("/message/abort", {"id": "m1", "mode": "abort"}),
    ]

    # Then each is refused, and nothing changed
    assert [reply.status for reply in replies] == [403] * 6
    assert "Actions are disabled" in replies[1].text
    assert inspector.lock("d1") is not None and inspector.events(10) == []
    assert "dramatiq_tracker_session" not in client.cookies


def test_a_lock_is_deleted_after_a_confirmation_with_the_csrf_token_of_the_session(
    redis_client: redis.Redis, store: InspectionStore, inspector: Inspector
) -> None:
    store.acquire_lock("d1", "m1", 0, "until_executed", "charge", "q", "w1", None)
    client = acting(inspector)
    locks = client.get("/locks")
    assert 'href="/locks/delete?digest=d1"' in locks.text
    session = locks.set_cookie("dramatiq_tracker_session")
    assert "HttpOnly" in session and "SameSite=Strict" in session and "Path=/" in session

    # The confirmation changes nothing
    confirm = client.get("/locks/delete", digest="d1")
    assert confirm.status == 200 and 'method="post"' in confirm.text and inspector.lock("d1") is not None
    token = confirm.csrf()

    # A POST without the token, with another session's, or from another site is refused
    assert client.post("/locks/delete", {"digest": "d1"}).status == 403
    stranger = acting(inspector)
    stranger.get("/locks")
    assert stranger.post("/locks/delete", {"digest": "d1", "csrf_token": token}).status == 403
    cross = client.post(
        "/locks/delete", {"digest": "d1", "csrf_token": token}, headers={"Sec-Fetch-Site": "cross-site"}
    )
    assert cross.status == 403 and inspector.lock("d1") is not None
    assert client.request("PUT", "/locks/delete", form={"digest": "d1", "csrf_token": token}).status == 405

    # The confirmed POST deletes it, and the stream says who did
    done = client.post("/locks/delete", {"digest": "d1", "csrf_token": token}, environ={"REMOTE_USER": "alice"})
    assert done.status == 200 and "deleted" in done.text
    assert inspector.lock("d1") is None and not redis_client.exists(store.keys.lock("d1"))
    (event,) = inspector.events(10, kinds=[LOCK_DELETED])
    assert event.details["by"] == "dashboard:alice" and event.message_id == "m1"
    again = client.post("/locks/delete", {"digest": "d1", "csrf_token": token})
    assert again.status == 200 and "was not held" in again.text
    assert client.get("/locks/delete", digest="d1").status == 404


def test_recovering_and_aborting_need_the_applications_broker(inspector: Inspector) -> None:
    client = acting(inspector)
    client.get("/")
    assert "Recover now" not in client.get("/").text
    recover = client.get("/recover")
    assert recover.status == 409 and "--broker" in recover.text
    abort = client.get("/message/abort", id="m1", mode="abort")
    assert abort.status == 409 and "Abortable" in abort.text


def test_recover_now_shows_what_it_would_do_then_does_it(
    redis_broker: RedisBroker, tracker: TrackerMiddleware, store: InspectionStore, namespaces: Namespaces
) -> None:
    # Given a dead worker of this host with two messages running, and a dashboard with the broker
    dead, _ = fake_dead_worker(redis_broker, store, namespaces.queue, 3, running=2)
    app = DashboardApp(broker=redis_broker, allow_actions=True, token=TOKEN)
    client = logged_in(Client(app))
    assert app.inspector.namespace == namespaces.tracker  # the broker's tracker's

    # (and a registration no sweep finds, which it says it leaves out, and why)
    register_worker(store, "w-stranded", [SeedRecord("m-x", "a", "q", store.server_time())], alive=False)
    store.client.zrem(store.keys.deadlines(identity_digest(BROKER_IDENTITY)), "w-stranded")
    plan = client.get("/recover")
    assert plan.status == 200 and dead.worker_id in plan.text and plan.text.count("redelivered") == 3
    assert store.registration(dead.worker_id) is not None  # a plan changes nothing
    left_out = plan.text.split('id="left-out"', 1)[1].split("</div>", 1)[0]
    assert "w-stranded" in left_out and "no heartbeat deadline" in left_out

    done = client.post("/recover", {"csrf_token": plan.csrf()})
    assert done.status == 200 and "1 worker(s) declared dead, 3 message(s) settled" in done.text
    assert store.registration(dead.worker_id) is None
    app.close()


def test_a_message_is_aborted_through_the_dashboard(
    redis_url: str, redis_client: redis.Redis, namespaces: Namespaces
) -> None:
    pytest.importorskip("dramatiq_abort")
    from dramatiq_abort import Abortable
    from dramatiq_abort.backends import RedisBackend

    broker = RedisBroker(url=redis_url, namespace=namespaces.broker)
    broker.add_middleware(Abortable(backend=RedisBackend(client=broker.client, namespace=namespaces.broker + ":a:")))
    broker.add_middleware(TrackerMiddleware(client=redis_client, namespace=namespaces.tracker))
    broker.declare_queue(namespaces.queue)
    try:
        client = acting(broker=broker)
        # A message nobody knows is said to be unknown, and sent only once that is confirmed
        confirm = client.get("/message/abort", id="m-1", mode="abort")
        assert confirm.status == 200 and "Abort it" in confirm.text and 'id="unknown"' in confirm.text
        assert 'name="force" value="1" required' in confirm.text
        assert client.get("/message/abort", id="m-1", mode="explode").status == 400
        refused = client.post("/message/abort", {"id": "m-1", "mode": "abort", "csrf_token": confirm.csrf()})
        assert refused.status == 404 and "knows no message" in refused.text
        with Inspector(client=redis_client, namespace=namespaces.tracker) as inspector:
            assert inspector.message("m-1") is None
        form = {"id": "m-1", "mode": "abort", "csrf_token": confirm.csrf(), "force": "1"}
        done = client.post("/message/abort", form)
        assert done.status == 200 and "requested" in done.text
        # Once known (its abort is remembered), no confirmation of it is asked
        again = client.get("/message/abort", id="m-1", mode="cancel")
        assert again.status == 200 and 'id="unknown"' not in again.text
        with Inspector(client=redis_client, namespace=namespaces.tracker) as inspector:
            view = inspector.message("m-1")
            assert view is not None and view.history is not None and view.history.abort == "abort"
            (event,) = inspector.events(10, kinds=[ABORT_REQUESTED])
            assert event.details["by"] == "dashboard"
    finally:
        close_redis_broker(broker)


# The shared token -------------------------------------------------------------------------------


def test_a_token_is_asked_for_once_then_kept_in_a_cookie(inspector: Inspector) -> None:
    client = dashboard(inspector, token="s3cret token")

    # Without it: 401 and a login form, but the stylesheet is served
    refused = client.get("/workers")
    assert refused.status == 401 and 'name="token"' in refused.text and "Bearer" in refused.header("WWW-Authenticate")
    assert client.get("/workers", _live="1").status == 401 and client.get("/api/status").status == 401
    assert client.get("/static/dashboard.css").status == 200
    assert client.get("/workers", token="wrong").status == 401

    # ?token= once sets the cookie and leaves the URL
    once = client.get("/workers", token="s3cret token", kind="x")
    assert once.status == 303 and once.header("Location") == "/workers?kind=x"
    proof = once.set_cookie("dramatiq_tracker_token")
    assert "HttpOnly" in proof and "SameSite=Strict" in proof and "s3cret" not in proof
    assert client.get("/workers").status == 200

    # A bearer header works too; the login form as well, and it goes back only to the dashboard
    anonymous = dashboard(inspector, token="s3cret token")
    assert anonymous.request("GET", "/", headers={"Authorization": "Bearer s3cret token"}).status == 200
    assert anonymous.post("/login", {"token": "nope", "next": "/workers"}).status == 401
    login = anonymous.post("/login", {"token": "s3cret token", "next": "/locks"})
    assert login.status == 303 and login.header("Location") == "/locks"
    assert anonymous.get("/locks").status == 200
    for elsewhere in ("//evil.example/", "https://evil.example/", "/\\evil.example"):
        assert anonymous.post("/login", {"token": "s3cret token", "next": elsewhere}).header("Location") == "/"


# Mounting ---------------------------------------------------------------------------------------


def test_mounted_as_a_middleware_it_serves_its_prefix_and_passes_the_rest_on(inspector: Inspector) -> None:
    def application(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"the application: " + environ["PATH_INFO"].encode()]

    wrapped = make_wsgi_middleware("/tracker", inspector=inspector)(application)
    client = Client(wrapped, script_name="/app")
    assert client.get("/orders").text == "the application: /orders"
    assert client.get("/trackerish").text == "the application: /trackerish"
    page = client.get("/tracker/workers")
    assert page.status == 200 and 'href="/app/tracker/inflight"' in page.text
    assert 'href="/app/tracker/static/dashboard.css?v=' in page.text
    assert client.get("/tracker").status == 200 and client.get("/tracker/static/dashboard.js").status == 200
    alone = DashboardApp(inspector=inspector, prefix="/tracker")
    assert Client(alone).get("/elsewhere").status == 404


def test_bad_settings_fail_at_construction_naming_the_setting(inspector: Inspector) -> None:
    for setting, options in [
        ("prefix", {"prefix": "tracker"}),
        ("prefix", {"prefix": "/tracker/"}),
        ("refresh", {"refresh": 10}),
        ("refresh", {"refresh": True}),
        ("token", {"token": " "}),
    ]:
        with pytest.raises(ConfigurationError, match=setting):
            DashboardApp(inspector=inspector, **options)
    with pytest.raises(ConfigurationError, match="namespace"):
        DashboardApp(url="redis://127.0.0.1:1/0", namespace="has space")


def test_an_unreachable_redis_gives_a_page_that_says_so() -> None:
    app = DashboardApp(url="redis://127.0.0.1:1/0")
    reply = Client(app).get("/")
    assert reply.status == 503 and "Cannot read the tracker&#39;s Redis at redis://127.0.0.1:1/0" in reply.text
    assert '<meta http-equiv="refresh" content="2">' in reply.text and 'id="retrying"' in reply.text
    assert Client(app).get("/", _live="1").status == 503
    app.close()


def test_without_jinja2_the_import_names_the_extra() -> None:
    code = "import sys; sys.modules['jinja2'] = None; import dramatiq_tracker.ops.dashboard"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 1
    assert "pip install 'dramatiq-tracker[dashboard]'" in result.stderr and "ImportError" in result.stderr
    # And the rest of the package, the command line included, needs no Jinja2
    code = (
        "import sys; sys.modules['jinja2'] = None; from dramatiq_tracker.ops.cli import main; main(['dashboard', '-h'])"
    )
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, cwd=ROOT).returncode == 0


# Charts and figures ---------------------------------------------------------------------------


def test_the_chart_is_plain_svg_with_text_escaped() -> None:
    assert [nice_ceiling(n) for n in (0, 1, 2, 3, 7, 10, 11, 40, 99, 101, 4999)] == [
        1, 1, 2, 5, 10, 10, 20, 50, 100, 200, 5000,
    ]  # fmt: skip
    timeline = Timeline(start=0, step=60_000, counts={"recovered": [0, 3, 1], "<x>": [1, 0, 0]})
    svg = timeline_chart(timeline, [("recovered", "recovered"), ("<x>", "a<b")], title="T<itle>")
    assert svg.startswith("<svg") and svg.count('class="series-recovered"') == 2
    assert "<x>" not in svg and "a<b" not in svg and "T<itle>" not in svg and "&lt;itle&gt;" in svg
    assert "<script" not in svg and "style=" not in svg


def test_the_charts_counts_are_kept_for_the_buckets_that_ended_and_the_open_ones_read_again(
    redis_client: redis.Redis, store: InspectionStore, inspector: Inspector
) -> None:
    now = store.server_time()
    kinds = ["recovered", "quarantined"]
    add_events(
        redis_client, store, [(now - 30 * 60_000 + i, TrackerEvent(kind="recovered", text="")) for i in range(4)]
    )
    cache = TimelineCache(kinds, 3_600_000, 60)

    first = cache.read(inspector)
    assert first.total("recovered") == 4 and first.counts == inspector.timeline(kinds).counts
    # New events land in the open bucket; the next read counts them without reading the others again
    add_events(redis_client, store, [(store.server_time(), TrackerEvent(kind="quarantined", text=""))])
    second = cache.read(inspector)
    assert second.counts == inspector.timeline(kinds).counts
    assert (second.total("recovered"), second.total("quarantined")) == (4, 1)


def test_durations_read_naturally() -> None:
    assert [duration(ms) for ms in (None, 0, 999, 1500, 61_000, 3_723_000, 90_000_000)] == [
        "\u2014", "0 ms", "999 ms", "1.5 s", "1 min 01 s", "1 h 02 min", "1 d 01 h",
    ]  # fmt: skip


# The standalone server ------------------------------------------------------------------------


def test_the_commands_defaults_are_the_dashboards() -> None:
    arguments = build_parser().parse_args(["dashboard"])
    assert (arguments.host, arguments.port, arguments.refresh) == (DEFAULT_HOST, DEFAULT_PORT, DEFAULT_REFRESH)
    assert not arguments.allow_actions and arguments.token is None and arguments.prefix == ""


def test_the_command_serves_the_dashboard_on_localhost_until_interrupted(
    redis_url: str, redis_client: redis.Redis, store: InspectionStore, namespaces: Namespaces
) -> None:
    store.acquire_lock("d1", "m1", 0, "until_executed", "charge", "q", "", None)
    port = free_port()
    command = [sys.executable, "-m", "dramatiq_tracker", "dashboard", "--url", redis_url]
    command += ["--namespace", namespaces.tracker, "--port", str(port), "--prefix", "/t"]
    env = {"DRAMATIQ_TRACKER_DASHBOARD_TOKEN": "from-env", "PATH": "/usr/bin:/bin"}
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for(lambda: _answers(port), 30, message="the dashboard on port %d" % port)
        assert _status("http://127.0.0.1:%d/t/" % port) == 401  # the token, from the environment
        request = urllib.request.Request(
            "http://127.0.0.1:%d/t/locks" % port, headers={"Authorization": "Bearer from-env"}
        )
        with urllib.request.urlopen(request, timeout=10) as reply:
            page = reply.read().decode()
            assert reply.headers["X-Frame-Options"] == "DENY"
        assert namespaces.tracker in page and "d1" in page and "/t/locks/delete" not in page
        forbidden = urllib.request.Request(
            "http://127.0.0.1:%d/t/locks/delete" % port, data=b"digest=d1", headers={"Authorization": "Bearer from-env"}
        )
        assert _status(forbidden) == 403 and redis_client.exists(store.keys.lock("d1"))
    finally:
        process.send_signal(2)  # SIGINT: Ctrl-C
        output = process.communicate(timeout=30)[0]
    assert process.returncode == 130, output
    assert "on http://127.0.0.1:%d/t/ (read-only, token required)" % port in output
    assert "from-env" not in output


def test_the_command_refuses_actions_on_an_open_address_without_a_token(redis_url: str) -> None:
    command = [sys.executable, "-m", "dramatiq_tracker", "dashboard", "--url", redis_url, "--host", "0.0.0.0"]
    result = subprocess.run([*command, "--allow-actions"], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert result.returncode == 2 and "needs a --token" in result.stderr
    result = subprocess.run([*command, "--broker", "no_such_module"], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 2 and "cannot import 'no_such_module'" in result.stderr


def _answers(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        return True
    return False


def _status(request: str | urllib.request.Request) -> int:
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            return int(reply.status)
    except urllib.error.HTTPError as e:
        return int(e.code)


def test_without_chromium_the_browser_tests_skip_but_fail_under_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    from . import dashboard_support

    monkeypatch.setattr(dashboard_support, "CHROMIUM_CANDIDATES", ())
    monkeypatch.setattr(dashboard_support.shutil, "which", lambda name: None)
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="chromium"):
        next(dashboard_support.chrome_or_skip())
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="apt-get install chromium chromium-driver"):
        next(dashboard_support.chrome_or_skip())
