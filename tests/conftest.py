from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import dramatiq
import pytest
import redis
from dramatiq import Worker
from dramatiq.brokers.redis import RedisBroker
from dramatiq.brokers.stub import StubBroker
from dramatiq.message import Message
from dramatiq.middleware import CurrentMessage

from dramatiq_tracker import TrackerMiddleware
from dramatiq_tracker.ops.inspection import DEAD, FENCED, RECOVERING, Inspector
from dramatiq_tracker.ops.reads import InspectionStore
from dramatiq_tracker.ops.views import WorkerView
from dramatiq_tracker.records import WorkerInfo
from dramatiq_tracker.testing.crashes import stop_tracking

from .support import (
    BOUND,
    FAST,
    RABBITMQ_URL,
    RedisServer,
    WorkerProcess,
    close_redis_broker,
    delete_matching,
    enqueue,
    fake_dead_worker,
    find_redis_url,
    kinds,
    rabbitmq_answers,
    release,
    send,
    unique,
    wait_for,
    wait_new_worker,
    wait_registered,
)

#: The real-server fixtures: Redis Cluster, Sentinel, TLS and ACL (tests/servers.py).
pytest_plugins = ["tests.servers"]


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    url, embedded = find_redis_url()
    yield url
    if embedded is not None:
        embedded.shutdown()


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@dataclasses.dataclass
class Namespaces:
    tracker: str
    broker: str
    queue: str

    @property
    def report(self) -> str:
        return "%s:test-report" % self.broker


@pytest.fixture
def namespaces(redis_client: redis.Redis) -> Iterator[Namespaces]:
    """A tracker namespace, a broker namespace and a queue of the test's own; their keys are removed after."""
    names = Namespaces(unique("tracker-test"), unique("dramatiq-test"), unique("q").replace("-", "_"))
    yield names
    delete_matching(redis_client, "{%s}:*" % names.tracker)
    delete_matching(redis_client, "%s:*" % names.broker)


def events(client: redis.Redis, names: Namespaces, event: str) -> list[tuple[str, int, float]]:
    """What the test app's actors reported: (message id, pid, time) per event."""
    found = []
    for raw in client.lrange("%s:%s" % (names.report, event), 0, -1):
        message_id, pid, at = raw.decode().split("|")
        found.append((message_id, int(pid), float(at)))
    return found


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # The longest first (the soak, then the tests that spawn worker processes), so that parallel runs
    # (pytest-xdist) do not end waiting on a long test that started last; the order within each group
    # is kept.
    def weight(item: pytest.Item) -> int:
        return 0 if item.get_closest_marker("soak") else 1 if item.get_closest_marker("slow") else 2

    items.sort(key=weight)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    # Keep each phase's report on the test, so that fixtures know at teardown whether it failed.
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    setattr(item, "report_" + report.when, report)


@pytest.fixture
def spawn_worker(
    redis_url: str, namespaces: Namespaces, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Callable[..., WorkerProcess]]:
    """Start real ``dramatiq`` worker processes of tests/apps/worker_app.py (or ``app``); all are killed after
    the test."""
    started: list[WorkerProcess] = []

    def spawn(
        *, kind: str = "redis", threads: int = 4, slow_seconds: float = 60, broker_url: str | None = None,
        tracker_url: str | None = None, env: dict[str, str] | None = None, queues: list[str] | None = None,
        isolation: str = "", app: str = "tests.apps.worker_app",
    ) -> WorkerProcess:  # fmt: skip
        settings = {"TEST_%s" % key.upper(): str(value) for key, value in FAST.items()}
        full_env = {
            **settings,
            "TEST_BROKER_KIND": kind,
            "TEST_QUEUE": namespaces.queue,
            "TEST_REPORT_PREFIX": namespaces.report,
            "TEST_REPORT_URL": redis_url,
            "TEST_BROKER_URL": broker_url or redis_url,
            "TEST_BROKER_NAMESPACE": namespaces.broker,
            "TEST_TRACKER_URL": tracker_url or redis_url,
            "TEST_TRACKER_NAMESPACE": namespaces.tracker,
            "TEST_SLOW_SECONDS": str(slow_seconds),
            **(env or {}),
        }
        extra = ["--queues", *queues] if queues else None
        log_path = tmp_path / ("worker-%d.log" % len(started))
        worker = WorkerProcess(full_env, threads=threads, log_path=log_path, extra=extra, isolation=isolation, app=app)
        started.append(worker)
        return worker

    yield spawn
    for worker in started:
        worker.close()
    report = getattr(request.node, "report_call", None)
    if report is not None and report.failed:
        # The workers' logs, for a failure that only a loaded machine shows (tmp_path is not kept for long).
        for index, worker in enumerate(started):
            print("----- worker %d log (%s) -----\n%s" % (index, worker.log_path, worker.output()[-20000:]))


