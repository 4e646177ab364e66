"""Test helpers and pytest fixture factories for applications that use dramatiq-tracker.

The pytest plugin (:mod:`dramatiq_tracker.pytest_plugin`, registered under the ``pytest11`` entry
point) makes its ``tracker_*`` fixtures with the factories at the end of this module; an application
may call them to make variants of its own.  Everything else here works without pytest's fixtures too:
a real Redis found once per session, a namespace per test whose keys are deleted after it, brokers
with a :class:`~dramatiq_tracker.TrackerMiddleware` on fast timings, in-process workers, crashes
(a worker subprocess SIGKILLed, or an in-process worker declared dead) and assertions about what the
tracker did.  See docs/testing.md.

Timings are in milliseconds, as everywhere in Dramatiq; waits are in seconds, and every wait ends as
soon as what it waits for happens: its timeout only bounds a failure.
"""

from __future__ import annotations

from ..connection import delete_keys
from ..pytest_plugin import OPTIONS
from .boot import boot_worker
from .brokers import (
    application_broker,
    broker_middleware,
    close_broker,
    import_app,
    installed,
    make_redis_broker,
    make_stub_broker,
    make_tracker,
    start_worker,
    stop_worker,
)
from .checks import TrackerChecks
from .config import (
    BROKER_KINDS,
    DEFAULT_WORKER_THREADS,
    STARTUP_TIMEOUT,
    TEST_TIMINGS,
    WORKER_ENVIRONMENT_VARIABLE,
    WORKER_TIMEOUT,
    TrackerTestConfig,
    TrackerTestError,
    load_config,
)
from .crashes import CrashedWorker, Crashes, WorkerProcess
from .fixtures import (
    broker_fixture,
    checks_fixture,
    crashes_fixture,
    namespace_fixture,
    provide_broker,
    provide_checks,
    provide_crashes,
    provide_namespace,
    provide_redis_client,
    provide_redis_url,
    provide_selected_broker,
    provide_worker,
    redis_client_fixture,
    redis_url_fixture,
    selected_broker_fixture,
    worker_fixture,
)
from .flushing import RedisTestBroker, StubTestBroker, flush, flush_all, release_locks
from .runs import Run, RunRecorder, find_run_recorder, read_runs, runs_key
from .servers import TrackerRedis, find_redis, namespace_keys, new_namespace

__all__ = [
    "BROKER_KINDS",
    "CrashedWorker",
    "Crashes",
    "DEFAULT_WORKER_THREADS",
    "OPTIONS",
    "RedisTestBroker",
    "Run",
    "RunRecorder",
    "STARTUP_TIMEOUT",
    "StubTestBroker",
    "TEST_TIMINGS",
    "TrackerChecks",
    "TrackerRedis",
    "TrackerTestConfig",
    "TrackerTestError",
    "WORKER_ENVIRONMENT_VARIABLE",
    "WORKER_TIMEOUT",
    "WorkerProcess",
    "application_broker",
    "boot_worker",
    "broker_fixture",
    "broker_middleware",
    "checks_fixture",
    "close_broker",
    "crashes_fixture",
    "delete_keys",
    "find_redis",
    "find_run_recorder",
    "flush",
    "flush_all",
    "import_app",
    "installed",
    "load_config",
    "make_redis_broker",
    "make_stub_broker",
    "make_tracker",
    "namespace_fixture",
    "namespace_keys",
    "new_namespace",
    "provide_broker",
    "provide_checks",
    "provide_crashes",
    "provide_namespace",
    "provide_redis_client",
    "provide_redis_url",
    "provide_selected_broker",
    "provide_worker",
    "read_runs",
    "redis_client_fixture",
    "redis_url_fixture",
    "release_locks",
    "runs_key",
    "selected_broker_fixture",
    "start_worker",
    "stop_worker",
    "worker_fixture",
]
