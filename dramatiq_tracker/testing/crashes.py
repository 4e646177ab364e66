"""Crashes: worker subprocesses SIGKILLed, in-process workers declared dead, and recovery awaited."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from dramatiq.common import iter_queue
from dramatiq.logging import get_logger

from ..brokers import REDIS, STUB, as_redis_broker, broker_kind
from ..host import HostFacts
from ..middleware import TrackerMiddleware, find_tracker
from ..ops.reads import InspectionStore
from ..orphans import RecoveryReport
from ..records import CorruptRecord, WorkerInfo

if TYPE_CHECKING:
    from dramatiq import Broker, MessageProxy, Worker

from .boot import boot_worker
from .brokers import _running, _stopped, _unhook, start_worker, stop_worker
from .config import (
    _POLL,
    STARTUP_TIMEOUT,
    WORKER_ENVIRONMENT_VARIABLE,
    WORKER_TIMEOUT,
    TrackerTestConfig,
    TrackerTestError,
)
from .runs import RunRecorder, find_run_recorder

# Crashes ------------------------------------------------------------------------------------------


def stop_tracking(tracker: TrackerMiddleware, *, flush: bool = False) -> str | None:
    """Do to an in-process tracker what a SIGKILL does: its threads stop, nothing is deregistered.

    Its heartbeat stops, so it is declared dead once its heartbeat key expires, and its in-flight
    records stay for recovery to find.  Hooks called later by its worker threads record nothing; a
    Worker started afterwards begins a new worker process, under a new worker id.

    Parameters:
      flush(bool): Write what the recorder still holds in memory first, so that every message
        running now is known to recovery, however soon after its start this is called.

    Returns:
      str|None: The worker id it had; None when no Worker was running.

    Raises:
      redis.RedisError: When ``flush`` cannot reach the tracker's Redis (the threads are stopped).
    """
    return tracker._abandon(flush=flush)


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
        """The pid of its worker process (the ``dramatiq`` command's child), which
        :meth:`~dramatiq_tracker.testing.Crashes.kill` kills."""
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

    @functools.cached_property
    def store(self) -> InspectionStore:
        """The tracker's Redis, read as the inspection API reads it."""
        return InspectionStore(self.tracker.store.client, self.tracker.settings.namespace)

    # In-process workers ------------------------------------------------------------------

    def crash(self, worker: Worker, *, flush: bool = True) -> CrashedWorker:
        """Declare an in-process worker dead, as if its process had been SIGKILLed.

        Its tracker heartbeat stops and nothing is deregistered; the messages its threads run are
        abandoned: never acked nor nacked, and how they end is not recorded (the code of a running actor
        cannot be stopped from outside: make it wait on something the test releases).  The worker stops
        consuming; on a StubBroker, the messages it fetched and had not started go back to their queue,
        as a broker shared by processes would deliver them again; on a RedisBroker they stay with the
        dead worker, for recovery to move back.  Then :meth:`recover` (or a new worker's sweeps) delivers
        the abandoned messages again, and :meth:`~dramatiq_tracker.testing.start_worker` runs them.

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
        worker_id = stop_tracking(tracker, flush=flush)
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
            sys.executable, "-m", "dramatiq", "%s:%s" % (boot_worker.__module__, boot_worker.__name__), *modules,
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
          timeout(float): In seconds; default :attr:`~dramatiq_tracker.testing.TrackerTestConfig.wait_timeout`.

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
