"""Presence where the tracker's Redis restarts, fails over or sits behind something that breaks it:
no live worker is ever declared dead, nothing is lost, and what presence cannot see falls back to
heartbeats."""

from __future__ import annotations

import collections
import contextlib
import select
import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest
import redis
from dramatiq.brokers.redis import RedisBroker

from dramatiq_tracker.ops.reads import InspectionStore

from .conftest import Namespaces, events
from .servers import AclRedisServer, RedisClusterServers, RedisSentinelServers
from .support import (
    RedisServer,
    WorkerProcess,
    can_isolate,
    kill,
    kinds,
    registered,
    send,
    wait_for,
    wait_new_worker,
    wait_registered,
)
from .test_presence import (
    DEFAULT_SETTLE,
    DEFAULT_TIMINGS,
    PRESENCE_BOUND,
    PRESENCE_TIMINGS,
    dead_event,
    present,
    wait_settled,
)

pytestmark = [pytest.mark.slow]

#: Short timings (heartbeat_timeout 3 s): a failover lasts longer than a heartbeat's life.
SHORT_TIMINGS = {
    "TEST_HEARTBEAT_INTERVAL": "1000",
    "TEST_HEARTBEAT_TIMEOUT": "3000",
    "TEST_SWEEP_INTERVAL": "1000",
    "TEST_FLUSH_INTERVAL": "20",
    "TEST_PRESENCE_GRACE": "1000",
}
SHORT_SETTLE = 2 * 1.0


@contextlib.contextmanager
def steady_traffic(producer: RedisBroker, queue: str, every: float = 0.1) -> Iterator[list[str]]:
    """Send a short message every ``every`` seconds until the block ends; yields the ids sent."""
    sent: list[str] = []
    stopping = threading.Event()

    def run() -> None:
        while not stopping.is_set():
            sent.extend(send(producer, queue, "fast", 1))
            stopping.wait(every)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield sent
    finally:
        stopping.set()
        thread.join(10)


def assert_each_ran_once(redis_client: redis.Redis, namespaces: Namespaces, sent: list[str]) -> None:
    wait_for(lambda: set(sent) <= {m for m, _, _ in events(redis_client, namespaces, "done")}, 60, message="all done")
    counts = collections.Counter(m for m, _, _ in events(redis_client, namespaces, "started"))
    assert all(counts[m] == 1 for m in sent), [m for m in sent if counts[m] != 1]


@pytest.mark.parametrize("persistent", [False, True], ids=["restarted-empty", "restarted-with-its-data"])
def test_a_restart_of_the_trackers_redis_mid_run_kills_nobody_and_loses_nothing(
    redis_client: redis.Redis,
    namespaces: Namespaces,
    spawn_worker: Callable[..., WorkerProcess],
    producer: RedisBroker,
    persistent: bool,
) -> None:
    server = RedisServer(persistent=persistent).start()
    try:
        store = InspectionStore(redis.Redis(port=server.port), namespaces.tracker)
        # Given two workers with heartbeat_timeout 3 s, their presence seen, messages flowing
        spawn_worker(threads=2, tracker_url=server.url, env=SHORT_TIMINGS)
        (first,) = wait_registered(store, 1)
        spawn_worker(threads=2, tracker_url=server.url, env=SHORT_TIMINGS)
        second = wait_new_worker(store, first)
        wait_for(lambda: present(store, first) and present(store, second), 10, message="their presence seen")
        wait_settled(store, SHORT_SETTLE)
        with steady_traffic(producer, namespaces.queue) as sent:
            time.sleep(1)
            # When the tracker's Redis stops for longer than heartbeat_timeout, and starts again
            server.stop()
            time.sleep(4)
            server.start()
            # (as long again after it, for any death to be judged)
            wait_for(lambda: present(store, first) and present(store, second), 15, message="presence back")
            time.sleep(3 + SHORT_SETTLE + 1)
        # Then nobody was declared dead, and each message ran once
        assert "worker-dead" not in kinds(store)
        assert {w.worker_id for w in registered(store)} == {first.worker_id, second.worker_id}
        assert_each_ran_once(redis_client, namespaces, sent)
    finally:
        server.close()


