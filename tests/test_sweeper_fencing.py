"""Sweepers are fenced: a slow, frozen or killed sweeper never makes a dead worker's orphan run twice,
never leaves one uncleaned, and never cleans one after it started again elsewhere.

Each test runs three real worker processes of tests/apps/fencing_app.py, all of one broker identity:
a victim running three messages, and two sweepers.  The victim is SIGKILLed; one sweeper claims its
orphans (the pid of the first lock cleaner call names it) and is then slowed down (a 5 s cleaner),
frozen (SIGSTOP in its first cleaner call, SIGCONT 13 s later, past ``takeover_after``) or killed
(SIGKILL in its first cleaner call), while the other one may take the recovery over.

Whatever happens, after one death:

- each orphan runs again exactly once (two runs in all: the killed one and the recovered one);
- each orphan's lock cleaners are called exactly once (a call interrupted by a stop or a kill counts
  as its one call: the takeover does not call them again; what an interrupted call still does after
  SIGCONT is a known residual window, so calls are judged by when they *start*);
- no cleaner call starts after its orphan's recovered run started.

"redis" is a RedisBroker (orphans moved back from the dead process's acks); "outbox" a broker class
the tracker does not know (a RedisBroker behind a wrapper), recovered through the outbox: the stored
payload is enqueued again.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import signal
import time
from collections.abc import Callable

import dramatiq
import pytest
import redis
from dramatiq.brokers.redis import RedisBroker
from dramatiq.message import Message

from dramatiq_tracker import TrackerMiddleware
from dramatiq_tracker.ops.reads import InspectionStore
from dramatiq_tracker.records import WorkerInfo

from .conftest import Cluster, Namespaces
from .support import BOUND, FAST, WorkerProcess, kill, kinds, send, wait_for, wait_new_worker, wait_registered

pytestmark = pytest.mark.slow

APP = "tests.apps.fencing_app"
#: The tracker's takeover_after at the test timings: max(10 s, 2 sweep intervals), in seconds.
TAKEOVER = max(10_000, 2 * FAST["sweep_interval"]) / 1000
#: How long the claiming sweeper stays frozen: past takeover_after, with a sweep or two of slack.
FREEZE = TAKEOVER + 3
#: How long a message's first run lasts (it is killed long before) and its recovered run.
FIRST_SECONDS, RECOVERED_SECONDS = 60.0, 0.2
ORPHANS = 3
#: A dramatiq process's boot on a loaded machine.
BOOT = 30


@dataclasses.dataclass(frozen=True)
class Record:
    """A run of ``hold`` (phase "run") or a lock cleaner call's start or end, as the app reported it."""

    phase: str
    message_id: str
    pid: int
    attempt: int
    at: float
    recovered: bool = False


def runs(client: redis.Redis, names: Namespaces) -> list[Record]:
    return [
        Record("run", r["message_id"], r["pid"], r["attempt"], r["at"], r["recovered"])
        for r in map(json.loads, client.lrange("%s:runs" % names.report, 0, -1))
    ]


def cleaner_calls(client: redis.Redis, names: Namespaces, phase: str = "start") -> list[Record]:
    return [
        Record(r["phase"], r["message_id"], r["pid"], r["attempt"], r["at"])
        for r in map(json.loads, client.lrange("%s:cleaner" % names.report, 0, -1))
        if r["phase"] == phase or not phase
    ]


def timeline(client: redis.Redis, names: Namespaces, ids: list[str], origin: float) -> str:
    """Every run and cleaner call, oldest first, in seconds since ``origin`` (the kill)."""
    short = {mid: "m%d" % i for i, mid in enumerate(ids)}
    records = sorted([*runs(client, names), *cleaner_calls(client, names, phase="")], key=lambda r: r.at)
    return "\n".join(
        "%+7.2f s  %-13s %s pid %d attempt %d"
        % (
            r.at - origin,
            "run (recovered)" if r.recovered else r.phase if r.phase == "run" else "cleaner " + r.phase,
            short.get(r.message_id, r.message_id),
            r.pid,
            r.attempt,
        )
        for r in records
    )


