"""How long the orphans of a SIGKILLed worker wait before they start again, per deployment scenario.

Every scenario runs real ``dramatiq`` CLI workers (``benchmarks/recovery_app.py``, ``--processes 1
--threads 2``) with the tracker at its DEFAULT settings (heartbeat_interval 5 s, heartbeat_timeout
15 s, sweep_interval 5 s, presence on, presence_grace 1 s), on a RedisBroker (the Redis at --url,
else REDIS_URL, else 127.0.0.1:6379) and on RabbitMQ (--rabbitmq-url); the tracker's Redis is the
same Redis.  Each kill uses a fresh victim:

1. the victim starts, consuming a queue of its own; 2 ``slow`` messages are sent to that queue, and
   the benchmark waits until both started on the victim (they sleep for an hour there), the
   tracker's in-flight records of them are written and the victim's presence is seen;
2. the live peer, where the scenario has one, then starts consuming that queue too (it declares the
   queue at run time: Dramatiq adds a consumer), so that it can only get orphans;
3. after a random phase (1.5 s, for the peer's new consumer to poll as an idle one does, at most
   every second, plus 0-5 s: a random moment of the sweeps), the victim's WORKER process (the CLI's
   child; in a pid namespace found by its NSpid) is SIGKILLed, then the rest of its process group;
4. the benchmark records the seconds from the SIGKILL until the LAST of the 2 orphans starts again
   (the actor RPUSHes message id, hostname, pid, a per-process random token and ``time.time()``:
   pids repeat across pid namespaces, so a start counts when it comes after the kill and from
   another process than the victim).

The scenarios:

- ``same-host``: the victim runs here (same hostname and pid namespace) and a long-lived peer too:
  its sweep sees the pid gone (every sweep_interval), or presence does.
- ``container``: the victim runs in a new pid namespace with this hostname (``unshare --pid --fork
  --mount-proc``); right after the SIGKILL a new process is started the same way (the container
  restarts) and there is no other worker: the restarted one recovers its predecessor at boot, after
  a quarter of the grace.  The time includes the restart's boot.  The restarted process is stopped
  gracefully before the next kill.
- ``other-host``: the victim runs in new UTS and pid namespaces under another hostname; a long-lived
  peer, here, started before the kill, judges it by presence (when it holds the sweep lease).
- ``sigstop``: the victim (on another host, with a peer) holds 2 messages and is frozen with SIGSTOP
  (its whole process group) for 10 s, below heartbeat_timeout, then SIGCONT; the messages are then
  released.  Counted: FALSE DEATHS (a worker-dead event for it, or one of its messages started
  elsewhere), expected 0, and whether both messages completed once, on the victim.
- ``gil``: the same, but one of the victim's messages holds the GIL for 10 s
  (``ctypes.PyDLL(None).sleep(10)``): every thread of the process stops, its sockets stay open.
- ``plain``: the first three without the tracker.  On RabbitMQ the server delivers the messages of
  a closed connection again at once: the baseline that the tracker must stay within 1 s of.  On a
  RedisBroker plain Dramatiq needs its 60 s heartbeat timeout and a maintenance lottery (often many
  minutes): only with ``--plain-redis``, each kill capped at ``--timeout`` (default 300 s there).

A scenario uses one tracker namespace for all its kills, and waits before its first kill until the
namespace saw its Redis 2 x heartbeat_interval ago (before that, the tracker judges no death).
After its last kill it watches one more sweep_interval for duplicates (an orphan that started
more than once after its kill).

It prints a line per kill, then per broker and scenario: kills, median and max seconds (the
acceptance is on the max), duplicates, and, for the tracker:

- ``recovered``: seconds from the kill to the tracker's decision on the last orphan (its
  ``recovered`` event); the rest, up to the start, is the broker's delivery (a RedisBroker
  consumer polls an idle queue at most every second);
- ``put off``: orphans delivered again while their victim looked alive, put off by heartbeat_timeout;
- ``sweep lease at kill``: on a RedisBroker only the holder of the sweep lease (and a worker that
  just booted) judges presence; a victim that held it leaves the peer to wait for it to expire;
- ``detected``: the reason of the victim's worker-dead event, or of the survivor's log line ("presence
  gone", "process gone", "heartbeat expired").  On RabbitMQ the worker that gets the redelivery
  decides at once ("at redelivery"); a sweep's worker-dead event comes after;

false deaths for the stalls, the restarted container's boot time, on RabbitMQ the tracker minus
plain Dramatiq; then the acceptance targets of issue #17, the machine (cores, load average at start
and end, versions) and the load average at the kills.

    python benchmarks/recovery.py [--broker redis|rabbitmq|both] [--only SCENARIO[,SCENARIO]] [--kills 10]
                                  [--url redis://...] [--rabbitmq-url amqp://...] [--plain-redis] [--timeout S]
                                  [--at REV] [--keep-logs]

The workers import a copy of the tracker made at the start, from the working tree or, with
``--at REV``, from a git revision: a run measures one version even while the checkout is edited.

Needs root for the namespaces (``unshare``); without it only ``same-host`` runs.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import platform
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import FrameType
from typing import Any
from urllib.parse import urlparse

import dramatiq
import redis
from dramatiq.message import Message

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dramatiq_tracker import __version__ as tracker_version
from dramatiq_tracker.connection import delete_keys
from dramatiq_tracker.events import TrackerEvent
from dramatiq_tracker.keys import identity_digest
from dramatiq_tracker.ops.reads import InspectionStore
from dramatiq_tracker.records import WorkerInfo
from dramatiq_tracker.settings import (
    DEFAULT_HEARTBEAT_INTERVAL,
    DEFAULT_HEARTBEAT_TIMEOUT,
    DEFAULT_PRESENCE_GRACE,
    DEFAULT_SWEEP_INTERVAL,
)

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_RABBITMQ_URL = "amqp://guest:guest@127.0.0.1:5672/%2F"

#: Messages per victim, and its threads: it runs them all.
MESSAGES = 2
#: How long a stall lasts, in seconds: below heartbeat_timeout.
STALL_SECONDS = 10
SWEEP = DEFAULT_SWEEP_INTERVAL / 1000
#: How long after the namespace first saw its Redis no death is judged (see lua/_server.lua), in s.
SETTLE = 2 * DEFAULT_HEARTBEAT_INTERVAL / 1000
#: Before a kill: a new RedisBroker consumer polls as an idle one (at most every second) after about
#: 1.3 s; then a random moment of the 5 s sweeps.
PHASE = (1.5, 1.5 + SWEEP)
#: After the last kill, how long to watch for orphans started twice (one more sweep), in s.
DUPLICATE_WINDOW = SWEEP + 1
#: After a stall's messages completed, how long to watch for a false death (a sweep, the grace, slack).
STALL_WINDOW = SWEEP + DEFAULT_PRESENCE_GRACE / 1000 + 1
#: How long a worker may take to boot, and a message to start, on a loaded machine, in s.
BOOT_TIMEOUT = 60.0
#: The longest wait for a kill's orphans, by default, in s: tracker and RabbitMQ; plain RedisBroker.
TIMEOUT = 60.0
PLAIN_REDIS_TIMEOUT = 300.0

SCENARIOS = ("same-host", "container", "other-host", "sigstop", "gil")
#: Where the victim runs: here, in a container with this hostname, on another host.
ISOLATION = {"same-host": "", "container": "container", "other-host": "host", "sigstop": "host", "gil": "host"}
STALLS = ("sigstop", "gil")
#: The scenarios plain Dramatiq is measured in.
PLAIN = ("same-host", "container", "other-host")
#: The events of a delivery put off (until heartbeat_timeout) rather than run.
PUT_OFF = ("duplicate-deferred", "start-put-off")
#: Issue #17: the longest restart allowed, in s; and on RabbitMQ, the most above plain Dramatiq.
TARGETS = {"container": 2.0, "other-host": 3.0}
RABBITMQ_MARGIN = 1.0


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.02) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise RuntimeError("timed out after %.0f s waiting for %s" % (timeout, what))
        time.sleep(interval)


def can_isolate() -> bool:
    """Whether this process may make namespaces (root, and unshare installed)."""
    return shutil.which("unshare") is not None and os.geteuid() == 0


def parent_of(pid: int) -> int:
    return int(Path("/proc/%d/stat" % pid).read_text().rpartition(")")[2].split()[1])


def descends_from(pid: int, ancestor: int) -> bool:
    while pid > 1:
        if pid == ancestor:
            return True
        try:
            pid = parent_of(pid)
        except (OSError, ValueError):
            return False
    return pid == ancestor


def host_pid(root_pid: int, namespace_pid: int) -> int:
    """The pid, as seen here, of the process that a pid namespace made under ``root_pid`` knows as
    ``namespace_pid`` (the last field of its ``NSpid``)."""
    for status in Path("/proc").glob("[0-9]*/status"):
        with contextlib.suppress(OSError):
            for line in status.read_text().splitlines():
                if line.startswith("NSpid:"):
                    pids = [int(pid) for pid in line.split()[1:]]
                    if len(pids) > 1 and pids[-1] == namespace_pid and descends_from(pids[0], root_pid):
                        return pids[0]
    raise LookupError("no process %d in a pid namespace under %d" % (namespace_pid, root_pid))


def signal_group(pgid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signum)


@dataclasses.dataclass(frozen=True)
class Boot:
    """What a worker process reported once its consumers ran."""

    role: str
    hostname: str
    pid: int  # in its own pid namespace
    token: str
    worker_id: str  # the tracker's, "" for plain Dramatiq
    sweeper_token: str
    at: float

    @classmethod
    def parse(cls, raw: bytes) -> Boot:
        role, hostname, pid, token, worker_id, sweeper_token, at = raw.decode().split("|")
        return cls(role, hostname, int(pid), token, worker_id, sweeper_token, float(at))


@dataclasses.dataclass(frozen=True)
class Start:
    message_id: str
    hostname: str
    pid: int
    token: str
    at: float

    @classmethod
    def parse(cls, raw: bytes) -> Start:
        message_id, hostname, pid, token, at = raw.decode().split("|")
        return cls(message_id, hostname, int(pid), token, float(at))


class WorkerProcess:
    """A ``dramatiq`` CLI (one worker process) running ``recovery_app``, in a session of its own, here,
    in a container (a new pid namespace) or on another host (new UTS and pid namespaces)."""

    def __init__(self, command: list[str], env: dict[str, str], isolation: str, log_path: Path, cwd: Path) -> None:
        self.isolation = isolation
        self.log_path = log_path
        self.boot: Boot | None = None
        self._worker_pid: int | None = None
        unshare = ["unshare", "--pid", "--fork", "--mount-proc"]
        if isolation == "container":
            command = [*unshare, *command]
        elif isolation == "host":
            script, hostname = 'hostname "$1" && shift && exec "$@"', "bench-otherhost-%s" % uuid.uuid4().hex[:6]
            command = ["unshare", "--uts", *unshare[1:], "sh", "-c", script, "sh", hostname, *command]
        with open(log_path, "ab") as log:
            self.process = subprocess.Popen(
                command, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )

    @property
    def worker_pid(self) -> int:
        """The host pid of its worker process (the CLI's child)."""
        if self._worker_pid is None:
            assert self.boot is not None
            pid = host_pid(self.process.pid, self.boot.pid) if self.isolation else self.boot.pid
            if not descends_from(pid, self.process.pid) or pid == self.process.pid:
                raise RuntimeError("pid %d is not a worker process under %d" % (pid, self.process.pid))
            self._worker_pid = pid
        return self._worker_pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def last_error(self) -> str:
        """The last line of its log that names an error: why it failed, in a word."""
        lines = [line for line in self.output().splitlines() if "Error" in line or "Exception" in line]
        return lines[-1].strip() if lines else "no error logged"

    def kill(self) -> None:
        signal_group(self.process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(10)

    def stop(self, timeout: float = 30) -> None:
        """Stop gracefully, as an orchestrator does (SIGTERM to the CLI, which stops its worker), so
        that the tracker deregisters it; SIGKILL whatever is left after ``timeout``."""
        if self.alive() and self.boot is not None:
            with contextlib.suppress(OSError, LookupError, RuntimeError):
                os.kill(parent_of(self.worker_pid), signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout)
        self.kill()


@dataclasses.dataclass
class Kill:
    """One kill of a victim running ``ids``, and what followed."""

    victim: Boot
    ids: list[str]
    killed_at: float
    #: Who held the sweep lease at the kill (see Run.holder).
    lease: str = ""
    #: Seconds from the kill to the last orphan's start; None: not within the timeout.
    delay: float | None = None
    #: Seconds from the kill to the tracker's decision on the last orphan (its "recovered" event).
    recovered: float | None = None
    #: Seconds from the kill until the restarted container's worker process booted (``container``).
    booted: float | None = None
    #: How the tracker found the victim dead.
    detected: str = ""
    #: How many of its orphans were put off (until heartbeat_timeout) when delivered again.
    put_off: int = 0


@dataclasses.dataclass
class Stall:
    """One stall: the false deaths seen (why), and whether both messages completed once, on the victim."""

    false_deaths: list[str]
    completed_once: bool


@dataclasses.dataclass
class Result:
    broker: str
    scenario: str
    tracked: bool
    timeout: float
    kills: list[Kill] = dataclasses.field(default_factory=list)
    stalls: list[Stall] = dataclasses.field(default_factory=list)
    duplicates: int = 0
    error: str = ""
    #: Why kills (or stalls) could not be made.
    not_measured: list[str] = dataclasses.field(default_factory=list)
    #: The 1-minute load average at each kill or stall.
    loads: list[float] = dataclasses.field(default_factory=list)

    @property
    def setup(self) -> str:
        return "tracker" if self.tracked else "plain"

    @property
    def measured(self) -> bool:
        return bool(self.kills or self.stalls)

    def delays(self) -> list[float]:
        """Every kill's delay, those not restarted within the timeout counted as infinite."""
        return sorted(float("inf") if k.delay is None else k.delay for k in self.kills)

    @property
    def median(self) -> float:
        return statistics.median(self.delays()) if self.kills else float("nan")

    @property
    def max(self) -> float:
        return max(self.delays()) if self.kills else float("nan")


class Run:
    """One scenario on one broker, with or without the tracker: its namespaces, queues, processes and kills."""

    def __init__(self, args: argparse.Namespace, broker: str, scenario: str, tracked: bool, logs: Path) -> None:
        self.args = args
        self.broker = broker
        self.scenario = scenario
        self.tracked = tracked
        self.logs = logs
        self.url: str = args.url
        plain_redis = broker == "redis" and not tracked
        self.timeout: float = args.timeout or (PLAIN_REDIS_TIMEOUT if plain_redis else TIMEOUT)
        self.result = Result(broker, scenario, tracked, self.timeout)
        name = uuid.uuid4().hex[:8]
        self.namespace = "bench-recovery-%s" % name
        self.broker_namespace = self.namespace + "-broker"
        self.tracker_namespace = self.namespace + "-tracker" if tracked else ""
        self.report_prefix = self.namespace + "-report"
        self.queue_prefix = "bench_recovery_%s" % name
        self.home_queue = self.queue_prefix + "_home"
        self.queues: list[str] = []
        self.client = redis.Redis.from_url(self.url)
        self.store = InspectionStore(self.client, self.tracker_namespace) if tracked else None
        self.workers: list[WorkerProcess] = []
        self.peer: WorkerProcess | None = None
        self.restarted: WorkerProcess | None = None
        #: The digest of the broker identity (the suffix of its presence and lease keys).
        self.digest = ""
        self.producer = self.make_producer()
        self.declare(self.home_queue)

    # Brokers and queues ------------------------------------------------------------------------

    def make_producer(self) -> Any:
        if self.broker == "redis":
            from dramatiq.brokers.redis import RedisBroker

            return RedisBroker(url=self.url, namespace=self.broker_namespace)
        from dramatiq.brokers.rabbitmq import RabbitmqBroker

        return RabbitmqBroker(url=self.args.rabbitmq_url)

    def declare(self, queue: str) -> None:
        if self.broker == "rabbitmq":
            # On the server before any consumer asks for it (with its .DQ and .XQ).
            self.producer.declare_queue(queue, ensure=True)
        else:
            self.producer.declare_queue(queue)

    def new_queue(self) -> str:
        queue = "%s_%d" % (self.queue_prefix, len(self.queues) + 1)
        self.declare(queue)
        self.queues.append(queue)
        return queue

    def send(self, queue: str, actor: str, *args: Any) -> str:
        message = Message(queue_name=queue, actor_name=actor, args=args, kwargs={}, options={})
        return str(self.producer.enqueue(message).message_id)

    # Worker processes and their reports --------------------------------------------------------

    def start(
        self, role: str, isolation: str, *, slow: float = 0, queues: Sequence[str] = (), only: str = ""
    ) -> WorkerProcess:
        """Start a worker process of ``role``; ``queues`` are declared at its import, ``only`` is the one
        queue it consumes (a victim: not the home queue)."""
        env = {
            **os.environ,
            # The copy of the tracker and of recovery_app.py taken at start (see snapshot()).
            "PYTHONPATH": str(self.args.code),
            "BENCH_BROKER_KIND": self.broker,
            "BENCH_BROKER_URL": self.url if self.broker == "redis" else self.args.rabbitmq_url,
            "BENCH_BROKER_NAMESPACE": self.broker_namespace,
            "BENCH_HOME_QUEUE": self.home_queue,
            "BENCH_QUEUES": ",".join(queues),
            "BENCH_TRACKER_URL": self.url,
            "BENCH_TRACKER_NAMESPACE": self.tracker_namespace,
            "BENCH_REPORT_URL": self.url,
            "BENCH_REPORT_PREFIX": self.report_prefix,
            "BENCH_ROLE": role,
            "BENCH_SLOW_SECONDS": str(slow),
            # A RedisBroker victim fetches its messages and no more.
            "dramatiq_queue_prefetch": str(MESSAGES),
        }
        env.pop("DRAMATIQ_TRACKER_REDIS_URL", None)
        command = [
            sys.executable, "-m", "dramatiq", "recovery_app",
            "--processes", "1", "--threads", str(MESSAGES), "--worker-shutdown-timeout", "5000",
            *(["--queues", only] if only else []),
        ]  # fmt: skip
        name = "%s-%s-%s-%02d-%s.log" % (self.broker, self.scenario, self.result.setup, len(self.workers), role)
        worker = WorkerProcess(command, env, isolation, self.logs / name, self.args.code)
        self.workers.append(worker)
        return worker

    def boots(self) -> list[Boot]:
        return [Boot.parse(raw) for raw in self.client.lrange("%s:boot" % self.report_prefix, 0, -1)]

    def wait_boot(self, worker: WorkerProcess, role: str) -> Boot:
        known = {w.boot.token for w in self.workers if w.boot is not None}

        def booted() -> Boot | None:
            if not worker.alive():
                raise RuntimeError("the %s exited (code %s):\n%s" % (role, worker.process.returncode, worker.output()))
            return next((b for b in self.boots() if b.role == role and b.token not in known), None)

        boot: Boot = wait_for(booted, BOOT_TIMEOUT, "the %s to boot" % role, interval=0.05)
        worker.boot = boot
        if self.tracked and not boot.worker_id:
            raise RuntimeError("the tracker did not start in the %s: %s" % (role, worker.last_error()))
        if self.store is not None and not self.digest:
            workers = self.store.keys.workers
            raw = wait_for(lambda: self.client.hget(workers, boot.worker_id), 10, "its registration")
            self.digest = identity_digest(WorkerInfo.from_json(raw.decode()).broker_identity)
        return boot

    def starts(self) -> list[Start]:
        return [Start.parse(raw) for raw in self.client.lrange("%s:started" % self.report_prefix, 0, -1)]

    def dones(self) -> list[Start]:
        return [Start.parse(raw) for raw in self.client.lrange("%s:done" % self.report_prefix, 0, -1)]

    # The tracker's state -----------------------------------------------------------------------

    def present(self, worker_id: str) -> bool:
        assert self.store is not None
        return bool(self.client.hexists(self.store.keys.present(self.digest), worker_id))

    def wait_tracked(self, boot: Boot, ids: list[str]) -> None:
        """Wait until the victim's in-flight records name its messages and the server saw its presence:
        where a worker that has run for a while is."""
        if self.store is None:
            return
        store = self.store
        wait_for(lambda: set(ids) <= set(store.inflight(boot.worker_id)), 10, "the in-flight records")
        wait_for(lambda: self.present(boot.worker_id), 15, "the victim's presence seen")

    def wait_settled(self) -> None:
        """Wait until the namespace saw its Redis SETTLE seconds ago: before that no death is judged."""
        if self.store is None:
            return
        key = self.store.keys.server

        def settled() -> bool:
            since = self.client.hget(key, "since")
            seconds, micros = self.client.time()
            return since is not None and seconds * 1000 + micros // 1000 - int(since) >= SETTLE * 1000

        wait_for(settled, SETTLE + 30, "the namespace to settle on its Redis", interval=0.1)

    def holder(self, victim: Boot) -> str:
        """Who holds the sweep lease: "victim", "peer", "restart" (the container restarted before),
        "earlier victim", or "free"."""
        if self.store is None:
            return ""
        raw = self.client.get(self.store.keys.sweep_lease(self.digest))
        if raw is None:
            return "free"
        token = raw.decode().partition("|")[0]
        if token == victim.sweeper_token:
            return "victim"
        boot = next((b for b in self.boots() if b.sweeper_token == token), None)
        if boot is None:
            return "unknown"
        return "earlier victim" if boot.role == "victim" else boot.role

    def events(self) -> list[TrackerEvent]:
        """The tracker's events, oldest first."""
        assert self.store is not None
        return [TrackerEvent.from_fields(fields) for _, fields in reversed(self.store.events(10_000))]

    def explain(self, kills: list[Kill]) -> None:
        """Note how and when the tracker found each victim dead and decided on its orphans.

        A worker-dead event before the first orphan was recovered tells how the death was found.  On
        RabbitMQ the server delivers the orphans again at once, and the worker that gets them decides
        then (it checks the victim's process, or waits for half the grace of its presence): the
        worker-dead event, if any, comes after, from a sweep.  An orphan put off (delivered again
        while its first copy's worker looked alive) waits heartbeat_timeout: that is counted too."""
        wanted = {kill.victim.worker_id for kill in kills}

        def deaths() -> dict[str, TrackerEvent]:
            return {e.worker_id: e for e in self.events() if e.kind == "worker-dead" and e.worker_id in wanted}

        # A death found by heartbeat expiry is due within heartbeat_timeout and a sweep of the last kill.
        with contextlib.suppress(RuntimeError):
            wait_for(lambda: len(deaths()) == len(wanted), DEFAULT_HEARTBEAT_TIMEOUT / 1000 + 2 * SWEEP, "", 0.5)
        dead = deaths()
        recovered: dict[str, int] = {}
        put_off: Counter[str] = Counter()
        for entry in self.events():
            if entry.kind == "recovered":
                recovered.setdefault(entry.message_id, entry.at)
            elif entry.kind in PUT_OFF:
                put_off[entry.message_id] += 1
        for kill in kills:
            ats = [recovered[message_id] / 1000 - kill.killed_at for message_id in kill.ids if message_id in recovered]
            if len(ats) == len(kill.ids):
                kill.recovered = max(ats)
            event = dead.get(kill.victim.worker_id)
            reason = event.details.get("reason", "?") if event is not None else self.logged_death(kill.victim)
            at_redelivery = bool(ats) and (event is None or event.at / 1000 - kill.killed_at > min(ats) + 0.05)
            if self.broker == "rabbitmq" and at_redelivery:
                kill.detected = "at redelivery" + (" (then worker-dead: %s)" % reason if reason else "")
            else:
                kill.detected = reason or "no worker-dead event"
            kill.put_off = sum(put_off[message_id] for message_id in kill.ids)

    def logged_death(self, victim: Boot) -> str:
        """The reason a survivor's log gives for the victim's death, if any."""
        pattern = re.compile(r"%s.{0,200}?is dead \(([^)]*)\)" % re.escape(victim.worker_id))
        for worker in self.workers:
            found = pattern.search(worker.output())
            if found is not None:
                return found.group(1) + " (log)"
        return ""

    # The scenario ------------------------------------------------------------------------------

    def run(self) -> Result:
        if self.scenario != "container":
            # The long-lived peer, here; it consumes each victim's queue once the victim holds its messages.
            self.peer = self.start("peer", "")
            peer = self.wait_boot(self.peer, "peer")
            if self.store is not None:
                wait_for(lambda: self.present(peer.worker_id), 15, "the peer's presence seen")
        for index in range(self.args.kills):
            self.result.loads.append(os.getloadavg()[0])
            try:
                if self.scenario in STALLS:
                    self.result.stalls.append(self.stall_once(index))
                else:
                    self.result.kills.append(self.kill_once(index))
            except (RuntimeError, LookupError) as e:
                # The victim did not boot or start its messages: nothing was killed, nothing measured.
                reason = str(e).splitlines()[0]
                self.result.not_measured.append(reason)
                print("  %d/%d: not measured: %s" % (index + 1, self.args.kills, reason), flush=True)
                for worker in self.workers:
                    if worker is not self.peer and worker is not self.restarted:
                        worker.kill()
                if len(self.result.not_measured) >= 3 and not (self.result.kills or self.result.stalls):
                    raise
        if self.result.kills:
            # An orphan delivered twice would start again within a sweep.
            time.sleep(DUPLICATE_WINDOW)
            self.result.duplicates = self.duplicates()
            if self.tracked:
                self.explain(self.result.kills)
                print(
                    "  detected: %s; orphans put off: %d"
                    % (tally([kill.detected for kill in self.result.kills]), sum(k.put_off for k in self.result.kills))
                )
        return self.result

    def victim(self, actor: str, *args: Any) -> tuple[WorkerProcess, Boot, list[str]]:
        """A fresh victim on a queue of its own, running MESSAGES messages ``actor(*args)``; then the peer
        consumes that queue too."""
        queue = self.new_queue()
        slow = 3600.0 if actor == "slow" else 0
        victim = self.start("victim", ISOLATION[self.scenario], slow=slow, queues=[queue], only=queue)
        boot = self.wait_boot(victim, "victim")
        ids = [self.send(queue, actor, *args) for _ in range(MESSAGES)]

        def running() -> bool:
            if not victim.alive():
                raise RuntimeError("the victim exited:\n%s" % victim.output())
            return {s.message_id for s in self.starts() if s.token == boot.token} >= set(ids)

        wait_for(running, BOOT_TIMEOUT, "the victim to start its %d messages" % MESSAGES, interval=0.05)
        self.wait_tracked(boot, ids)
        if self.peer is not None and self.peer.boot is not None:
            declared = "%s|%s" % (queue, self.peer.boot.token)
            self.client.rpush("%s:declare" % self.report_prefix, queue)
            wait_for(
                lambda: declared.encode() in self.client.lrange("%s:declared" % self.report_prefix, 0, -1),
                BOOT_TIMEOUT,
                "the peer to consume %s" % queue,
            )
            if self.broker == "rabbitmq":
                channel = self.producer.channel
                wait_for(
                    lambda: channel.queue_declare(queue, passive=True).method.consumer_count >= 2,
                    BOOT_TIMEOUT,
                    "the peer's consumer on RabbitMQ",
                    interval=0.05,
                )
        return victim, boot, ids

    def kill_once(self, index: int) -> Kill:
        victim, boot, ids = self.victim("slow", 0)
        worker_pid = victim.worker_pid
        if index == 0:
            self.wait_settled()
        time.sleep(random.uniform(*PHASE))
        kill = Kill(boot, ids, 0.0, lease=self.holder(boot))
        kill.killed_at = time.time()
        os.kill(worker_pid, signal.SIGKILL)
        # The rest of it: its CLI (and, in a container, the namespace) ends with its worker process.
        victim.kill()
        if self.scenario == "container":
            # The container restarts at once.  It consumes every queue of the run: a duplicate of an
            # earlier kill's orphan would start on it.
            self.restarted = self.start("restart", "container", queues=list(self.queues))

        def restarted() -> list[float]:
            firsts: dict[str, float] = {}
            for start in self.starts():
                if start.message_id in ids and start.token != boot.token and start.at >= kill.killed_at:
                    firsts.setdefault(start.message_id, start.at)
            return list(firsts.values()) if len(firsts) == len(ids) else []

        with contextlib.suppress(RuntimeError):
            kill.delay = max(wait_for(restarted, self.timeout, "the orphans")) - kill.killed_at
        notes = ["sweep lease: %s" % kill.lease] if kill.lease else []
        if self.restarted is not None:
            kill.booted = self.wait_boot(self.restarted, "restart").at - kill.killed_at
            notes.append("the restart booted after %.2f s" % kill.booted)
        print(
            "  kill %d/%d: %s%s"
            % (
                index + 1,
                self.args.kills,
                "%.2f s" % kill.delay if kill.delay is not None else "not restarted within %.0f s" % self.timeout,
                " (%s)" % "; ".join(notes) if notes else "",
            ),
            flush=True,
        )
        if self.restarted is not None and index + 1 < self.args.kills:
            # Gone before the next victim starts: no other worker in this scenario.
            self.restarted.stop()
            self.restarted = None
        return kill

    def stall_once(self, index: int) -> Stall:
        victim, boot, ids = self.victim("held", 120.0)
        if index == 0:
            self.wait_settled()
        time.sleep(random.uniform(*PHASE))
        if self.scenario == "sigstop":
            # The whole host freezes: its CLI and its worker process.
            signal_group(victim.process.pid, signal.SIGSTOP)
            time.sleep(STALL_SECONDS)
            signal_group(victim.process.pid, signal.SIGCONT)
        else:
            # One of its messages holds the GIL (it polls for this key every 50 ms).
            self.client.set("%s:gil:%s" % (self.report_prefix, ids[0]), STALL_SECONDS, ex=600)
            time.sleep(STALL_SECONDS)
        for message_id in ids:
            self.client.set("%s:release:%s" % (self.report_prefix, message_id), 1, ex=600)
        with contextlib.suppress(RuntimeError):
            wait_for(lambda: {d.message_id for d in self.dones()} >= set(ids), BOOT_TIMEOUT, "completion", 0.05)
        # A false death would be judged within a sweep and the grace of the stall's end.
        time.sleep(STALL_WINDOW)
        false_deaths = []
        if self.store is not None:
            for event in self.events():
                if event.kind == "worker-dead" and event.worker_id == boot.worker_id:
                    false_deaths.append("worker-dead (%s)" % event.details.get("reason", "?"))
        elsewhere = [s for s in self.starts() if s.message_id in ids and s.token != boot.token]
        if elsewhere:
            false_deaths.append("started again elsewhere (%d)" % len(elsewhere))
        starts = Counter(s.message_id for s in self.starts() if s.message_id in ids)
        dones = Counter((d.message_id, d.token) for d in self.dones() if d.message_id in ids)
        ran_once = all(starts[m] == 1 and dones[(m, boot.token)] == 1 for m in ids)
        completed_once = ran_once and sum(dones.values()) == len(ids)
        print(
            "  stall %d/%d: false deaths: %s; both messages completed once, on the victim: %s"
            % (index + 1, self.args.kills, "; ".join(false_deaths) or "none", "yes" if completed_once else "NO"),
            flush=True,
        )
        victim.stop()
        return Stall(false_deaths, completed_once)

    def duplicates(self) -> int:
        """How many orphans started more than once after their kill."""
        count: Counter[str] = Counter()
        for kill in self.result.kills:
            count.update(
                s.message_id
                for s in self.starts()
                if s.message_id in kill.ids and s.at >= kill.killed_at and s.token != kill.victim.token
            )
        return sum(1 for n in count.values() if n > 1)

    def close(self) -> None:
        for worker in self.workers:
            worker.kill()
        patterns = ["%s:*" % self.broker_namespace, "%s:*" % self.report_prefix]
        if self.tracker_namespace:
            patterns.append("{%s}:*" % self.tracker_namespace)
        for pattern in patterns:
            with contextlib.suppress(redis.RedisError):
                delete_keys(self.client, pattern)
        if self.broker == "rabbitmq":
            for queue in [self.home_queue, *self.queues]:
                for name in (queue, queue + ".DQ", queue + ".XQ"):
                    with contextlib.suppress(Exception):
                        self.producer.channel.queue_delete(name)
        with contextlib.suppress(Exception):
            self.producer.close()
        if self.broker == "redis":
            with contextlib.suppress(Exception):
                self.producer.client.close()
                self.producer.client.connection_pool.disconnect()
        self.client.close()


# Output ------------------------------------------------------------------------------------------


def seconds(value: float | None, timeout: float = 0) -> str:
    if value is None or value != value:  # None or nan: nothing measured
        return "-"
    return "> %.0f" % timeout if value == float("inf") else "%.2f" % value


def spread(values: list[float | None]) -> str:
    """median/max of the values known."""
    known = [v for v in values if v is not None]
    return "%.2f/%.2f" % (statistics.median(known), max(known)) if known else "-"


def tally(values: list[str]) -> str:
    return ", ".join("%d x %s" % (n, value) for value, n in Counter(v for v in values if v).most_common()) or "-"


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def machine(url: str, rabbitmq_url: str | None) -> str:
    versions = "Python %s, dramatiq %s, redis-py %s, dramatiq-tracker %s" % (
        platform.python_version(),
        dramatiq.__version__,
        redis.__version__,
        tracker_version,
    )
    with contextlib.suppress(Exception):
        import pika

        versions += ", pika %s" % pika.__version__
    with contextlib.suppress(Exception), contextlib.closing(redis.Redis.from_url(url)) as client:
        versions += "; Redis %s" % client.info("server")["redis_version"]
    if rabbitmq_url is not None:
        with contextlib.suppress(Exception):
            import pika

            connection = pika.BlockingConnection(pika.URLParameters(rabbitmq_url))
            version = connection._impl.server_properties.get("version", b"?")
            versions += ", RabbitMQ %s" % (version.decode() if isinstance(version, bytes) else version)
            connection.close()
    return "%s, %d cores; %s" % (socket.gethostname(), os.cpu_count() or 0, versions)


def snapshot(into: Path, revision: str | None) -> str:
    """Copy the tracker (from the working tree, or from a git ``revision``) and recovery_app.py into
    ``into``, for the workers to import: a run then measures one version of the tracker, even while
    the checkout is being edited.  Returns which version."""

    def git(*args: str) -> str:
        found = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, check=True)
        return found.stdout.decode().strip()

    into.mkdir(parents=True)
    shutil.copy2(ROOT / "benchmarks" / "recovery_app.py", into)
    if revision is not None:
        archive = subprocess.run(
            ["git", "-C", str(ROOT), "archive", "--format=tar", revision, "dramatiq_tracker"],
            capture_output=True,
            check=True,
        )
        subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
        return "git %s (%s)" % (git("rev-parse", "--short", revision), revision)
    shutil.copytree(ROOT / "dramatiq_tracker", into / "dramatiq_tracker", ignore=shutil.ignore_patterns("__pycache__"))
    try:
        changed = git("status", "--porcelain", "--", "dramatiq_tracker").splitlines()
        head = git("rev-parse", "--short", "HEAD")
    except (OSError, subprocess.CalledProcessError):
        return "the working tree"
    return "the working tree: git %s%s" % (head, " + %d uncommitted change(s)" % len(changed) if changed else "")


def load() -> str:
    return "%.2f %.2f %.2f" % os.getloadavg()


def print_results(results: list[Result]) -> None:
    kills = [r for r in results if r.scenario not in STALLS]
    stalls = [r for r in results if r.scenario in STALLS]
    if kills:
        print()
        print(
            "SIGKILL -> the last of the victim's %d orphans started again, in seconds (acceptance on the max);"
            % MESSAGES
        )
        print("'recovered' is the tracker's decision on the last orphan (its recovered event), median/max")
        row = "%-8s %-10s %-7s %5s %7s %7s %6s %6s %4s %11s %7s  %-30s %s"
        titles = ("broker", "scenario", "setup", "kills", "median", "max", "target", "", "dupl", "recovered")
        print(row % (*titles, "put off", "sweep lease at kill", "detected"))
        for r in kills:
            target = TARGETS.get(r.scenario) if r.tracked else None
            if r.tracked:
                how = tally([k.detected for k in r.kills])
            else:
                how = "the server's redelivery" if r.broker == "rabbitmq" else "Dramatiq's maintenance"
            print(
                row
                % (
                    r.broker,
                    r.scenario,
                    r.setup,
                    "%d/%d" % (sum(1 for k in r.kills if k.delay is not None), len(r.kills)),
                    seconds(r.median, r.timeout),
                    seconds(r.max, r.timeout),
                    "<= %.0f" % target if target else "",
                    verdict(r.max <= target) if target and r.kills else "",
                    r.duplicates if r.kills else "-",
                    spread([k.recovered for k in r.kills]) if r.tracked else "",
                    sum(k.put_off for k in r.kills) if r.tracked else "",
                    tally([k.lease for k in r.kills]) if r.tracked and r.kills else "",
                    how if r.kills else "-",
                )
                + trouble(r)
            )
        booted = [(r, [k.booted for k in r.kills]) for r in kills if r.scenario == "container" and r.kills]
        for r, values in booted:
            print(
                "%s container %s: the restarted process booted (median/max) %s s after the kill"
                % (r.broker, r.setup, spread(values))
            )
        differences = rabbitmq_differences(results)
        if differences:
            print()
            print("RabbitMQ: the tracker minus plain Dramatiq (the server's own redelivery), in seconds")
            print("%-10s %7s %7s  %s" % ("scenario", "median", "max", "target"))
            for scenario, median, maximum in differences:
                check = "max <= +%.0f: %s" % (RABBITMQ_MARGIN, verdict(maximum <= RABBITMQ_MARGIN))
                print(
                    "%-10s %+7.2f %+7.2f  %s" % (scenario, median, maximum, check if scenario == "other-host" else "")
                )
    if stalls:
        print()
        print("A %d s stall of a victim on another host (below heartbeat_timeout %.0f s), with a live peer"
              % (STALL_SECONDS, DEFAULT_HEARTBEAT_TIMEOUT / 1000))  # fmt: skip
        row = "%-8s %-9s %6s %12s %14s  %s"
        print(row % ("broker", "scenario", "stalls", "false deaths", "completed once", "why"))
        for r in stalls:
            deaths = [why for stall in r.stalls for why in stall.false_deaths]
            print(
                row
                % (
                    r.broker,
                    r.scenario,
                    len(r.stalls),
                    sum(1 for stall in r.stalls if stall.false_deaths),
                    "%d/%d" % (sum(1 for stall in r.stalls if stall.completed_once), len(r.stalls)),
                    tally(deaths) if deaths else "",
                )
                + trouble(r)
            )
    print_acceptance(results)


def trouble(r: Result) -> str:
    """What went wrong in a run, if anything: its error, the kills that could not be made."""
    found = ["ERROR: %s" % r.error] if r.error else []
    if r.not_measured:
        found.append("%d not measured: %s" % (len(r.not_measured), tally(r.not_measured)))
    return "  (%s)" % "; ".join(found) if found else ""


def rabbitmq_differences(results: list[Result]) -> list[tuple[str, float, float]]:
    """(scenario, median difference, max difference) of the tracker and plain Dramatiq on RabbitMQ."""
    found = []
    for scenario in PLAIN:
        pair = [r for r in results if r.broker == "rabbitmq" and r.scenario == scenario and r.kills]
        tracked = next((r for r in pair if r.tracked), None)
        plain = next((r for r in pair if not r.tracked), None)
        if tracked is not None and plain is not None:
            found.append((scenario, tracked.median - plain.median, tracked.max - plain.max))
    return found


def print_acceptance(results: list[Result]) -> None:
    lines = []

    def measured(scenario: str, tracked: bool = True) -> list[Result]:
        return [r for r in results if r.scenario == scenario and r.tracked == tracked and r.measured]

    for scenario, label in (("container", "restarted container"), ("other-host", "another host")):
        target = TARGETS[scenario]
        parts = []
        for r in measured(scenario):
            plain = next((p for p in measured(scenario, False) if p.broker == r.broker), None)
            parts.append(
                "%s max %s s %s%s"
                % (
                    r.broker,
                    seconds(r.max, r.timeout),
                    verdict(r.max <= target),
                    " (plain Dramatiq: max %s s)" % seconds(plain.max, plain.timeout) if plain is not None else "",
                )
            )
        if parts:
            lines.append(("%s <= %.0f s" % (label, target), " | ".join(parts)))
    for scenario, median, maximum in rabbitmq_differences(results):
        if scenario == "other-host":
            lines.append(
                (
                    "another host on RabbitMQ, within %.0f s of plain" % RABBITMQ_MARGIN,
                    "max %+.2f s (median %+.2f s) %s" % (maximum, median, verdict(maximum <= RABBITMQ_MARGIN)),
                )
            )
    for scenario, label in (("sigstop", "10 s SIGSTOP: no false death"), ("gil", "10 s GIL hold: no false death")):
        parts = []
        for r in measured(scenario):
            deaths = sum(1 for stall in r.stalls if stall.false_deaths)
            parts.append("%s %d in %d %s" % (r.broker, deaths, len(r.stalls), verdict(deaths == 0)))
        if parts:
            lines.append((label, " | ".join(parts)))
    if lines:
        print()
        print("Acceptance (issue #17)")
        for label, text in lines:
            print("  %-44s %s" % (label + ":", text))


# Main -------------------------------------------------------------------------------------------


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Clean up on SIGTERM as on Ctrl-C."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def interrupts_held() -> Iterator[None]:
    """Let a cleanup finish before Ctrl-C or SIGTERM stops the benchmark."""
    received: list[int] = []
    previous = {
        signum: signal.signal(signum, lambda n, f: received.append(n)) for signum in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if received:
            raise KeyboardInterrupt


def redis_url(given: str | None) -> str:
    url = given or os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0"
    with contextlib.closing(redis.Redis.from_url(url, socket_connect_timeout=2)) as client:
        client.ping()
    return url


def rabbitmq_answers(url: str) -> bool:
    parsed = urlparse(url)
    with (
        contextlib.suppress(OSError),
        socket.create_connection((parsed.hostname or "127.0.0.1", parsed.port or 5672), 2),
    ):
        return True
    return False


def plan(args: argparse.Namespace) -> list[tuple[str, str, bool]]:
    """(broker, scenario, tracked) of every run, in order: plain Dramatiq right after the tracker."""
    runs = []
    for broker in ("redis", "rabbitmq") if args.broker == "both" else (args.broker,):
        for scenario in args.only:
            runs.append((broker, scenario, True))
            if scenario in PLAIN and (broker == "rabbitmq" or args.plain_redis):
                runs.append((broker, scenario, False))
    return runs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--broker", choices=("redis", "rabbitmq", "both"), default="both")
    parser.add_argument(
        "--only", default=",".join(SCENARIOS), help="scenarios, comma-separated: %s" % ", ".join(SCENARIOS)
    )
    parser.add_argument("--kills", type=int, default=10, help="kills (or stalls) per scenario (default 10)")
    parser.add_argument(
        "--url", default=None, help="the Redis (RedisBroker, tracker, reports); else REDIS_URL, else 127.0.0.1:6379"
    )
    parser.add_argument("--rabbitmq-url", default=os.environ.get("RABBITMQ_URL", DEFAULT_RABBITMQ_URL))
    parser.add_argument(
        "--plain-redis", action="store_true", help="also plain Dramatiq on the RedisBroker (minutes per kill)"
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=None,
        help="longest wait for a kill's orphans, in s (default %.0f; %.0f for plain Dramatiq on the RedisBroker)"
        % (TIMEOUT, PLAIN_REDIS_TIMEOUT),
    )
    parser.add_argument(
        "--at", default=None, metavar="REV", help="measure the tracker of a git revision (default: the working tree)"
    )
    parser.add_argument("--keep-logs", action="store_true", help="keep the worker processes' logs")
    args = parser.parse_args()
    args.only = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = [name for name in args.only if name not in SCENARIOS]
    if unknown or not args.only:
        parser.error("unknown scenario %s; choose among %s" % (", ".join(unknown) or "(none)", ", ".join(SCENARIOS)))
    if args.kills < 1:
        parser.error("--kills must be at least 1")
    try:
        args.url = redis_url(args.url)
    except redis.RedisError as e:
        parser.error("no Redis at %s: %s" % (args.url or os.environ.get("REDIS_URL") or "127.0.0.1:6379", e))

    skipped = []
    if not can_isolate():
        isolated = [name for name in args.only if ISOLATION[name]]
        if isolated:
            skipped.append("%s: skipped, they need root and unshare (new pid and UTS namespaces)" % ", ".join(isolated))
        args.only = [name for name in args.only if not ISOLATION[name]]
    if args.broker in ("rabbitmq", "both") and not rabbitmq_answers(args.rabbitmq_url):
        skipped.append("RabbitMQ: skipped, nothing answers at %s" % args.rabbitmq_url)
        if args.broker == "rabbitmq":
            args.only = []
        args.broker = "redis"
    runs = plan(args) if args.only else []

    print("Machine: %s" % machine(args.url, args.rabbitmq_url if args.broker != "redis" else None))
    print("Load average at start: %s" % load())
    print(
        "Tracker at its defaults: heartbeat_interval %.0f s, heartbeat_timeout %.0f s, sweep_interval %.0f s, "
        "presence on, presence_grace %.0f s"
        % (
            DEFAULT_HEARTBEAT_INTERVAL / 1000,
            DEFAULT_HEARTBEAT_TIMEOUT / 1000,
            DEFAULT_SWEEP_INTERVAL / 1000,
            DEFAULT_PRESENCE_GRACE / 1000,
        )
    )
    print("Redis: %s; RabbitMQ: %s; %d kills per scenario, %d messages per victim" % (
        args.url, args.rabbitmq_url if args.broker != "redis" else "-", args.kills, MESSAGES))  # fmt: skip
    for line in skipped:
        print(line)
    sys.stdout.flush()

    logs = Path(tempfile.mkdtemp(prefix="tracker-recovery-"))
    args.code = logs / "code"
    try:
        version = snapshot(args.code, args.at)
    except (OSError, subprocess.CalledProcessError) as e:
        parser.error("cannot copy the tracker%s: %s" % (" at %s" % args.at if args.at else "", e))
    print("Workers run a copy of the tracker made at the start, from %s" % version)
    results: list[Result] = []
    failed = False
    try:
        with sigterm_as_interrupt():
            for broker, scenario, tracked in runs:
                print(
                    "\n[%s / %s / %s] %s, load average %s"
                    % (broker, scenario, "tracker" if tracked else "plain Dramatiq", time.strftime("%H:%M:%S"), load()),
                    flush=True,
                )
                run = None
                try:
                    run = Run(args, broker, scenario, tracked, logs)
                    results.append(run.result)
                    run.run()
                except Exception as e:
                    failed = True
                    if run is not None:
                        run.result.error = str(e).splitlines()[0] if str(e) else type(e).__name__
                    traceback.print_exc()
                finally:
                    if run is not None:
                        with interrupts_held():
                            run.close()
    except KeyboardInterrupt:
        print("\ninterrupted; worker processes killed, keys and queues deleted", file=sys.stderr)
        print("worker logs kept in %s" % logs, file=sys.stderr)
        print_results(results)
        return 130
    print_results(results)
    print("\nLoad average at end: %s" % load())
    loads = [value for r in results for value in r.loads]
    if loads:
        print("1-minute load average at the kills and stalls: %.2f to %.2f" % (min(loads), max(loads)))
    if failed or args.keep_logs:
        print("worker logs kept in %s" % logs, file=sys.stderr)
    else:
        shutil.rmtree(logs, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