@pytest.mark.parametrize("timings", ["default", "short"])
@pytest.mark.parametrize("failover", ["sentinel-failover", "master-killed"])
def test_a_sentinel_failover_mid_run_kills_nobody_and_loses_nothing(
    redis_client: redis.Redis,
    namespaces: Namespaces,
    spawn_worker: Callable[..., WorkerProcess],
    producer: RedisBroker,
    fresh_redis_sentinel: RedisSentinelServers,
    failover: str,
    timings: str,
) -> None:
    sentinel = fresh_redis_sentinel
    url = sentinel.url
    env, settle = (DEFAULT_TIMINGS, DEFAULT_SETTLE) if timings == "default" else (SHORT_TIMINGS, SHORT_SETTLE)
    timeout = int(env["TEST_HEARTBEAT_TIMEOUT"]) / 1000
    master = sentinel.sentinel(socket_timeout=1).master_for(sentinel.service_name)
    store = InspectionStore(master, namespaces.tracker)
    # Given two workers tracked in a Sentinel-managed Redis, their presence seen, messages flowing
    spawn_worker(threads=2, tracker_url=url, env=env)
    (first,) = wait_registered(store, 1)
    spawn_worker(threads=2, tracker_url=url, env=env)
    second = wait_new_worker(store, first)
    wait_for(lambda: present(store, first) and present(store, second), 15, message="their presence seen")
    wait_settled(store, settle)
    with steady_traffic(producer, namespaces.queue) as sent:
        # When the master fails over: promoted by SENTINEL FAILOVER while the old one runs on (and
        # takes the workers' writes until Sentinel demotes it), or killed
        if failover == "sentinel-failover":
            sentinel.failover()
        else:
            old = sentinel.master_address()
            sentinel.process_at(old).stop()
            sentinel.wait_new_master(old)
        # (and long enough after it for any death to be judged: the settling, then heartbeat_timeout)
        wait_for(lambda: present(store, first) and present(store, second), 30, message="presence on the new master")
        time.sleep(settle + timeout + 2)
    # Then nobody was declared dead on the new master, and each message ran once
    assert "worker-dead" not in kinds(store)
    assert {w.worker_id for w in registered(store)} == {first.worker_id, second.worker_id}
    assert_each_ran_once(redis_client, namespaces, sent)
    master.close()


@pytest.mark.skipif(not can_isolate(), reason="needs root and unshare, to run a worker as on another host")
def test_on_a_redis_cluster_presence_is_sharded_and_tells_a_death_within_its_grace(
    redis_client: redis.Redis,
    namespaces: Namespaces,
    spawn_worker: Callable[..., WorkerProcess],
    producer: RedisBroker,
    redis_cluster: RedisClusterServers,
) -> None:
    url = "redis+cluster://%s:%d" % redis_cluster.nodes[0].address
    cluster = redis_cluster.client()
    store = InspectionStore(cluster, namespaces.tracker)
    try:  # (the cluster is the tracker's: the namespaces fixture cleans only the plain Redis)
        # Given a worker on another host running two messages, and a survivor, tracked in a Cluster
        victim_process = spawn_worker(threads=2, tracker_url=url, env=PRESENCE_TIMINGS, isolation="host")
        (victim,) = wait_registered(store, 1)
        send(producer, namespaces.queue, "slow", 2)
        wait_for(lambda: len(events(redis_client, namespaces, "started")) == 2, 20, message="running")
        spawn_worker(threads=2, tracker_url=url, env=PRESENCE_TIMINGS)
        survivor = wait_new_worker(store, victim)
        wait_for(lambda: present(store, victim) and present(store, survivor), 10, message="their presence seen")
        assert store.presence([victim.worker_id, survivor.worker_id]) == [1, 1]
        wait_settled(store)

        # When the worker is SIGKILLed
        killed = time.time()
        kill(victim_process.pid_of(victim))

        # Then its orphans start again on the survivor within the presence bound
        def restarted() -> list[float]:
            return [at for _, pid, at in events(redis_client, namespaces, "started") if pid == survivor.pid]

        wait_for(lambda: len(restarted()) == 2, PRESENCE_BOUND, message="orphans restarted")
        assert max(restarted()) - killed < PRESENCE_BOUND
        event = dead_event(store, victim.worker_id)
        assert event is not None and event.details["reason"] == "presence gone"
    finally:
        for key in cluster.scan_iter(match="{%s}:*" % namespaces.tracker, target_nodes=cluster.ALL_NODES):
            cluster.delete(key)
        cluster.close()


class CuttingProxy:
    """A TCP proxy to a Redis server that cuts every connection that subscribes, a moment after it
    does: what a proxy or a load balancer that does not carry pub/sub connections does."""

    def __init__(self, port: int, cut_after: float = 0.3) -> None:
        self.target = port
        self.cut_after = cut_after
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.stopping = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return "redis://127.0.0.1:%d/0" % self.port

    def _accept(self) -> None:
        self.listener.settimeout(0.2)
        while not self.stopping.is_set():
            try:
                client, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._pipe, args=(client,), daemon=True).start()

    def _pipe(self, client: socket.socket) -> None:
        upstream = socket.create_connection(("127.0.0.1", self.target))
        cut_at: float | None = None
        with client, upstream:
            while not self.stopping.is_set() and (cut_at is None or time.monotonic() < cut_at):
                ready, _, _ = select.select([client, upstream], [], [], 0.05)
                for source in ready:
                    data = source.recv(65536)
                    if not data:
                        return
                    if source is client and cut_at is None and b"SUBSCRIBE" in data.upper():
                        cut_at = time.monotonic() + self.cut_after
                    (upstream if source is client else client).sendall(data)

    def close(self) -> None:
        self.stopping.set()
        self.listener.close()


