"""The pytest plugin with applications as they are: their own middleware stacks, suites that are run
again against the same Redis, their own StubBroker fixtures, a tracker Redis that is down.  Inner
pytest sessions in subprocesses (pytester), the plugin loaded from its entry point, the test Redis."""

from __future__ import annotations

import logging
import textwrap
import threading
from collections.abc import Iterator

import dramatiq
import pytest
import redis
from dramatiq.brokers.stub import StubBroker

from dramatiq_tracker import TrackerMiddleware, testing

from .support import free_port, unique

pytest_plugins = ["pytester"]


def _inner(pytester: pytest.Pytester, redis_url: str, *args: str) -> pytest.RunResult:
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", "--tracker-redis-url", redis_url, *args, timeout=240)


# The application's middleware stack ----------------------------------------------------------------

#: A RedisBroker application with middleware of its own around its tracker: AsyncIO (an async actor),
#: CurrentMessage (an actor reads its message), TimeLimit (an actor's time_limit), and a middleware
#: of its own after the tracker.
STACK_APP = '''
    import asyncio
    import os
    import time

    import dramatiq
    from dramatiq.brokers.redis import RedisBroker
    from dramatiq.middleware import AsyncIO, CurrentMessage, Middleware

    from dramatiq_tracker import ATTEMPT_OPTION, TrackerMiddleware


    class Audit(Middleware):
        """The application's own middleware: it sees every message."""

        def __init__(self):
            self.seen = []

        def before_process_message(self, broker, message):
            self.seen.append(message.message_id)


    audit = Audit()
    broker = RedisBroker(url=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"), namespace="stack-app")
    broker.add_middleware(AsyncIO())
    broker.add_middleware(CurrentMessage())
    broker.add_middleware(TrackerMiddleware(namespace="stack-app", max_recoveries=1))
    broker.add_middleware(audit)
    dramatiq.set_broker(broker)

    seen = {}


    @dramatiq.actor(max_retries=0)
    async def fetch(n):
        await asyncio.sleep(0.01)
        message = CurrentMessage.get_current_message()
        seen[n] = (message.message_id, message.options.get(ATTEMPT_OPTION, 0))


    @dramatiq.actor(max_retries=0, time_limit=300)
    def slow(n):
        for _ in range(1000):
            time.sleep(0.01)
'''

#: More actors, in a module the application names after its broker module (as the dramatiq command takes them).
STACK_TASKS = """
    import dramatiq


    @dramatiq.actor(max_retries=0)
    def extra(n):
        pass
"""

STACK_CONFTEST = """
    import logging

    import pytest


    @pytest.fixture(autouse=True)
    def _no_critical_logs(caplog):
        # A middleware booted twice (TimeLimit's timer thread started again) logs a critical line.
        yield
        assert [r.getMessage() for r in caplog.records if r.levelno >= logging.CRITICAL] == []
"""

STACK_TESTS = """
    import pytest
    from dramatiq.middleware import TimeLimitExceeded

    import app
    import tasks
    from dramatiq_tracker import find_tracker


    def kinds(broker):
        return [type(m).__name__ for m in broker.middleware if type(m).__name__ != "_WorkerMiddleware"]


    @pytest.mark.parametrize("tracker_broker", ["stub", "redis"], indirect=True)
    def test_the_applications_stack_in_its_order(tracker_broker, tracker_worker, tracker_assert):
        # The application's middleware, in its order, the test's tracker in place of its own, a recorder last
        assert kinds(tracker_broker) == kinds(app.broker) + ["RunRecorder"]
        assert app.audit in tracker_broker.middleware
        assert find_tracker(tracker_broker).settings.namespace != "stack-app"
        assert find_tracker(tracker_broker).settings.max_recoveries == 1

        # An async actor runs (AsyncIO), and reads its message (CurrentMessage)
        message = app.fetch.send(1)
        tracker_assert.succeeded(message)
        assert app.seen[1] == (message.message_id, 0)
        assert message.message_id in app.audit.seen
        # The modules named after the broker module are imported, their actors declared
        tracker_assert.succeeded(tasks.extra.send(1))


    @pytest.mark.parametrize("round", [1, 2, 3])
    def test_time_limits_hold_in_every_test(tracker_stub_broker, tracker_worker, round):
        app.slow.send(round)
        with pytest.raises(TimeLimitExceeded):
            tracker_stub_broker.join(app.slow.queue_name, timeout=20_000, fail_fast=True)
"""

STACK_INI = """
    [pytest]
    tracker_app = app tasks
    filterwarnings = error
"""


