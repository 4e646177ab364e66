"""The tracker's own Redis as users deploy it: a Redis Cluster (its slot elsewhere, then migrated
mid-run), a Sentinel-managed master that fails over and loses writes, TLS, and an ACL user limited to
the tracker's keys. The brokers stay where Dramatiq supports them (a plain Redis, RabbitMQ)."""

from __future__ import annotations

import collections
import time
from collections.abc import Callable, Iterator

import dramatiq
import pytest
import redis
from dramatiq import Worker
from dramatiq.brokers.redis import RedisBroker
from dramatiq.brokers.stub import StubBroker

from dramatiq_tracker import TrackerMiddleware
from dramatiq_tracker.connection import MasterWatch
from dramatiq_tracker.ops.reads import InspectionStore
from dramatiq_tracker.presence import Presence
from dramatiq_tracker.records import WorkerInfo

from .conftest import Namespaces, events
from .servers import AclRedisServer, RedisClusterServers, RedisSentinelServers, TlsRedisServer
from .support import (
    BOUND,
    FAST,
    WorkerProcess,
    fake_dead_worker,
    kill,
    reads,
    send,
    wait_for,
    wait_new_worker,
    wait_registered,
)


def cluster_url(node_url: str) -> str:
    return node_url.replace("redis://", "redis+cluster://", 1)


@pytest.fixture
def cluster_store(redis_cluster: RedisClusterServers, namespaces: Namespaces) -> Iterator[InspectionStore]:
    client = redis_cluster.client()
    yield InspectionStore(client, namespaces.tracker)
    client.close()


@pytest.mark.slow
def test_on_a_redis_cluster_a_dead_workers_orphans_come_back_once_even_while_its_slot_moves(
    redis_client: redis.Redis,
    namespaces: Namespaces,
    spawn_worker: Callable[..., WorkerProcess],
    producer: RedisBroker,
    redis_cluster: RedisClusterServers,
    cluster_store: InspectionStore,
) -> None:
    # Given workers whose tracker Redis is a 3-master cluster, reached through a node that does not own
    # the namespace's slot (the broker is a plain Redis)
    entry = redis_cluster.node_not_owning_namespace(namespaces.tracker)
    url = cluster_url(entry.url)
    spawn_worker(threads=4, slow_seconds=60, tracker_url=url)
    (victim,) = wait_registered(cluster_store, 1)
    ids = send(producer, namespaces.queue, "slow", 6)
    wait_for(lambda: len(events(redis_client, namespaces, "started")) == 4, 20, message="victim busy")
    wait_for(lambda: len(cluster_store.inflight(victim.worker_id)) == 4, 5, message="records written")
    spawn_worker(threads=8, slow_seconds=0.1, tracker_url=url)
    survivor = wait_new_worker(cluster_store, victim)

    # When the namespace's slot is migrated to another master while the workers run
    slot = redis_cluster.namespace_slot(namespaces.tracker)
    owner = redis_cluster.slot_owner(slot)
    redis_cluster.migrate_slot(slot, redis_cluster.other_master(owner))
    assert redis_cluster.slot_owner(slot).node_id != owner.node_id
    # And then the first worker is SIGKILLed
    kill(victim.pid)

    # Then each of its 6 messages (4 running, 2 prefetched) starts again once on the survivor
    def restarted() -> list[str]:
        return [e[0] for e in events(redis_client, namespaces, "started") if e[1] == survivor.pid]

    wait_for(lambda: len(restarted()) >= 6, BOUND + 10, message="6 redeliveries")
    assert collections.Counter(restarted()) == collections.Counter(ids)
    wait_for(lambda: victim.worker_id in cluster_store.dead_workers(), 5, message="tombstoned")
    wait_for(lambda: len(events(redis_client, namespaces, "done")) == 6, 10, message="all done")
    assert collections.Counter(m for m, _, _ in events(redis_client, namespaces, "done")) == collections.Counter(ids)


