"""Talk to the dashboard: a WSGI client with a cookie jar, and a real headless Chromium."""

from __future__ import annotations

import dataclasses
import http.cookies
import io
import os
import re
import shutil
import threading
import urllib.parse
import wsgiref.util
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import pytest

#: Where Debian's chromium and chromium-driver packages put their executables.
CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome")
CHROMEDRIVER_CANDIDATES = ("/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver")


@dataclasses.dataclass
class Reply:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8")

    def header(self, name: str) -> str:
        return next((value for key, value in self.headers if key.lower() == name.lower()), "")

    def cookies(self) -> dict[str, str]:
        found = {}
        for key, value in self.headers:
            if key.lower() == "set-cookie":
                jar = http.cookies.SimpleCookie()
                jar.load(value)
                found.update({name: morsel.value for name, morsel in jar.items()})
        return found

    def set_cookie(self, name: str) -> str:
        """The whole Set-Cookie header of cookie ``name``."""
        return next(
            (v for k, v in self.headers if k.lower() == "set-cookie" and v.startswith(name + "=")),
            "",
        )

    def csrf(self) -> str:
        found = re.search(r'name="csrf_token" value="([0-9a-f]+)"', self.text)
        assert found, "no CSRF token in the page"
        return found.group(1)


class Client:
    """Calls a WSGI application in-process, keeping the cookies it sets."""

    def __init__(self, app: Any, *, script_name: str = "") -> None:
        self.app = app
        self.script_name = script_name
        self.cookies: dict[str, str] = {}

    def request(
        self,
        method: str,
        path: str,
        query: Mapping[str, str] | None = None,
        form: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> Reply:
        body = urllib.parse.urlencode(form or {}).encode()
        env: dict[str, Any] = {}
        wsgiref.util.setup_testing_defaults(env)
        env.update(
            REQUEST_METHOD=method,
            SCRIPT_NAME=self.script_name,
            PATH_INFO=path,
            QUERY_STRING=urllib.parse.urlencode(query or {}),
            CONTENT_LENGTH=str(len(body)),
            CONTENT_TYPE="application/x-www-form-urlencoded",
        )
        env["wsgi.input"] = io.BytesIO(body)
        if self.cookies:
            env["HTTP_COOKIE"] = "; ".join("%s=%s" % item for item in self.cookies.items())
        for name, value in (headers or {}).items():
            env["HTTP_" + name.upper().replace("-", "_")] = value
        env.update(environ or {})
        started: dict[str, Any] = {}

        def start_response(status: str, response_headers: list[tuple[str, str]], exc_info: Any = None) -> None:
            started["status"] = int(status.split()[0])
            started["headers"] = response_headers

        chunks = self.app(env, start_response)
        reply = Reply(started["status"], started["headers"], b"".join(chunks))
        self.cookies.update(reply.cookies())
        return reply

    def get(self, path: str, **query: str) -> Reply:
        return self.request("GET", path, query)

    def post(self, path: str, form: Mapping[str, str], **kwargs: Any) -> Reply:
        return self.request("POST", path, form=form, **kwargs)


class Servers:
    """Serve WSGI applications over real HTTP, each on a free port of 127.0.0.1, in threads; ``close()``
    stops them all."""

    def __init__(self) -> None:
        self.running: list[tuple[Any, Any]] = []

    def start(self, app: Any) -> str:
        """Serve ``app`` (a DashboardApp); returns its base URL."""
        from dramatiq_tracker.ops.dashboard import make_server

        server = make_server(app, "127.0.0.1", 0)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        self.running.append((server, app))
        return "http://127.0.0.1:%d" % server.server_address[1]

    def close(self) -> None:
        for server, app in self.running:
            server.shutdown()
            server.server_close()
            app.close()


def find_executable(candidates: tuple[str, ...], name: str) -> str | None:
    found = next((path for path in candidates if os.access(path, os.X_OK)), None)
    return found or shutil.which(name)


def chrome_or_skip(arguments: Sequence[str] = (), env: Mapping[str, str] | None = None) -> Iterator[Any]:
    """A headless Chromium driven by selenium; skipped without one, but failed under CI (where
    ``.ci/run`` installs it).

    Parameters:
      arguments(list[str]): More Chromium switches (``--host-resolver-rules=...``).
      env(dict[str, str]): More environment variables of its processes (``TZ``).
    """
    chromium = find_executable(CHROMIUM_CANDIDATES, "chromium")
    driver_path = find_executable(CHROMEDRIVER_CANDIDATES, "chromedriver")
    missing = [name for name, path in (("chromium", chromium), ("chromedriver", driver_path)) if path is None]
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        missing.append("selenium (pip)")
    if missing:
        message = "the browser tests need %s (apt-get install chromium chromium-driver)" % ", ".join(missing)
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    options = webdriver.ChromeOptions()
    options.binary_location = str(chromium)
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1000"):
        options.add_argument(argument)
    options.add_argument("--force-device-scale-factor=1")
    for argument in arguments:
        options.add_argument(argument)
    service = Service(str(driver_path), env={**os.environ, **(env or {})})
    driver = webdriver.Chrome(service=service, options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()