@pytest.fixture
def stack_app(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makepyfile(app=textwrap.dedent(STACK_APP), tasks=textwrap.dedent(STACK_TASKS))
    pytester.makeconftest(textwrap.dedent(STACK_CONFTEST))
    pytester.makeini(textwrap.dedent(STACK_INI))
    return pytester


def test_the_fixtures_brokers_keep_the_applications_middleware(stack_app: pytest.Pytester, redis_url: str) -> None:
    # Given an application with AsyncIO, CurrentMessage and TimeLimit (an actor's time_limit) on its
    # broker, and only tracker_app configured
    stack_app.makepyfile(test_inner=textwrap.dedent(STACK_TESTS))
    # When its tests run under tracker_worker
    result = _inner(stack_app, redis_url, "-v")
    # Then they pass: an async actor, its current message, a time limit in every test
    result.assert_outcomes(passed=5)


OPT_OUT_TESTS = """
    import pytest
    from dramatiq.middleware import default_middleware

    import app


    def test_the_default_middleware_when_told(tracker_stub_broker, tracker_worker):
        names = [type(m).__name__ for m in tracker_stub_broker.middleware if type(m).__name__ != "_WorkerMiddleware"]
        assert names == [m.__name__ for m in default_middleware] + ["TrackerMiddleware", "RunRecorder"]
        app.fetch.send(1)
        with pytest.raises(RuntimeError, match="AsyncIO"):
            tracker_stub_broker.join(app.fetch.queue_name, timeout=10_000, fail_fast=True)
"""

OPT_OUT_CONFTEST = """
    from dramatiq_tracker import testing

    plain_broker = testing.broker_fixture("stub", app_middleware=False)
"""

OPT_OUT_FACTORY_TESTS = """
    from dramatiq.middleware import default_middleware


    def test_a_fixture_of_its_own_without_the_applications_middleware(plain_broker):
        names = [type(m).__name__ for m in plain_broker.middleware]
        assert names == [m.__name__ for m in default_middleware] + ["TrackerMiddleware", "RunRecorder"]
"""


def test_the_applications_middleware_can_be_left_out(stack_app: pytest.Pytester, redis_url: str) -> None:
    # With the option (or a flag), the fixtures' brokers have Dramatiq's default middleware instead
    stack_app.makepyfile(test_inner=textwrap.dedent(OPT_OUT_TESTS))
    _inner(stack_app, redis_url, "--tracker-app-middleware=false").assert_outcomes(passed=1)
    # And a fixture factory leaves it out for its own fixture
    stack_app.makeconftest(textwrap.dedent(OPT_OUT_CONFTEST))
    stack_app.makepyfile(test_inner=textwrap.dedent(OPT_OUT_FACTORY_TESTS))
    _inner(stack_app, redis_url).assert_outcomes(passed=1)
    # An invalid value is a usage error naming the option
    result = _inner(stack_app, redis_url, "--tracker-app-middleware=maybe")
    result.stderr.fnmatch_lines(["*--tracker-app-middleware must be true or false, got 'maybe'*"])


# Suites run again against the same Redis ------------------------------------------------------------

#: An application whose suite has its own StubBroker, as Dramatiq's guide has it, and a tracker on a
#: namespace of the suite's own (here given by the outer test).
STUB_APP = """
    import os

    import dramatiq
    from dramatiq.brokers.stub import StubBroker

    from dramatiq_tracker import TrackerMiddleware

    broker = StubBroker()
    broker.add_middleware(TrackerMiddleware(url=os.environ["APP_REDIS_URL"], namespace=os.environ["APP_NAMESPACE"]))
    broker.emit_after("process_boot")
    dramatiq.set_broker(broker)


    @dramatiq.actor(unique=True, max_retries=0)
    def send_receipt(order_id):
        pass
"""

STUB_CONFTEST = """
    import os

    import dramatiq
    import pytest

    import app
    from dramatiq_tracker import testing


    @pytest.fixture
    def stub_broker():
        yield app.broker
        if os.environ["APP_FLUSH"] == "testing":
            testing.flush_all(app.broker)
        else:
            app.broker.flush_all()


    @pytest.fixture
    def stub_worker(stub_broker):
        worker = dramatiq.Worker(stub_broker, worker_timeout=100)
        worker.start()
        yield worker
        worker.stop()
"""

STUB_TESTS = """
    import pytest

    import app
    from dramatiq_tracker import DuplicateMessage


    def test_one_receipt_per_order_at_a_time(stub_broker):
        app.send_receipt.send(7)
        with pytest.raises(DuplicateMessage):
            app.send_receipt.send(7)


    def test_receipts_are_sent(stub_broker, stub_worker):
        app.send_receipt.send(8)
        stub_broker.join(app.send_receipt.queue_name)
        stub_worker.join()
        app.send_receipt.send(8)
"""


@pytest.fixture
def stub_app(pytester: pytest.Pytester, redis_url: str, redis_client: redis.Redis) -> Iterator[pytest.Pytester]:
    namespace = unique("stub-app-test")
    pytester.makepyfile(app=textwrap.dedent(STUB_APP), test_receipts=textwrap.dedent(STUB_TESTS))
    pytester.makeconftest(textwrap.dedent(STUB_CONFTEST))
    pytester.makeini("[pytest]\nfilterwarnings = error\n")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("APP_REDIS_URL", redis_url)
        patch.setenv("APP_NAMESPACE", namespace)
        yield pytester
    testing.delete_keys(redis_client, testing.namespace_keys(namespace))


def test_a_stub_broker_suite_passes_twice_in_a_row_when_its_teardown_flushes_with_the_toolkit(
    stub_app: pytest.Pytester, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a suite whose broker fixture flushes with dramatiq_tracker.testing.flush_all
    monkeypatch.setenv("APP_FLUSH", "testing")
    # When it runs twice against the same Redis and namespace, Then it passes twice: the unique message
    # that never ran (the DuplicateMessage test) left no lock behind
    for _ in range(2):
        _inner(stub_app, redis_url).assert_outcomes(passed=2)


def test_a_stub_broker_suite_that_flushes_with_dramatiq_alone_fails_its_second_run(
    stub_app: pytest.Pytester, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The failure the toolkit's flush prevents: Dramatiq's flush_all() drops the message, not its lock
    monkeypatch.setenv("APP_FLUSH", "dramatiq")
    _inner(stub_app, redis_url).assert_outcomes(passed=2)
    result = _inner(stub_app, redis_url)
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*DuplicateMessage*"])


FIXTURE_TESTS = """
    import pytest
    from dramatiq.brokers.stub import StubBroker

    import app
    from dramatiq_tracker import DuplicateMessage


    @pytest.mark.parametrize("tracker_broker", ["stub", "redis"], indirect=True)
    def test_flushing_the_test_broker_releases_the_locks_of_what_it_dropped(tracker_broker, tracker_assert):
        app.send_receipt.send(7)
        delayed = app.send_receipt.send_with_options(args=(9,), delay=60_000)
        with pytest.raises(DuplicateMessage):
            app.send_receipt.send(7)
        assert len(tracker_assert.tracker.locks()) == 2
        tracker_broker.flush(app.send_receipt.queue_name)
        if isinstance(tracker_broker, StubBroker):  # its flush() leaves the delay queue: flush that too
            tracker_broker.flush(delayed.queue_name)
        tracker_assert.no_locks()
        app.send_receipt.send(7)
        tracker_broker.flush_all()
        tracker_assert.no_locks()
"""


def test_a_fixture_suite_flushes_mid_test_and_passes_twice(stub_app: pytest.Pytester, redis_url: str) -> None:
    # Given a suite on the plugin's brokers that flushes a queue mid-test; When it runs twice, Then it
    # passes twice, and each flush released the locks of the messages it dropped
    stub_app.makeini("[pytest]\ntracker_app = app\nfilterwarnings = error\n")
    stub_app.makepyfile(test_receipts=textwrap.dedent(FIXTURE_TESTS))
    for _ in range(2):
        _inner(stub_app, redis_url).assert_outcomes(passed=2)


def test_release_locks_leaves_a_lock_held_by_another_message(redis_url: str, redis_client: redis.Redis) -> None:
    namespace = unique("tracker-test")
    broker = StubBroker()
    tracker = TrackerMiddleware(url=redis_url, namespace=namespace)
    broker.add_middleware(tracker)
    try:
        actor = dramatiq.actor(unique=True, broker=broker, actor_name=unique("single"))(lambda n: None)
        # Given a unique message holding its lock, and a copy of it (a duplicate's payload)
        message = actor.send(1)
        other = message.copy(message_id="not-the-owner")
        # When the copy's locks are released, Then the owner's lock stays; the owner's own goes
        assert testing.release_locks(broker, [other.encode()]) == 0
        assert len(tracker.locks()) == 1
        assert testing.release_locks(broker, [b"not a message", message]) == 1
        assert tracker.locks() == []
    finally:
        tracker.close()
        testing.delete_keys(redis_client, testing.namespace_keys(namespace))


# A tracker Redis that is down ------------------------------------------------------------------


def test_with_the_trackers_redis_down_a_stub_suite_still_runs_its_messages(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Given a StubBroker application whose tracker's Redis does not answer
    broker = StubBroker()
    tracker = TrackerMiddleware(url="redis://127.0.0.1:%d/0" % free_port(), namespace=unique("tracker-test"))
    broker.add_middleware(tracker)
    broker.emit_after("process_boot")
    ran: list[int] = []
    done = threading.Event()

    def note(n: int) -> None:
        ran.append(n)
        if len(ran) == 2:
            done.set()

    actor = dramatiq.actor(unique=True, broker=broker, actor_name=unique("receipt"))(note)
    worker = dramatiq.Worker(broker, worker_timeout=100, worker_threads=1)
    worker.start()
    try:
        with caplog.at_level(logging.WARNING, logger="dramatiq_tracker"):
            # When a unique message is sent twice, and the queue is flushed with the toolkit
            actor.send(7)
            actor.send(7)
            assert done.wait(10)
            testing.flush_all(broker)
        # Then both ran (no lock could be taken: uniqueness is off for the outage), nothing raised, and
        # the outage was logged once, not once per message
        assert ran == [7, 7]
        outages = [r for r in caplog.records if "unreachable" in r.getMessage()]
        assert len(outages) == 1, [r.getMessage() for r in caplog.records]
    finally:
        worker.stop()
        tracker.close()
        broker.close()