@dataclasses.dataclass
class Scene:
    """A victim killed while running three messages, and two sweepers to recover them."""

    client: redis.Redis
    names: Namespaces
    store: InspectionStore
    victim: WorkerInfo
    ids: list[str]
    killed_at: float = 0.0
    #: When the claiming sweeper was resumed (SIGCONT), if it was frozen.
    resumed_at: float = 0.0

    def first_cleaner_call(self) -> Record:
        """The first lock cleaner call after the kill: its pid is the claiming sweeper's."""
        return wait_for(
            lambda: next(iter(cleaner_calls(self.client, self.names)), None),
            BOUND + 10,
            message="the first lock cleaner call",
        )

    def wait_settled(self, bound: float) -> None:
        """Wait until every orphan ran again, then until nothing more can happen: twice takeover_after
        after the last run started, and takeover_after (and a few sweeps) after the last thing any
        sweeper did that the app saw (a cleaner call's start or end, a resume)."""
        wait_for(
            lambda: all(n >= 2 for n in self.run_counts().values()) and len(self.run_counts()) == ORPHANS,
            bound,
            interval=0.1,
            message="every orphan to run again",
        )
        cap = time.time() + 4 * TAKEOVER
        while time.time() < cap:
            last_run = max(r.at for r in runs(self.client, self.names))
            activity = [r.at for r in cleaner_calls(self.client, self.names, phase="")]
            last = max([last_run, self.resumed_at, *activity])
            until = max(last_run + 2 * TAKEOVER + 1, last + TAKEOVER + 2)
            if time.time() >= until:
                return
            # Not an event awaited: the absence of any late duplicate, for as long as one could come.
            time.sleep(min(0.5, until - time.time()))

    def run_counts(self) -> collections.Counter[str]:
        return collections.Counter(r.message_id for r in runs(self.client, self.names))

    def assert_fenced(self) -> None:
        """Exactly one redelivery and one cleaner call per orphan, every call started before the run.

        All three are checked before failing, so that a failure says everything that went wrong."""
        all_runs = runs(self.client, self.names)
        starts = cleaner_calls(self.client, self.names)
        first = [r for r in all_runs if not r.recovered]
        assert sorted(r.message_id for r in first) == sorted(self.ids)
        assert {r.pid for r in first} == {self.victim.pid}
        problems = []
        counts = collections.Counter(r.message_id for r in all_runs)
        if counts != dict.fromkeys(self.ids, 2):
            problems.append("runs per orphan (2 expected): %s" % self.describe(counts))
        cleaned = collections.Counter(c.message_id for c in starts)
        if cleaned != dict.fromkeys(self.ids, 1):
            problems.append("cleaner calls per orphan (1 expected): %s" % self.describe(cleaned))
        problems += [
            "%s: a cleaner call (pid %d) started %.2f s after its recovered run started (pid %d)"
            % (self.short(c.message_id), c.pid, c.at - r.at, r.pid)
            for c in starts
            for r in all_runs
            if r.recovered and r.message_id == c.message_id and c.at > r.at
        ]
        # On one line: a CI summary keeps only the first line of a failure.
        history = timeline(self.client, self.names, self.ids, self.killed_at).replace("\n", "; ")
        assert not problems, "%s -- timeline: %s" % ("; ".join(problems), " ".join(history.split()))

    def short(self, message_id: str) -> str:
        return "m%d" % self.ids.index(message_id) if message_id in self.ids else message_id

    def describe(self, counts: collections.Counter[str]) -> str:
        return ", ".join("%s=%d" % (self.short(mid), counts.get(mid, 0)) for mid in self.ids)


