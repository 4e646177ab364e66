"""The Dramatiq app that the tests run in real ``dramatiq`` worker processes.

Everything comes from environment variables that ``tests/support.py`` sets,
so that every test has its own queues and namespaces on the shared servers.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import dramatiq
import redis
from dramatiq.middleware import CurrentMessage

from tests.apps.environment import broker_from_environment, tracker_from_environment

QUEUE = os.environ["TEST_QUEUE"]
#: Where the actors report what they did, on the shared test Redis.
REPORT_PREFIX = os.environ["TEST_REPORT_PREFIX"]
report = redis.Redis.from_url(os.environ["TEST_REPORT_URL"])

broker = broker_from_environment("TEST")
broker.add_middleware(CurrentMessage())

#: With TEST_ABORTABLE=1, dramatiq-abort's middleware, its events in the report Redis.
ABORTABLE = os.environ.get("TEST_ABORTABLE") == "1"
if ABORTABLE:
    from dramatiq_abort import Abortable
    from dramatiq_abort.backends import RedisBackend

    broker.add_middleware(
        Abortable(
            backend=RedisBackend(client=report, namespace=os.environ["TEST_ABORT_NAMESPACE"]),
            abort_ttl=int(os.environ.get("TEST_ABORT_TTL", "90000")),
        )
    )

tracker = tracker_from_environment(
    max_recoveries=int(os.environ.get("TEST_MAX_RECOVERIES", "3")),
    preview_length=int(os.environ.get("TEST_PREVIEW_LENGTH", "24")),
)
broker.add_middleware(tracker)
dramatiq.set_broker(broker)

#: How long ``slow`` sleeps in this process, in seconds.
SLOW_SECONDS = float(os.environ.get("TEST_SLOW_SECONDS", "60"))

#: Actors this process does not declare (a pool of workers that does not import them).
SKIPPED_ACTORS = set(filter(None, os.environ.get("TEST_SKIP_ACTORS", "").split(",")))


def declare(**options: object) -> Any:
    """``dramatiq.actor`` on the test queue, unless this process skips the actor."""

    def decorate(fn: Any) -> Any:
        if fn.__name__ in SKIPPED_ACTORS:
            return fn
        return dramatiq.actor(fn, queue_name=options.pop("queue_name", QUEUE), **options)

    return decorate


def _report(event: str) -> None:
    message = CurrentMessage.get_current_message()
    assert message is not None
    report.rpush("%s:%s" % (REPORT_PREFIX, event), "%s|%d|%f" % (message.message_id, os.getpid(), time.time()))


@dramatiq.actor(queue_name=QUEUE, max_retries=0)
def slow(index: int) -> None:
    _report("started")
    time.sleep(SLOW_SECONDS)
    _report("done")


@dramatiq.actor(queue_name=QUEUE, max_retries=0)
def fast(index: int) -> None:
    _report("started")
    _report("done")


@dramatiq.actor(queue_name=QUEUE, max_retries=0, on_recovery_exhausted="exhausted")
def suicide(delay: float) -> None:
    """Kill this worker process, as the OOM killer would, after ``delay`` seconds of work."""
    _report("started")
    time.sleep(delay)
    os.kill(os.getpid(), signal.SIGKILL)


@dramatiq.actor(queue_name=QUEUE, max_retries=0)
def exhausted(message: dict, info: dict) -> None:  # type: ignore[type-arg]
    """The on_recovery_exhausted callback: reports the quarantined message's id."""
    report.rpush(
        "%s:exhausted" % REPORT_PREFIX, "%s|%d|%d" % (message["message_id"], info["recoveries"], info["max_recoveries"])
    )


@dramatiq.actor(queue_name=QUEUE, max_retries=0)
def sleep(seconds: float) -> None:
    _report("started")
    time.sleep(seconds)
    _report("done")


@dramatiq.actor(queue_name=QUEUE, max_retries=0, unique=True)
def unique_slow(index: int) -> None:
    """until_executed: one message per index queued or running at a time."""
    _report("started")
    time.sleep(SLOW_SECONDS)
    _report("done")


@dramatiq.actor(queue_name=QUEUE, max_retries=0, unique="while_executing")
def unique_running(index: int) -> None:
    """while_executing: one message per index running at a time."""
    _report("started")
    time.sleep(SLOW_SECONDS)
    _report("done")


if ABORTABLE:
    from dramatiq_abort import Abort

    def _sleep_abortably(seconds: float) -> None:
        """Sleep ``seconds``, reporting an abort (which it raises again)."""
        try:
            # Short sleeps: an abort lands between two of them.
            for _ in range(int(seconds * 20)):
                time.sleep(0.05)
        except Abort:
            _report("aborted")
            raise

    @dramatiq.actor(queue_name=QUEUE, max_retries=0, abortable=True, throws=(Abort,))
    def abortable_sleep(seconds: float) -> None:
        _report("started")
        _sleep_abortably(seconds)
        _report("done")


def _pause_heartbeat(seconds: float) -> None:
    """Stall this process's tracker heartbeat thread for ``seconds``, as a partition would, while
    everything else keeps running (a test hook: it reaches into the tracker's session)."""
    session = tracker._process
    assert session is not None
    recorder = session.recorder
    original = recorder.beat
    resume_at = time.monotonic() + seconds

    def stalled_beat() -> str:
        time.sleep(max(0.0, resume_at - time.monotonic()))
        recorder.beat = original  # type: ignore[method-assign]
        return original()

    recorder.beat = stalled_beat  # type: ignore[method-assign]