def _own_redis_broker(redis_url: str, namespaces: Namespaces) -> Iterator[RedisBroker]:
    broker = RedisBroker(url=redis_url, namespace=namespaces.broker)
    yield broker
    close_redis_broker(broker)


#: A RedisBroker on the test's own broker namespace (``tracker`` adds its tracker to it).
redis_broker = pytest.fixture(_own_redis_broker, name="redis_broker")
#: Another RedisBroker on the test's broker namespace, without a tracker, to send messages.
producer = pytest.fixture(_own_redis_broker, name="producer")


@pytest.fixture
def tracker(redis_broker: RedisBroker, redis_client: redis.Redis, namespaces: Namespaces) -> TrackerMiddleware:
    """A tracker on ``redis_broker`` (made the global broker), its keys in the test's namespace."""
    tracker = TrackerMiddleware(client=redis_client, namespace=namespaces.tracker)
    redis_broker.add_middleware(tracker)
    dramatiq.set_broker(redis_broker)
    return tracker


@dataclasses.dataclass
class Sweep:
    """A tracker on the test's RedisBroker, with the test Redis and namespaces: what a test needs to sweep
    dead workers it made by hand (:func:`~tests.support.fake_dead_worker`)."""

    broker: RedisBroker
    client: redis.Redis
    names: Namespaces
    tracker: TrackerMiddleware

    def dead_worker(self, count: int, **options: Any) -> tuple[WorkerInfo, list[Message[object]]]:
        """A dead worker of this host with ``count`` messages of the test queue fetched (see
        :func:`~tests.support.fake_dead_worker`)."""
        return fake_dead_worker(self.broker, self.tracker.store, self.names.queue, count, **options)


@pytest.fixture
def sweep(
    redis_broker: RedisBroker, redis_client: redis.Redis, namespaces: Namespaces, tracker: TrackerMiddleware
) -> Sweep:
    """The test's tracker on its RedisBroker, to sweep dead workers made by hand."""
    return Sweep(redis_broker, redis_client, namespaces, tracker)


@pytest.fixture
def store(redis_client: redis.Redis, namespaces: Namespaces) -> InspectionStore:
    """The tracker's store on the test's namespace, to look at what workers wrote."""
    return InspectionStore(redis_client, namespaces.tracker)