def kill_the_victim(
    redis_client: redis.Redis,
    names: Namespaces,
    spawn_worker: Callable[..., WorkerProcess],
    producer: RedisBroker,
    kind: str,
    env: dict[str, str],
) -> Scene:
    """Start a victim running three messages and two sweepers, all of one broker identity; SIGKILL the victim."""
    store = InspectionStore(redis_client, names.tracker)
    env = {"TEST_BROKER_IDENTITY": "fencing-test-%s" % names.tracker, **env}
    spawn_worker(kind=kind, threads=ORPHANS, env=env, app=APP)
    (victim,) = wait_registered(store, 1, timeout=BOOT)
    ids = send(producer, names.queue, "hold", ORPHANS, FIRST_SECONDS, RECOVERED_SECONDS)
    scene = Scene(redis_client, names, store, victim, ids)
    wait_for(lambda: len(runs(redis_client, names)) == ORPHANS, BOOT, message="three messages running")
    wait_for(lambda: len(store.inflight(victim.worker_id)) == ORPHANS, 5, message="their records written")
    assert {r.pid for r in runs(redis_client, names)} == {victim.pid}
    for _ in range(2):
        spawn_worker(kind=kind, threads=ORPHANS, env=env, app=APP)
    first = wait_new_worker(store, victim, timeout=BOOT)
    wait_new_worker(store, victim, first, timeout=BOOT)
    scene.killed_at = time.time()
    kill(victim.pid)
    return scene


@pytest.fixture
def scene_of(
    redis_client: redis.Redis,
    namespaces: Namespaces,
    spawn_worker: Callable[..., WorkerProcess],
    producer: RedisBroker,
) -> Callable[..., Scene]:
    def make(kind: str, **env: str) -> Scene:
        return kill_the_victim(redis_client, namespaces, spawn_worker, producer, kind, env)

    return make


def first_enqueue(scene: Scene) -> Record:
    """The first copy enqueued again from the outbox: its pid is the claiming sweeper's."""
    raw = wait_for(
        lambda: next(iter(scene.client.lrange("%s:enqueue" % scene.names.report, 0, 0)), None),
        BOUND + 10,
        message="the first enqueue of a recovered copy",
    )
    found = json.loads(raw)
    return Record("enqueue", found["message_id"], found["pid"], 0, found["at"])


def resume_after_freeze(scene: Scene, stopped: Callable[[Scene], Record] = Scene.first_cleaner_call) -> int:
    """The claiming sweeper stopped itself where ``stopped`` reports (its first cleaner call, with
    TEST_CLEANER_SIGNAL=stop): resume it FREEZE seconds after.  Returns its pid."""
    call = stopped(scene)
    try:
        time.sleep(max(0.0, call.at + FREEZE - time.time()))
    finally:
        scene.resumed_at = time.time()
        os.kill(call.pid, signal.SIGCONT)
    return call.pid


# The sanity of the app -----------------------------------------------------------------------------


def test_the_outbox_app_runs_messages_on_a_broker_class_the_tracker_does_not_know(
    cluster: Cluster, producer: RedisBroker
) -> None:
    cluster.spawn(
        kind="outbox", threads=2, env={"TEST_BROKER_IDENTITY": "fencing-test-%s" % cluster.names.tracker}, app=APP
    )
    (worker,) = cluster.wait_registered(1, timeout=BOOT)
    (message_id,) = send(producer, cluster.names.queue, "hold", 1, 0, 0)
    wait_for(lambda: runs(cluster.client, cluster.names), BOOT, message="the message ran")
    (run,) = runs(cluster.client, cluster.names)
    assert (run.message_id, run.pid, run.recovered) == (message_id, worker.pid, False)
    # Recovered through the outbox: the tracker does not know the broker, and keeps each payload
    assert worker.broker_kind == "other" and worker.broker_identity == "fencing-test-%s" % cluster.names.tracker
    assert list(cluster.store.workers()) == [worker.worker_id]


# 1. A slow or frozen sweeper does not deliver again what another one delivered -------------------------


