"""The least-privilege ACL line of docs/operations.md, as an operator pastes it: real workers, a SIGKILL
and its recovery, and every command of ``dramatiq-tracker`` run as that user; and what the user cannot do
to the other applications of the same Redis (list their keys, touch them, flush their scripts)."""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import json
import re
import secrets
import signal
import urllib.request
from collections.abc import Iterator

import pytest
import redis
from dramatiq.brokers.redis import RedisBroker

from dramatiq_tracker.connection import delete_keys
from dramatiq_tracker.ops.cli import RET_NOT_FOUND, RET_OK
from dramatiq_tracker.ops.reads import InspectionStore

from .conftest import Cluster, Namespaces
from .servers import AclRedisServer
from .support import (
    BOUND,
    ROOT,
    close_redis_broker,
    free_port,
    kill,
    send,
    wait_for,
)
from .test_cli import app_env, run, start

pytestmark = pytest.mark.slow


def documented_rules() -> list[str]:
    """The arguments of ``ACL SETUSER`` in the least-privilege line of docs/operations.md."""
    page = (ROOT / "docs" / "operations.md").read_text(encoding="utf-8")
    (line,) = re.findall(r"^ACL SETUSER tracker (.+)$", page, flags=re.M)
    return line.split()


@pytest.fixture
def least_privileged(acl_redis: AclRedisServer, namespaces: Namespaces) -> Iterator[str]:
    """A user made with the documented line, for the test's namespace; returns its URL."""
    username, password = "tracker-%s" % secrets.token_hex(4), secrets.token_hex(12)
    rules = [
        rule.replace("{dramatiq-tracker}", "{%s}" % namespaces.tracker).replace(">password", ">" + password)
        for rule in documented_rules()
    ]
    admin = acl_redis.admin()
    admin.execute_command("ACL", "SETUSER", username, "reset", *rules)
    yield "redis://%s:%s@127.0.0.1:%d/0" % (username, password, acl_redis.port)
    with contextlib.suppress(redis.RedisError):
        admin.execute_command("ACL", "DELUSER", username)
    delete_keys(admin, "{%s}:*" % namespaces.tracker)
    delete_keys(admin, "%s:*" % namespaces.broker)


def test_the_documented_line_names_the_namespace_its_channels_and_denies_keyless_commands() -> None:
    rules = documented_rules()
    assert rules[:2] == ["on", ">password"]
    assert {"~{dramatiq-tracker}:*", "&{dramatiq-tracker}:*", "-scan", "-randomkey", "-function", "+info"} <= set(rules)
    assert rules.index("-script") < rules.index("+script|load") and rules.index("-@dangerous") < rules.index("+info")


