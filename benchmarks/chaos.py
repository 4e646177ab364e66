"""Chaos soak: real workers are killed, frozen and cut off from the tracker's Redis, sweepers frozen in
the middle of a recovery and RabbitMQ connections closed while a producer sends messages; then every
run of every message, and every lock cleaner call, is accounted for.

    python benchmarks/chaos.py [--seed N] [--duration 150] [--broker redis|rabbitmq]
                               [--workers 3] [--threads 4] [--rate 4] [--logs DIR]
    python benchmarks/chaos.py --analyse DIR

What runs (all on this host):

- two throwaway ``redis-server`` processes on free ports: the *tracker's* Redis, which the chaos
  restarts empty, and a *main* Redis that holds the RedisBroker's keys (``--broker redis``) and,
  whatever the broker, the report: a ledger of every run of every message, the workers' boot
  records and every tracker event (``on_event``), which must survive the tracker's restarts;
  with ``--broker rabbitmq``, RabbitMQ (``--rabbitmq-url``, else ``RABBITMQ_URL``, else
  guest@127.0.0.1:5672) on a queue of the run's own, deleted at the end;
- ``--workers`` ``dramatiq`` commands (``--processes 1 --threads T``) of ``tests/apps/soak_app.py``
  with TrackerMiddleware and short timings (heartbeat_interval 200 ms, heartbeat_timeout 1000 ms,
  sweep_interval 500 ms, flush_interval 20 ms, as tests/conftest.py's FAST), and a slow lock cleaner
  (0-2 s, one call in seven 2-6 s) that records when each call starts and ends;
- a producer thread in this process, sending ``--rate`` messages a second for 85 % of the
  duration, to three actors: ``plain``, ``until_executed`` (``unique=True``) and
  ``while_executing`` (one running message per key, 4 keys), each sleeping 0.02-0.3 s (60 %) or
  0.5-3 s (40 %);
- a chaos loop that, at seeded random times 2-6 s apart during ``--duration`` seconds, does one of:
  SIGKILL a random worker process (the process running the actors, as the OOM killer would;
  a replacement ``dramatiq`` command starts 0-1.5 s later), SIGSTOP one for 1.5-3.5 x
  heartbeat_timeout then SIGCONT it (a frozen VM: it is declared dead, then comes back as a
  zombie), or SIGKILL the tracker's Redis and start it again, empty, 0.2-3 s later;
- sweeper stalls: after a kill (up to ``MAX_STALLS`` per run, one at a time, each over before the
  chaos ends), the chaos looks every 25 ms for up to 3 s for the claim a sweeper takes on the dead
  worker's recovery (the HASH ``{namespace}:v1:worker:<dead worker id>:recovery``), maps its
  ``holder`` to a pid through the workers' registrations, and SIGSTOPs that sweeper for 1.1-1.5 x
  ``takeover_after`` (max(10 s, 2 x sweep_interval)): another sweeper takes the recovery over, and
  the frozen one, a zombie too, resumes in the middle of it (often in a lock cleaner call). A kill
  whose recovery no sweeper is seen holding (nothing to recover, it took less than a poll) is
  counted as a skipped stall; on RabbitMQ nearly all are: a sweeper only marks the dead worker's
  orphans as awaiting their redelivery, in milliseconds, and the lock cleaners run in the worker
  the redelivery reaches. A restart of the tracker's Redis planned during a stall waits until the
  recovery was taken over (it would empty the claim, and the recovery would begin again);
- with ``--broker rabbitmq``, every 6-12 s, the RabbitMQ connections of a random worker (all, or
  one: three times in four all) closed from the server with ``rabbitmqctl close_connection`` (as
  tests/support.py's close_rabbitmq_connections, found with ``ss`` and ``rabbitmqctl
  list_connections``; when the server closed them is seen with ``ss``): the server requeues their
  unacked messages while the worker runs on.

The seed (printed first; ``--seed`` replays it) fixes the chaos plan and the messages; process
timing does the rest. After the chaos the soak waits (at most ``--drain-timeout`` s) until every
message completed or was dead-lettered, the broker's queue is empty and no run started for a
while, then until no uniqueness lock is left (at most a few heartbeats), and reports:

- sent, completed, dead-lettered, and **lost**: sent, never completed, not dead-lettered;
- messages that ran more than once, each extra run classified by its inferred cause:
  ``re-run after crash`` (the previous run's worker was SIGKILLed mid-run: at-least-once, expected),
  ``crash after completion, before ack`` (killed within a second after the run ended, time it spent
  frozen meanwhile not counted: expected),
  ``zombie window: ran beside its successor`` (the previous run's worker was frozen past the
  heartbeat timeout while running it, as the failure model documents),
  ``zombie window: its successor started before the zombie completed`` (the successor ran after the
  zombie's copy completed, but the tracker had started it before: a RabbitMQ redelivery claiming
  the orphan is recorded and decided, then calls the lock cleaner, then runs; "the recovered copy
  is dropped if it has not started"),
  ``zombie window: re-run after the zombie completed`` (the successor started after the zombie's
  copy had completed: the duplicate guard should have dropped it),
  ``zombie window: a copy the frozen worker held ran after it resumed`` (the tracker recovered the
  message from a frozen worker that held it in memory, prefetched or delayed; once resumed, before
  its next heartbeat, the worker ran it or moved it from the delay queue to the queue), the
  documented windows of a closed RabbitMQ connection (docs/failure-model.md, "After a RabbitMQ
  connection closes": the redelivery of a running message is put off, and dropped once it
  completed, except) ``connection closed after completion, before ack`` (the run ended within a
  second before the close: its ack may not have reached the server),
  ``connection window: a copy started as its connection closed`` (it started between the close and
  the worker noticing it, and its redelivery started before it was in the running index, or it
  started after its redelivery), ``connection closed, the tracker's Redis down or restarted
  meanwhile`` (the history note or the running index lost), and ``unexplained``;
- ``while_executing`` runs of one key that overlapped, and whether a worker frozen meanwhile or
  a tracker Redis outage (locks are skipped during one, and lost with the Redis) explains it;
- the **lock cleaner calls**: each recovery of an orphan that was running (its ``recovered``,
  ``quarantined`` or ``abort-honoured`` event says so, or the ledger: a run killed a second or more
  after it started, and the next attempt that ran) must call the cleaner exactly once, per
  (message id, attempt); no call may start after the orphan's recovered run (the run of that
  attempt) started; a call still running when that run started is a documented window when its
  process was frozen meanwhile (a sweeper stalled in the middle of the call, its recovery taken
  over: the call goes on once it resumes) or the tracker's Redis was down (the recovery begun
  again without its state); otherwise a violation. A recovery whose call was never seen while the
  chaos froze its sweeper and then killed it is counted apart, not as a violation: a sweeper notes
  each call before it makes it, so that the one taking the recovery over never makes it twice
  (dramatiq_tracker/fencing.py), and one killed between noting and making it makes none. Calls no
  recovery of a running orphan explains (a zombie's copy that completed before its recovery moved
  it) are only counted;
- **leaked locks**: ``{namespace}:v1:lock:*`` keys left on the tracker's Redis (found with SCAN)
  once every message is done.

For every lost message, unexplained duplicate, lock cleaner violation and leaked lock it prints the
runs, the chaos around them, the tracker events about the message and the worker log lines that
name it. The exit status is 1 when a message is lost, a lock leaked, a payload was left in the
broker, a message ran again outside the documented windows (any cause not expected above) or the
lock cleaner was not called exactly once per recovery or started after its orphan ran again; 3 when
the soak itself failed; else 0. Logs (one per worker), the chaos timeline, ``summary.json`` and
``observations.json`` (everything the report is computed from) stay in ``--logs`` (a new temporary
directory by default); ``--analyse DIR`` prints the report of a past run again from them.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import heapq
import importlib
import itertools
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from pathlib import Path
from types import FrameType, ModuleType
from typing import Any

import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support import RedisServer, wait_for  # noqa: E402

#: The tracker's timings in the workers, in milliseconds (tests/conftest.py's FAST).
TIMINGS = {"heartbeat_interval": 200, "heartbeat_timeout": 1000, "sweep_interval": 500, "flush_interval": 20}
#: The soak's actors and how often the producer picks each.
ACTOR_WEIGHTS = {"plain": 2, "until_executed": 2, "while_executing": 1}
#: How many distinct keys the ``while_executing`` messages share.
WHILE_EXECUTING_KEYS = 4
#: The chaos actions and how often each is picked.
CHAOS_WEIGHTS = {"kill": 4, "stop": 3, "restart-redis": 2}
#: A kill this soon after a run ended may have beaten its ack, in seconds.
ACK_GRACE = 1.0
#: How long a worker may take to boot, in seconds.
BOOT_TIMEOUT = 60.0
#: How long a sweeper may go without renewing its claim on a recovery before another takes it
#: over (the tracker's ``takeover_after``: max(10 s, 2 x sweep_interval)), in milliseconds.
TAKEOVER_AFTER = max(10_000, 2 * TIMINGS["sweep_interval"])
#: A sweeper stall lasts this many times ``TAKEOVER_AFTER``: long enough to be taken over.
STALL_RANGE = (1.1, 1.5)
#: How many sweeper stalls a run has at most (one at a time).
MAX_STALLS = 3
#: How long, after a kill, the chaos looks for the sweeper recovering the dead worker, and how often.
STALL_WATCH, STALL_POLL = 3.0, 0.025
#: RabbitMQ connections are closed every 6-12 s (``--broker rabbitmq``), the first 4-8 s in, none
#: later than this many seconds before the end (``rabbitmqctl`` is slow on a loaded machine).
CLOSE_EVERY, CLOSE_FIRST, CLOSE_LAST = (6.0, 12.0), (4.0, 8.0), 12.0
#: How often the closing thread looks, with ``ss``, whether the server closed a connection yet.
CLOSE_POLL = 0.02
#: Dramatiq's ``worker_timeout``: a consumer notices its closed connection within it, in seconds;
#: and the slack allowed for the worker to act on it on a loaded machine.
WORKER_TIMEOUT, CLOSE_SLACK = 1.0, 0.5
#: How long after its start a run is surely in the tracker's running index (written one to two
#: flush intervals after it starts, later on a loaded machine), in seconds.
RECORD_LAG = 2 * TIMINGS["flush_interval"] / 1000 + 0.25
#: How long after the tracker's Redis is back a worker may still take it for down (it retries about
#: once a second, then registers again) and skip uniqueness locks, in seconds.
OUTAGE_TAIL = 1.0 + TIMINGS["heartbeat_interval"] / 1000 + 0.5
#: How long after its start a run killed is surely known to the tracker as running (its in-flight
#: record written), so that its recovery calls the lock cleaners, in seconds.
RUNNING_KNOWN_AFTER = 1.0

RERUN_AFTER_CRASH = "re-run after crash"
CRASH_BEFORE_ACK = "crash after completion, before ack"
ZOMBIE_BESIDE = "zombie window: ran beside its successor"
ZOMBIE_AFTER = "zombie window: re-run after the zombie completed"
ZOMBIE_HELD = "zombie window: a copy the frozen worker held ran after it resumed"
ZOMBIE_ADMITTED = "zombie window: its successor started before the zombie completed"
CONNECTION_BEFORE_ACK = "connection closed after completion, before ack"
CONNECTION_STARTED = "connection window: a copy started as its connection closed"
CONNECTION_OUTAGE = "connection closed, the tracker's Redis down or restarted meanwhile"
UNEXPLAINED = "unexplained"
#: Every cause, in the order the report lists them.
CAUSES = (
    RERUN_AFTER_CRASH, CRASH_BEFORE_ACK, ZOMBIE_BESIDE, ZOMBIE_ADMITTED, ZOMBIE_AFTER, ZOMBIE_HELD,
    CONNECTION_BEFORE_ACK, CONNECTION_STARTED, CONNECTION_OUTAGE, UNEXPLAINED,
)  # fmt: skip
OVERLAP_FROZEN = "a worker frozen during one of them"
OVERLAP_OUTAGE = "the tracker's Redis down or restarted empty meanwhile"
#: Causes that at-least-once delivery and the documented windows (docs/failure-model.md: zombies;
#: after a RabbitMQ connection closes, "What remains"; the tracker's Redis lost writes) allow.
EXPECTED_CAUSES = frozenset(
    {
        RERUN_AFTER_CRASH, CRASH_BEFORE_ACK, ZOMBIE_BESIDE, ZOMBIE_ADMITTED,
        CONNECTION_BEFORE_ACK, CONNECTION_STARTED, CONNECTION_OUTAGE,
    }
)  # fmt: skip
#: The events of a settled orphan: their details say its state (running or only fetched) and attempt.
RECOVERY_EVENTS = frozenset({"recovered", "quarantined", "abort-honoured"})
CLEANER_FROZEN = "in progress when their process froze, ended after their orphan ran again"
CLEANER_OUTAGE = "in progress while the tracker's Redis was down, ended after their orphan ran again"
CLEANER_OVERLAP = "still running when their orphan ran again, unexplained"
CLEANER_LOST = "noted by a sweeper frozen, then killed (at most once)"


# The plan --------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Send:
    """One message the producer sends.

    Parameters:
      at(float): When, in seconds after the start.
      actor(str): Which actor.
      index(int): Its number (and its uniqueness key for ``until_executed``).
      seconds(float): How long the actor sleeps.
    """

    at: float
    actor: str
    index: int
    seconds: float

    @property
    def args(self) -> tuple[Any, ...]:
        if self.actor == "while_executing":
            return (self.index % WHILE_EXECUTING_KEYS, self.index, self.seconds)
        return (self.index, self.seconds)


@dataclasses.dataclass(frozen=True)
class Action:
    """One chaos action.

    Parameters:
      at(float): When, in seconds after the start.
      kind(str): ``"kill"``, ``"stop"``, ``"restart-redis"`` or ``"close-connections"``.
      slot(int): Which worker (kill, stop, close-connections).
      length(float): Seconds until the replacement starts (kill), the worker is resumed (stop), or
        the tracker's Redis is started again (restart-redis).
      stall(float): For a kill: SIGSTOP the sweeper that recovers the dead worker for so many
        seconds, once it holds the claim on its recovery, unless another sweeper is stalled or
        ``MAX_STALLS`` were; 0 for none.
      every(bool): For close-connections: close all the worker's RabbitMQ connections, or one.
    """

    at: float
    kind: str
    slot: int
    length: float
    stall: float = 0.0
    every: bool = True

    def describe(self) -> str:
        if self.kind == "kill":
            stall = "; SIGSTOP the sweeper recovering it for %.1f s (if none is)" % self.stall if self.stall else ""
            return "SIGKILL worker %d, replacement after %.1f s%s" % (self.slot, self.length, stall)
        if self.kind == "stop":
            return "SIGSTOP worker %d for %.1f s" % (self.slot, self.length)
        if self.kind == "close-connections":
            return "close %s RabbitMQ connections of worker %d" % ("all the" if self.every else "one of the", self.slot)
        return "restart the tracker's Redis empty, down %.1f s" % self.length


def plan_messages(seed: int, duration: float, rate: float) -> list[Send]:
    """The messages of a run: ``rate`` a second over 85 % of ``duration``, from ``seed`` alone."""
    rng = random.Random("%d-messages" % seed)
    span = duration * 0.85
    count = max(1, int(span * rate))
    sends = []
    for index in range(count):
        actor = rng.choices(list(ACTOR_WEIGHTS), weights=list(ACTOR_WEIGHTS.values()))[0]
        seconds = rng.uniform(0.02, 0.3) if rng.random() < 0.6 else rng.uniform(0.5, 3.0)
        sends.append(Send(at=span * index / count, actor=actor, index=index, seconds=round(seconds, 3)))
    return sends


def plan_chaos(seed: int, duration: float, workers: int, heartbeat_timeout: int, broker: str = "redis") -> list[Action]:
    """The chaos of a run, from ``seed`` alone: an action every 2-6 s from 3 s to ``duration`` - 2 s;
    some kills followed by a sweeper stall; with RabbitMQ, connections closed every 6-12 s besides.

    Each kind of fault draws from a random stream of its own, so that the kills, stops and restarts
    of a seed are the same whatever the broker.

    Parameters:
      seed(int)
      duration(float): In seconds.
      workers(int): How many worker slots.
      heartbeat_timeout(int): The tracker's, in milliseconds: a stop lasts 1.5-3.5 times it.
      broker(str): "redis" or "rabbitmq" (connections are closed only on RabbitMQ).
    """
    rng = random.Random("%d-chaos" % seed)
    actions = []
    at = rng.uniform(3, 5)
    while at < duration - 2:
        kind = rng.choices(list(CHAOS_WEIGHTS), weights=list(CHAOS_WEIGHTS.values()))[0]
        slot = rng.randrange(workers)
        if kind == "kill":
            length = rng.uniform(0, 1.5)
        elif kind == "stop":
            length = rng.uniform(1.5, 3.5) * heartbeat_timeout / 1000
        else:
            length = rng.uniform(0.2, 3.0)
        actions.append(Action(at=round(at, 2), kind=kind, slot=slot, length=round(length, 2)))
        at += rng.uniform(2, 6)
    # Sweeper stalls: after any kill whose stall would be over before the chaos ends (the chaos
    # stalls one sweeper at a time, MAX_STALLS at most: after the first kills whose recovery it sees).
    stalls = random.Random("%d-stalls" % seed)
    for index, action in enumerate(actions):
        if action.kind == "kill":
            length = round(stalls.uniform(*STALL_RANGE) * TAKEOVER_AFTER / 1000, 2)
            if action.at + STALL_WATCH + length <= duration - 2:
                actions[index] = dataclasses.replace(action, stall=length)
    if broker == "rabbitmq":
        closes = random.Random("%d-connections" % seed)
        at = closes.uniform(*CLOSE_FIRST)
        while at < duration - CLOSE_LAST:
            every, slot = closes.random() < 0.75, closes.randrange(workers)
            actions.append(Action(at=round(at, 2), kind="close-connections", slot=slot, length=0.0, every=every))
            at += closes.uniform(*CLOSE_EVERY)
        actions.sort(key=lambda action: action.at)
    return actions


# What happened ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Run:
    """One run of one message, from the ledger (wall-clock times)."""

    message_id: str
    actor: str
    index: int
    pid: int
    start: float
    end: float | None
    options: dict[str, Any]
    redelivered: bool | None = None
    #: The attempt the tracker ran it as (None in ledgers of older soaks: its ``tracker_attempt``).
    attempt: int | None = None

    @property
    def tracker_attempt(self) -> int:
        if self.attempt is not None:
            return self.attempt
        value = self.options.get("tracker_attempt", 0)
        return value if isinstance(value, int) else 0

    def describe(self, t0: float) -> str:
        end = "never ended" if self.end is None else "ended %+.2f s" % (self.end - t0)
        extra = " redelivered" if self.redelivered else ""
        return "pid %d started %+.2f s, %s, attempt %d, options %s%s" % (
            self.pid, self.start - t0, end, self.tracker_attempt, self.options, extra,
        )  # fmt: skip


@dataclasses.dataclass
class CleanerCall:
    """One call of the soak's lock cleaner (from ``<prefix>:cleaners``, wall-clock times).

    Parameters:
      message_id(str): The orphan's message.
      attempt(int): The orphan's attempt: the one its recovered copy runs as.
      worker_id(str): The dead worker it was recovered from.
      pid(int): The process that made the call.
      start(float)
      end(float|None): None when the call never ended (its process was killed).
    """

    message_id: str
    attempt: int
    worker_id: str
    pid: int
    start: float
    end: float | None

    def describe(self, t0: float) -> str:
        end = "never ended" if self.end is None else "ended %+.2f s" % (self.end - t0)
        return "lock cleaner of attempt %d (orphaned by %s) in pid %d started %+.2f s, %s" % (
            self.attempt, self.worker_id, self.pid, self.start - t0, end,
        )  # fmt: skip


@dataclasses.dataclass
class ChaosLog:
    """What the chaos loop did, in wall-clock times (comparable with the ledger's)."""

    kills: list[tuple[int, float]] = dataclasses.field(default_factory=list)
    stops: list[list[float]] = dataclasses.field(default_factory=list)  # [pid, from, to]
    outages: list[list[float]] = dataclasses.field(default_factory=list)  # [from, to]
    lines: list[str] = dataclasses.field(default_factory=list)
    skipped: int = 0
    #: Sweepers stopped while they recovered a dead worker: [pid, from, planned seconds, dead worker
    #: id]; each is among ``stops`` too, once resumed.
    stalls: list[list[Any]] = dataclasses.field(default_factory=list)
    #: Kills after which no sweeper could be stopped (none seen holding the recovery, ...).
    stalls_skipped: int = 0
    #: RabbitMQ connections closed by the server: [pid, from, to, how many]: the server closed them
    #: between ``from`` and ``to`` (seen with ``ss``).
    closes: list[list[float]] = dataclasses.field(default_factory=list)

    def killed_at(self, pid: int) -> float | None:
        return next((at for killed, at in self.kills if killed == pid), None)

    def stops_of(self, pid: int, start: float, end: float) -> list[list[float]]:
        """The windows in which ``pid`` was frozen that overlap [start, end]."""
        return [window for window in self.stops if int(window[0]) == pid and window[1] <= end and window[2] >= start]

    def outages_during(self, start: float, end: float, after: float = 0.0) -> list[list[float]]:
        """The outages of the tracker's Redis that overlap [start, end], each counted ``after`` seconds
        longer than it lasted (state is rewritten once it is back)."""
        return [window for window in self.outages if window[0] <= end and window[1] + after >= start]

    def awake(self, pid: int, start: float, end: float) -> float:
        """How long ``pid`` ran (was not frozen) between ``start`` and ``end``."""
        frozen = sum(max(0.0, min(end, to) - max(start, since)) for _, since, to in self.stops_of(pid, start, end))
        return max(0.0, end - start - frozen)

    def around(self, start: float, end: float, margin: float) -> list[str]:
        """The timeline lines between ``start - margin`` and ``end + margin``."""
        found = []
        for line in self.lines:
            at = float(line.split("|", 1)[0])
            if start - margin <= at <= end + margin:
                found.append(line.split("|", 1)[1])
        return found


def classify(
    previous: Run,
    rerun: Run,
    chaos: ChaosLog,
    sent_at: float,
    held: list[list[float]],
    admitted: Callable[[Run], float] | None = None,
) -> str:
    """Why ``rerun`` ran although ``previous`` (the run before it) had started.

    Parameters:
      previous(Run): The run before.
      rerun(Run): The extra run.
      chaos(ChaosLog): What the chaos did.
      sent_at(float): When the message was sent (wall clock).
      held(list[list[float]]): ``[pid, frozen, resumed]`` of each frozen worker that the tracker
        recovered this message from (a ``recovered`` event naming it while it was frozen): it held
        a copy in memory, prefetched or delayed, that it may run or enqueue once resumed.
      admitted(callable): When the tracker started a run, as far as it is concerned: a RabbitMQ
        redelivery that claims a dead worker's orphan is recorded and decided, then calls the lock
        cleaners, and only then runs (see :meth:`Report.admitted`); the run's start by default.
    """
    admitted = admitted or (lambda run: run.start)
    killed = chaos.killed_at(previous.pid)
    if previous.end is None:
        if killed is not None and previous.start <= killed <= rerun.start:
            return RERUN_AFTER_CRASH
        if chaos.stops_of(previous.pid, previous.start, rerun.start):
            return ZOMBIE_BESIDE
        # Killed only after the re-run started, and never frozen: it ran twice at once on live
        # workers, which only a closed RabbitMQ connection explains.
        return connection_cause(previous, rerun, chaos, admitted) or UNEXPLAINED
    # Frozen between its end and its kill, a worker had no time to ack: only its awake time counts.
    if killed is not None and previous.end <= killed and chaos.awake(previous.pid, previous.end, killed) <= ACK_GRACE:
        return CRASH_BEFORE_ACK
    frozen_while_running = chaos.stops_of(previous.pid, previous.start, previous.end)
    if frozen_while_running and rerun.start < previous.end:
        return ZOMBIE_BESIDE
    # "The recovered copy is dropped if it has not started" when the zombie completes: one that had
    # started (recorded and decided, then in its lock cleaner call) runs.
    if frozen_while_running and admitted(rerun) < previous.end:
        return ZOMBIE_ADMITTED
    connection = connection_cause(previous, rerun, chaos, admitted)
    if connection:
        return connection
    if frozen_while_running:
        return ZOMBIE_AFTER
    if any(resumed <= rerun.start for _pid, _frozen, resumed in held):
        return ZOMBIE_HELD
    # Without an event to say so: the re-run ran in a worker that froze after the message was sent
    # and before the first run started elsewhere, once resumed.
    for _pid, frozen, resumed in chaos.stops_of(rerun.pid, sent_at, rerun.start):
        if frozen <= previous.start and resumed <= rerun.start:
            return ZOMBIE_HELD
    return UNEXPLAINED


def connection_cause(previous: Run, rerun: Run, chaos: ChaosLog, admitted: Callable[[Run], float] | None = None) -> str:
    """Which documented window of a closed RabbitMQ connection explains ``rerun``, or "".

    When the server closes a worker's connection it requeues the connection's unacked deliveries
    while the worker runs on; the tracker puts their redeliveries off while the first copy runs, and
    drops them once it completed (docs/failure-model.md, "After a RabbitMQ connection closes").
    What remains, as documented there:

    - an ack sent just before the connection closed may not have reached the server: the run ended
      within ``ACK_GRACE`` before the close (:data:`CONNECTION_BEFORE_ACK`);
    - a copy that starts between the close and the worker noticing it (within Dramatiq's
      ``worker_timeout``) runs beside its redelivery, unless the redelivery starts once the copy is
      in the running index, one to two flush intervals after its start (:data:`CONNECTION_STARTED`);
    - an attempt whose history note fails (the tracker's Redis down) runs again, and a restart that
      lost the running index lets a redelivery run until the worker writes it again
      (:data:`CONNECTION_OUTAGE`).

    A run "starts" when the tracker records and decides it (``admitted``): for a redelivery that
    claims a dead worker's orphan, before its lock cleaner call.
    """
    admitted = admitted or (lambda run: run.start)
    previous_start, rerun_start = admitted(previous), admitted(rerun)
    for pid, since, to, count in chaos.closes:
        if not count:
            continue
        noticed = to + WORKER_TIMEOUT + CLOSE_SLACK
        # The tracker's Redis lost what it knew (the history note, the running index) first: the more
        # specific explanation of a run that ended as its connection closed.
        running_at_close = previous.start <= to and (previous.end is None or previous.end >= since - ACK_GRACE)
        after = 2 * TIMINGS["heartbeat_interval"] / 1000 + CLOSE_SLACK
        if previous.pid == pid and running_at_close and chaos.outages_during(since, rerun.start, after):
            return CONNECTION_OUTAGE
        ended_before = previous.end is not None and since - ACK_GRACE <= previous.end <= to
        if previous.pid == pid and ended_before and rerun.start >= since:
            return CONNECTION_BEFORE_ACK
        if previous.pid == pid and since <= previous_start <= noticed and rerun_start <= previous_start + RECORD_LAG:
            return CONNECTION_STARTED
        if rerun.pid == pid and since <= rerun_start <= noticed and previous_start <= rerun_start:
            return CONNECTION_STARTED
    return ""


# The processes ---------------------------------------------------------------------------------------------


def rabbitmq_ports(pid: int) -> set[str]:
    """The local ports of ``pid``'s established TCP connections to RabbitMQ (port 5672), from ``ss``."""
    sockets = subprocess.run(
        ["ss", "-tnpH", "state", "established"], capture_output=True, text=True, check=True, timeout=30
    )
    ports = set()
    for line in sockets.stdout.splitlines():
        fields = line.split()
        if "pid=%d," % pid in line and len(fields) >= 4 and fields[3].endswith(":5672"):
            ports.add(fields[2].rpartition(":")[2])
    return ports


class Worker:
    """A ``dramatiq`` command running ``tests/apps/soak_app.py`` in one worker process, in a session of its own.

    Parameters:
      slot(int): Its place among the workers.
      generation(int): 1 for the slot's first worker, 2 for its first replacement, ...
      env(dict[str, str]): Its environment.
      threads(int): Worker threads.
      logs(Path): Where its log goes.
    """

    def __init__(self, slot: int, generation: int, env: dict[str, str], threads: int, logs: Path) -> None:
        self.slot = slot
        self.generation = generation
        self.log_path = logs / ("worker-%d-%d.log" % (slot, generation))
        command = [
            sys.executable, "-m", "dramatiq", "tests.apps.soak_app",
            "--processes", "1", "--threads", str(threads), "--worker-shutdown-timeout", "5000",
        ]  # fmt: skip
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        #: The process running the actors (the command's child), once it booted.
        self.pid: int | None = None
        self.worker_id: str | None = None
        self.killed = False

    @property
    def name(self) -> str:
        return "worker %d.%d" % (self.slot, self.generation)

    def terminate(self) -> None:
        """SIGTERM the command, as an orchestrator stopping it would."""
        with contextlib.suppress(ProcessLookupError):
            self.process.send_signal(signal.SIGTERM)

    def close(self) -> None:
        """Resume and SIGKILL its whole session, and reap the command."""
        for signum in (signal.SIGCONT, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, signum)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(10)


@dataclasses.dataclass
class Options:
    seed: int
    duration: float
    broker: str
    workers: int
    threads: int
    rate: float
    drain_timeout: float
    logs: Path
    rabbitmq_url: str
    analyse: Path | None = None


class Soak:
    """One soak run: servers, workers, producer, chaos, drain, report."""

    def __init__(self, options: Options) -> None:
        self.options = options
        self.run_id = uuid.uuid4().hex[:8]
        self.namespace = "chaos-%s" % self.run_id
        self.broker_namespace = "chaos-broker-%s" % self.run_id
        self.queue = "chaos_%s" % self.run_id
        self.prefix = "chaos-report-%s" % self.run_id
        self.main_server = RedisServer()
        self.tracker_server = RedisServer()
        self.main: redis.Redis | None = None
        self.workers: list[Worker] = []
        self.all_workers: list[Worker] = []
        self.generations: Counter[int] = Counter()
        self.chaos = ChaosLog()
        self.sends = plan_messages(options.seed, options.duration, options.rate)
        self.actions = plan_chaos(
            options.seed, options.duration, options.workers, TIMINGS["heartbeat_timeout"], options.broker
        )
        #: message id -> (Send, wall-clock time it was sent)
        self.sent: dict[str, tuple[Send, float]] = {}
        self.send_errors: Counter[str] = Counter()
        self.stopped: dict[int, float] = {}
        self.t0 = 0.0
        self.wall0 = 0.0
        self.timers: list[tuple[float, int, str, Callable[[], None]]] = []
        self.timer_ids = itertools.count()
        self.redis_down_since: float | None = None
        self.ledger_entries: list[dict[str, Any]] = []
        self.boots: dict[int, dict[str, Any]] = {}
        self.app: ModuleType | None = None
        self.dead_lettered: set[str] = set()
        self.cleaner_entries: list[dict[str, Any]] = []
        #: A client of the tracker's Redis, to see who recovers a dead worker (short timeouts: the
        #: chaos restarts it).
        self.tracker: redis.Redis | None = None
        #: The thread closing RabbitMQ connections, while it runs (``rabbitmqctl`` takes seconds).
        self.closer: threading.Thread | None = None
        #: Guards what the closing thread writes in the chaos log.
        self.lock = threading.Lock()
        #: Whether the chaos looks for a sweeper to stall, and why it gave up ("" while it looks).
        self.watching = False
        self.unwatched = ""

    # Setup -----------------------------------------------------------------------------------------------

    def say(self, text: str) -> None:
        elapsed = time.monotonic() - self.t0 if self.t0 else 0.0
        line = "[%7.2f s] %s" % (elapsed, text)
        print(line, flush=True)
        self.chaos.lines.append("%f|%s" % (time.time(), line))

    @property
    def broker_url(self) -> str:
        return self.main_server.url if self.options.broker == "redis" else self.options.rabbitmq_url

    def environment(self) -> dict[str, str]:
        env = {
            "SOAK_BROKER_KIND": self.options.broker,
            "SOAK_BROKER_URL": self.broker_url,
            "SOAK_BROKER_NAMESPACE": self.broker_namespace,
            "SOAK_QUEUE": self.queue,
            "SOAK_REPORT_URL": self.main_server.url,
            "SOAK_REPORT_PREFIX": self.prefix,
            "SOAK_TRACKER_URL": self.tracker_server.url,
            "SOAK_TRACKER_NAMESPACE": self.namespace,
            "SOAK_SEED": str(self.options.seed),
            **{"SOAK_%s" % name.upper(): str(value) for name, value in TIMINGS.items()},
        }
        return env

    def start_servers(self) -> None:
        started = time.monotonic()
        self.main_server.start()
        self.tracker_server.start()
        self.main = redis.Redis.from_url(self.main_server.url)
        self.tracker = redis.Redis.from_url(
            self.tracker_server.url, decode_responses=True, socket_timeout=1, socket_connect_timeout=1
        )
        self.say(
            "main Redis %s, tracker's Redis %s, up in %.2f s"
            % (self.main_server.url, self.tracker_server.url, time.monotonic() - started)
        )

    def start_worker(self, slot: int) -> Worker:
        env = {**os.environ, **self.environment(), "PYTHONPATH": str(ROOT)}
        env.pop("DRAMATIQ_TRACKER_REDIS_URL", None)
        self.generations[slot] += 1
        generation = self.generations[slot]
        worker = Worker(slot, generation, env, self.options.threads, self.options.logs)
        if slot < len(self.workers):
            self.workers[slot] = worker
        else:
            self.workers.append(worker)
        self.all_workers.append(worker)
        return worker

    def read_boots(self) -> None:
        assert self.main is not None
        for raw in self.main.lrange("%s:boot" % self.prefix, len(self.boots), -1):
            boot = json.loads(raw)
            self.boots[len(self.boots)] = boot
            for worker in self.all_workers:
                if worker.process.pid == boot["ppid"]:
                    worker.pid, worker.worker_id = int(boot["pid"]), boot.get("worker_id")
                    self.say("%s booted: pid %d, tracker worker id %s" % (worker.name, worker.pid, worker.worker_id))

    def import_app(self) -> ModuleType:
        """Import the soak app in this process, as the producer."""
        os.environ.update(self.environment())
        os.environ.pop("DRAMATIQ_TRACKER_REDIS_URL", None)
        return importlib.import_module("tests.apps.soak_app")

    # The producer ----------------------------------------------------------------------------------------

    def produce(self) -> None:
        assert self.app is not None
        for send in self.sends:
            delay = self.t0 + send.at - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            try:
                message = self.app.ACTORS[send.actor].send(*send.args)
            except Exception as error:
                self.send_errors["%s: %s" % (type(error).__name__, error)] += 1
                continue
            self.sent[message.message_id] = (send, time.time())

    # The chaos -------------------------------------------------------------------------------------------

    def schedule(self, delay: float, name: str, function: Callable[[], None]) -> None:
        heapq.heappush(self.timers, (time.monotonic() + delay, next(self.timer_ids), name, function))

    def act(self, action: Action) -> None:
        self.read_boots()
        worker = self.workers[action.slot]
        if action.kind == "restart-redis":
            if self.redis_down_since is not None:
                self.skip(action, "the tracker's Redis is already down")
                return
            wait = self.takeover_due() - time.time()
            if wait > 0:
                # A restart empties the claim: the stalled sweeper's recovery would begin again instead of
                # being taken over.  The restart waits for the takeover.
                self.say("the tracker's Redis restart waits %.1f s for the takeover of a stalled sweeper" % wait)
                self.schedule(wait, action.describe(), functools.partial(self.act, action))
                return
            self.stop_watching("the tracker's Redis went down")
            self.tracker_server.stop()
            self.redis_down_since = time.time()
            self.say("tracker's Redis SIGKILLed (down for %.1f s)" % action.length)
            self.schedule(action.length, "tracker's Redis up", self.redis_up)
            return
        if worker.pid is None or worker.killed:
            self.skip(action, "%s has not booted" % worker.name)
            return
        pid = worker.pid
        if action.kind == "close-connections":
            self.close_connections(action, worker, pid)
            return
        if action.kind == "kill":
            # Its ids (a worker declared dead while alive goes on under a new one), read before it dies.
            stall = bool(action.stall) and self.may_stall()
            dead_ids = self.worker_ids_of(pid) if stall else []
            os.kill(pid, signal.SIGKILL)
            worker.killed = True
            now = time.time()
            self.chaos.kills.append((pid, now))
            if pid in self.stopped:
                self.chaos.stops.append([pid, self.stopped.pop(pid), now])
            self.say("SIGKILL %s (pid %d); replacement in %.1f s" % (worker.name, pid, action.length))
            self.schedule(action.length, "replace worker %d" % action.slot, lambda: self.replace(action.slot))
            if stall and not dead_ids:
                self.chaos.stalls_skipped += 1
                self.say("no sweeper stall after the kill of %s: its registration was not found" % worker.name)
            elif stall:
                self.watch_recovery(action, worker, dead_ids, time.monotonic() + STALL_WATCH)
        elif action.kind == "stop":
            if pid in self.stopped:
                self.skip(action, "%s is already stopped" % worker.name)
                return
            os.kill(pid, signal.SIGSTOP)
            self.stopped[pid] = time.time()
            self.say("SIGSTOP %s (pid %d) for %.1f s" % (worker.name, pid, action.length))
            self.schedule(action.length, "resume pid %d" % pid, lambda: self.resume(pid))

    def skip(self, action: Action, why: str) -> None:
        self.chaos.skipped += 1
        self.say("skipped: %s (%s)" % (action.describe(), why))

    # Sweeper stalls --------------------------------------------------------------------------------------

    def worker_ids_of(self, pid: int) -> list[str]:
        """The tracker worker ids registered for ``pid`` (on this host), [] when the tracker's Redis
        does not answer."""
        assert self.tracker is not None
        try:
            registrations = self.tracker.hgetall("{%s}:v1:workers" % self.namespace)
        except redis.RedisError:
            return []
        return [str(worker_id) for worker_id, raw in registrations.items() if self.pid_in(raw) == pid]

    @staticmethod
    def pid_in(raw: str | bytes | None) -> int | None:
        """The pid a worker registration (JSON) names."""
        try:
            return int(json.loads(raw or "")["pid"])
        except (ValueError, KeyError, TypeError):
            return None

    def may_stall(self) -> bool:
        """Whether a kill may be followed by a sweeper stall now: none is watched for or under way,
        fewer than ``MAX_STALLS`` were made, and the tracker's Redis is up."""
        if self.watching or len(self.chaos.stalls) >= MAX_STALLS or self.redis_down_since is not None:
            return False
        return not any(int(stall[0]) in self.stopped for stall in self.chaos.stalls)

    def takeover_due(self) -> float:
        """When (wall clock) another sweeper has surely taken over the recovery of every sweeper still
        stalled: ``TAKEOVER_AFTER`` after the stall began, and a few sweeps more; 0 when none is."""
        due = [
            float(since) + TAKEOVER_AFTER / 1000 + 4 * TIMINGS["sweep_interval"] / 1000
            for pid, since, *_ in self.chaos.stalls
            if int(pid) in self.stopped
        ]
        return max(due, default=0.0)

    def stop_watching(self, why: str) -> None:
        """Give up the watch for a sweeper to stall."""
        self.unwatched = why

    def watch_recovery(self, action: Action, killed: Worker, dead_ids: list[str], until: float) -> None:
        """Look (every ``STALL_POLL``, until ``until``) for the claim a sweeper takes on the recovery
        of the killed worker; once one holds it, SIGSTOP that sweeper for ``action.stall`` seconds,
        so that another takes the recovery over, then SIGCONT it."""
        self.watching, self.unwatched = True, ""
        self.keep_watching(action, killed, dead_ids, until)

    def keep_watching(self, action: Action, killed: Worker, dead_ids: list[str], until: float) -> None:
        assert self.tracker is not None
        why = "no sweeper held the recovery of %s within %.0f s" % (killed.name, STALL_WATCH)
        if self.unwatched:
            why = self.unwatched
        else:
            try:
                for dead_id in dead_ids:
                    holder = str(
                        self.tracker.hget("{%s}:v1:worker:%s:recovery" % (self.namespace, dead_id), "holder") or ""
                    )
                    if not holder:
                        continue
                    pid = self.pid_in(self.tracker.hget("{%s}:v1:workers" % self.namespace, holder))
                    sweeper = next((w for w in self.workers if w.pid == pid and not w.killed), None)
                    if pid is None or sweeper is None or pid in self.stopped:
                        why = "the sweeper recovering %s (%s) is not a running worker" % (killed.name, holder)
                        continue
                    os.kill(pid, signal.SIGSTOP)
                    self.stopped[pid] = time.time()
                    self.chaos.stalls.append([pid, self.stopped[pid], action.stall, dead_id])
                    self.say(
                        "SIGSTOP %s (pid %d), the sweeper recovering %s (%s), for %.1f s"
                        % (sweeper.name, pid, killed.name, dead_id, action.stall)
                    )
                    self.schedule(action.stall, "resume pid %d" % pid, functools.partial(self.resume, pid))
                    self.watching = False
                    return
            except redis.RedisError as error:
                why = "the tracker's Redis failed: %s" % error
            else:
                if time.monotonic() < until:
                    self.schedule(
                        STALL_POLL, "watch", functools.partial(self.keep_watching, action, killed, dead_ids, until)
                    )
                    return
        self.watching = False
        self.chaos.stalls_skipped += 1
        self.say("no sweeper stall after the kill of %s: %s" % (killed.name, why))

    # RabbitMQ connections closed -------------------------------------------------------------------------

    def close_connections(self, action: Action, worker: Worker, pid: int) -> None:
        """Close the worker's RabbitMQ connections (all, or one) from the server, on a thread of its own."""
        if self.closer is not None and self.closer.is_alive():
            self.skip(action, "the previous close is still under way")
            return
        pick = random.Random("%d-%s" % (self.options.seed, action.at))
        self.closer = threading.Thread(
            target=self.close_rabbitmq_connections, args=(action, worker, pid, pick), name="closer", daemon=True
        )
        self.closer.start()

    def close_rabbitmq_connections(self, action: Action, worker: Worker, pid: int, pick: random.Random) -> None:
        """As tests/support.py's close_rabbitmq_connections: the process's sockets to RabbitMQ (``ss``),
        their connections on the server (``rabbitmqctl list_connections``), then ``rabbitmqctl
        close_connection`` of each chosen.

        The server closes a connection at some moment of its ``rabbitmqctl`` call (seconds, on a
        loaded machine): a connection whose consumer answers the close is seen gone with ``ss``,
        between the look before and that look, which is the window recorded; an idle one (a
        thread's connection used only to publish, which holds no delivery) stays established until
        its thread uses it again, and when none is seen gone the whole call is the window."""
        try:
            ports = rabbitmq_ports(pid)
            listed = subprocess.run(
                ["rabbitmqctl", "list_connections", "-q", "--no-table-headers", "peer_port", "pid"],
                capture_output=True, text=True, check=True, timeout=60,
            )  # fmt: skip
            connections = []
            for line in listed.stdout.splitlines():
                port, _, connection = line.strip().partition("\t")
                if port in ports:
                    connections.append((port, connection))
            if not action.every and connections:
                connections = [pick.choice(connections)]
            if not connections:
                with self.lock:
                    self.chaos.skipped += 1
                self.say("skipped: %s (no connection of pid %d found)" % (action.describe(), pid))
                return
            since = time.time()
            closing = [
                subprocess.Popen(
                    ["rabbitmqctl", "close_connection", connection, "chaos soak"],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                for _port, connection in connections
            ]
            open_ports = {port for port, _ in connections}
            first: float | None = None
            last: float | None = None
            looked = since
            done = False
            while open_ports and not done:
                done = all(process.poll() is not None for process in closing)
                looking = time.time()
                still = rabbitmq_ports(pid)
                if open_ports - still:
                    first = looked if first is None else first
                    last = time.time()
                    open_ports &= still
                looked = looking
                time.sleep(CLOSE_POLL)
            closed = sum(process.wait(60) == 0 for process in closing)
            finished = time.time()
        except (subprocess.SubprocessError, OSError) as error:
            with self.lock:
                self.chaos.skipped += 1
            self.say("skipped: %s (%s)" % (action.describe(), error))
            return
        if not closed:
            with self.lock:
                self.chaos.skipped += 1
            self.say("skipped: %s (rabbitmqctl closed none of %d)" % (action.describe(), len(connections)))
            return
        if first is None or last is None:
            first, last = since, finished
        with self.lock:
            self.chaos.closes.append([pid, first, last, closed])
        self.say(
            "closed %d of %d RabbitMQ connections of %s (pid %d) from the server between %+.2f s and %+.2f s "
            "(%d seen gone)" % (
                closed, len(connections), worker.name, pid, first - self.wall0, last - self.wall0,
                len(connections) - len(open_ports),
            )
        )  # fmt: skip

    def redis_up(self) -> None:
        if self.redis_down_since is None:
            return
        self.tracker_server.start()
        self.chaos.outages.append([self.redis_down_since, time.time()])
        self.redis_down_since = None
        self.say("tracker's Redis started again, empty")

    def resume(self, pid: int) -> None:
        if pid not in self.stopped:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
        self.chaos.stops.append([pid, self.stopped.pop(pid), time.time()])
        self.say("SIGCONT pid %d" % pid)

    def replace(self, slot: int) -> None:
        worker = self.start_worker(slot)
        self.say("started %s as a replacement" % worker.name)

    def run_chaos(self, producer: threading.Thread) -> None:
        for action in self.actions:
            self.schedule(
                action.at - (time.monotonic() - self.t0), action.describe(), functools.partial(self.act, action)
            )
        end = self.t0 + self.options.duration
        while time.monotonic() < end or producer.is_alive():
            now = time.monotonic()
            while self.timers and self.timers[0][0] <= now:
                _, _, _, function = heapq.heappop(self.timers)
                function()
            self.read_boots()
            time.sleep(0.02)
        # The end of the chaos: everything runs again.
        self.say("chaos over")
        self.stop_watching("the chaos is over")
        for pid in list(self.stopped):
            self.resume(pid)
        while self.timers:
            _, _, _, function = heapq.heappop(self.timers)
            function()
        self.redis_up()
        if self.closer is not None:
            self.closer.join(60)

    # Draining --------------------------------------------------------------------------------------------

    def read_ledger(self) -> None:
        assert self.main is not None
        for raw in self.main.lrange("%s:ledger" % self.prefix, len(self.ledger_entries), -1):
            self.ledger_entries.append(json.loads(raw))
        for raw in self.main.lrange("%s:cleaners" % self.prefix, len(self.cleaner_entries), -1):
            self.cleaner_entries.append(json.loads(raw))

    def cleaners_running(self) -> int:
        """Lock cleaner calls begun, not ended, in processes still alive."""
        ended = {entry["call"] for entry in self.cleaner_entries if entry["event"] == "end"}
        alive = {worker.pid for worker in self.all_workers if not worker.killed and worker.process.poll() is None}
        return sum(
            1
            for entry in self.cleaner_entries
            if entry["event"] == "start" and entry["call"] not in ended and entry["pid"] in alive
        )

    def read_dead_letters(self) -> None:
        if self.options.broker == "redis":
            assert self.main is not None
            for payload in self.main.hvals("%s:%s.XQ.msgs" % (self.broker_namespace, self.queue)):
                self.dead_lettered.add(json.loads(payload)["message_id"])
            return
        import pika

        connection = pika.BlockingConnection(pika.URLParameters(self.options.rabbitmq_url))
        try:
            channel = connection.channel()
            while True:
                method, _properties, body = channel.basic_get(self.queue + ".XQ", auto_ack=True)
                if method is None:
                    break
                self.dead_lettered.add(json.loads(body)["message_id"])
        except pika.exceptions.ChannelClosedByBroker:
            pass  # not declared yet: nothing dead-lettered
        finally:
            connection.close()

    def broker_backlog(self) -> int:
        """Messages waiting in the broker (queue and delay queue; in-flight ones too on Redis)."""
        if self.options.broker == "redis":
            assert self.main is not None
            return sum(
                int(self.main.hlen("%s:%s.msgs" % (self.broker_namespace, name)))
                for name in (self.queue, self.queue + ".DQ")
            )
        import pika

        connection = pika.BlockingConnection(pika.URLParameters(self.options.rabbitmq_url))
        try:
            channel = connection.channel()
            return sum(
                channel.queue_declare(name, passive=True).method.message_count
                for name in (self.queue, self.queue + ".DQ")
            )
        finally:
            connection.close()

    def completed(self) -> set[str]:
        return {entry["id"] for entry in self.ledger_entries if entry["event"] == "end"}

    def drain(self) -> bool:
        """Wait until everything sent completed or died, the broker is empty and runs stopped starting."""
        quiet = (TIMINGS["heartbeat_timeout"] + TIMINGS["sweep_interval"]) / 1000 + 1.5
        deadline = time.monotonic() + self.options.drain_timeout
        last_count, last_change = -1, time.monotonic()
        while time.monotonic() < deadline:
            self.read_ledger()
            self.read_dead_letters()
            count = len(self.ledger_entries) + len(self.cleaner_entries)
            if count != last_count:
                last_count, last_change = count, time.monotonic()
            pending = set(self.sent) - self.completed() - self.dead_lettered
            if (
                not pending
                and time.monotonic() - last_change >= quiet
                and not self.cleaners_running()
                and self.broker_backlog() == 0
            ):
                return True
            time.sleep(0.25)
        return False

    def locks(self) -> dict[str, dict[str, str]]:
        client = redis.Redis.from_url(self.tracker_server.url, decode_responses=True)
        try:
            found: dict[str, dict[str, str]] = {}
            for key in client.scan_iter(match="{%s}:v1:lock:*" % self.namespace, count=1000):
                if client.type(key) == "hash":
                    found[str(key)] = {str(name): str(value) for name, value in client.hgetall(key).items()}
                else:
                    found[str(key)] = {"type": str(client.type(key))}
            return found
        finally:
            client.close()

    def settle_locks(self) -> dict[str, dict[str, str]]:
        """Wait until no lock is left, at most two heartbeat timeouts and sweeps (releases retried after
        an outage, recoveries of the last dead workers)."""
        bound = 2 * (TIMINGS["heartbeat_timeout"] + TIMINGS["sweep_interval"]) / 1000 + 2
        with contextlib.suppress(AssertionError):
            wait_for(lambda: not self.locks(), bound, 0.1)
        return self.locks()

    # What happened ---------------------------------------------------------------------------------------

    def observe(self, drained: bool, locks: dict[str, dict[str, str]]) -> Observations:
        """Everything the report needs, read from the servers while they still run."""
        assert self.main is not None
        self.read_ledger()
        events = [json.loads(raw) for raw in self.main.lrange("%s:events" % self.prefix, 0, -1)]
        unfinished = set(self.sent) - self.completed() - self.dead_lettered
        return Observations(
            seed=self.options.seed,
            broker=self.options.broker,
            duration=self.options.duration,
            workers=self.options.workers,
            threads=self.options.threads,
            drain_timeout=self.options.drain_timeout,
            wall0=self.wall0,
            sent={message_id: (dataclasses.asdict(send), at) for message_id, (send, at) in self.sent.items()},
            send_errors=dict(self.send_errors),
            ledger=self.ledger_entries,
            cleaners=self.cleaner_entries,
            events=events,
            boots=list(self.boots.values()),
            chaos=dataclasses.asdict(self.chaos),
            dead_lettered=sorted(self.dead_lettered),
            drained=drained,
            locks=locks,
            left_in_broker=self.broker_leftovers(),
            whereabouts={message_id: self.broker_whereabouts(message_id) for message_id in unfinished},
            worker_logs=[(worker.name, worker.pid, worker.log_path.name) for worker in self.all_workers],
        )

    def broker_leftovers(self) -> list[tuple[str, str]]:
        """(message id, whereabouts) of every payload still in the RedisBroker's keys once the run is
        over: a copy that some process will deliver again, or that nothing ever will.  (RabbitMQ's
        unacked deliveries cannot be listed from outside; its ready ones count as not drained.)"""
        if self.options.broker != "redis":
            return []
        assert self.main is not None
        found = []
        for name in (self.queue, self.queue + ".DQ"):
            for payload in self.main.hvals("%s:%s.msgs" % (self.broker_namespace, name)):
                message_id = json.loads(payload)["message_id"]
                found.append((message_id, "; ".join(self.broker_whereabouts(message_id))))
        return found

    def broker_whereabouts(self, message_id: str) -> list[str]:
        """Where a message's payload still is in the RedisBroker's keys."""
        if self.options.broker != "redis":
            return ["(RabbitMQ: see the management UI or rabbitmqctl list_queues)"]
        assert self.main is not None
        found = []
        for name in (self.queue, self.queue + ".DQ"):
            for raw_id, payload in self.main.hgetall("%s:%s.msgs" % (self.broker_namespace, name)).items():
                if json.loads(payload)["message_id"] != message_id:
                    continue
                redis_id = raw_id.decode() if isinstance(raw_id, bytes) else str(raw_id)
                where = []
                if raw_id in self.main.lrange("%s:%s" % (self.broker_namespace, name), 0, -1):
                    where.append("queued in %s" % name)
                for key in self.main.scan_iter("%s:__acks__.*" % self.broker_namespace):
                    if self.main.sismember(key, redis_id):
                        where.append("in acks set %s" % key.decode(errors="replace"))
                found.append("%s.msgs holds it as %s: %s" % (name, redis_id, ", ".join(where) or "nowhere else"))
        return found or ["no payload left in the broker"]

    # The whole run ---------------------------------------------------------------------------------------

    def run(self) -> int:
        options = self.options
        print(
            "chaos soak: seed %d (replay: --seed %d), broker %s, %.0f s, %d workers x %d threads, %d messages, "
            "%d chaos actions; logs in %s"
            % (
                options.seed, options.seed, options.broker, options.duration, options.workers, options.threads,
                len(self.sends), len(self.actions), options.logs,
            ),
            flush=True,
        )  # fmt: skip
        for action in self.actions:
            print("  plan %6.2f s: %s" % (action.at, action.describe()))
        self.start_servers()
        self.app = self.import_app()
        for slot in range(options.workers):
            self.start_worker(slot)

        def booted() -> bool:
            self.read_boots()
            for worker in self.workers:
                if worker.process.poll() is not None:
                    raise RuntimeError("%s exited at boot:\n%s" % (worker.name, worker.log_path.read_text()))
            return all(worker.pid is not None for worker in self.workers)

        wait_for(booted, BOOT_TIMEOUT, 0.1, "the workers to boot")
        self.t0, self.wall0 = time.monotonic(), time.time()
        self.say("workers booted; producing and starting the chaos")
        producer = threading.Thread(target=self.produce, name="producer", daemon=True)
        producer.start()
        self.run_chaos(producer)
        self.say("sent %d messages; draining (at most %.0f s)" % (len(self.sent), options.drain_timeout))
        drained = self.drain()
        self.say("drained" if drained else "not drained in time")
        locks = self.settle_locks()
        observations = self.observe(drained, locks)
        observations.save(options.logs / "observations.json")
        return Report(observations, options.logs).show()

    def close(self) -> None:
        for worker in self.workers:
            worker.terminate()
        deadline = time.monotonic() + 10
        for worker in self.workers:
            with contextlib.suppress(subprocess.TimeoutExpired):
                worker.process.wait(max(0.1, deadline - time.monotonic()))
        for worker in self.all_workers:
            worker.close()
        if self.app is not None:
            with contextlib.suppress(Exception):
                self.app.tracker.close()
            with contextlib.suppress(Exception):
                self.app.broker.close()
        if self.options.broker == "rabbitmq":
            self.delete_queues()
        if self.main is not None:
            self.main.close()
        if self.tracker is not None:
            self.tracker.close()
        self.main_server.close()
        self.tracker_server.close()

    def delete_queues(self) -> None:
        import pika

        with contextlib.suppress(Exception):
            connection = pika.BlockingConnection(pika.URLParameters(self.options.rabbitmq_url))
            try:
                channel = connection.channel()
                for name in (self.queue, self.queue + ".DQ", self.queue + ".XQ"):
                    channel.queue_delete(name)
            finally:
                connection.close()


# The report ------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Observations:
    """Everything a report is computed from, saved as ``observations.json`` in the logs, so that
    ``--analyse DIR`` prints the report again (with a newer classifier, say) without a new run."""

    seed: int
    broker: str
    duration: float
    workers: int
    threads: int
    drain_timeout: float
    #: When the producer and the chaos started (wall clock).
    wall0: float
    #: message id -> (the Send, as a dict; when it was sent, wall clock)
    sent: dict[str, tuple[dict[str, Any], float]]
    send_errors: dict[str, int]
    ledger: list[dict[str, Any]]
    #: The lock cleaner's entries (``start`` and ``end`` of each call); None from a soak older than it
    cleaners: list[dict[str, Any]] | None
    events: list[dict[str, Any]]
    boots: list[dict[str, Any]]
    chaos: dict[str, Any]
    dead_lettered: list[str]
    drained: bool
    locks: dict[str, dict[str, str]]
    #: (message id, where it is) of the payloads left in the RedisBroker
    left_in_broker: list[tuple[str, str]]
    #: message id -> where its payload is in the RedisBroker, for the messages that did not complete
    whereabouts: dict[str, list[str]]
    #: (name, pid, log file name) of every worker started
    worker_logs: list[tuple[str, int | None, str]]

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def load(cls, path: Path) -> Observations:
        fields = json.loads(path.read_text())
        fields.setdefault("cleaners", None)  # saved by a soak older than its lock cleaner
        return cls(**fields)


class Report:
    """The soak's verdict on what it observed.

    Parameters:
      observations(Observations)
      logs(Path): The directory with the workers' logs.
    """

    def __init__(self, observations: Observations, logs: Path) -> None:
        self.observations = observations
        self.logs = logs
        self.wall0 = observations.wall0
        self.chaos = ChaosLog(**observations.chaos)
        self.sent = {message_id: (Send(**send), at) for message_id, (send, at) in observations.sent.items()}
        self.dead_lettered = set(observations.dead_lettered)

    def runs(self) -> dict[str, list[Run]]:
        """Every run of every message, by message id, in start order; an end closes the earliest open
        start of the same message in the same process."""
        runs: dict[str, list[Run]] = defaultdict(list)
        open_runs: dict[tuple[str, int], list[Run]] = defaultdict(list)
        for entry in sorted(self.observations.ledger, key=lambda e: e["at"]):
            key = (entry["id"], int(entry["pid"]))
            if entry["event"] == "start":
                run = Run(
                    entry["id"], entry["actor"], int(entry["index"]), int(entry["pid"]), float(entry["at"]), None,
                    entry.get("options", {}), entry.get("redelivered"), entry.get("attempt"),
                )  # fmt: skip
                runs[entry["id"]].append(run)
                open_runs[key].append(run)
            elif open_runs[key]:
                open_runs[key].pop(0).end = float(entry["at"])
        for message_runs in runs.values():
            message_runs.sort(key=lambda run: run.start)
        return runs

    def log_lines(self, needle: str, limit: int = 12) -> list[str]:
        found = []
        for name, _pid, log in self.observations.worker_logs:
            with contextlib.suppress(FileNotFoundError):
                for line in (self.logs / log).read_text(errors="replace").splitlines():
                    if needle in line:
                        found.append("%s: %s" % (name, line.strip()))
        return found[:limit]

    def explain(self, message_id: str, runs: list[Run], events: list[dict[str, Any]]) -> list[str]:
        """Everything known about one message, for a human to infer the mechanism."""
        send, sent_at = self.sent[message_id]
        lines = [
            "message %s: %s%r sent %+.2f s" % (message_id, send.actor, send.args, sent_at - self.wall0),
        ]
        for run in runs:
            lines.append("  run: " + run.describe(self.wall0))
        start = min([sent_at] + [run.start for run in runs])
        end = max([sent_at] + [run.end or run.start for run in runs])
        for line in self.chaos.around(start, end, 3.0):
            lines.append("  chaos: " + line)
        for event in events:
            if event.get("message_id") == message_id:
                lines.append("  event: pid %s %s: %s" % (event.get("pid"), event.get("kind"), event.get("text")))
        for line in self.log_lines(message_id):
            lines.append("  log: " + line)
        return lines

    def show(self) -> int:
        """Print the report and save ``summary.json`` and ``timeline.txt``.

        Returns:
          int: The exit status: 1 when a message was lost, a lock leaked, a payload was left in the
          broker, a message ran again outside the documented windows, or the lock cleaner was not
          called exactly once per recovery of a running orphan or started after its orphan ran
          again (or was still running then, unexplained); else 0.
        """
        observed = self.observations
        drained, locks = observed.drained, observed.locks
        runs = self.runs()
        events = observed.events
        completed = {entry["id"] for entry in observed.ledger if entry["event"] == "end"} & set(self.sent)
        lost = sorted(set(self.sent) - completed - self.dead_lettered)

        held = self.held_by_zombies(events)
        cleaners = self.check_cleaners(runs, events)
        admitted = functools.partial(self.admitted, cleaners["by_key"])
        causes: Counter[str] = Counter()
        duplicates: dict[str, list[tuple[Run, str]]] = {}
        for message_id, message_runs in runs.items():
            if message_id not in self.sent or len(message_runs) < 2:
                continue
            _send, sent_at = self.sent[message_id]
            extra = []
            for previous, rerun in itertools.pairwise(message_runs):
                cause = classify(previous, rerun, self.chaos, sent_at, held.get(message_id, []), admitted)
                causes[cause] += 1
                extra.append((rerun, cause))
            duplicates[message_id] = extra
        completed_twice = sorted(
            message_id
            for message_id, message_runs in runs.items()
            if sum(run.end is not None for run in message_runs) > 1
        )
        overlaps = self.while_executing_overlaps(runs)
        unexplained = sorted(
            message_id
            for message_id, extra in duplicates.items()
            if any(cause not in EXPECTED_CAUSES for _run, cause in extra)
        )
        in_progress_causes = Counter(cause for *_, cause in cleaners["in_progress"])
        cleaner_violations = (
            len(cleaners["missing"]) + len(cleaners["repeated"]) + len(cleaners["late"])
            + in_progress_causes[CLEANER_OVERLAP]
        )  # fmt: skip

        by_actor = Counter(send.actor for send, _ in self.sent.values())
        event_kinds = Counter(str(event.get("kind")) for event in events)
        stop_seconds = sum(to - since for _pid, since, to in self.chaos.stops)
        outage_seconds = sum(to - since for since, to in self.chaos.outages)
        print()
        print("=" * 100)
        print(
            "chaos soak: seed %d, broker %s, %.0f s, %d workers x %d threads"
            % (observed.seed, observed.broker, observed.duration, observed.workers, observed.threads)
        )
        print(
            "chaos: %d SIGKILLs, %d SIGSTOPs (%.1f s frozen in all), %d tracker Redis restarts (%.1f s down), "
            "%d skipped" % (
                len(self.chaos.kills), len(self.chaos.stops), stop_seconds, len(self.chaos.outages), outage_seconds,
                self.chaos.skipped,
            )
        )  # fmt: skip
        stall_seconds = sum(to - since for pid, since, to in self.chaos.stops if self.stalled(pid, since))
        print(
            "sweeper stalls: %d (%.1f s frozen in all, among the SIGSTOPs), %d skipped (no sweeper seen recovering%s)"
            % (
                len(self.chaos.stalls),
                stall_seconds,
                self.chaos.stalls_skipped,
                ": on RabbitMQ a recovery takes milliseconds" if observed.broker == "rabbitmq" else "",
            )
        )
        if observed.broker == "rabbitmq":
            print(
                "RabbitMQ connections closed by the server: %d times, %d connections"
                % (len(self.chaos.closes), sum(int(close[3]) for close in self.chaos.closes))
            )
        print("workers started: %d" % len(observed.worker_logs))
        print(
            "sent: %d (%s); send errors: %d %s"
            % (
                len(self.sent),
                ", ".join("%s %d" % item for item in sorted(by_actor.items())),
                sum(observed.send_errors.values()),
                observed.send_errors or "",
            )
        )
        print("drained: %s" % ("yes" if drained else "NO (timed out after %.0f s)" % observed.drain_timeout))
        print("runs: %d" % sum(len(message_runs) for message_runs in runs.values()))
        print("completed: %d" % len(completed))
        print("dead-lettered: %d" % len(self.dead_lettered))
        dead_but_done = sorted(self.dead_lettered & completed)
        marker = "  <-- a run of it had completed before it was dead-lettered" if dead_but_done else ""
        print("  of which had completed: %d%s" % (len(dead_but_done), marker))
        print("LOST: %d" % len(lost))
        print("messages that ran more than once: %d (extra runs: %d)" % (len(duplicates), sum(causes.values())))
        for cause in CAUSES:
            if cause.startswith("connection") and observed.broker != "rabbitmq":
                continue
            marker = "" if cause in EXPECTED_CAUSES else "  <-- not expected"
            print("  %-66s %4d%s" % (cause, causes[cause], marker if causes[cause] else ""))
        print("messages that completed more than once: %d" % len(completed_twice))
        overlap_causes = Counter(cause or UNEXPLAINED for *_, cause in overlaps)
        print("while_executing runs of one key that overlapped: %d" % len(overlaps))
        for cause in (OVERLAP_FROZEN, OVERLAP_OUTAGE, UNEXPLAINED):
            marker = "  <-- not expected" if cause == UNEXPLAINED and overlap_causes[cause] else ""
            print("  %-66s %4d%s" % (cause, overlap_causes[cause], marker))
        print(
            "lock cleaner calls: %d (%d ended), for %d recoveries of running orphans (%d known from events, "
            "%d from the ledger alone)"
            % (
                len(cleaners["calls"]),
                sum(call.end is not None for call in cleaners["calls"]),
                len(cleaners["expected"]),
                sum(how == "event" for how, _ in cleaners["expected"].values()),
                sum(how == "ledger" for how, _ in cleaners["expected"].values()),
            )
        )
        for label, count, expected in (
            ("recoveries whose cleaner was not called", len(cleaners["missing"]), False),
            ("recoveries whose call was " + CLEANER_LOST, len(cleaners["lost"]), True),
            ("recoveries whose cleaner was called more than once", len(cleaners["repeated"]), False),
            ("calls that started after their orphan ran again", len(cleaners["late"]), False),
            ("calls " + CLEANER_FROZEN, in_progress_causes[CLEANER_FROZEN], True),
            ("calls " + CLEANER_OUTAGE, in_progress_causes[CLEANER_OUTAGE], True),
            ("calls " + CLEANER_OVERLAP, in_progress_causes[CLEANER_OVERLAP], False),
            ("calls for no recovery of a running orphan known (reported only)", len(cleaners["unasked"]), True),
        ):
            marker = "  <-- not expected" if count and not expected else ""
            print("  %-86s %4d%s" % (label, count, marker))
        print("CLEANER VIOLATIONS: %d" % cleaner_violations)
        print("LEAKED LOCKS: %d" % len(locks))
        leftovers = observed.left_in_broker
        print("LEFT IN THE BROKER: %d" % len(leftovers))
        print("tracker events: %s" % dict(sorted(event_kinds.items())))

        problems: list[str] = []
        for message_id in sorted(self.dead_lettered):
            problems.append("DEAD-LETTERED%s" % (" AFTER COMPLETING" if message_id in completed else ""))
            problems.extend(self.explain(message_id, runs.get(message_id, []), events))
        for message_id in lost:
            problems.append("LOST")
            problems.extend(self.explain(message_id, runs.get(message_id, []), events))
            problems.extend("  broker: " + line for line in observed.whereabouts.get(message_id, []))
        for message_id in unexplained:
            problems.append("DUPLICATE (%s)" % ", ".join(cause for _run, cause in duplicates[message_id]))
            problems.extend(self.explain(message_id, runs[message_id], events))
        for key, lock in sorted(locks.items()):
            problems.append("LEAKED LOCK %s %s" % (key, lock))
            owner = lock.get("message_id", "")
            if owner in self.sent:
                problems.extend(self.explain(owner, runs.get(owner, []), events))
        for message_id, whereabouts in leftovers:
            problems.append("LEFT IN THE BROKER: %s" % whereabouts)
            if message_id in self.sent:
                problems.extend(self.explain(message_id, runs.get(message_id, []), events))
        for first, second, cause in overlaps:
            if not cause:
                problems.append(
                    "WHILE_EXECUTING OVERLAP key %d: %s / %s"
                    % (first.index % WHILE_EXECUTING_KEYS, first.describe(self.wall0), second.describe(self.wall0))
                )
        cleaner_problems: list[tuple[str, tuple[str, int]]] = [
            ("LOCK CLEANER NOT CALLED (%s)" % cleaners["expected"][key][0], key) for key in cleaners["missing"]
        ]
        cleaner_problems += [("LOCK CLEANER " + CLEANER_LOST.upper(), key) for key in cleaners["lost"]]
        cleaner_problems += [
            ("LOCK CLEANER CALLED %d TIMES" % len(cleaners["by_key"][key]), key) for key in cleaners["repeated"]
        ]
        cleaner_problems += [
            ("LOCK CLEANER STARTED AFTER ITS ORPHAN RAN AGAIN", (call.message_id, call.attempt))
            for call, _run in cleaners["late"]
        ]
        cleaner_problems += [
            ("LOCK CLEANER " + cause.upper(), (call.message_id, call.attempt))
            for call, _run, cause in cleaners["in_progress"]
        ]
        for title, (message_id, attempt) in cleaner_problems:
            problems.append("%s: message %s, attempt %d" % (title, message_id, attempt))
            problems.extend(
                "  " + call.describe(self.wall0) for call in cleaners["by_key"].get((message_id, attempt), [])
            )
            if message_id in self.sent:
                problems.extend(self.explain(message_id, runs.get(message_id, []), events))
        if problems:
            print()
            print("\n".join(problems))
        print()
        print("pids: %s" % {pid: name for name, pid, _log in observed.worker_logs})
        print("logs: %s" % self.logs)
        summary = {
            "seed": observed.seed,
            "broker": observed.broker,
            "duration": observed.duration,
            "sent": len(self.sent),
            "send_errors": observed.send_errors,
            "completed": len(completed),
            "dead_lettered": sorted(self.dead_lettered),
            "dead_lettered_after_completing": dead_but_done,
            "lost": lost,
            "drained": drained,
            "duplicates": {cause: count for cause, count in causes.items()},
            "unexplained_duplicates": unexplained,
            "completed_twice": completed_twice,
            "while_executing_overlaps": dict(overlap_causes),
            "leaked_locks": locks,
            "left_in_broker": [message_id for message_id, _ in leftovers],
            "kills": len(self.chaos.kills),
            "stops": len(self.chaos.stops),
            "outages": len(self.chaos.outages),
            "sweeper_stalls": len(self.chaos.stalls),
            "sweeper_stalls_skipped": self.chaos.stalls_skipped,
            "connection_closes": len(self.chaos.closes),
            "cleaner_calls": len(cleaners["calls"]),
            "cleaner_recoveries": len(cleaners["expected"]),
            "cleaner_missing": [list(key) for key in cleaners["missing"]],
            "cleaner_lost_with_their_sweeper": [list(key) for key in cleaners["lost"]],
            "cleaner_repeated": [list(key) for key in cleaners["repeated"]],
            "cleaner_late": [[call.message_id, call.attempt] for call, _run in cleaners["late"]],
            "cleaner_in_progress": dict(in_progress_causes),
            "cleaner_unasked": [list(key) for key in cleaners["unasked"]],
            "events": dict(event_kinds),
        }
        (self.logs / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True))
        (self.logs / "timeline.txt").write_text("\n".join(line.split("|", 1)[1] for line in self.chaos.lines) + "\n")
        reasons = [
            what
            for what, count in (
                ("lost messages", len(lost)),
                ("leaked locks", len(locks)),
                ("payloads left in the broker", len(leftovers)),
                ("duplicates outside the documented windows", len(unexplained)),
                ("lock cleaner violations", cleaner_violations),
            )
            if count
        ]
        failed = bool(reasons)
        print(
            "RESULT: %s (seed %d)%s"
            % ("FAILED" if failed else "passed", observed.seed, ": " + ", ".join(reasons) if failed else "")
        )
        return 1 if failed else 0

    @staticmethod
    def admitted(by_key: dict[tuple[str, int], list[CleanerCall]], run: Run) -> float:
        """When the tracker started ``run``: the start of the lock cleaner call its own process made
        for its message and attempt before it ran (a RabbitMQ redelivery that claimed a dead worker's
        orphan: recorded and decided, then cleaned, then run), else when it ran."""
        calls = by_key.get((run.message_id, run.tracker_attempt), [])
        return min([call.start for call in calls if call.pid == run.pid and call.start <= run.start] + [run.start])

    def stalled_then_killed(self, dead_id: str) -> bool:
        """Whether the chaos froze the sweeper recovering ``dead_id`` and killed it while it was frozen."""
        for pid, since, _planned, stalled_id in self.chaos.stalls:
            killed = self.chaos.killed_at(int(pid))
            if stalled_id != dead_id or killed is None:
                continue
            if any(window[1] == since and window[2] == killed for window in self.chaos.stops):
                return True
        return False

    def stalled(self, pid: float, since: float) -> bool:
        """Whether the stop of ``pid`` from ``since`` was a sweeper stall."""
        return any(int(stall[0]) == int(pid) and abs(float(stall[1]) - since) < 1e-6 for stall in self.chaos.stalls)

    def cleaner_calls(self) -> list[CleanerCall]:
        """Every call of the lock cleaner, in start order."""
        entries = self.observations.cleaners or []
        ends = {entry["call"]: float(entry["at"]) for entry in entries if entry["event"] == "end"}
        calls = [
            CleanerCall(
                str(entry["id"]),
                int(entry["attempt"]),
                str(entry.get("worker_id", "")),
                int(entry["pid"]),
                float(entry["at"]),
                ends.get(entry["call"]),
            )
            for entry in entries
            if entry["event"] == "start"
        ]
        return sorted(calls, key=lambda call: call.start)

    def expected_cleanings(
        self, runs: dict[str, list[Run]], events: list[dict[str, Any]]
    ) -> dict[tuple[str, int], tuple[str, str]]:
        """(message id, attempt) of every recovery of an orphan that was running, which calls the lock
        cleaner once, with how it is known: "event" (its recovery event says it was running) or
        "ledger" (a run killed having run at least ``RUNNING_KNOWN_AFTER`` after it started, and the next attempt
        that ran, no outage of the tracker's Redis in between: its record was surely there), and the
        dead worker's id ("" when only the ledger tells)."""
        expected: dict[tuple[str, int], tuple[str, str]] = {}
        for event in events:
            details = event.get("details") or {}
            if event.get("kind") not in RECOVERY_EVENTS or not event.get("message_id") or "attempt" not in details:
                continue
            if str(details.get("state", "")).startswith("fetched"):
                continue
            expected[(str(event["message_id"]), int(details["attempt"]))] = ("event", str(event.get("worker_id") or ""))
        for message_id, message_runs in runs.items():
            for index, run in enumerate(message_runs):
                killed = self.chaos.killed_at(run.pid)
                # (Awake that long: a process frozen right after the start wrote no record before its kill.)
                if (
                    run.end is not None
                    or killed is None
                    or self.chaos.awake(run.pid, run.start, killed) < RUNNING_KNOWN_AFTER
                ):
                    continue
                later = next(
                    (
                        r
                        for r in message_runs[index + 1 :]
                        if r.tracker_attempt > run.tracker_attempt and r.start >= killed
                    ),
                    None,
                )
                if later is None or self.chaos.outages_during(run.start, later.start):
                    continue
                expected.setdefault((message_id, later.tracker_attempt), ("ledger", ""))
        return expected

    def check_cleaners(self, runs: dict[str, list[Run]], events: list[dict[str, Any]]) -> dict[str, Any]:
        """What the lock cleaner calls say: each recovery of a running orphan calls it exactly once,
        and no call starts after the orphan's recovered run (the run of that attempt) started.

        Returns:
          dict: ``calls``, ``expected``; the violations ``missing`` and ``repeated`` (keys),
          ``late`` ((call, run) pairs); ``in_progress`` ((call, run, cause) of the calls that had
          not ended when the recovered run started); ``lost`` (keys of recoveries held by a sweeper
          the chaos froze and then killed, whose call was never seen: the sweeper notes each call
          before it makes it, so that the one taking the recovery over never makes it twice: a
          window, not a violation); ``unasked`` (keys of calls no recovery of a running orphan
          explains: reported only).
        """
        calls = self.cleaner_calls()
        # A soak older than the lock cleaner recorded no call: nothing to expect.
        expected = self.expected_cleanings(runs, events) if self.observations.cleaners is not None else {}
        by_key: dict[tuple[str, int], list[CleanerCall]] = defaultdict(list)
        for call in calls:
            by_key[(call.message_id, call.attempt)].append(call)
        late: list[tuple[CleanerCall, Run]] = []
        in_progress: list[tuple[CleanerCall, Run, str]] = []
        for (message_id, attempt), key_calls in sorted(by_key.items()):
            rerun = next((run for run in runs.get(message_id, []) if run.tracker_attempt == attempt), None)
            if rerun is None:
                continue
            for call in key_calls:
                if call.start > rerun.start:
                    late.append((call, rerun))
                    continue
                killed = self.chaos.killed_at(call.pid)
                ended = call.end if call.end is not None else killed if killed is not None else float("inf")
                if ended <= rerun.start:
                    continue
                if self.chaos.stops_of(call.pid, call.start, rerun.start):
                    cause = CLEANER_FROZEN
                elif self.chaos.outages_during(call.start, rerun.start):
                    cause = CLEANER_OUTAGE
                else:
                    cause = CLEANER_OVERLAP
                in_progress.append((call, rerun, cause))
        missing, lost = [], []
        for key, (_how, dead_id) in sorted(expected.items()):
            if key in by_key:
                continue
            (lost if dead_id and self.stalled_then_killed(dead_id) else missing).append(key)
        return {
            "calls": calls,
            "expected": expected,
            "by_key": by_key,
            "missing": missing,
            "lost": lost,
            "repeated": sorted(key for key, key_calls in by_key.items() if len(key_calls) > 1),
            "late": late,
            "in_progress": in_progress,
            "unasked": sorted(key for key in by_key if key not in expected),
        }

    def held_by_zombies(self, events: list[dict[str, Any]]) -> dict[str, list[list[float]]]:
        """Message id -> ``[pid, frozen, resumed]`` of the frozen workers it was recovered from.

        A ``recovered`` event names the dead worker's tracker id; the process behind an id is known
        from the boot records and from the events each process reported under its own id."""
        pid_of: dict[str, int] = {}
        for boot in self.observations.boots:
            if boot.get("worker_id"):
                pid_of[str(boot["worker_id"])] = int(boot["pid"])
        for event in events:
            if event.get("reporter") and event.get("pid"):
                pid_of.setdefault(str(event["reporter"]), int(event["pid"]))
        held: dict[str, list[list[float]]] = defaultdict(list)
        for event in events:
            if event.get("kind") != "recovered" or str(event.get("worker_id")) not in pid_of:
                continue
            at = float(event.get("at") or 0) / 1000
            for window in self.chaos.stops_of(pid_of[str(event["worker_id"])], at, at):
                held[str(event["message_id"])].append(window)
        return held

    def while_executing_overlaps(self, runs: dict[str, list[Run]]) -> list[tuple[Run, Run, str]]:
        """Pairs of ``while_executing`` runs of one key, of different messages, that overlapped, with
        what explains it: a worker frozen during one of them (its lock released by recovery), the
        tracker's Redis down or restarted empty since the first started (locks are skipped during an
        outage, and lost with the Redis), or "" when nothing does."""
        by_key: dict[int, list[Run]] = defaultdict(list)
        for message_runs in runs.values():
            for run in message_runs:
                if run.actor == "while_executing":
                    by_key[run.index % WHILE_EXECUTING_KEYS].append(run)
        found = []
        for key_runs in by_key.values():
            key_runs.sort(key=lambda run: run.start)
            for first, second in itertools.combinations(key_runs, 2):
                first_end, second_end = self.effective_end(first), self.effective_end(second)
                if first.message_id == second.message_id or not (second.start < first_end and first.start < second_end):
                    continue
                # An outage first: a lock skipped or lost with the Redis never protected either run.
                if any(since <= second.start and to + OUTAGE_TAIL >= first.start for since, to in self.chaos.outages):
                    cause = OVERLAP_OUTAGE
                elif self.chaos.stops_of(first.pid, first.start, first_end) or self.chaos.stops_of(
                    second.pid, second.start, second_end
                ):
                    cause = OVERLAP_FROZEN
                else:
                    cause = ""
                found.append((first, second, cause))
        return found

    def effective_end(self, run: Run) -> float:
        if run.end is not None:
            return run.end
        killed = self.chaos.killed_at(run.pid)
        return killed if killed is not None and killed >= run.start else float("inf")


def parse(argv: Iterable[str]) -> Options:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=None, help="replay a run (default: a random seed, printed)")
    parser.add_argument("--duration", type=float, default=150, help="seconds of production and chaos")
    parser.add_argument("--broker", choices=("redis", "rabbitmq"), default="redis")
    parser.add_argument("--workers", type=int, default=3, help="worker processes (dramatiq commands)")
    parser.add_argument("--threads", type=int, default=4, help="worker threads per process")
    parser.add_argument("--rate", type=float, default=4, help="messages per second")
    parser.add_argument("--drain-timeout", type=float, default=90, help="seconds to wait for the queue to drain")
    parser.add_argument("--logs", type=Path, default=None, help="where to keep logs (default: a new temp dir)")
    parser.add_argument(
        "--rabbitmq-url",
        default=os.environ.get("RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/%2F"),
        help="RabbitMQ for --broker rabbitmq",
    )
    parser.add_argument(
        "--analyse", type=Path, default=None, metavar="DIR", help="print the report of a past run from its logs"
    )
    arguments = parser.parse_args(list(argv))
    seed = arguments.seed if arguments.seed is not None else random.SystemRandom().randrange(1, 1_000_000)
    logs = arguments.analyse or arguments.logs or Path(tempfile.mkdtemp(prefix="chaos-soak-"))
    logs.mkdir(parents=True, exist_ok=True)
    # The options are the command line's (one field per option), its seed and log directory resolved.
    return Options(**{**vars(arguments), "seed": seed, "logs": logs})


def main(argv: Iterable[str]) -> int:
    options = parse(argv)
    if options.analyse is not None:
        return Report(Observations.load(options.analyse / "observations.json"), options.analyse).show()
    soak = Soak(options)

    def interrupted(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupted)
    try:
        return soak.run()
    except KeyboardInterrupt:
        print("interrupted (seed %d)" % options.seed)
        return 3
    except Exception:
        traceback.print_exc()
        print("RESULT: the soak itself failed (seed %d); logs in %s" % (options.seed, options.logs))
        return 3
    finally:
        soak.close()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