@pytest.mark.parametrize("kind", ["outbox"])
def test_a_slow_lock_cleaner_does_not_let_another_sweeper_deliver_the_orphans_again(
    scene_of: Callable[..., Scene], kind: str
) -> None:
    # Given a victim killed with three orphans, and sweepers whose lock cleaner takes 5 s per orphan:
    # the claiming sweeper's recovery lasts longer than takeover_after
    cleaner_seconds = 5
    scene = scene_of(kind, TEST_CLEANER_SECONDS=str(cleaner_seconds))
    try:
        claimer = scene.first_cleaner_call().pid
        print("claiming sweeper: pid %d" % claimer)
        # When every orphan ran again and nothing more happens
        scene.wait_settled(BOUND + ORPHANS * cleaner_seconds + 2 * TAKEOVER + 10)
    finally:
        print(timeline(scene.client, scene.names, scene.ids, scene.killed_at))
    # Then each ran again once, its cleaner called once, before it started again
    scene.assert_fenced()


def resume_frozen_claimer(scene: Scene, stopped: Callable[[Scene], Record] = Scene.first_cleaner_call) -> None:
    """Freeze the claiming sweeper where ``stopped`` reports (its first lock cleaner call) until it resumes,
    then wait until every orphan ran again and nothing more happens; the timeline is printed whatever
    happens."""
    try:
        claimer = resume_after_freeze(scene, stopped)
        print("claiming sweeper: pid %d, resumed %.2f s after the kill" % (claimer, scene.resumed_at - scene.killed_at))
        scene.wait_settled(BOUND + 2 * TAKEOVER + 10)
    finally:
        print(timeline(scene.client, scene.names, scene.ids, scene.killed_at))


@pytest.mark.parametrize("kind", ["outbox"])
def test_a_sweeper_frozen_right_after_its_claim_delivers_nothing_twice(
    scene_of: Callable[..., Scene], kind: str
) -> None:
    # Given a victim killed with three orphans, and the sweeper that claims them frozen (SIGSTOP) right
    # after its claim, as its first lock cleaner call starts, for longer than takeover_after
    scene = scene_of(kind, TEST_CLEANER_SIGNAL="stop")
    # When it resumes, every orphan ran again and nothing more happens
    resume_frozen_claimer(scene)
    # Then each ran again once, its cleaner called once, before it started again
    scene.assert_fenced()


@pytest.mark.parametrize("kind", ["outbox"])
def test_a_sweeper_frozen_inside_its_enqueue_makes_a_twin_that_never_runs(
    scene_of: Callable[..., Scene], kind: str
) -> None:
    # Given a victim killed with three orphans, and the sweeper that claims them frozen (SIGSTOP) inside the
    # broker's enqueue of its first orphan, after every check it makes, until past takeover_after: the
    # takeover enqueues every orphan again, that one included, and the frozen one's copy lands when it resumes
    scene = scene_of(kind, TEST_ENQUEUE_SIGNAL="stop")
    # When it resumes, every orphan ran again and nothing more happens
    resume_frozen_claimer(scene, first_enqueue)
    # Then each ran again once: the twin copy of the first orphan was dropped when it started
    scene.assert_fenced()


# 2. A takeover calls the cleaners the stopped sweeper never called --------------------------------------


@pytest.mark.parametrize("kind", ["outbox", "redis"])
def test_a_takeover_after_the_claiming_sweeper_died_calls_every_lock_cleaner_once(
    scene_of: Callable[..., Scene], kind: str
) -> None:
    # Given a victim killed with three orphans, and the sweeper that claims them killed (SIGKILL) in
    # its first lock cleaner call
    scene = scene_of(kind, TEST_CLEANER_SECONDS="1", TEST_CLEANER_SIGNAL="kill")
    try:
        claimer = scene.first_cleaner_call().pid
        print("claiming sweeper: pid %d, killed in its first cleaner call" % claimer)
        # When the survivor takes the recovery over, and nothing more happens
        scene.wait_settled(BOUND + 2 * TAKEOVER + 10)
    finally:
        print(timeline(scene.client, scene.names, scene.ids, scene.killed_at))
    # Then each orphan ran again once, on the survivor, and every one of them had its cleaner called
    # once: the killed call counts as its orphan's one call, the others the survivor made
    scene.assert_fenced()
    assert claimer not in {r.pid for r in runs(scene.client, scene.names)}


