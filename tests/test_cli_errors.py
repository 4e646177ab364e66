"""What the ``dramatiq-tracker`` command says when the tracker's Redis cannot be used, whatever the kind
of client its URL makes (a plain server, a Redis Cluster, Sentinels, TLS, a unix socket), when the
credentials are wrong, and when an argument is: one line and a documented exit code, never a traceback,
and never a secret of the URL.  Every command runs as a process of its own, as an operator runs it."""

from __future__ import annotations

import re
import signal
import subprocess
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator

import pytest
import redis

from dramatiq_tracker.ops.cli import RET_ERROR, RET_INTERRUPTED, RET_NOT_FOUND, RET_OK, RET_USAGE

from .conftest import Namespaces
from .servers import AclRedisServer, TlsRedisServer
from .support import RedisServer, free_port, wait_for
from .test_cli import one_line_error, run, start

pytestmark = pytest.mark.slow

#: A URL of each kind whose Redis does not answer (port 1 refuses at once; no such socket file).
UNREACHABLE = {
    "plain": "redis://127.0.0.1:1/0",
    "cluster": "redis+cluster://127.0.0.1:1",
    "sentinel": "redis+sentinel://127.0.0.1:1,127.0.0.1:2/mymaster",
    "tls": "rediss://127.0.0.1:1/0?ssl_cert_reqs=required",
    "unix": "unix:///nonexistent/dramatiq-tracker-test.sock",
}

#: Every command that reads the tracker's Redis and ends by itself, with what it needs.
COMMANDS = (
    ("status",),
    ("workers",),
    ("inflight",),
    ("message", "m-1"),
    ("orphans",),
    ("locks",),
    ("unlock", "d-1"),
    ("events",),
    ("events", "--follow", "--interval", "0.1"),
    ("check",),
)

#: Secrets given in URLs, in their user information and in their query strings.
SECRETS = ("pw-in-userinfo", "pw-in-query", "pw-of-sentinels")


def no_secret(*texts: str) -> None:
    for text in texts:
        for secret in SECRETS:
            assert secret not in text, text


def test_every_command_says_in_one_line_that_a_redis_of_any_kind_cannot_be_read() -> None:
    for kind, command in [(kind, command) for kind in UNREACHABLE for command in COMMANDS]:
        # In this process, one after another: the command's main, as its process would run it
        result = run(*command, "--url", UNREACHABLE[kind], "--namespace", "n")
        line = one_line_error(result, RET_ERROR, "dramatiq-tracker %s: cannot read the tracker's Redis" % command[0])
        assert len(line) < 500, (kind, command, line)
        if kind == "cluster":
            assert "Redis Cluster at redis+cluster://127.0.0.1:1: no node answered" in line, line
        if kind == "sentinel":
            assert "no Sentinel answered with a master for service 'mymaster'" in line and "Pool" not in line, line
        if kind == "unix":
            assert "No such file or directory" in line, line


def test_the_liveness_probe_passes_while_redis_is_away_but_not_with_wrong_settings(
    tls_redis: TlsRedisServer, acl_redis: AclRedisServer, tracker_server: RedisServer
) -> None:
    # Away, whatever the kind: exit 0 with a warning (the workers go on without Redis)
    for kind, url in UNREACHABLE.items():
        result = run("check", "--unreachable-ok", "--url", url)
        assert result.returncode == RET_OK, (kind, result.stderr)
        assert result.stderr.startswith("dramatiq-tracker check: warning: cannot read the tracker's Redis")
        assert "Traceback" not in result.stderr and len(result.stderr.splitlines()) == 1

    # But credentials refused, a password missing, a certificate that does not verify do not fix
    # themselves: the probe fails, --unreachable-ok or not
    acl_redis.add_user("probe", key_patterns=("{n}:*",), password="right")
    wrong = "redis://probe:pw-in-userinfo@127.0.0.1:%d/0" % acl_redis.port
    refused = run("check", "--unreachable-ok", "--url", wrong, "--namespace", "n")
    one_line_error(refused, RET_ERROR, "refused the URL's credentials", "probe:***@")
    no_secret(refused.stderr)
    with redis.Redis.from_url(tracker_server.url) as admin:
        admin.config_set("requirepass", "pw-in-query")
    missing = run("check", "--unreachable-ok", "--url", tracker_server.url)
    one_line_error(missing, RET_ERROR, "it needs a password, and the URL gives none")
    given = run("status", "--url", tracker_server.url + "?password=pw-in-query", "--namespace", "n")
    one_line_error(given, RET_NOT_FOUND, "has no tracker data", "password=***")
    no_secret(given.stderr)
    untrusted = run("check", "--unreachable-ok", "--url", tls_redis.bare_url + "?ssl_cert_reqs=required")
    one_line_error(untrusted, RET_ERROR, "TLS certificate does not verify")


