"""The dashboard is safe by default, over HTTP: it answers only to the host names it is served as (no
DNS rebinding), refuses a state-changing request from another origin, takes actions only from someone
holding its token (or the application's authentication), never redirects elsewhere, signs a random
cookie per login, and serves HTTPS itself when given a certificate.  tests/test_dashboard_browser.py
checks in a real browser what depends on one."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import http.client
import re
import socket
import ssl
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from dramatiq_tracker.events import LOCK_DELETED
from dramatiq_tracker.ops.dashboard import DashboardApp
from dramatiq_tracker.ops.dashboard.security import LOGIN_LIFETIME, TOKEN_COOKIE, Guard
from dramatiq_tracker.ops.inspection import Inspector
from dramatiq_tracker.ops.reads import InspectionStore

from .conftest import Namespaces
from .dashboard_support import Client, Reply
from .servers import make_certificates
from .support import ROOT, free_port, wait_for


@pytest.fixture
def inspector(redis_client: redis.Redis, namespaces: Namespaces) -> Iterator[Inspector]:
    with Inspector(client=redis_client, namespace=namespaces.tracker) as found:
        yield found


TOKEN = "s3cret token"


def client(inspector: Inspector, **options: Any) -> Client:
    return Client(DashboardApp(inspector=inspector, **options))


def get(client: Client, path: str, host: str, **query: str) -> Reply:
    return client.request("GET", path, query, headers={"Host": host})


# The Host ------------------------------------------------------------------------------------


def test_only_the_hosts_it_is_served_as_are_answered(store: InspectionStore, inspector: Inspector) -> None:
    store.acquire_lock("d-1", "m-secret-args", 0, "until_executed", "charge", "q", "", None)
    browser = client(inspector)
    for host in ("localhost", "localhost:8711", "127.0.0.1", "127.0.0.1:8711", "[::1]", "[::1]:8711", "LOCALHOST."):
        assert get(browser, "/locks", host).status == 200, host

    # A page of another site whose name resolves here (DNS rebinding) names its own host: refused
    # before anything is read, whatever the path, the token or the method
    for host in ("evil.example", "evil.example:8711", "127.0.0.1.evil.example", "", "bad host", "[::1", "::1"):
        for path in ("/locks", "/api/status", "/static/dashboard.js", "/login"):
            refused = get(browser, path, host)
            assert refused.status == 400, (host, path)
            assert "m-secret-args" not in refused.text and inspector.namespace not in refused.text
            assert refused.header("X-Frame-Options") == "DENY"
    assert "--allowed-host" in get(browser, "/", "evil.example").text

    # The names it is reached by are added; "*" answers any (behind a proxy that checks the Host)
    named = client(inspector, allowed_hosts=["tracker.example.com", "10.1.2.3", "fd00::1"])
    assert get(named, "/", "tracker.example.com:443").status == 200
    assert get(named, "/", "10.1.2.3").status == 200 and get(named, "/", "[fd00::1]:8711").status == 200
    assert get(named, "/", "localhost").status == 400  # only those given
    assert get(client(inspector, allowed_hosts=["*"]), "/", "anything.example").status == 200

    # (and outside its prefix, the application it wraps decides)
    def application(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"app"]

    mounted = Client(DashboardApp(inspector=inspector, prefix="/tracker", app=application))
    assert (
        get(mounted, "/orders", "shop.example").text == "app"
        and get(mounted, "/tracker/", "shop.example").status == 400
    )


# Origins and the token for actions ------------------------------------------------------------


def logged_in(inspector: Inspector, **options: Any) -> Client:
    browser = client(inspector, allow_actions=True, token=TOKEN, **options)
    assert browser.get("/", token=TOKEN).status == 303
    return browser


def test_a_state_changing_request_from_another_origin_is_refused(store: InspectionStore, inspector: Inspector) -> None:
    # Given a logged-in session, its cookie, its CSRF token
    store.acquire_lock("d-1", "m-1", 0, "until_executed", "charge", "q", "", None)
    browser = logged_in(inspector)
    token = browser.get("/locks/delete", digest="d-1").csrf()
    form = {"digest": "d-1", "csrf_token": token}

    # When a POST carries all of it but says it comes from another origin (no Sec-Fetch-Site: a browser
    # that does not send it), or from an opaque one ("null": a sandboxed frame, a data: URL)
    for origin in ("http://evil.example", "null", "http://127.0.0.1.evil.example", "http://127.0.0.1:9999", "junk"):
        reply = browser.post("/locks/delete", form, headers={"Origin": origin})
        # Then it is refused, and the lock is there
        assert reply.status == 403, origin
        assert inspector.lock("d-1") is not None
    assert browser.post("/login", {"token": TOKEN}, headers={"Origin": "http://evil.example"}).status == 403

    # Its own origin (the Host it names, any scheme: a TLS proxy may stand in front) is accepted
    same = browser.post("/locks/delete", form, headers={"Origin": "https://127.0.0.1"})
    assert same.status == 200 and inspector.lock("d-1") is None
    store.acquire_lock("d-2", "m-2", 0, "until_executed", "charge", "q", "", None)
    ported = {"Origin": "http://localhost:8711", "Host": "localhost:8711"}
    assert browser.post("/locks/delete", {"digest": "d-2", "csrf_token": token}, headers=ported).status == 200


def test_actions_need_the_token_or_the_applications_authentication_on_every_address(
    store: InspectionStore, inspector: Inspector
) -> None:
    store.acquire_lock("d-1", "m-1", 0, "until_executed", "charge", "q", "", None)
    # Enabled, but without a token: nothing is offered, nothing is done
    anonymous = client(inspector, allow_actions=True)
    assert "/locks/delete" not in anonymous.get("/locks").text and "dramatiq_tracker_session" not in anonymous.cookies
    refused = anonymous.get("/locks/delete", digest="d-1")
    assert refused.status == 403 and "need the dashboard&#39;s token" in refused.text
    assert anonymous.post("/locks/delete", {"digest": "d-1", "csrf_token": "x"}).status == 403
    assert inspector.lock("d-1") is not None and inspector.events(10) == []

    # The application's own authentication (the REMOTE_USER it sets) lets its user act
    alice = {"REMOTE_USER": "alice"}
    confirm = anonymous.request("GET", "/locks/delete", {"digest": "d-1"}, environ=alice)
    assert confirm.status == 200
    done = anonymous.request(
        "POST", "/locks/delete", form={"digest": "d-1", "csrf_token": confirm.csrf()}, environ=alice
    )
    assert done.status == 200 and inspector.lock("d-1") is None
    (event,) = inspector.events(10, kinds=[LOCK_DELETED])
    assert event.details["by"] == "dashboard:alice"


# Redirects and cookies ------------------------------------------------------------------------


def test_the_login_redirect_never_leaves_the_dashboard(inspector: Inspector) -> None:
    browser = client(inspector, token=TOKEN)
    # /%2F%2Fevil.example and /%5Cevil.example, as a server decodes them into PATH_INFO
    for path in ("//evil.example", "//evil.example/x", "/\\evil.example", "///evil.example", "/\\/evil.example"):
        reply = browser.get(path, token=TOKEN)
        # Wherever a browser goes from there, it stays on this host
        landing = urllib.parse.urlsplit(urllib.parse.urljoin("http://127.0.0.1/", reply.header("Location")))
        assert reply.status == 303 and landing.netloc == "127.0.0.1", (path, reply.header("Location"))
    assert browser.get("/workers", token=TOKEN, kind="x").header("Location") == "/workers?kind=x"
    mounted = Client(DashboardApp(inspector=inspector, token=TOKEN, prefix="/t"))
    assert mounted.get("/t//evil.example", token=TOKEN).header("Location") == "/t/"
    assert mounted.get("/t/locks", token=TOKEN).header("Location") == "/t/locks"
    # The login form's next page too
    for elsewhere in ("//evil.example/", "https://evil.example/", "/\\evil.example", "http:/evil.example"):
        assert (
            client(inspector, token=TOKEN).post("/login", {"token": TOKEN, "next": elsewhere}).header("Location") == "/"
        )


def test_each_login_gets_a_random_signed_cookie_bound_to_the_token_and_the_secret(inspector: Inspector) -> None:
    secret = b"k" * 32
    app = DashboardApp(inspector=inspector, token=TOKEN, secret=secret)
    first, second = Client(app), Client(app)
    first.get("/", token=TOKEN)
    second.post("/login", {"token": TOKEN, "next": "/"})
    one, two = first.cookies[TOKEN_COOKIE], second.cookies[TOKEN_COOKIE]
    assert one != two  # random per login, not derived from the token alone
    legacy = hmac.new(TOKEN.encode(), b"dramatiq-tracker dashboard token", hashlib.sha256).hexdigest()
    assert TOKEN not in one and legacy not in one
    assert first.get("/workers").status == 200 and second.get("/workers").status == 200

    def with_cookie(value: str, target: DashboardApp = app) -> int:
        browser = Client(target)
        browser.cookies[TOKEN_COOKIE] = value
        return browser.get("/workers").status

    # Another process's secret (a restart), another token, a forged, a tampered or an old cookie: no entry
    assert with_cookie(one, DashboardApp(inspector=inspector, token=TOKEN)) == 401
    assert with_cookie(one, DashboardApp(inspector=inspector, token="another", secret=secret)) == 401
    assert with_cookie(legacy) == 401 and with_cookie("") == 401
    issued, session, signature = one.split(".")
    assert with_cookie("%s.%s.%s" % (issued, session + "x", signature)) == 401
    guard = Guard(token=TOKEN, secret=secret)
    old = int(time.time()) - LOGIN_LIFETIME - 60
    assert with_cookie("%d.%s.%s" % (old, session, guard._sign_login(old, session))) == 401
    fresh = int(time.time())
    assert with_cookie("%d.%s.%s" % (fresh, session, guard._sign_login(fresh, session))) == 200


# The standalone server ------------------------------------------------------------------------


def _request(port: int, path: str, host: str, *, context: ssl.SSLContext | None = None) -> http.client.HTTPResponse:
    connection: http.client.HTTPConnection
    if context is None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    else:
        connection = http.client.HTTPSConnection("127.0.0.1", port, timeout=30, context=context)
    connection.putrequest("GET", path, skip_host=True)
    connection.putheader("Host", host)
    connection.endheaders()
    return connection.getresponse()


def _serving(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        return True
    return False


def test_the_standalone_server_checks_the_host_and_serves_https_when_given_a_certificate(
    redis_url: str, namespaces: Namespaces, tmp_path: Path
) -> None:
    certificates = make_certificates(tmp_path)
    port = free_port()
    command = [sys.executable, "-m", "dramatiq_tracker", "dashboard", "--url", redis_url]
    command += ["--namespace", namespaces.tracker, "--port", str(port), "--allowed-host", "tracker.example"]
    command += ["--certfile", str(certificates.server_cert_file), "--keyfile", str(certificates.server_key_file)]
    env = {"DRAMATIQ_TRACKER_DASHBOARD_TOKEN": TOKEN, "PATH": "/usr/bin:/bin"}
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for(lambda: _serving(port) or process.poll() is not None, 30, message="the dashboard on %d" % port)
        trusting = ssl.create_default_context(cafile=str(certificates.ca_file))
        # HTTPS, with the certificate given; the token's cookie is Secure
        reply = _request(port, "/workers?token=s3cret%20token", "127.0.0.1:%d" % port, context=trusting)
        assert reply.status == 303 and "Secure" in (reply.getheader("Set-Cookie") or "")
        assert _request(port, "/", "tracker.example", context=trusting).status == 401  # an allowed host: the token
        refused = _request(port, "/", "evil.example:%d" % port, context=trusting)
        assert refused.status == 400 and b"tracker.example" not in refused.read()
        # Plain HTTP on that port is no answer, and no traceback
        with pytest.raises((http.client.HTTPException, ConnectionError, OSError)):
            _request(port, "/", "127.0.0.1").read()
        assert _request(port, "/", "localhost", context=trusting).status == 401  # it serves on
    finally:
        process.send_signal(2)
        output = process.communicate(timeout=30)[0]
    assert process.returncode == 130 and "Traceback" not in output, output
    assert re.search(r"on https://127\.0\.0\.1:%d/ \(read-only, token required\)" % port, output), output
    assert TOKEN not in output