# 3. A resumed sweeper does not clean what started again elsewhere ---------------------------------------


@pytest.mark.parametrize("kind", ["redis", "outbox"])
def test_a_sweeper_resumed_after_the_takeover_calls_no_cleaner_of_an_orphan_that_restarted(
    scene_of: Callable[..., Scene], kind: str
) -> None:
    # Given a victim killed with three orphans, and the sweeper that claims them frozen (SIGSTOP) in its
    # first lock cleaner call (each takes 0.5 s), until 13 s later: the takeover (after 10 s) cleans and
    # delivers them again meanwhile
    scene = scene_of(kind, TEST_CLEANER_SECONDS="0.5", TEST_CLEANER_SIGNAL="stop")
    # When it resumes, every orphan ran again and nothing more happens
    resume_frozen_claimer(scene)
    # Then no cleaner call started after its orphan restarted, and the interrupted call was the only
    # one of its orphan (the takeover did not call it again)
    scene.assert_fenced()


def lone_victim(
    client: redis.Redis, names: Namespaces, spawn_worker: Callable[..., WorkerProcess], cleaner_signal: str
) -> tuple[InspectionStore, dict[str, str], WorkerInfo, int]:
    """Start a worker of the app alone, the first lock cleaner call of the test set to ``cleaner_signal``;
    returns the store, the environment the sweepers start with, the worker and its pid."""
    store = InspectionStore(client, names.tracker)
    env = {
        "TEST_BROKER_IDENTITY": "fencing-test-%s" % names.tracker,
        "TEST_CLEANER_SECONDS": "0.5",
        "TEST_CLEANER_SIGNAL": cleaner_signal,
    }
    process = spawn_worker(kind="redis", threads=2, env=env, app=APP)
    (victim,) = wait_registered(store, 1, timeout=BOOT)
    return store, env, victim, process.pid_of(victim)


def two_sweepers(
    store: InspectionStore, spawn_worker: Callable[..., WorkerProcess], env: dict[str, str], victim: WorkerInfo
) -> None:
    """Start two more workers of the app, and wait until both registered."""
    for _ in range(2):
        spawn_worker(kind="redis", threads=2, env=env, app=APP)
    first = wait_new_worker(store, victim, timeout=BOOT)
    wait_new_worker(store, victim, first, timeout=BOOT)


def stopped_until_claimed(client: redis.Redis, names: Namespaces, pid: int) -> int:
    """Stop ``pid`` (SIGSTOP) until a sweeper declared it dead and claimed its messages (the first lock
    cleaner call), then let it go on; returns the claiming sweeper's pid."""
    os.kill(pid, signal.SIGSTOP)
    try:
        call = wait_for(lambda: next(iter(cleaner_calls(client, names)), None), BOUND + 10, message="the claim")
    finally:
        os.kill(pid, signal.SIGCONT)
    return call.pid


