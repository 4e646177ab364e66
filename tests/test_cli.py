"""The ``dramatiq-tracker`` command on real worker processes: every command as text and as JSON,
the liveness check, the live views, recovery by hand, and what it says when something is wrong."""

from __future__ import annotations

import contextlib
import io
import json
import os
import pty
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any
from unittest import mock

import pytest
import redis
from dramatiq.brokers.redis import RedisBroker
from dramatiq.message import Message

from dramatiq_tracker import TrackerMiddleware
from dramatiq_tracker.events import LOCK_DELETED, RECOVERED
from dramatiq_tracker.ops.cli import (
    RET_ERROR,
    RET_INTERRUPTED,
    RET_NOT_FOUND,
    RET_OK,
    RET_UNHEALTHY,
    RET_USAGE,
    main,
)
from dramatiq_tracker.ops.inspection import ALIVE, DEAD, FENCED, GONE, UNRESPONSIVE, Inspector
from dramatiq_tracker.ops.reads import InspectionStore

from .conftest import Cluster, Namespaces
from .support import (
    BOUND,
    FAST,
    ROOT,
    WorkerProcess,
    kill,
    send,
    wait_for,
    wait_registered,
)
from .test_corrupt_records import dump

pytestmark = pytest.mark.slow

#: Worker timings under which only the pid check finds a dead worker within the test.
SLOW_EXPIRY = {"TEST_HEARTBEAT_INTERVAL": "10000", "TEST_HEARTBEAT_TIMEOUT": "60000", "TEST_SWEEP_INTERVAL": "30000"}

#: A line of a table's header: capitals, columns two spaces apart or more.
HEADER = re.compile(r"^[A-Z]+(?: {2,}[A-Z]+)+$")


# Running the command ------------------------------------------------------------------------


def app_env(redis_url: str, names: Namespaces, **extra: str) -> dict[str, str]:
    """What tests/apps/worker_app.py reads, as the spawn_worker fixture sets it: for --broker."""
    return {
        **{"TEST_%s" % key.upper(): str(value) for key, value in FAST.items()},
        "TEST_BROKER_KIND": "redis",
        "TEST_QUEUE": names.queue,
        "TEST_REPORT_PREFIX": names.report,
        "TEST_REPORT_URL": redis_url,
        "TEST_BROKER_URL": redis_url,
        "TEST_BROKER_NAMESPACE": names.broker,
        "TEST_TRACKER_URL": redis_url,
        "TEST_TRACKER_NAMESPACE": names.tracker,
        **extra,
    }


def command_env(env: dict[str, str] | None = None) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if k not in ("DRAMATIQ_TRACKER_REDIS_URL", "REDIS_URL", "NO_COLOR")}
    return {**clean, "PYTHONPATH": str(ROOT), **(env or {})}