def test_a_proxy_that_cuts_the_presence_connection_is_noticed_and_heartbeats_decide(
    redis_url: str,
    redis_client: redis.Redis,
    namespaces: Namespaces,
    spawn_worker: Callable[..., WorkerProcess],
    producer: RedisBroker,
) -> None:
    proxy = CuttingProxy(redis_client.connection_pool.connection_kwargs.get("port", 6379))
    store = InspectionStore(redis_client, namespaces.tracker)
    try:
        # Given a worker whose tracker reaches Redis through a proxy that cuts its presence connection,
        # and a survivor
        victim_process = spawn_worker(threads=2, tracker_url=proxy.url, env=SHORT_TIMINGS)
        (victim,) = wait_registered(store, 1)
        send(producer, namespaces.queue, "slow", 1)
        wait_for(lambda: len(events(redis_client, namespaces, "started")) == 1, 20, message="running")
        spawn_worker(threads=2, env=SHORT_TIMINGS)
        survivor = wait_new_worker(store, victim)

        # Then the worker notices, says so once, and gives presence up, without being declared dead
        wait_for(lambda: "Presence is off for this worker process" in victim_process.output(), 30, message="noticed")
        time.sleep(3 + SHORT_SETTLE)
        assert victim_process.output().count("Presence is off for this worker process") == 1
        assert not present(store, victim)
        assert "worker-dead" not in kinds(store)

        # And when it dies, its heartbeat's expiry tells it
        kill(victim_process.pid_of(victim))
        wait_for(
            lambda: any(pid == survivor.pid for _, pid, _ in events(redis_client, namespaces, "started")),
            3 + 1 + 10,
            message="recovered by heartbeat expiry",
        )
        event = dead_event(store, victim.worker_id)
        assert event is not None and event.details["reason"] in ("heartbeat expired", "process gone")
    finally:
        proxy.close()


def test_a_redis_user_that_may_not_subscribe_gives_presence_up_once_and_heartbeats_decide(
    acl_redis: AclRedisServer,
    namespaces: Namespaces,
    spawn_worker: Callable[..., WorkerProcess],
    redis_client: redis.Redis,
) -> None:
    # Given a worker whose Redis user may touch its keys but subscribe to no channel
    url = acl_redis.add_user("no-channels-%s" % namespaces.tracker[-6:], key_patterns=("{%s}:*" % namespaces.tracker,))
    store = InspectionStore(acl_redis.admin(), namespaces.tracker)
    worker = spawn_worker(threads=1, tracker_url=url, env=SHORT_TIMINGS)
    (info,) = wait_registered(store, 1)

    # Then it says once why presence is off, and is judged by its heartbeat alone
    wait_for(lambda: "Presence is off for this worker process" in worker.output(), 20, message="said")
    time.sleep(3)
    assert worker.output().count("Presence is off for this worker process") == 1
    assert "may not subscribe" in worker.output()
    assert not present(store, info)
    assert [w.worker_id for w in registered(store)] == [info.worker_id]


def test_presence_can_be_turned_off(
    redis_client: redis.Redis, namespaces: Namespaces, spawn_worker: Callable[..., WorkerProcess]
) -> None:
    store = InspectionStore(redis_client, namespaces.tracker)
    spawn_worker(threads=1, env={**SHORT_TIMINGS, "TEST_PRESENCE": "0"})
    (info,) = wait_registered(store, 1)
    time.sleep(2)
    assert store.presence([info.worker_id]) == [0]
    assert not present(store, info)


def test_a_redis_timeout_setting_does_not_close_the_presence_connection(
    namespaces: Namespaces, spawn_worker: Callable[..., WorkerProcess]
) -> None:
    # Given a tracker's Redis that closes connections idle for a second
    server = RedisServer(options=["--timeout", "1"]).start()
    try:
        store = InspectionStore(redis.Redis(port=server.port), namespaces.tracker)
        spawn_worker(threads=1, tracker_url=server.url, env=SHORT_TIMINGS)
        (info,) = wait_registered(store, 1)
        wait_for(lambda: present(store, info), 10, message="presence seen")
        # When it stays idle for a few seconds: pub/sub connections are not subject to the timeout
        time.sleep(3)
        # Then its presence holds
        assert store.presence([info.worker_id]) == [1]
        assert present(store, info)
    finally:
        server.close()