def test_a_tracker_accepts_a_redis_cluster_client_and_recovers_through_it(
    namespaces: Namespaces, redis_broker: RedisBroker, redis_cluster: RedisClusterServers
) -> None:
    client = redis_cluster.client()
    tracker = TrackerMiddleware(client=client, namespace=namespaces.tracker)
    redis_broker.add_middleware(tracker)
    dramatiq.set_broker(redis_broker)
    _, messages = fake_dead_worker(redis_broker, tracker.store, namespaces.queue, 3)
    report = tracker.recover()
    assert sorted(report.message_ids) == sorted(m.message_id for m in messages)
    assert tracker.store.server_time() > 0
    client.close()


@pytest.mark.slow
def test_after_a_sentinel_failover_that_lost_writes_no_phantom_record_stays_and_nothing_runs_twice(
    redis_client: redis.Redis,
    namespaces: Namespaces,
    spawn_worker: Callable[..., WorkerProcess],
    producer: RedisBroker,
    fresh_redis_sentinel: RedisSentinelServers,
) -> None:
    sentinel = fresh_redis_sentinel
    url = sentinel.url
    master = sentinel.sentinel(socket_timeout=1).master_for(sentinel.service_name)
    store = InspectionStore(master, namespaces.tracker)
    # Given two workers tracked in a Sentinel-managed Redis, one busy with 4 messages
    spawn_worker(threads=4, slow_seconds=120, tracker_url=url)
    (victim,) = wait_registered(store, 1)
    spawn_worker(threads=4, slow_seconds=0.5, tracker_url=url, env={"TEST_QUEUE": namespaces.queue + "_other"})
    survivor = wait_new_worker(store, victim)
    ids = send(producer, namespaces.queue, "slow", 4)
    wait_for(lambda: len(store.inflight(victim.worker_id)) == 4, 20, message="records written")

    # When the master is frozen, the replica promoted, and the old master resumes and takes writes
    # (the ends of short messages on the survivor) before Sentinel demotes it and they are lost
    short = send(producer, namespaces.queue + "_other", "slow", 6)
    with sentinel.split_brain():
        wait_for(lambda: len([e for e in events(redis_client, namespaces, "done") if e[0] in short]) == 6, 20)
    # And then the busy worker is SIGKILLed
    kill(victim.pid)

    # Then its 4 messages start again once each on a live worker (the survivor consumes the other
    # queue: a worker of the first queue is started), and none runs more than twice in all
    spawn_worker(threads=4, slow_seconds=0.1, tracker_url=url)
    wait_for(lambda: all(m in [e[0] for e in events(redis_client, namespaces, "done")] for m in ids), BOUND + 20)
    counts = collections.Counter(mid for mid, _, _ in events(redis_client, namespaces, "started"))
    assert all(counts[mid] == 2 for mid in ids), counts
    assert all(counts[mid] == 1 for mid in short), counts
    # And within one heartbeat interval, the survivor's records are what it really runs: nothing
    wait_for(lambda: store.inflight(survivor.worker_id) == {}, 5, message="no phantom record")
    assert victim.worker_id in store.dead_workers()
    master.close()


def test_a_master_move_drops_the_connections_to_the_old_master_and_no_other(
    fresh_redis_sentinel: RedisSentinelServers,
) -> None:
    sentinel = fresh_redis_sentinel
    client = sentinel.sentinel(socket_timeout=1).master_for(sentinel.service_name)
    pool = client.connection_pool
    watch = MasterWatch(client)
    on_old = on_new = None
    try:
        assert not watch.moved()  # the first answer names where the client already is
        # Given a connection in use on the master
        on_old = pool.get_connection()
        on_old.send_command("PING")
        on_old.read_response()
        # When the master fails over, and another thread's connection already talks to the new master
        old, new = sentinel.failover()
        on_new = pool.get_connection()
        on_new.send_command("PING")
        on_new.read_response()
        assert (on_new.host, on_new.port) == new != old
        # Then the watch sees the move, and cuts the connection to the old master only: a command on the
        # new one (a heartbeat, in another thread) is not cut under its thread
        assert watch.moved()
        assert on_old._sock is None
        assert on_new._sock is not None
        on_new.send_command("PING")
        assert on_new.read_response() in (b"PONG", "PONG")
    finally:
        for connection in (on_old, on_new):
            if connection is not None:
                pool.release(connection)
        client.close()