def run(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60, process: bool = False
) -> subprocess.CompletedProcess[str]:
    """``dramatiq-tracker ARGS``: its ``main`` called in this process, with the environment, the output and
    the exit code a process of its own would have; in a process of its own (``python -m
    dramatiq_tracker``) with ``process=True``, or when it imports an application (``--broker``), whose
    broker would otherwise become this process's.  (A command costs 0.6 s of CPU as a process, 10 ms
    here: on two cores, the suite's time.)"""
    # (Output is redirected for the whole process: commands run from other threads run as processes.)
    if process or "--broker" in args or threading.current_thread() is not threading.main_thread():
        return subprocess.run(
            [sys.executable, "-m", "dramatiq_tracker", *args],
            cwd=ROOT,
            env=command_env(env),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    stdout, stderr = io.StringIO(), io.StringIO()
    with (
        mock.patch.dict(os.environ, command_env(env), clear=True),
        contextlib.redirect_stdout(stdout),
        contextlib.redirect_stderr(stderr),
    ):
        try:
            code = main(list(args))
        except SystemExit as e:  # as the interpreter would exit
            code = e.code if isinstance(e.code, int) else 1
    return subprocess.CompletedProcess(["dramatiq-tracker", *args], code, stdout.getvalue(), stderr.getvalue())


def start(*args: str, env: dict[str, str] | None = None, **options: Any) -> subprocess.Popen[str]:
    """``python -m dramatiq_tracker ARGS`` running on, its output piped."""
    return subprocess.Popen(
        [sys.executable, "-m", "dramatiq_tracker", *args],
        cwd=ROOT,
        env=command_env(env),
        text=True,
        **{"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, **options},
    )


def one_line_error(result: subprocess.CompletedProcess[str], code: int, *words: str) -> str:
    """Assert that a command failed with ``code`` and one line on stderr, no traceback, naming ``words``."""
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr and result.stdout == "", result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def base(redis_url: str, namespaces: Namespaces) -> list[str]:
    return ["--url", redis_url, "--namespace", namespaces.tracker]


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Callable[..., tuple[int, str, str]]:
    """Run the command in this process: (exit code, stdout, stderr)."""

    def call(*args: str) -> tuple[int, str, str]:
        code = main(list(args))
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return call


@pytest.fixture
def cli_json(cli: Callable[..., tuple[int, str, str]]) -> Callable[..., dict[str, Any]]:
    """Run the command with --json in this process: its JSON, checked against the schema's envelope."""

    def call(command: str, *args: str) -> dict[str, Any]:
        code, out, err = cli(command, *args, "--json")
        assert code == RET_OK, err
        data: dict[str, Any] = json.loads(out)
        assert data["schema"] == 1 and data["command"] == command and isinstance(data["at"], int)
        assert isinstance(data["problems"], list)
        assert ("items" in data) != ("item" in data)
        if "items" in data:
            assert isinstance(data["items"], list) and isinstance(data["cursor"], str) and "total" in data
        return data

    return call


@pytest.fixture
def inspector(redis_url: str, namespaces: Namespaces) -> Iterator[Inspector]:
    with Inspector(url=redis_url, namespace=namespaces.tracker) as found:
        yield found


def documented_headers() -> set[tuple[str, ...]]:
    """The table headers shown in docs/cli.md."""
    text = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    return {tuple(line.split()) for line in text.splitlines() if HEADER.match(line.strip())}


def headers(out: str) -> list[str]:
    return [line for line in out.splitlines() if HEADER.match(line)]


def assert_documented(out: str) -> None:
    """Every table the command printed has the columns docs/cli.md shows."""
    found = headers(out)
    assert found, out
    for header in found:
        assert tuple(header.split()) in documented_headers(), "docs/cli.md does not show the table %r" % header


def column(out: str, header_line: str, title: str, value: str) -> None:
    """``value`` sits in column ``title`` of some row: the table is aligned."""
    lines = out.splitlines()
    header = next(line for line in lines if line.startswith(header_line))
    start = header.index(title)
    assert any(line[start:].startswith(value) for line in lines[lines.index(header) + 1 :]), (title, value, out)


# Every command, as text and as JSON --------------------------------------------------------


def test_every_listing_shows_live_workers_and_their_messages_as_text_and_json(
    cli: Callable[..., tuple[int, str, str]],
    cli_json: Callable[..., dict[str, Any]],
    base: list[str],
    cluster: Cluster,
    producer: RedisBroker,
    redis_broker: RedisBroker,
    tracker: TrackerMiddleware,
    inspector: Inspector,
) -> None:
    # Given a worker running two slow messages and a unique one (its lock taken as it was sent)
    cluster.spawn(threads=4, slow_seconds=60)
    (worker,) = cluster.wait_registered(1)
    ids = send(producer, cluster.names.queue, "slow", 2)
    (unique_id,) = send(redis_broker, cluster.names.queue, "unique_slow", 1, unique=True)
    wait_for(lambda: len(cluster.store.inflight(worker.worker_id)) == 3, 20, message="recorded")
    wid, queue = worker.worker_id, cluster.names.queue

    # status
    code, out, err = cli("status", *base)
    assert code == RET_OK and err == ""
    assert "Workers:    1 alive, 0 stopping, 0 gone, 0 unresponsive, 0 recovering, 0 dead, 0 fenced" in out
    assert "In flight:  3 messages, 0 orphans waiting" in out and "Locks:      1 uniqueness lock held" in out, out
    column(out, "QUEUE", "QUEUE", queue)
    column(out, "ACTOR", "ACTOR", "slow")
    assert_documented(out)
    status = cli_json("status", *base)["item"]
    assert status["inflight"] == 3 and status["workers"][ALIVE] == 1 and status["locks"] == 1
    assert status["queues"][0]["queue_name"] == queue and status["actors"] == {"slow": 2, "unique_slow": 1}

    # workers
    code, out, _ = cli("workers", *base)
    assert code == RET_OK
    column(out, "WORKER", "WORKER", wid)
    column(out, "WORKER", "STATE", ALIVE)
    column(out, "WORKER", "QUEUES", queue)
    assert_documented(out)
    (item,) = cli_json("workers", *base)["items"]
    assert (item["worker_id"], item["state"], item["pid"], item["queues"], item["inflight"]) == (
        wid,
        ALIVE,
        worker.pid,
        [queue],
        3,
    )
    assert [w["worker_id"] for w in cli_json("workers", *base, "--host", worker.hostname)["items"]] == [wid]
    assert cli_json("workers", *base, "--host", "elsewhere")["items"] == []

    # inflight, filtered and paged
    code, out, _ = cli("inflight", *base)
    assert code == RET_OK
    for message_id in [*ids, unique_id]:
        column(out, "MESSAGE", "MESSAGE", message_id)
    column(out, "MESSAGE", "STATE", ALIVE)
    assert_documented(out)
    assert sorted(r["message_id"] for r in cli_json("inflight", *base)["items"]) == sorted([*ids, unique_id])
    assert sorted(r["message_id"] for r in cli_json("inflight", *base, "--actor", "slow")["items"]) == sorted(ids)
    assert len(cli_json("inflight", *base, "--queue", queue, "--worker", wid)["items"]) == 3
    assert cli_json("inflight", *base, "--queue", "other")["items"] == []
    assert cli_json("inflight", *base, "--older-than", "1h")["items"] == []
    assert len(cli_json("inflight", *base, "--older-than", "1ms")["items"]) == 3
    code, out, err = cli("inflight", *base, "--older-than", "2h30m")
    assert (code, out) == (RET_OK, "No messages in flight.\n")
    seen, cursor = [], ""
    while True:
        page = cli_json("inflight", *base, "--limit", "1", *(["--cursor", cursor] if cursor else []))
        seen += [r["message_id"] for r in page["items"]]
        cursor = page["cursor"]
        if not cursor:
            break
    assert sorted(seen) == sorted([*ids, unique_id])
    code, out, err = cli("inflight", *base, "--limit", "1")
    assert re.fullmatch(r"More: dramatiq-tracker inflight \.\.\. --cursor '[^']+'\n", err), err

    # message
    code, out, _ = cli("message", *base, ids[0])
    assert code == RET_OK and "Message %s" % ids[0] in out
    assert "running:   on worker %s" % wid in out and "history:   none" in out
    running = cli_json("message", *base, ids[0])["item"]
    assert running["message_id"] == ids[0] and running["running"]["worker_id"] == wid and running["history"] is None

    # orphans: none
    assert cli("orphans", *base)[:2] == (RET_OK, "No orphans waiting for recovery.\n")
    orphans = cli_json("orphans", *base)
    assert orphans["items"] == [] and orphans["total"] == 0

    # locks, then unlock
    code, out, _ = cli("locks", *base)
    (lock,) = inspector.locks().items
    column(out, "DIGEST", "DIGEST", lock.digest)
    column(out, "DIGEST", "OWNER", unique_id)
    column(out, "DIGEST", "MODE", "until_executed")
    assert_documented(out)
    (item,) = cli_json("locks", *base, "--actor", "unique_slow", "--owner", unique_id)["items"]
    # (an until_executed lock is taken as the message is sent, by no worker: it says where its owner runs)
    assert item["digest"] == lock.digest and item["message_id"] == unique_id and item["worker_id"] == ""
    assert item["running_on"] == wid
    column(out, "DIGEST", "RUNNING", wid)
    assert cli_json("locks", *base, "--actor", "slow")["items"] == []
    assert cli_json("locks", *base, "--older-than", "1d")["items"] == []

    # events: none yet, in a namespace in use
    assert cli("events", *base)[:2] == (RET_OK, "No events.\n")

    code, out, _ = cli("unlock", *base, lock.digest)
    assert code == RET_OK and "Deleted uniqueness lock %s of message %s" % (lock.digest, unique_id) in out
    assert inspector.lock(lock.digest) is None
    code, out, _ = cli("events", *base)
    assert code == RET_OK and LOCK_DELETED in out and lock.digest in out
    (event,) = cli_json("events", *base, "--kind", LOCK_DELETED)["items"]
    assert event["kind"] == LOCK_DELETED and event["details"]["digest"] == lock.digest
    assert event["details"]["by"].startswith("cli:")
    assert cli_json("events", *base, "--kind", RECOVERED)["items"] == []

    # check
    code, out, _ = cli("check", *base, "--worker-id", wid)
    assert code == RET_OK and out.startswith("OK: worker %s alive" % wid)
    check = cli_json("check", *base, "--host", worker.hostname)["item"]
    assert check["healthy"] and [w["worker_id"] for w in check["workers"]] == [wid]


def test_check_is_healthy_while_the_worker_lives_and_fails_at_once_when_it_is_sigkilled(
    redis_url: str, base: list[str], cluster: Cluster
) -> None:
    # Given one worker on this host, whose heartbeat would expire only after a minute
    cluster.spawn(threads=1, env=SLOW_EXPIRY)
    (worker,) = cluster.wait_registered(1)
    here = socket.gethostname()
    assert worker.hostname == here

    # Then it is healthy, by host (this one by default) and by id
    healthy = run("check", *base)
    assert healthy.returncode == RET_OK and healthy.stdout.startswith("OK: 1 worker of host %s alive" % here)
    assert run("check", *base, "--worker-id", worker.worker_id).returncode == RET_OK
    # But not with more workers required, nor on another host
    fewer = run("check", *base, "--min-workers", "2")
    assert fewer.returncode == RET_UNHEALTHY and "1 of at least 2 workers of host" in fewer.stdout
    elsewhere = run("check", *base, "--host", "elsewhere")
    assert elsewhere.returncode == RET_UNHEALTHY and "no worker is registered from host 'elsewhere'" in elsewhere.stdout
    unknown = run("check", *base, "--worker-id", "nobody")
    assert unknown.returncode == RET_UNHEALTHY and "'nobody' is not registered" in unknown.stdout

    # When it is SIGKILLed, it fails at once (its process is gone), before its heartbeat expires
    kill(worker.pid)
    dead = run("check", *base, "--worker-id", worker.worker_id, "--json")
    assert dead.returncode == RET_UNHEALTHY, dead.stderr
    verdict = json.loads(dead.stdout)["item"]
    # (its process gone on this host, or its presence connection closed: whichever is seen first)
    assert not verdict["healthy"] and "is dead, not recovered yet: its" in verdict["reasons"][0]
    by_host = run("check", *base)
    assert by_host.returncode == RET_UNHEALTHY and by_host.stdout.startswith("UNHEALTHY: worker %r" % worker.worker_id)


def test_check_fails_for_a_worker_whose_heartbeat_expired(
    base: list[str], spawn_worker: Callable[..., WorkerProcess], store: InspectionStore, inspector: Inspector
) -> None:
    # Given a worker stopped (SIGSTOP: its process is there) past its heartbeat timeout, with nobody to sweep
    spawn_worker(threads=1)
    (worker,) = wait_registered(store, 1)
    os.kill(worker.pid, signal.SIGSTOP)
    try:
        wait_for(lambda: inspector.worker(worker.worker_id).state == UNRESPONSIVE, BOUND + 5, message="unresponsive")

        # Then the check says so
        result = run("check", *base)
    finally:
        os.kill(worker.pid, signal.SIGCONT)
    assert result.returncode == RET_UNHEALTHY
    assert re.match(
        r"UNHEALTHY: worker '%s' .* is unresponsive: its heartbeat expired" % worker.worker_id, result.stdout
    )


def test_check_fails_for_a_fenced_worker_naming_the_id_it_goes_on_as(
    base: list[str], cluster: Cluster, inspector: Inspector
) -> None:
    # Given a worker stopped past its heartbeat timeout while another one sweeps, then resumed
    victim, survivor, view = cluster.fenced_worker(inspector)

    wait_for(lambda: (w := inspector.worker(view.fenced_as)) is not None and w.state == ALIVE, 10, message="new id")

    # Then its old id is unhealthy, and the check names the id its process goes on as
    fenced = run("check", *base, "--worker-id", victim.worker_id)
    assert fenced.returncode == RET_UNHEALTHY
    assert "fenced" in fenced.stdout and repr(view.fenced_as) in fenced.stdout, fenced.stdout
    # While the new id is healthy, and so is the host
    assert run("check", *base, "--worker-id", view.fenced_as).returncode == RET_OK
    assert run("check", *base, "--min-workers", "2").returncode == RET_OK
    # And workers --all lists the tombstone, fenced, with the new id
    listed = run("workers", *base, "--all")
    assert_documented(listed.stdout)
    assert re.search(r"%s\s+fenced.*goes on as %s" % (victim.worker_id, view.fenced_as), listed.stdout)
    states = {w["worker_id"]: w["state"] for w in json.loads(run("workers", *base, "--all", "--json").stdout)["items"]}
    assert states == {victim.worker_id: FENCED, view.fenced_as: ALIVE, survivor.worker_id: ALIVE}


# Live views ----------------------------------------------------------------------------------


def read_until(fd: int, predicate: Callable[[str], bool], timeout: float) -> str:
    """Read a pseudo-terminal until what was read satisfies ``predicate``."""
    seen = ""
    deadline = time.monotonic() + timeout
    while not predicate(seen):
        remaining = deadline - time.monotonic()
        assert remaining > 0, "timed out; read so far: %r" % seen
        ready, _, _ = select.select([fd], [], [], remaining)
        if ready:
            try:
                chunk = os.read(fd, 65536)
            except OSError:  # the other end closed
                break
            seen += chunk.decode(errors="replace")
    return seen


def test_watch_redraws_the_screen_on_a_terminal_and_only_there(
    redis_url: str, base: list[str], cluster: Cluster, producer: RedisBroker
) -> None:
    worker, (message_id,) = cluster.busy_worker(producer, 1)

    # On a terminal: the screen is cleared before each refresh, colours on
    controller, terminal = pty.openpty()
    process = start("watch", *base, "--interval", "0.2", stdout=terminal, stderr=terminal)
    os.close(terminal)
    try:
        clear = "\x1b[H\x1b[2J"
        screen = read_until(controller, lambda seen: seen.count(clear) >= 3, 30)
        frames = screen.split(clear)[1:3]
        for frame in frames:
            assert "dramatiq-tracker watch" in frame and "Oldest messages in flight:" in frame
            assert worker.worker_id in frame and message_id in frame
            assert "\x1b[32malive" in frame  # coloured
    finally:
        process.send_signal(signal.SIGINT)
        assert process.wait(20) == RET_INTERRUPTED
        os.close(controller)

    # Elsewhere (a pipe): views follow each other, no escape sequences
    piped = start("watch", *base, "--interval", "0.2")
    try:
        assert piped.stdout is not None
        lines = []
        while sum(1 for line in lines if line.startswith("dramatiq-tracker watch")) < 2:
            lines.append(piped.stdout.readline())
    finally:
        piped.send_signal(signal.SIGINT)
        _, err = piped.communicate(timeout=20)
    assert piped.returncode == RET_INTERRUPTED and "Traceback" not in err
    assert "\x1b" not in "".join(lines) and any(message_id in line for line in lines)


def test_events_follow_prints_an_event_written_after_it_started(
    redis_url: str, base: list[str], store: InspectionStore
) -> None:
    # Given an event already written
    store.append_events([{"kind": RECOVERED, "text": "before", "message_id": "m1", "at": "1"}], {RECOVERED: 1}, 100)
    follower = start("events", *base, "--follow", "--json", "--interval", "0.05")
    try:
        assert follower.stdout is not None
        # It prints it first
        assert json.loads(follower.stdout.readline())["text"] == "before"
        # When another is written
        store.append_events([{"kind": LOCK_DELETED, "text": "after", "message_id": "m2"}], {LOCK_DELETED: 1}, 100)
        # Then it prints it
        event = json.loads(follower.stdout.readline())
        assert (event["kind"], event["text"], event["message_id"]) == (LOCK_DELETED, "after", "m2") and event["id"]
    finally:
        follower.send_signal(signal.SIGINT)
        _, err = follower.communicate(timeout=20)
    assert follower.returncode == RET_INTERRUPTED and "Traceback" not in err

    # And as text, filtered by kind
    follower = start("events", *base, "--follow", "--kind", RECOVERED, "--interval", "0.05")
    try:
        assert follower.stdout is not None
        assert "recovered" in follower.stdout.readline()
        store.append_events([{"kind": LOCK_DELETED, "text": "skipped", "at": "1"}], {LOCK_DELETED: 1}, 100)
        store.append_events([{"kind": RECOVERED, "text": "shown", "at": "1"}], {RECOVERED: 1}, 100)
        line = follower.stdout.readline()
        assert re.match(r"1970-01-01 00:00:00\.001  recovered\s+shown$", line.rstrip()), line
    finally:
        follower.send_signal(signal.SIGINT)
        follower.communicate(timeout=20)


# Recovery by hand ----------------------------------------------------------------------------


def test_recover_dry_run_changes_nothing_and_recover_then_does_exactly_what_it_listed(
    redis_url: str, cluster: Cluster, producer: RedisBroker, inspector: Inspector
) -> None:
    # Given a worker SIGKILLed with three messages running and nobody else to sweep
    victim, ids = cluster.busy_worker(producer, 3, threads=3)
    kill(victim.pid)
    wait_for(lambda: inspector.orphans().total == 3, BOUND + 5, message="orphans waiting")
    orphans = run("orphans", "--url", redis_url, "--namespace", cluster.names.tracker)
    assert orphans.returncode == RET_OK and "3 messages waiting for recovery." in orphans.stdout
    assert all(message_id in orphans.stdout for message_id in ids)
    assert_documented(orphans.stdout)
    listed = json.loads(run("orphans", "--url", redis_url, "--namespace", cluster.names.tracker, "--json").stdout)
    assert listed["total"] == 3 and sorted(o["message_id"] for o in listed["items"]) == sorted(ids)
    assert {(o["worker_id"], o["worker_state"], o["where"]) for o in listed["items"]} == {
        (victim.worker_id, GONE, "record")
    }
    env = app_env(redis_url, cluster.names)
    broker = ["--broker", "tests.apps.worker_app:broker"]
    patterns = ("{%s}:*" % cluster.names.tracker, "%s:*" % cluster.names.broker)
    # (its heartbeat key expires on its own: not a change the dry run makes)
    heartbeat = cluster.store.keys.heartbeat(victim.worker_id)
    wait_for(lambda: not cluster.client.exists(heartbeat), BOUND, message="its heartbeat expired")
    before = dump(cluster.client, *patterns)

    # When a dry run is asked for, as text and as JSON
    text = run("recover", *broker, "--dry-run", env=env)
    planned = run("recover", *broker, "--dry-run", "--json", env=env)

    # Then nothing changed at all, in the tracker's keys nor in the broker's
    assert dump(cluster.client, *patterns) == before
    assert text.returncode == RET_OK, text.stderr
    assert text.stdout.startswith(
        "Dry run: nothing was changed. A sweep now would declare 1 worker dead (%s)" % victim.worker_id
    )
    assert_documented(text.stdout)
    plan = json.loads(planned.stdout)["item"]
    assert plan["dry_run"] and plan["dead_workers"] == [victim.worker_id]
    decisions = {o["message_id"]: (o["outcome"], o["running"], o["attempt"]) for o in plan["orphans"]}
    assert decisions == {message_id: ("redelivered", True, 1) for message_id in ids}

    # And the recovery then does exactly what it listed
    done = run("recover", *broker, "--json", env=env)
    assert done.returncode == RET_OK, done.stderr
    report = json.loads(done.stdout)["item"]
    assert not report["dry_run"] and report["dead_workers"] == plan["dead_workers"]
    assert {o["message_id"]: (o["outcome"], o["running"], o["attempt"]) for o in report["orphans"]} == decisions
    assert inspector.orphans().total == 0 and inspector.worker(victim.worker_id).state == DEAD
    assert inspector.counters().of(RECOVERED) == 3
    # The messages are back on their queue (under new redis message ids), for the next worker
    assert cluster.client.llen("%s:%s" % (cluster.names.broker, cluster.names.queue)) == 3
    assert report["left_out"] == [] and plan["left_out"] == []
    # And a second recovery finds nothing more to do
    again = run("recover", *broker, env=env)
    assert again.returncode == RET_OK and "Declared 0 workers dead (none) and settled 0 messages." in again.stdout


@pytest.mark.abort
def test_abort_asks_dramatiq_abort_to_stop_a_running_message_and_remembers_it(
    redis_url: str, base: list[str], cluster: Cluster, producer: RedisBroker, inspector: Inspector
) -> None:
    pytest.importorskip("dramatiq_abort")
    abortable = {"TEST_ABORTABLE": "1", "TEST_ABORT_NAMESPACE": "%s:aborts:" % cluster.names.broker}
    cluster.spawn(threads=2, env=abortable)
    (worker,) = cluster.wait_registered(1)
    message = Message(queue_name=cluster.names.queue, actor_name="abortable_sleep", args=(60,), kwargs={}, options={})
    message_id = producer.enqueue(message).message_id
    wait_for(lambda: message_id in cluster.store.inflight(worker.worker_id), 20, message="recorded")

    aborted = run(
        "abort",
        message_id,
        "--broker",
        "tests.apps.worker_app:broker",
        env=app_env(redis_url, cluster.names, **abortable),
    )

    assert aborted.returncode == RET_OK, aborted.stderr
    assert aborted.stdout.startswith("Abort of message %s requested" % message_id)
    wait_for(lambda: cluster.client.llen(cluster.names.report + ":aborted") == 1, 20, message="aborted")
    view = inspector.message(message_id)
    assert view is not None and view.history is not None and view.history.abort == "abort"
    assert "abort-requested" in [event.kind for event in view.events]
    # A message nobody knows is refused (a typo, say), and nothing is sent; --force sends it anyway
    env = app_env(redis_url, cluster.names, **abortable)
    unknown = run("abort", "no-such-message", "--broker", "tests.apps.worker_app:broker", env=env)
    one_line_error(unknown, RET_NOT_FOUND, "'no-such-message' is unknown", "--force")
    assert inspector.message("no-such-message") is None
    forced = run("abort", "no-such-message", "--cancel", "--force", "--broker", "tests.apps.worker_app:broker", env=env)
    assert forced.returncode == RET_OK and inspector.message("no-such-message") is not None
    # A message the RedisBroker holds, queued, is known though the tracker never saw it run
    queued = Message(queue_name=cluster.names.queue + "_idle", actor_name="slow", args=(1,), kwargs={}, options={})
    producer.declare_queue(queued.queue_name)
    queued_id = producer.enqueue(queued).message_id
    env_idle = {**env, "TEST_QUEUE": cluster.names.queue + "_idle"}
    cancelled = run("abort", queued_id, "--cancel", "--broker", "tests.apps.worker_app:broker", env=env_idle)
    assert cancelled.returncode == RET_OK, cancelled.stderr
    # As JSON, a cancel
    cancelled = run("abort", message_id, "--cancel", "--json", "--broker", "tests.apps.worker_app:broker", env=env)
    assert cancelled.returncode == RET_OK, cancelled.stderr
    data = json.loads(cancelled.stdout)
    assert data["command"] == "abort" and data["item"] == {"message_id": message_id, "mode": "cancel"}
    # Without dramatiq-abort in the broker, it says so
    refused = run(
        "abort", message_id, "--broker", "tests.apps.worker_app:broker", env=app_env(redis_url, cluster.names)
    )
    one_line_error(refused, RET_ERROR, "Abortable")


# Bad input -----------------------------------------------------------------------------------


def test_bad_input_is_one_line_on_stderr_with_a_documented_exit_code_and_nothing_deleted(
    redis_url: str,
    redis_client: redis.Redis,
    base: list[str],
    namespaces: Namespaces,
    store: InspectionStore,
) -> None:
    # An unreachable Redis, a malformed URL, a bad namespace
    one_line_error(run("status", "--url", "redis://127.0.0.1:1/0"), RET_ERROR, "cannot read the tracker's Redis at")
    one_line_error(run("workers", "--url", "http://localhost/"), RET_USAGE, "--url", "not a Redis URL")
    one_line_error(run("status", "--url", "redis://user:secret@127.0.0.1:1/0"), RET_ERROR, "user:***@")
    assert "secret" not in run("status", "--url", "redis://user:secret@127.0.0.1:1/0").stderr
    one_line_error(run("status", "--url", "not a url"), RET_USAGE, "not a Redis URL")
    one_line_error(run("inflight", "--url", redis_url, "--namespace", "a{b}"), RET_USAGE, "namespace")
    one_line_error(run("status", env={"REDIS_URL": "http://x"}), RET_USAGE, "$REDIS_URL")

    # A namespace with no tracker data
    empty = ["--url", redis_url, "--namespace", namespaces.tracker + "-nothing"]
    for command in (["status"], ["workers"], ["inflight"], ["orphans"], ["locks"], ["events"], ["message", "m"]):
        one_line_error(run(*command, *empty), RET_NOT_FOUND, "has no tracker data")
    one_line_error(run("unlock", "d", *empty), RET_NOT_FOUND, "has no tracker data")

    # Unknown ids and digests in a namespace in use: nothing deleted
    store.acquire_lock("digest-1", "m1", 0, "until_executed", "charge", "q", "", None)
    before = dump(redis_client, "{%s}:*" % namespaces.tracker)
    one_line_error(run("message", "no-such-message", *base), RET_NOT_FOUND, "'no-such-message' is unknown")
    one_line_error(run("unlock", "no-such-digest", *base), RET_NOT_FOUND, "'no-such-digest'", "nothing deleted")
    assert dump(redis_client, "{%s}:*" % namespaces.tracker) == before
    # (and a known one, as JSON)
    unlocked = run("unlock", "digest-1", *base, "--json")
    assert unlocked.returncode == RET_OK and json.loads(unlocked.stdout)["item"]["message_id"] == "m1"
    assert store.lock("digest-1") is None

    # A broker module that does not import, or has no tracker
    one_line_error(run("recover", "--broker", "no_such_module_here"), RET_USAGE, "cannot import 'no_such_module_here'")
    one_line_error(run("recover", "--broker", "tests.support:ROOT"), RET_USAGE, "not a dramatiq broker")
    one_line_error(run("abort", "m1", "--broker", "tests.apps.worker_app:broker"), RET_USAGE, "KeyError")
    # Usage errors: argparse's own lines
    assert run("inflight", *base, "--older-than", "30").returncode == RET_USAGE
    one_line_error(run("events", *base, "--kind", "recoverd"), RET_USAGE, "unknown event kind 'recoverd'")
    assert run("check", *base, "--host", "h", "--worker-id", "w").returncode == RET_USAGE

    # check: unreachable is an error, unless --unreachable-ok
    one_line_error(run("check", "--url", "redis://127.0.0.1:1/0"), RET_ERROR, "cannot read")
    tolerant = run("check", "--url", "redis://127.0.0.1:1/0", "--unreachable-ok")
    assert tolerant.returncode == RET_OK and "warning" in tolerant.stderr and "Traceback" not in tolerant.stderr


def test_corrupt_and_foreign_records_are_warned_about_skipped_and_left_alone(
    cluster: Cluster, base: list[str], producer: RedisBroker
) -> None:
    worker, (message_id,) = cluster.busy_worker(producer, 1, threads=2)
    keys = cluster.store.keys
    cluster.client.hset(keys.workers, "foreign", "not json")
    cluster.client.hset(keys.inflight(worker.worker_id), "garbage", '{"a": 1}')

    listed = run("inflight", *base)
    assert listed.returncode == RET_OK and message_id in listed.stdout and "garbage" not in listed.stdout
    warnings = listed.stderr.strip().splitlines()
    assert len(warnings) == 2 and all(line.startswith("warning: skipped an unreadable entry") for line in warnings)
    assert any("foreign" in line for line in warnings) and any("garbage" in line for line in warnings)
    status = run("status", *base, "--json")
    assert status.returncode == RET_OK and len(json.loads(status.stdout)["problems"]) == 2
    assert len(status.stderr.strip().splitlines()) == 2
    workers = run("workers", *base)
    assert workers.returncode == RET_OK and "foreign" in workers.stderr and "foreign" not in workers.stdout
    assert cluster.client.hget(keys.workers, "foreign") == b"not json"
    assert cluster.client.hget(keys.inflight(worker.worker_id), "garbage") == b'{"a": 1}'
    cluster.client.hdel(keys.inflight(worker.worker_id), "garbage")


def test_the_exporter_without_prometheus_client_names_the_extra() -> None:
    code = (
        "import sys; sys.modules['prometheus_client'] = None\n"
        "from dramatiq_tracker.ops.cli import main\n"
        "sys.exit(main(['exporter', '--port', '0', '--url', 'redis://127.0.0.1:1/0']))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=command_env(), capture_output=True, text=True, timeout=60
    )
    one_line_error(result, RET_ERROR, "pip install 'dramatiq-tracker[exporter]'")


def test_connection_settings_come_from_the_environment(
    redis_url: str, namespaces: Namespaces, store: InspectionStore
) -> None:
    store.acquire_lock("digest-1", "m1", 0, "until_executed", "charge", "q", "", None)
    tracker_env = {"DRAMATIQ_TRACKER_REDIS_URL": redis_url, "DRAMATIQ_TRACKER_NAMESPACE": namespaces.tracker}
    assert run("locks", env=tracker_env).returncode == RET_OK
    # REDIS_URL when DRAMATIQ_TRACKER_REDIS_URL is not set; DRAMATIQ_TRACKER_REDIS_URL first
    assert run("locks", env={"REDIS_URL": redis_url, "DRAMATIQ_TRACKER_NAMESPACE": namespaces.tracker}).returncode == 0
    first = run("locks", env={**tracker_env, "REDIS_URL": "redis://127.0.0.1:1/0"})
    assert first.returncode == RET_OK
    # --url and --namespace win
    wrong = run("locks", "--namespace", namespaces.tracker + "-other", env=tracker_env)
    assert wrong.returncode == RET_NOT_FOUND