def test_workers_a_recovery_and_every_command_run_as_the_least_privileged_user(
    acl_redis: AclRedisServer, least_privileged: str, redis_url: str, cluster: Cluster
) -> None:
    # Given two workers whose tracker is that user (their broker is another user's: the server's default)
    cluster = dataclasses.replace(
        cluster, store=InspectionStore(redis.Redis.from_url(least_privileged), cluster.names.tracker)
    )
    cluster.spawn(threads=4, slow_seconds=60, broker_url=acl_redis.url, tracker_url=least_privileged)
    (victim,) = cluster.wait_registered(1)
    producer = RedisBroker(url=acl_redis.url, namespace=cluster.names.broker)
    try:
        ids = send(producer, cluster.names.queue, "slow", 4)
        wait_for(lambda: len(cluster.store.inflight(victim.worker_id)) == 4, 20, message="recorded through the user")
        cluster.spawn(threads=8, slow_seconds=0.1, broker_url=acl_redis.url, tracker_url=least_privileged)
        survivor = cluster.wait_new_worker(victim)

        # When one is SIGKILLed, each of its messages starts again once on the other
        kill(victim.pid)

        def restarted() -> list[str]:
            return cluster.reported_by(survivor.pid)

        wait_for(lambda: len(restarted()) >= 4, BOUND + 10, message="4 redeliveries")
        assert collections.Counter(restarted()) == collections.Counter(ids)
        wait_for(lambda: victim.worker_id in cluster.store.dead_workers(), 10, message="tombstoned")

        # And every command works as that user
        base = ["--url", least_privileged, "--namespace", cluster.names.tracker]
        cluster.store.acquire_lock("d-1", ids[0], 1, "until_executed", "slow", cluster.names.queue, "", None)
        for command in (
            ("status",),
            ("workers", "--all"),
            ("inflight",),
            ("message", ids[0]),
            ("orphans",),
            ("locks",),
            ("events",),
            ("check", "--worker-id", survivor.worker_id),
            ("unlock", "d-1"),
        ):
            result = run(*command, *base, "--json")
            assert result.returncode == RET_OK and "NOPERM" not in result.stderr, (command, result.stderr)
            assert json.loads(result.stdout)["problems"] == [], command
        assert run("unlock", "d-1", *base).returncode == RET_NOT_FOUND
        env = {
            **app_env(redis_url, cluster.names),
            "TEST_BROKER_URL": acl_redis.url,
            "TEST_TRACKER_URL": least_privileged,
        }
        for dry_run in (["--dry-run"], []):
            recovered = run("recover", "--broker", "tests.apps.worker_app:broker", *dry_run, "--json", env=env)
            assert recovered.returncode == RET_OK, recovered.stderr
        watch = start("watch", "--interval", "0.2", *base)
        assert watch.stdout is not None
        lines = [watch.stdout.readline() for _ in range(4)]
        watch.send_signal(signal.SIGINT)
        watch.communicate(timeout=30)
        assert any(line.startswith("Workers:    1 alive") for line in lines), lines
        for command in ("exporter", "dashboard"):
            port = free_port()
            served = start(command, *base, "--host", "127.0.0.1", "--port", str(port))
            try:
                url = "http://127.0.0.1:%d/%s" % (port, "metrics" if command == "exporter" else "workers")
                page = wait_for(lambda url=url: _read(url), 30, message=command)
            finally:
                served.send_signal(signal.SIGINT)
                _, err = served.communicate(timeout=30)
            assert "Traceback" not in err and "NOPERM" not in err, err
            if command == "exporter":
                assert re.search(r"^dramatiq_tracker_up 1\.0$", page, flags=re.M), page
            else:
                assert survivor.worker_id in page
    finally:
        close_redis_broker(producer)
        cluster.store.client.close()


def _read(url: str) -> str:
    try:
        with urllib.request.urlopen(url, timeout=10) as reply:
            return str(reply.read().decode())
    except OSError:
        return ""


def test_the_user_cannot_see_or_touch_what_other_applications_keep(
    acl_redis: AclRedisServer, least_privileged: str, namespaces: Namespaces
) -> None:
    admin = acl_redis.admin()
    admin.set("other-app:secret", "x")
    admin.execute_command("SCRIPT", "LOAD", "return 1")
    user = redis.Redis.from_url(least_privileged)
    denied = redis.exceptions.NoPermissionError
    try:
        # What the tracker needs works
        assert user.set("{%s}:v1:probe" % namespaces.tracker, "1") and user.info("server")["redis_version"]
        assert user.script_load("return 1") and user.pubsub_numsub("{%s}:v1:presence:w" % namespaces.tracker)
        subscriber = user.pubsub()
        subscriber.subscribe("{%s}:v1:presence:w" % namespaces.tracker)
        subscriber.close()
        # Listing keys: none of the commands that take no key
        for command in (("SCAN", "0"), ("RANDOMKEY",), ("KEYS", "*")):
            with pytest.raises(denied):
                user.execute_command(*command)
        # Another application's keys, directly or in a script
        with pytest.raises(denied):
            user.get("other-app:secret")
        with pytest.raises((denied, redis.exceptions.ResponseError)):
            user.eval("return redis.call('get', KEYS[1])", 1, "other-app:secret")
        # Everybody's scripts and functions, the server itself
        for command in (
            ("SCRIPT", "FLUSH"),
            ("SCRIPT", "KILL"),
            ("FUNCTION", "FLUSH"),
            ("FUNCTION", "DELETE", "lib"),
            ("FUNCTION", "LIST"),
            ("FLUSHDB",),
            ("FLUSHALL",),
            ("CONFIG", "GET", "*"),
            ("CLIENT", "LIST"),
            ("MONITOR",),
        ):
            with pytest.raises(denied):
                user.execute_command(*command)
        # Another application's channels
        with pytest.raises(denied):
            user.publish("other-app:events", "x")
        other = user.pubsub()
        with pytest.raises(denied):
            other.subscribe("other-app:events")
            other.get_message(timeout=1)
        other.close()
        assert admin.get("other-app:secret") == b"x" and admin.script_exists(admin.script_load("return 1")) == [True]
    finally:
        admin.delete("other-app:secret")
        user.close()