def _partitioned(seconds: float, pause: float) -> None:
    _report("started")
    # Only the first attempt stalls its worker's heartbeat; the recovered copy runs normally.
    message = CurrentMessage.get_current_message()
    if message is not None and "tracker_recoveries" not in message.options:
        _pause_heartbeat(pause)
    for _ in range(int(seconds * 20)):
        time.sleep(0.05)
    _report("done")


@dramatiq.actor(queue_name=QUEUE, max_retries=0, unique=True)
def partitioned(seconds: float, pause: float) -> None:
    """Run ``seconds`` while this worker's heartbeat stalls for ``pause`` seconds."""
    _partitioned(seconds, pause)


if ABORTABLE:

    @dramatiq.actor(queue_name=QUEUE, max_retries=0, unique=True, abortable=True, throws=(Abort,))
    def abortable_partitioned(seconds: float, pause: float) -> None:
        try:
            _partitioned(seconds, pause)
        except Abort:
            _report("aborted")
            raise

    @dramatiq.actor(queue_name=QUEUE, max_retries=0, abortable=True, throws=(Abort,))
    def abortable_fail_first(seconds: float) -> None:
        """Run ``seconds``, then fail on the first attempt; a recovered attempt succeeds."""
        first = _first_attempt()
        _report("started")
        _sleep_abortably(seconds)
        if first:
            _report("failed")
            raise RuntimeError("the first attempt fails")
        _report("done")


def _first_attempt() -> bool:
    message = CurrentMessage.get_current_message()
    return message is not None and "tracker_attempt" not in message.options


@declare(max_retries=0, unique=True)
def stall_at_start(index: int) -> None:
    """Stop this whole process right after starting, on its first attempt: no record is written
    before the stop (a GIL hold or a frozen VM at the worst moment)."""
    _report("started")
    if _first_attempt():
        os.kill(os.getpid(), signal.SIGSTOP)
    time.sleep(SLOW_SECONDS)
    _report("done")


@declare(max_retries=0, max_recoveries=0)
def once(index: int) -> None:
    """At most once: never run again after a crash."""
    _report("started")
    time.sleep(SLOW_SECONDS)
    _report("done")


@declare(max_retries=2, min_backoff=10, max_backoff=50, max_recoveries=0)
def flaky(index: int) -> None:
    """At most once after a crash, but retried by Dramatiq: fails its first try, succeeds on a retry."""
    _report("started")
    message = CurrentMessage.get_current_message()
    if message is not None and not message.options.get("retries"):
        raise RuntimeError("first try fails")
    _report("done")


def _held_until_released(limit: float) -> None:
    """Work until the test releases this message (``release(...)`` in tests/support.py), or ``limit`` s."""
    message = CurrentMessage.get_current_message()
    assert message is not None
    key = "%s:release:%s" % (REPORT_PREFIX, message.message_id)
    deadline = time.monotonic() + limit
    while not report.exists(key) and time.monotonic() < deadline:
        time.sleep(0.05)


@declare(max_retries=0)
def held(limit: float) -> None:
    """Run until released: a message that outlasts whatever the test does to its worker meanwhile."""
    _report("started")
    _held_until_released(limit)
    _report("done")


@declare(max_retries=0)
def fail_when_released(limit: float) -> None:
    """Run until released, then fail: dead-lettered."""
    _report("started")
    _held_until_released(limit)
    _report("failed")
    raise RuntimeError("expected failure")


@declare(max_retries=0)
def hold_gil(seconds: float) -> None:
    """Hold the GIL for ``seconds`` (a C call that never releases it): every thread of this process
    stops, the tracker's too, while its sockets stay open."""
    import ctypes

    _report("started")
    ctypes.PyDLL(None).sleep(int(seconds))
    _report("done")


@declare(max_retries=2, min_backoff=10, max_backoff=50, max_recoveries=0)
def stall_then_fail(pause: float) -> None:
    """At most once after a crash, retried by Dramatiq: its first try stalls this worker's heartbeat past
    heartbeat_timeout (it is declared dead while alive), then fails; a retry succeeds."""
    _report("started")
    message = CurrentMessage.get_current_message()
    if message is not None and not message.options.get("retries"):
        _pause_heartbeat(pause)
        time.sleep(pause + 0.5)
        raise RuntimeError("first try fails")
    _report("done")


@declare(max_retries=0)
def fork_and_hold(limit: float) -> None:
    """Fork a child (multiprocessing, fork) that outlives this worker process, sending messages now and
    then through the broker it inherited; then run until released."""
    import multiprocessing

    def child() -> None:
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            broker.enqueue(
                dramatiq.Message(queue_name=QUEUE + "_child", actor_name="fast", args=(0,), kwargs={}, options={})
            )
            time.sleep(0.5)

    process = multiprocessing.get_context("fork").Process(target=child, daemon=False)
    process.start()
    report.rpush("%s:forked" % REPORT_PREFIX, str(process.pid))
    _report("started")
    _held_until_released(limit)
    _report("done")