def test_a_presence_connection_renewed_from_another_thread_never_takes_that_threads_commands(
    redis_url: str, namespaces: Namespaces
) -> None:
    # Given a presence thread subscribed on the tracker's client, and another thread (a recorder) on the
    # same client
    client = redis.Redis.from_url(redis_url, socket_timeout=2)
    presence = Presence(client, lambda worker_id: "{%s}:presence:%s" % (namespaces.tracker, worker_id), lambda: None)
    presence.start()
    try:
        presence.follow("w1")
        wait_for(lambda: presence.subscribed, 5, message="subscribed")
        for turn in range(20):
            # When that other thread asks for a new subscription (a master move) and goes on with its commands
            presence.reconnect()
            started = time.monotonic()
            for _ in range(5):
                assert client.echo("turn %d" % turn) == b"turn %d" % turn
            # Then none of its commands was read by the presence thread (it would wait a socket timeout),
            # and the presence is subscribed again
            assert time.monotonic() - started < 1.0, "a command waited %.1f s" % (time.monotonic() - started)
            wait_for(lambda: presence.subscribed, 5, message="subscribed again")
            assert client.pubsub_numsub("{%s}:presence:w1" % namespaces.tracker)[0][1] == 1
    finally:
        presence.stop()
        client.close()


def test_the_trackers_redis_may_be_reached_over_tls(tls_redis: TlsRedisServer, namespaces: Namespaces) -> None:
    broker = StubBroker()
    tracker = TrackerMiddleware(url=tls_redis.url, namespace=namespaces.tracker, **FAST)
    broker.add_middleware(tracker)
    broker.emit_after("process_boot")
    ran: list[int] = []

    @dramatiq.actor(broker=broker)
    def work(x: int) -> None:
        time.sleep(0.3)
        ran.append(x)

    worker = Worker(broker, worker_threads=1, worker_timeout=50)
    worker.start()
    try:
        message = work.send(1)
        worker_id = tracker.worker_id
        assert worker_id is not None
        wait_for(lambda: message.message_id in reads(tracker).inflight(worker_id), 5, message="recorded over TLS")
        info = WorkerInfo.from_json(tracker.store.registration(worker_id) or "")
        assert info.worker_id == worker_id
        wait_for(lambda: ran == [1], 5)
        # A client without TLS cannot talk to it
        with pytest.raises(redis.RedisError):
            redis.Redis(host="127.0.0.1", port=tls_redis.address[1], socket_timeout=1).ping()
    finally:
        worker.stop()
        broker.close()
        tracker.close()


def test_the_tracker_works_with_an_acl_user_limited_to_its_own_keys(
    acl_redis: AclRedisServer, namespaces: Namespaces
) -> None:
    # Given a RedisBroker on a server where the tracker's user may touch only its namespace's keys
    user_url = acl_redis.add_user("tracker-only", key_patterns=("{%s}:*" % namespaces.tracker,))
    broker = RedisBroker(url=acl_redis.url, namespace=namespaces.broker)
    tracker = TrackerMiddleware(url=user_url, namespace=namespaces.tracker, **FAST)
    broker.add_middleware(tracker)
    dramatiq.set_broker(broker)
    try:
        # When a dead worker is recovered and events are written
        _, messages = fake_dead_worker(broker, tracker.store, namespaces.queue, 3)
        report = tracker.recover()
        # Then it worked, and the user could not have touched anything else
        assert sorted(report.message_ids) == sorted(m.message_id for m in messages)
        assert tracker.recent_events()
        with pytest.raises(redis.exceptions.NoPermissionError):
            redis.Redis.from_url(user_url).get("%s:anything" % namespaces.broker)
    finally:
        broker.close()
        broker.client.close()
        tracker.close()