def test_a_delayed_copy_a_resumed_worker_moves_itself_while_a_sweeper_holds_its_claim_is_not_lost(
    redis_client: redis.Redis,
    namespaces: Namespaces,
    spawn_worker: Callable[..., WorkerProcess],
    producer: RedisBroker,
) -> None:
    # Given a worker running a message and holding a delayed one (fetched from its delay queue, due in
    # 5 s), and two sweepers
    store, env, victim, victim_pid = lone_victim(redis_client, namespaces, spawn_worker, "stop")
    send(producer, namespaces.queue, "hold", 1, FIRST_SECONDS, RECOVERED_SECONDS)
    wait_for(lambda: runs(redis_client, namespaces), BOOT, message="running")
    message = Message(
        queue_name=namespaces.queue,
        actor_name="hold",
        args=(1, FIRST_SECONDS, RECOVERED_SECONDS),
        kwargs={},
        options={},
    )
    delay_acks = "%s:__acks__.%s.%s.DQ" % (namespaces.broker, victim.broker_id, namespaces.queue)
    delayed = producer.enqueue(message, delay=5000).message_id
    wait_for(lambda: redis_client.scard(delay_acks) == 1, 5, message="the delayed message held")
    two_sweepers(store, spawn_worker, env, victim)

    # When it is declared dead while stopped, the sweeper that claimed both freezes in the running one's
    # lock cleaner (before it moves them), and the worker resumes: it moves the delayed copy to its
    # queue itself once due (a copy marked revoked, skipped where it starts), and only then does the
    # sweeper resume and move what it claimed
    sweeper = stopped_until_claimed(redis_client, namespaces, victim_pid)
    try:
        wait_for(lambda: "stale-copy-skipped" in kinds(store, delayed), 5 + 10, message="the revoked copy skipped")
    finally:
        os.kill(sweeper, signal.SIGCONT)

    # Then the delayed message still runs, once, as the recovered copy the claim made of it
    def delayed_runs() -> list[Record]:
        return [r for r in runs(redis_client, namespaces) if r.message_id == delayed]

    wait_for(lambda: delayed_runs(), BOUND + TAKEOVER + 10, message="the delayed message run")
    # (not an event awaited: the absence of a second copy, for a few sweeps)
    time.sleep(4 * FAST["sweep_interval"] / 1000)
    assert [r.recovered for r in delayed_runs()] == [True]


def test_a_zombie_that_acks_a_unique_orphan_before_the_takeover_moves_it_releases_its_lock(
    redis_client: redis.Redis,
    namespaces: Namespaces,
    spawn_worker: Callable[..., WorkerProcess],
    producer: RedisBroker,
) -> None:
    # Given a worker running a unique message (2 s), and two sweepers
    store, env, victim, victim_pid = lone_victim(redis_client, namespaces, spawn_worker, "kill")
    sender = RedisBroker(client=redis_client, namespace=namespaces.broker)
    sender.add_middleware(TrackerMiddleware(client=redis_client, namespace=namespaces.tracker))
    actor = dramatiq.actor(
        lambda *args: None, broker=sender, actor_name="unique_hold", queue_name=namespaces.queue, unique=True
    )
    message_id = actor.send(0, 2.0, RECOVERED_SECONDS).message_id
    wait_for(lambda: runs(redis_client, namespaces), BOOT, message="running")
    assert [lock.message_id for lock in store.locks()] == [message_id]
    two_sweepers(store, spawn_worker, env, victim)

    # When it is declared dead while stopped, the sweeper that claimed the message (passing its lock to
    # the next attempt) is killed in its lock cleaner, before the move, and the worker resumes, completes
    # the message as a zombie and acks it: the sweeper that takes the recovery over finds nothing to move
    stopped_until_claimed(redis_client, namespaces, victim_pid)
    # (a fenced worker waits up to takeover_after for the recovery of its old id before it goes on)
    bound = TAKEOVER + BOUND + 10
    wait_for(lambda: "zombie-completion" in kinds(store, message_id), bound, message="the zombie's completion")

    # Then its ack came before any move: the message ran once, and the lock passed to an attempt that
    # will never run is released (by this worker, once it learned it had been declared dead)
    wait_for(lambda: store.locks() == [], bound, message="the lock released")
    wait_for(lambda: victim.worker_id not in store.workers(), bound, message="the recovery done")
    assert [r.pid for r in runs(redis_client, namespaces)] == [victim_pid]
