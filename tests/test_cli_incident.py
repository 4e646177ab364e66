"""What an incident needs from the ``dramatiq-tracker`` command, on real worker processes: every read
command takes the application's broker, the status says when no live worker sweeps and what to run,
what the broker holds on each queue, a recovery says what it left out and why, and fields that do not
hold what they should are reported, not read as 0."""

from __future__ import annotations

import json
import re
import signal

import pytest
import redis
from dramatiq.brokers.redis import RedisBroker
from dramatiq.message import Message

from dramatiq_tracker.keys import identity_digest
from dramatiq_tracker.ops.cli import RET_NOT_FOUND, RET_OK, RET_USAGE
from dramatiq_tracker.ops.inspection import GONE
from dramatiq_tracker.ops.reads import InspectionStore

from .conftest import Cluster, Namespaces
from .dashboard_seed import BROKER_IDENTITY, SeedRecord, register_worker
from .support import RABBITMQ_URL, kill, process_gone, send, wait_for
from .test_cli import app_env, assert_documented, column, one_line_error, run, start

pytestmark = pytest.mark.slow

BROKER = ("--broker", "tests.apps.worker_app:broker")


def cells(out: str, title: str) -> list[dict[str, str]]:
    """The rows of the table whose header holds ``title``, by column (no cell holds a space)."""
    lines = out.splitlines()
    header = next(index for index, line in enumerate(lines) if title in line.split() and line.split()[0].isupper())
    titles = lines[header].split()
    rows = []
    for line in lines[header + 1 :]:
        if not line.strip():
            break
        rows.append(dict(zip(titles, line.split(), strict=True)))
    return rows


def test_every_read_command_takes_the_applications_broker(
    redis_url: str, cluster: Cluster, producer: RedisBroker
) -> None:
    worker, (message_id,) = cluster.busy_worker(producer, 1)
    env = app_env(redis_url, cluster.names)

    # The tracker's Redis and namespace are the broker's tracker's: nothing to repeat by hand
    for command in (
        ("status",),
        ("workers",),
        ("inflight",),
        ("message", message_id),
        ("check", "--worker-id", worker.worker_id),
    ):
        result = run(*command, *BROKER, "--json", env=env)
        assert result.returncode == RET_OK, (command, result.stderr)
        assert json.loads(result.stdout)["namespace"] == cluster.names.tracker
    for command in (("orphans",), ("locks",), ("events",)):
        assert run(*command, *BROKER, env=env).returncode == RET_OK, command
    assert run("unlock", "no-such-digest", *BROKER, env=env).returncode == RET_NOT_FOUND
    watched = start("watch", "--interval", "0.2", *BROKER, env=env)
    assert watched.stdout is not None
    seen = [watched.stdout.readline() for _ in range(3)]
    watched.send_signal(signal.SIGINT)
    watched.communicate(timeout=30)
    assert any(
        "Namespace %s on redis://127.0.0.1:6379/0 (the tracker of tests.apps.worker_app:broker)" % cluster.names.tracker
        in line
        for line in seen
    ), seen
    # Another namespace than its tracker's, or --url beside it, is a usage error
    one_line_error(
        run("status", *BROKER, "--namespace", "other", env=env),
        RET_USAGE,
        "uses namespace %r, not 'other'" % cluster.names.tracker,
    )


def test_the_status_says_what_no_live_worker_sweeps_and_what_to_run(
    redis_url: str, cluster: Cluster, producer: RedisBroker
) -> None:
    # Given the only worker of the application SIGKILLed with two messages running
    victim, ids = cluster.busy_worker(producer, 2)
    kill(victim.pid)
    wait_for(lambda: process_gone(victim.pid), 5, message="the process torn down")
    base = ["--url", redis_url, "--namespace", cluster.names.tracker]

    # Then, at once, it is gone (dead, not recovered yet), and the status says that nobody sweeps its
    # orphans, and what to run
    status = run("status", *base)
    assert status.returncode == RET_OK
    assert "Workers:    0 alive, 0 stopping, 1 gone, 0 unresponsive" in status.stdout, status.stdout
    assert "2 orphans waiting, the oldest for" in status.stdout
    assert (
        "Not swept:  no live worker of broker %s sweeps: 2 orphans of its dead workers (%s)"
        % (
            victim.broker_identity,
            victim.worker_id,
        )
        in status.stdout
    )
    assert "dramatiq-tracker recover --broker" in status.stdout
    item = json.loads(run("status", *base, "--json").stdout)["item"]
    assert item["workers"][GONE] == 1 and item["oldest_orphan"] >= 0
    assert item["unswept"] == [{"broker_identity": victim.broker_identity, "workers": [victim.worker_id], "orphans": 2}]
    workers = run("workers", *base)
    column(workers.stdout, "WORKER", "STATE", GONE)
    # (known from its process gone on this host, or from its presence connection: whichever is seen first)
    assert re.search(r"dead, not recovered yet \((process exited|presence lost)\)", workers.stdout), workers.stdout

    # And once recovered as it said, nothing is left unswept
    env = app_env(redis_url, cluster.names)
    done = json.loads(run("recover", *BROKER, "--json", env=env).stdout)["item"]
    assert done["dead_workers"] == [victim.worker_id] and done["left_out"] == []
    assert sorted(o["message_id"] for o in done["orphans"]) == sorted(ids)
    assert json.loads(run("status", *base, "--json").stdout)["item"]["unswept"] == []