@dataclasses.dataclass
class Cluster:
    """What a test of real worker processes works with: the test Redis, the test's own namespaces, the
    worker processes it starts there (:func:`spawn_worker`) and the tracker's records they write."""

    client: redis.Redis
    names: Namespaces
    spawn: Callable[..., WorkerProcess]
    store: InspectionStore

    def spawn_rabbitmq(self, threads: int, **options: Any) -> WorkerProcess:
        """Start a worker process on the test RabbitMQ."""
        return self.spawn(kind="rabbitmq", threads=threads, broker_url=RABBITMQ_URL, **options)

    def rabbitmq_worker_running(
        self, broker: object, actor: str, *args: object, threads: int, **options: Any
    ) -> tuple[WorkerInfo, str]:
        """Start the test's first worker process, on RabbitMQ, and send it a message ``actor(*args)``;
        returns the worker and the message's id once the message started."""
        self.spawn_rabbitmq(threads=threads, **options)
        (worker,) = self.wait_registered(1)
        message_id = enqueue(broker, self.names.queue, actor, *args)
        wait_for(lambda: self.starts(message_id), 20, message="running")
        return worker, message_id

    def wait_registered(self, count: int, timeout: float = 20) -> list[WorkerInfo]:
        """Wait until exactly ``count`` workers are registered; returns them."""
        return wait_registered(self.store, count, timeout)

    def wait_new_worker(self, *known: WorkerInfo, timeout: float = 20) -> WorkerInfo:
        """The next worker to register besides ``known`` ones."""
        return wait_new_worker(self.store, *known, timeout=timeout)

    def kinds(self, message_id: str = "") -> list[str]:
        """The kinds of the tracker's events (about one message, if given), oldest first."""
        return kinds(self.store, message_id)

    def fenced_worker(self, inspector: Inspector) -> tuple[WorkerInfo, WorkerInfo, WorkerView]:
        """Start two workers, stop the first until the second declares it dead, then let it go on; returns
        both and the first one's view once it shows fenced."""
        self.spawn(threads=1)
        (victim,) = self.wait_registered(1)
        self.spawn(threads=1)
        survivor = self.wait_new_worker(victim)
        os.kill(victim.pid, signal.SIGSTOP)
        try:
            wait_for(lambda: inspector.worker(victim.worker_id).state in (RECOVERING, DEAD), BOUND + 5, message="dead")
        finally:
            os.kill(victim.pid, signal.SIGCONT)
        view = wait_for(
            lambda: (v := inspector.worker(victim.worker_id)) is not None and v.state == FENCED and v,
            10,
            message="fenced",
        )
        return victim, survivor, view

    def reported(self, event: str, pid: int | None = None) -> list[tuple[str, int, float]]:
        """What the test app's actors reported of ``event`` (in process ``pid``, if given): (message id, pid,
        time) per run."""
        return [e for e in events(self.client, self.names, event) if pid is None or e[1] == pid]

    def starts(self, message_id: str) -> list[int]:
        """The pids of the processes that started ``message_id``, in order."""
        return [pid for found, pid, _ in self.reported("started") if found == message_id]

    def reported_by(self, pid: int, event: str = "started") -> list[str]:
        """The ids of the messages whose ``event`` process ``pid`` reported, in order."""
        return [message_id for message_id, _, _ in self.reported(event, pid)]

    def wait_reported_by(self, pid: int, timeout: float, message: str, event: str = "started") -> None:
        """Wait until process ``pid`` reports an ``event`` (a survivor starting an orphan again, by default)."""
        wait_for(lambda: self.reported_by(pid, event), timeout, message=message)

    def busy_worker(self, producer: object, count: int, *, threads: int = 2) -> tuple[WorkerInfo, list[str]]:
        """Start the test's first worker process and give it ``count`` ``slow`` messages; returns it and
        their ids once their records are written."""
        self.spawn(threads=threads, slow_seconds=60)
        (worker,) = self.wait_registered(1)
        ids = send(producer, self.names.queue, "slow", count)
        wait_for(lambda: len(self.store.inflight(worker.worker_id)) == count, 20, message="recorded")
        return worker, ids

    def release(self, message_id: str) -> None:
        """Let a ``held`` (or ``fail_when_released``) message end."""
        release(self.client, self.names.report, message_id)


@pytest.fixture
def cluster(
    redis_client: redis.Redis,
    namespaces: Namespaces,
    spawn_worker: Callable[..., WorkerProcess],
    store: InspectionStore,
) -> Cluster:
    """The test's namespaces, where it starts real worker processes and reads what they wrote."""
    return Cluster(redis_client, namespaces, spawn_worker, store)


#: The marks of a test that closes RabbitMQ connections from the server (rabbitmqctl).
CLOSES_RABBITMQ_CONNECTIONS = [
    pytest.mark.slow,
    pytest.mark.rabbitmq,
    pytest.mark.skipif(not shutil.which("rabbitmqctl"), reason="needs rabbitmqctl to close a connection"),
]