def test_no_url_secret_is_ever_printed(tracker_server: RedisServer, namespaces: Namespaces) -> None:
    with redis.Redis.from_url(tracker_server.url) as admin:
        admin.config_set("requirepass", "pw-in-query")
        admin.execute_command("AUTH", "pw-in-query")
        admin.hset("{%s}:v1:counters" % namespaces.tracker, "recovered", 1)
    reachable = "redis://127.0.0.1:%d/0?password=pw-in-query" % tracker_server.port
    base = ["--namespace", namespaces.tracker]
    status = run("status", "--url", reachable, *base)
    assert status.returncode == RET_OK, status.stderr
    assert "on redis://127.0.0.1:%d/0?password=***, at" % tracker_server.port in status.stdout
    sentinel = "redis+sentinel://user:pw-in-userinfo@127.0.0.1:1/mymaster?sentinel_password=pw-of-sentinels"
    outputs = [status.stdout, status.stderr]
    for url in (sentinel, "redis://user:pw-in-userinfo@127.0.0.1:1/0?password=pw-in-query"):
        for command in (("status",), ("check", "--unreachable-ok"), ("workers", "--json")):
            result = run(*command, "--url", url, *base)
            outputs += [result.stdout, result.stderr]
            assert "user:***@" in result.stderr
    # And a malformed URL that quotes itself in its error
    malformed = run("status", "--url", "redis://u:pw-in-userinfo@127.0.0.1:6379/0?password=pw-in-query&db=x")
    one_line_error(malformed, RET_USAGE, "--url")
    outputs += [malformed.stderr]
    # The exporter's and the dashboard's first lines
    for command in (
        ("exporter", "--port", "0", "--host", "127.0.0.1"),
        ("dashboard", "--port", "0"),
    ):
        process = start(*command, "--url", reachable, *base)
        stream = process.stderr if command[0] == "exporter" else process.stdout
        assert stream is not None
        first = stream.readline()
        process.send_signal(signal.SIGINT)
        rest = process.communicate(timeout=30)
        assert "password=***" in first, first
        outputs += [first, *rest]
    no_secret(*outputs)


def test_a_live_command_goes_on_saying_once_that_a_cluster_cannot_be_read() -> None:
    # watch: each view says why, in one line, until Ctrl-C
    process = start("watch", "--interval", "0.2", "--url", UNREACHABLE["cluster"])
    assert process.stdout is not None
    frames = []
    while len(frames) < 2:
        line = process.stdout.readline()
        if "cannot read the tracker's Redis Cluster" in line:
            frames.append(line)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=30)
    assert process.returncode == RET_INTERRUPTED and "Traceback" not in err


