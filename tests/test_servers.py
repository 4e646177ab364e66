"""Smoke tests of the real-server fixtures in ``tests/servers.py``: each server starts, answers,
and does the special thing the tracker's tests will rely on."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.exceptions
from redis.backoff import NoBackoff
from redis.retry import Retry

from .servers import (
    AclRedisServer,
    RedisClusterServers,
    RedisSentinelServers,
    ServerUnavailable,
    TlsRedisServer,
    make_certificates,
    unavailable,
)
from .support import unique, wait_for

#: A client that must be refused gives up at once, instead of retrying with backoff.
REFUSED: dict[str, Any] = {"socket_timeout": 2, "retry": Retry(NoBackoff(), 0)}

# Redis Cluster ---------------------------------------------------------------------------------------------


def test_every_cluster_node_answers_and_a_namespace_lands_on_the_node_that_owns_its_slot(
    redis_cluster: RedisClusterServers,
) -> None:
    # Given a namespace of the test's own
    namespace = unique("cluster")

    # Then every node is a cluster node that answers
    assert len(redis_cluster.urls) == 3
    for url in redis_cluster.urls:
        with contextlib.closing(redis.Redis.from_url(url)) as node:
            assert node.info("cluster")["cluster_enabled"] == 1

    # When a cluster client writes a tracker key
    with contextlib.closing(redis_cluster.client()) as client:
        client.set("{%s}:v1:workers" % namespace, "x")

    # Then it sits on the node that owns the namespace's slot, and another node redirects
    owner = redis_cluster.namespace_owner(namespace)
    other = redis_cluster.node_not_owning_namespace(namespace)
    assert other != owner
    assert redis_cluster.namespace_slot(namespace) == redis_cluster.keyslot("{%s}:anything" % namespace)
    with contextlib.closing(redis.Redis.from_url(owner.url)) as node:
        assert node.get("{%s}:v1:workers" % namespace) == b"x"
    # (redis-py before 5 raises a plain ResponseError "MOVED <slot> <node>", later ones MovedError)
    with (
        contextlib.closing(redis.Redis.from_url(other.url)) as node,
        pytest.raises(redis.exceptions.ResponseError) as refused,
    ):
        node.get("{%s}:v1:workers" % namespace)
    assert isinstance(refused.value, redis.exceptions.MovedError) or str(refused.value).startswith("MOVED ")


def test_a_slot_migration_moves_every_key_and_a_cluster_client_keeps_working_across_it(
    redis_cluster: RedisClusterServers,
) -> None:
    # Given 250 keys of a namespace, written through a cluster client
    namespace = unique("migrate")
    keys = ["{%s}:v1:key:%d" % (namespace, index) for index in range(250)]
    client = redis_cluster.client()
    try:
        for index, key in enumerate(keys):
            client.set(key, index)
        slot = redis_cluster.namespace_slot(namespace)
        source = redis_cluster.namespace_owner(namespace)
        target = redis_cluster.node_not_owning_namespace(namespace)

        # When the slot moves to another master, in batches of 100, with the client reading and
        # writing while it is half-migrated (ASK redirections)
        seen: list[int] = []

        def during(moved: int) -> None:
            seen.append(moved)
            assert client.get(keys[0]) == b"0"
            client.set("{%s}:v1:during:%d" % (namespace, moved), moved)

        moved = redis_cluster.migrate_slot(slot, target, batch=100, during=during)

        # Then every key moved and the target owns the slot, for every node
        # (keys written mid-migration go straight to the target: the source answers ASK)
        assert moved == 250
        assert seen == [0, 100, 200, 250]
        assert redis_cluster.namespace_owner(namespace) == target
        with contextlib.closing(redis.Redis.from_url(target.url)) as node:
            assert int(node.execute_command("CLUSTER", "COUNTKEYSINSLOT", slot)) == 254
        with contextlib.closing(redis.Redis.from_url(source.url)) as node:
            assert int(node.execute_command("CLUSTER", "COUNTKEYSINSLOT", slot)) == 0

        # And the same client follows the move (MOVED), scripts included
        assert client.mget(keys) == [str(index).encode() for index in range(250)]
        script = "return redis.call('incr', KEYS[1]) + redis.call('incr', KEYS[2])"
        assert client.eval(script, 2, keys[0], keys[1]) == 1 + 2
    finally:
        client.close()


# Sentinel --------------------------------------------------------------------------------------------------


def test_a_sentinel_failover_changes_the_master_and_a_master_for_client_follows_it(
    redis_sentinel: RedisSentinelServers,
) -> None:
    # Given a client that finds the master through the Sentinels, and a write replicated to the replica
    key = unique("failover")
    client = redis_sentinel.sentinel(socket_timeout=1).master_for(redis_sentinel.service_name)
    try:
        client.set(key, "before")
        assert client.wait(1, 5000) == 1

        # When a failover is forced
        old, new = redis_sentinel.failover()

        # Then the Sentinels name the former replica, and the old master became its replica
        assert new != old
        assert redis_sentinel.master_address() == new
        assert redis_sentinel.role(new) == "master"
        assert redis_sentinel.role(old) == "slave"

        # And the client follows it: its write lands on the new master, the old data is there
        def written() -> bool:
            with contextlib.suppress(redis.ConnectionError, redis.ReadOnlyError, redis.TimeoutError):
                return bool(client.set(key + ":after", "after"))
            return False

        wait_for(written, redis_sentinel.failover_bound / 1000, message="a write through master_for")
        assert client.connection_pool.get_master_address() == new
        with contextlib.closing(redis.Redis(*new)) as master:
            assert master.mget(key, key + ":after") == [b"before", b"after"]
    finally:
        client.close()


def test_a_frozen_master_is_replaced_and_the_writes_it_accepts_after_waking_up_are_lost(
    redis_sentinel: RedisSentinelServers,
) -> None:
    # Given a write replicated to the replica
    key = unique("split-brain")
    with contextlib.closing(redis.Redis(*redis_sentinel.master_address())) as master:
        master.set(key + ":kept", "kept")
        assert master.wait(1, 5000) == 1

    # When the master freezes until the replica is promoted, then wakes up
    with redis_sentinel.split_brain() as (old, new):
        # Then, for a while, both say they are master, and the old one accepts writes
        assert new != old
        assert redis_sentinel.role(old) == "master" and redis_sentinel.role(new) == "master"
        with contextlib.closing(redis.Redis(*old)) as stale:
            assert stale.set(key + ":lost", "lost")
            assert stale.get(key + ":lost") == b"lost"

    # And once Sentinel demoted it, what it accepted is gone everywhere, and what was replicated is kept
    assert redis_sentinel.role(old) == "slave"
    for address in (old, new):
        with contextlib.closing(redis.Redis(*address)) as node:
            assert node.get(key + ":lost") is None
            assert node.get(key + ":kept") == b"kept"


# TLS -------------------------------------------------------------------------------------------------------


def test_a_tls_server_serves_a_client_that_trusts_its_ca_and_refuses_others(tls_redis: TlsRedisServer) -> None:
    # A rediss:// client that trusts the throwaway CA connects
    assert tls_redis.url.startswith("rediss://")
    assert Path(tls_redis.ca_file).is_file()
    with contextlib.closing(redis.Redis.from_url(tls_redis.url)) as client:
        assert client.set(unique("tls"), "x")
    # A plain client cannot: the server only speaks TLS
    with (
        contextlib.closing(redis.Redis(host=tls_redis.address[0], port=tls_redis.address[1], **REFUSED)) as plain,
        pytest.raises(redis.ConnectionError),
    ):
        plain.ping()
    # Nor can a TLS client that does not trust the CA
    untrusting = redis.Redis.from_url(tls_redis.bare_url, **REFUSED)
    with contextlib.closing(untrusting), pytest.raises(redis.ConnectionError):
        untrusting.ping()


def test_a_tls_server_with_optional_client_auth_checks_a_client_certificate_when_one_is_given(
    tls_redis_client_auth: TlsRedisServer, tmp_path: Path
) -> None:
    server = tls_redis_client_auth
    # Without a certificate, and with one signed by its CA, clients connect
    for url in (server.url_for(client_certificate=False), server.url_for(client_certificate=True)):
        with contextlib.closing(redis.Redis.from_url(url)) as client:
            assert client.ping()
    # With a certificate from another CA, the handshake fails
    stranger = make_certificates(tmp_path / "stranger")
    kwargs = {
        **server.ssl_kwargs(),
        "ssl_certfile": str(stranger.client_cert_file),
        "ssl_keyfile": str(stranger.client_key_file),
    }
    with (
        contextlib.closing(redis.Redis(host=server.address[0], port=server.address[1], **REFUSED, **kwargs)) as client,
        pytest.raises(redis.ConnectionError),
    ):
        client.ping()


# ACL -------------------------------------------------------------------------------------------------------


def test_an_acl_user_writes_its_own_keys_and_is_refused_all_others(acl_user: Callable[..., str]) -> None:
    # Given a user limited to a tracker namespace and a broker namespace
    namespace, broker_namespace = unique("acl"), unique("broker")
    url = acl_user(namespace, broker_namespace=broker_namespace)
    with contextlib.closing(redis.Redis.from_url(url)) as client:
        assert client.acl_whoami() not in ("default", b"default")
        # Then it writes its keys, directly and from Lua, and the broker's
        assert client.set("{%s}:v1:workers" % namespace, "x")
        script = "redis.call('set', KEYS[1], ARGV[1]) return redis.call('get', KEYS[2])"
        assert client.eval(script, 2, "{%s}:v1:lock:a" % namespace, "{%s}:v1:workers" % namespace, "y") == b"x"
        assert client.rpush("%s:default" % broker_namespace, "id") == 1
        # And it is refused other keys, from Lua too, and dangerous commands
        refused = [
            lambda: client.set("{%s}:v1:workers" % unique("other"), "x"),
            lambda: client.eval(script, 2, "{%s}:v1:lock:a" % namespace, "elsewhere", "y"),
            lambda: client.get("dramatiq:default"),
            lambda: client.flushall(),
            lambda: client.keys("*"),
        ]
        for command in refused:
            with pytest.raises(redis.exceptions.NoPermissionError):
                command()


# The machinery ---------------------------------------------------------------------------------------------


def test_a_missing_binary_is_reported_and_skips_or_fails_on_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given no redis-server on PATH
    monkeypatch.setenv("PATH", "/nonexistent")
    servers = RedisClusterServers()
    directory = servers.directory
    # Then starting says what is missing, and leaves nothing behind
    with pytest.raises(ServerUnavailable, match="redis-cli is not installed"):
        servers.start()
    assert not directory.exists()
    # And the fixtures skip, or fail when CI is set
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception):
        unavailable("redis-cli is not installed")
    monkeypatch.setenv("CI", "1")
    with pytest.raises(pytest.fail.Exception):
        unavailable("redis-cli is not installed")


def test_servers_leave_no_process_and_no_directory_behind() -> None:
    with AclRedisServer() as server:
        pids = [process.pid for process in server.processes]
        directory = server.directory
        assert directory.exists()
    assert not directory.exists()
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_sentinel_and_cluster_bounds_follow_their_settings() -> None:
    # Not started: only the derived timings.
    sentinel = RedisSentinelServers(down_after=500, failover_timeout=2000)
    cluster = RedisClusterServers(node_timeout=1000)
    try:
        assert sentinel.failover_bound == 500 + 3 * 2000 + 8000
        assert cluster.convergence_timeout == 2 * 1000 + 10_000
    finally:
        sentinel.close()
        cluster.close()