@pytest.fixture
def rabbitmq(namespaces: Namespaces) -> Iterator[Any]:
    """A RabbitmqBroker with the test's queue declared; its queues are deleted after."""
    if "RABBITMQ_URL" not in os.environ and not rabbitmq_answers():
        if os.environ.get("CI"):
            pytest.fail("RabbitMQ is not reachable on 127.0.0.1:5672")
        pytest.skip("RabbitMQ is not reachable on 127.0.0.1:5672 (set RABBITMQ_URL)")
    from dramatiq.brokers.rabbitmq import RabbitmqBroker

    broker = RabbitmqBroker(url=RABBITMQ_URL)
    broker.declare_queue(namespaces.queue)
    yield broker
    for queue in (namespaces.queue, namespaces.queue + ".DQ", namespaces.queue + ".XQ"):
        with contextlib.suppress(Exception):
            broker.channel.queue_delete(queue)
    broker.close()


@pytest.fixture
def tracker_server() -> Iterator[RedisServer]:
    """A throwaway redis-server for the tracker, that the test may stop and start again (empty)."""
    server = RedisServer().start()
    yield server
    server.close()


def make_tracker(redis_url: str, namespace: str, **settings: Any) -> TrackerMiddleware:
    return TrackerMiddleware(url=redis_url, namespace=namespace, **{**FAST, **settings})


class StubApp:
    """One process of an app on a StubBroker, as tests stand it up: CurrentMessage, a tracker
    (:func:`make_tracker`) booted with the broker, and an embedded Worker, not started yet."""

    def __init__(
        self, redis_url: str, namespace: str, *, threads: int, worker_timeout: int = 50, **tracker_options: Any
    ) -> None:
        self.broker = StubBroker()
        self.broker.add_middleware(CurrentMessage())
        self.tracker: TrackerMiddleware = make_tracker(redis_url, namespace, **tracker_options)
        self.broker.add_middleware(self.tracker)
        self.broker.emit_after("process_boot")
        self.worker = Worker(self.broker, worker_threads=threads, worker_timeout=worker_timeout)
        #: What the actors of an app that hold their messages wait for.
        self.release = threading.Event()

    def die(self) -> None:
        """What SIGKILL does to the tracker: its threads stop, nothing is deregistered."""
        assert stop_tracking(self.tracker) is not None

    def close(self) -> None:
        """Let its actors return, then stop its worker, its broker and its tracker."""
        self.release.set()
        self.worker.stop(5000)
        self.broker.close()
        self.tracker.close()


@contextlib.contextmanager
def running_worker(
    broker: dramatiq.Broker,
    tracker: TrackerMiddleware | None = None,
    *,
    threads: int,
    release: threading.Event | None = None,
) -> Iterator[Worker]:
    """An embedded Worker of ``broker``, started; at the end ``release`` is set (so that held actors return),
    the worker stopped, and the broker and ``tracker`` closed."""
    worker = Worker(broker, worker_threads=threads, worker_timeout=50)
    worker.start()
    try:
        yield worker
    finally:
        if release is not None:
            release.set()
        worker.stop()
        broker.close()
        if tracker is not None:
            tracker.close()


def booted_stub_broker(redis_url: str, namespace: str, **settings: Any) -> tuple[StubBroker, TrackerMiddleware]:
    """A StubBroker with a tracker (:func:`make_tracker`), booted as a worker process boots its broker."""
    broker = StubBroker()
    tracker = make_tracker(redis_url, namespace, **settings)
    broker.add_middleware(tracker)
    broker.emit_after("process_boot")
    return broker, tracker


@pytest.fixture(autouse=True)
def _no_tracker_url_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    # Tests say which Redis the tracker uses; a developer's environment must not.
    monkeypatch.delenv("DRAMATIQ_TRACKER_REDIS_URL", raising=False)


def pytest_report_header(config: pytest.Config) -> str:
    return "dramatiq-tracker tests: REDIS_URL=%s" % os.environ.get("REDIS_URL", "(auto)")