@pytest.fixture
def served() -> Iterator[Callable[..., tuple[subprocess.Popen[str], str]]]:
    """Start the exporter or the dashboard on a free port; returns it and its base URL."""
    started: list[subprocess.Popen[str]] = []

    def serve(command: str, *args: str) -> tuple[subprocess.Popen[str], str]:
        port = free_port()
        process = start(command, "--port", str(port), "--host", "127.0.0.1", *args)
        started.append(process)
        base = "http://127.0.0.1:%d" % port
        wait_for(lambda: _status(base + "/") or process.poll() is not None, 30, message="%s serving" % command)
        assert process.poll() is None, process.communicate(timeout=10)
        return process, base

    yield serve
    for process in started:
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=30)
        assert "Traceback" not in err, err


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=10) as reply:
            return int(reply.status)
    except urllib.error.HTTPError as e:
        return int(e.code)
    except OSError:
        return 0


@pytest.mark.parametrize("kind", sorted(UNREACHABLE))
def test_the_exporter_and_the_dashboard_start_and_say_redis_is_unreachable_whatever_its_kind(
    kind: str, served: Callable[..., tuple[subprocess.Popen[str], str]]
) -> None:
    pytest.importorskip("prometheus_client")
    _, metrics = served("exporter", "--url", UNREACHABLE[kind])
    with urllib.request.urlopen(metrics + "/metrics", timeout=30) as reply:
        text = reply.read().decode()
    assert re.search(r"^dramatiq_tracker_up 0\.0$", text, flags=re.M), text
    assert "dramatiq_tracker_build_info{" in text

    _, dashboard = served("dashboard", "--url", UNREACHABLE[kind])
    try:
        urllib.request.urlopen(dashboard + "/workers", timeout=30)
        raise AssertionError("the dashboard answered 200 without its Redis")
    except urllib.error.HTTPError as e:
        page = e.read().decode()
        assert e.code == 503 and "Cannot read the tracker&#39;s Redis" in page, page
        assert '<meta http-equiv="refresh" content="2">' in page  # it loads itself again


def test_arguments_a_command_cannot_use_exit_2_with_one_line(redis_url: str, namespaces: Namespaces) -> None:
    base = ["--url", redis_url, "--namespace", namespaces.tracker]
    one_line_error(run("inflight", *base, "--cursor", "garbage"), RET_USAGE, "'garbage' is not a cursor of inflight")
    one_line_error(run("workers", *base, "--cursor", "x1"), RET_USAGE, "'x1' is not a cursor of workers")
    one_line_error(run("locks", *base, "--cursor", "1:2"), RET_USAGE, "is not a cursor of locks")
    one_line_error(run("events", *base, "--before", "garbage"), RET_USAGE, "'garbage' is not an event id")
    one_line_error(run("status", *base, "--broker", "tests.apps.worker_app:broker"), RET_USAGE, "not both")
    one_line_error(run("dashboard", "--host", "0.0.0.0", "--allow-actions"), RET_USAGE, "needs a --token")
    one_line_error(run("dashboard", "--allow-actions"), RET_USAGE, "needs a --token")
    one_line_error(run("dashboard", "--allowed-host", "bad host"), RET_USAGE, "allowed_hosts")
    one_line_error(run("dashboard", "--keyfile", "k.pem"), RET_USAGE, "--keyfile needs a --certfile")
    one_line_error(run("dashboard", "--certfile", "/nonexistent.pem"), RET_USAGE, "/nonexistent.pem")


def test_the_demo_says_in_one_line_that_its_redis_cannot_be_reached_whatever_its_kind() -> None:
    for kind, url in UNREACHABLE.items():
        secret = (
            url.replace("://", "://user:pw-in-userinfo@", 1) + ("&" if "?" in url else "?") + "password=pw-in-query"
        )
        result = run("demo", "--url", secret, "--messages", "1")
        assert result.returncode == RET_ERROR and "Traceback" not in result.stderr, (kind, result.stderr)
        (line,) = result.stderr.strip().splitlines()
        assert line.startswith("dramatiq-tracker demo: ") and "Redis" in line, (kind, line)
        no_secret(result.stdout, result.stderr)