def test_a_recovery_says_which_orphans_it_leaves_out_and_why(
    redis_url: str, redis_client: redis.Redis, namespaces: Namespaces, store: InspectionStore
) -> None:
    # Given a registration with a record but no heartbeat deadline (written by hand: no sweep finds it)
    now = store.server_time()
    register_worker(store, "w-stranded", [SeedRecord("m-1", "a", "q", now)], alive=False)
    redis_client.zrem(store.keys.deadlines(identity_digest(BROKER_IDENTITY)), "w-stranded")
    env = app_env(redis_url, namespaces)

    # Then the status reports it, and a recovery (or its plan) that takes nothing says why
    status = run("status", "--url", redis_url, "--namespace", namespaces.tracker)
    assert "1 orphan waiting" in status.stdout and "no sweep finds it" in status.stderr
    plan = run("recover", *BROKER, "--dry-run", env=env)
    assert plan.returncode == RET_OK, plan.stderr
    assert "Left out: worker w-stranded (unresponsive) with 1 orphan: it has no heartbeat deadline" in plan.stdout
    left = json.loads(run("recover", *BROKER, "--dry-run", "--json", env=env).stdout)["item"]["left_out"]
    assert [(w["worker_id"], w["orphans"]) for w in left] == [("w-stranded", 1)]
    # A dead worker of another application's broker is its own recovery's
    redis_client.zadd(store.keys.deadlines(identity_digest(BROKER_IDENTITY)), {"w-stranded": now - 1000})
    other = run("recover", *BROKER, "--dry-run", env=env)
    assert (
        "it consumes from another broker (redis://seeded:6379/0): recover it with that application's --broker"
        in other.stdout
    )


def test_fields_that_do_not_hold_a_number_are_reported_by_the_command(
    redis_url: str, redis_client: redis.Redis, namespaces: Namespaces, store: InspectionStore
) -> None:
    keys = store.keys
    redis_client.hset(keys.message("m-1"), mapping={"recoveries": "abc", "attempt": "1"})
    store.acquire_lock("d-1", "m-1", 0, "until_executed", "charge", "q", "", None)
    redis_client.hset(keys.lock("d-1"), "acquired_at", "never")
    base = ["--url", redis_url, "--namespace", namespaces.tracker]

    message = run("message", "m-1", *base)
    assert message.returncode == RET_OK and "recovered 0 times" in message.stdout
    assert (
        "warning: skipped an unreadable entry (left as it is): %s recoveries: not a whole number: 'abc'"
        % keys.message("m-1")
        in message.stderr
    )
    assert [p["field"] for p in json.loads(run("message", "m-1", *base, "--json").stdout)["problems"]] == ["recoveries"]
    locks = run("locks", *base)
    assert cells(locks.stdout, "DIGEST")[0]["HELD"] == "-"
    assert "acquired_at: not a time in ms: 'never'" in locks.stderr
    assert [p["field"] for p in json.loads(run("locks", *base, "--json").stdout)["problems"]] == ["acquired_at"]


def test_the_status_shows_what_a_redisbroker_holds_on_each_queue(
    redis_url: str, namespaces: Namespaces, producer: RedisBroker, store: InspectionStore
) -> None:
    # Given three messages waiting on the application's queue (no worker), one delayed, one dead-lettered
    store.acquire_lock("d-1", "m-1", 0, "until_executed", "charge", "q", "", None)  # (the namespace is in use)
    producer.declare_queue(namespaces.queue)
    send(producer, namespaces.queue, "slow", 3)
    delayed = Message(queue_name=namespaces.queue, actor_name="slow", args=(9,), kwargs={}, options={})
    producer.enqueue(delayed, delay=3_600_000)
    env = app_env(redis_url, namespaces)

    status = run("status", *BROKER, env=env)
    assert status.returncode == RET_OK, status.stderr
    assert "Messages the broker holds:" in status.stdout
    assert cells(status.stdout, "READY")[0] == {
        "QUEUE": namespaces.queue,
        "READY": "3",
        "UNACKED": "0",
        "DELAYED": "1",
        "DEAD": "0",
        "WAITING": cells(status.stdout, "READY")[0]["WAITING"],
    }
    assert_documented(status.stdout)
    (depth,) = json.loads(run("status", *BROKER, "--json", env=env).stdout)["item"]["broker_queues"]
    assert (depth["queue_name"], depth["ready"], depth["unacked"], depth["delayed"], depth["dead_letters"]) == (
        namespaces.queue,
        3,
        0,
        1,
        0,
    )
    assert depth["oldest_age"] is not None and depth["oldest_age"] >= 0


@pytest.mark.rabbitmq
def test_the_status_shows_what_rabbitmq_holds_on_each_queue(
    redis_url: str, namespaces: Namespaces, rabbitmq: object, store: InspectionStore
) -> None:
    store.acquire_lock("d-1", "m-1", 0, "until_executed", "charge", "q", "", None)
    for index in range(2):
        message = Message(queue_name=namespaces.queue, actor_name="slow", args=(index,), kwargs={}, options={})
        rabbitmq.enqueue(message)  # type: ignore[attr-defined]
    env = {**app_env(redis_url, namespaces), "TEST_BROKER_KIND": "rabbitmq", "TEST_BROKER_URL": RABBITMQ_URL}

    found = wait_for(
        lambda: (
            (depths := json.loads(run("status", *BROKER, "--json", env=env).stdout)["item"]["broker_queues"])
            and depths[0]["ready"] == 2
            and depths
        ),
        30,
        message="two messages ready",
    )
    (depth,) = found
    # RabbitMQ tells how many are ready, not how many are unacked nor how old the oldest is
    assert (depth["queue_name"], depth["unacked"], depth["oldest_age"]) == (namespaces.queue, None, None)
    assert run("status", *BROKER, env=env).returncode == RET_OK
