"""pytest fixture factories: each returns a fixture; the plugin assigns them to ``tracker_*`` names."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import redis
from dramatiq.middleware import Middleware

from ..brokers import REDIS, STUB, as_redis_broker
from ..connection import delete_keys

if TYPE_CHECKING:
    from dramatiq import Broker, Worker

from .brokers import (
    _client,
    _tracker_of,
    application_broker,
    close_broker,
    installed,
    make_redis_broker,
    make_stub_broker,
    start_worker,
    stop_worker,
)
from .checks import TrackerChecks
from .config import BROKER_KINDS, TrackerTestError, load_config
from .crashes import Crashes
from .servers import find_redis, namespace_keys, new_namespace

# Fixture factories ---------------------------------------------------------------------------------
#
# Each returns a pytest fixture; assign it to a name in a conftest.py or a plugin module.  Fixtures
# they depend on are named by argument (``request.getfixturevalue``), so that variants compose.


def redis_url_fixture(url: str | None = None) -> Any:
    """A session-scoped fixture: the URL of the test Redis (:func:`~dramatiq_tracker.testing.find_redis`, with
    ``url``, else the ``tracker_redis_url`` option); an embedded server it starts is shut down after the session."""

    @pytest.fixture(scope="session")
    def tracker_redis_url(request: pytest.FixtureRequest) -> Iterator[str]:
        config = load_config(request.config)
        try:
            server = find_redis(url or config.redis_url)
        except TrackerTestError as e:
            pytest.fail(str(e), pytrace=False)
        with contextlib.closing(_client(server.url)) as client:
            try:
                client.ping()
            except redis.RedisError as e:
                server.close()
                pytest.fail(
                    "The tracker fixtures' Redis %s (%s) does not answer: %s" % (server.url, server.source, e),
                    pytrace=False,
                )
        try:
            yield server.url
        finally:
            server.close()

    return tracker_redis_url


def redis_client_fixture(url_fixture: str = "tracker_redis_url") -> Any:
    """A fixture: a ``redis.Redis`` client of the test Redis, closed after the test."""

    @pytest.fixture
    def tracker_redis(request: pytest.FixtureRequest) -> Iterator[redis.Redis]:
        client = _client(request.getfixturevalue(url_fixture))
        try:
            yield client
        finally:
            client.close()

    return tracker_redis


def namespace_fixture(client_fixture: str = "tracker_redis", prefix: str = "tracker-test") -> Any:
    """A fixture: a tracker namespace of the test's own (:func:`~dramatiq_tracker.testing.new_namespace`); its keys
    are deleted after the test (SCAN on its prefix)."""

    @pytest.fixture
    def tracker_namespace(request: pytest.FixtureRequest) -> Iterator[str]:
        client: redis.Redis = request.getfixturevalue(client_fixture)
        namespace = new_namespace(prefix)
        try:
            yield namespace
        finally:
            delete_keys(client, namespace_keys(namespace))

    return tracker_namespace


def broker_fixture(
    kind: str,
    *,
    namespace_fixture: str = "tracker_namespace",
    url_fixture: str = "tracker_redis_url",
    app: str | None = None,
    middleware: Callable[[], Sequence[Middleware]] | None = None,
    **settings: Any,
) -> Any:
    """A fixture: a broker of ``kind`` ("stub" or "redis", on a namespace of its own) with a tracker on the
    test's namespace, made the global broker for the test, with the application's actors declared on it;
    closed, its keys deleted and everything restored after.

    Parameters:
      kind(str): "stub" or "redis".
      app(str): The application whose actors it takes (default: the ``tracker_app`` option, else the
        global broker's actors).  Its tracker's settings are kept, but the Redis, namespace and timings.
      middleware(callable): Returns middleware to add before the tracker, for each test.
      **settings: :class:`~dramatiq_tracker.testing.TrackerTestConfig` settings that override the options
        (``heartbeat_timeout=5000``).
    """
    if kind not in BROKER_KINDS:
        raise TrackerTestError("broker_fixture(): kind must be 'stub' or 'redis', got %r" % (kind,))

    @pytest.fixture
    def tracker_broker_of_kind(request: pytest.FixtureRequest) -> Iterator[Broker]:
        config = load_config(request.config).replace(**settings)
        url: str = request.getfixturevalue(url_fixture)
        namespace: str = request.getfixturevalue(namespace_fixture)
        app_broker = application_broker(config, app)
        like = _tracker_of(app_broker)
        extra = list(middleware()) if middleware is not None else []
        broker: Broker
        if kind == STUB:
            broker = make_stub_broker(config, url, namespace, like=like, middleware=extra)
        else:
            broker_namespace = namespace.replace("tracker-", "dramatiq-", 1) + "-broker"
            broker = make_redis_broker(config, url, namespace, broker_namespace, like=like, middleware=extra)
        try:
            with installed(broker, app_broker):
                yield broker
        finally:
            close_broker(broker)
            if kind == REDIS:
                with contextlib.closing(_client(url)) as client:
                    delete_keys(client, "%s:*" % as_redis_broker(broker).namespace)

    return tracker_broker_of_kind


def selected_broker_fixture() -> Any:
    """The ``tracker_broker`` fixture: ``tracker_redis_broker`` or ``tracker_stub_broker`` when the test
    uses one of them, else the kind it is parametrized with (``indirect=True``: "stub" or "redis"), else
    the kind of the ``tracker_broker`` option ("stub" by default)."""

    @pytest.fixture
    def tracker_broker(request: pytest.FixtureRequest) -> Broker:
        for name in ("tracker_redis_broker", "tracker_stub_broker"):
            if name in request.fixturenames:
                return request.getfixturevalue(name)  # type: ignore[no-any-return]
        kind = getattr(request, "param", None) or load_config(request.config).broker
        if kind not in BROKER_KINDS:
            raise TrackerTestError("tracker_broker is parametrized with %r; use 'stub' or 'redis'." % (kind,))
        return request.getfixturevalue("tracker_%s_broker" % kind)  # type: ignore[no-any-return]

    return tracker_broker


def worker_fixture(broker_fixture: str = "tracker_broker", *, threads: int | None = None) -> Any:
    """A fixture: a running in-process ``dramatiq.Worker`` on the broker, stopped after the test (unless
    a crash stopped it first)."""

    @pytest.fixture
    def tracker_worker(request: pytest.FixtureRequest) -> Iterator[Worker]:
        broker: Broker = request.getfixturevalue(broker_fixture)
        worker = start_worker(broker, threads=threads or load_config(request.config).worker_threads)
        try:
            yield worker
        finally:
            stop_worker(worker)

    return tracker_worker


def crashes_fixture(broker_fixture: str = "tracker_broker", url_fixture: str = "tracker_redis_url") -> Any:
    """A fixture: :class:`~dramatiq_tracker.testing.Crashes` on the broker; the workers and processes it started are
    stopped after."""

    @pytest.fixture
    def tracker_crash(request: pytest.FixtureRequest) -> Iterator[Crashes]:
        broker: Broker = request.getfixturevalue(broker_fixture)
        log_dir: Path = request.getfixturevalue("tmp_path")
        crashes = Crashes(broker, load_config(request.config), request.getfixturevalue(url_fixture), log_dir)
        try:
            yield crashes
        finally:
            crashes.close()

    return tracker_crash


def checks_fixture(broker_fixture: str = "tracker_broker") -> Any:
    """A fixture: :class:`~dramatiq_tracker.testing.TrackerChecks` on the broker."""

    @pytest.fixture
    def tracker_assert(request: pytest.FixtureRequest) -> TrackerChecks:
        return TrackerChecks(request.getfixturevalue(broker_fixture), load_config(request.config))

    return tracker_assert
