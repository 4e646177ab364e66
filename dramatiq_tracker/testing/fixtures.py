"""The fixtures' providers, and fixture factories made of them.

A provider is what a fixture does, as a function (a generator for a fixture with a teardown) of the
fixture's ``request``: the plugin's ``tracker_*`` fixtures call them, importing this module on first
use; a factory returns a fixture that calls one with other arguments, for an application's variants.
Fixtures a provider depends on are named by argument (``request.getfixturevalue``), so that variants
compose."""

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

# Providers -----------------------------------------------------------------------------------------


def provide_redis_url(request: pytest.FixtureRequest, url: str | None = None) -> Iterator[str]:
    """The URL of the test Redis (:func:`~dramatiq_tracker.testing.find_redis`, with ``url``, else the
    ``tracker_redis_url`` option); an embedded server it starts is shut down after.

    Fails the test (not as an error of the test's code) when no Redis answers.
    """
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


def provide_redis_client(
    request: pytest.FixtureRequest, url_fixture: str = "tracker_redis_url"
) -> Iterator[redis.Redis]:
    """A ``redis.Redis`` client of the test Redis, closed after."""
    client = _client(request.getfixturevalue(url_fixture))
    try:
        yield client
    finally:
        client.close()


def provide_namespace(
    request: pytest.FixtureRequest, client_fixture: str = "tracker_redis", prefix: str = "tracker-test"
) -> Iterator[str]:
    """A tracker namespace of the test's own (:func:`~dramatiq_tracker.testing.new_namespace`); its keys are
    deleted after (SCAN on its prefix)."""
    client: redis.Redis = request.getfixturevalue(client_fixture)
    namespace = new_namespace(prefix)
    try:
        yield namespace
    finally:
        delete_keys(client, namespace_keys(namespace))


def provide_broker(
    request: pytest.FixtureRequest,
    kind: str,
    *,
    namespace_fixture: str = "tracker_namespace",
    url_fixture: str = "tracker_redis_url",
    app: str | None = None,
    middleware: Callable[[], Sequence[Middleware]] | None = None,
    app_middleware: bool | None = None,
    **settings: Any,
) -> Iterator[Broker]:
    """A broker of ``kind`` (on a namespace of its own) with a tracker on the test's namespace, made the
    global broker for the test, with the application's actors declared on it; closed, its keys deleted
    and everything restored after.

    Its middleware is the application's, in its order: its tracker is replaced by the test's, and a
    :class:`~dramatiq_tracker.testing.RunRecorder` is added last.  Flushing it (``flush``, ``flush_all``)
    releases the uniqueness locks of the messages it drops.

    Parameters:
      kind(str): "stub" or "redis".
      namespace_fixture(str): The fixture of the test's tracker namespace.
      url_fixture(str): The fixture of the test Redis URL.
      app(str): The application whose actors and middleware it takes (default: the ``tracker_app`` option,
        else the global broker).  Its tracker's settings are kept, but the Redis, namespace and timings.
      middleware(callable): Returns more middleware for each test, added just before the tracker.
      app_middleware(bool): False: the broker class's default middleware instead of the application's
        (default: the ``tracker_app_middleware`` option, true).
      **settings: :class:`~dramatiq_tracker.testing.TrackerTestConfig` settings that override the options
        (``heartbeat_timeout=5000``).

    Raises:
      TrackerTestError: When ``kind`` is not "stub" or "redis".
    """
    if kind not in BROKER_KINDS:
        raise TrackerTestError("The broker kind must be 'stub' or 'redis', got %r" % (kind,))
    config = load_config(request.config).replace(**settings)
    if app_middleware is not None:
        config = config.replace(app_middleware=app_middleware)
    url: str = request.getfixturevalue(url_fixture)
    namespace: str = request.getfixturevalue(namespace_fixture)
    app_broker = application_broker(config, app)
    extra = list(middleware()) if middleware is not None else []
    broker: Broker
    if kind == STUB:
        broker = make_stub_broker(config, url, namespace, app=app_broker, middleware=extra)
    else:
        broker_namespace = namespace.replace("tracker-", "dramatiq-", 1) + "-broker"
        broker = make_redis_broker(config, url, namespace, broker_namespace, app=app_broker, middleware=extra)
    try:
        with installed(broker, app_broker):
            yield broker
    finally:
        close_broker(broker)
        if kind == REDIS:
            with contextlib.closing(_client(url)) as client:
                delete_keys(client, "%s:*" % as_redis_broker(broker).namespace)


def provide_selected_broker(request: pytest.FixtureRequest) -> Broker:
    """``tracker_redis_broker`` or ``tracker_stub_broker`` when the test uses one of them, else the kind it
    is parametrized with (``indirect=True``: "stub" or "redis"), else the kind of the ``tracker_broker``
    option ("stub" by default).

    Raises:
      TrackerTestError: When the test is parametrized with another kind.
    """
    for name in ("tracker_redis_broker", "tracker_stub_broker"):
        if name in request.fixturenames:
            return request.getfixturevalue(name)  # type: ignore[no-any-return]
    kind = getattr(request, "param", None) or load_config(request.config).broker
    if kind not in BROKER_KINDS:
        raise TrackerTestError("tracker_broker is parametrized with %r; use 'stub' or 'redis'." % (kind,))
    return request.getfixturevalue("tracker_%s_broker" % kind)  # type: ignore[no-any-return]


def provide_worker(
    request: pytest.FixtureRequest, broker_fixture: str = "tracker_broker", *, threads: int | None = None
) -> Iterator[Worker]:
    """A running in-process ``dramatiq.Worker`` on the broker, stopped after (unless a crash stopped it first)."""
    broker: Broker = request.getfixturevalue(broker_fixture)
    worker = start_worker(broker, threads=threads or load_config(request.config).worker_threads)
    try:
        yield worker
    finally:
        stop_worker(worker)


def provide_crashes(
    request: pytest.FixtureRequest, broker_fixture: str = "tracker_broker", url_fixture: str = "tracker_redis_url"
) -> Iterator[Crashes]:
    """:class:`~dramatiq_tracker.testing.Crashes` on the broker; the workers and processes it started are
    stopped after."""
    broker: Broker = request.getfixturevalue(broker_fixture)
    log_dir: Path = request.getfixturevalue("tmp_path")
    crashes = Crashes(broker, load_config(request.config), request.getfixturevalue(url_fixture), log_dir)
    try:
        yield crashes
    finally:
        crashes.close()


def provide_checks(request: pytest.FixtureRequest, broker_fixture: str = "tracker_broker") -> TrackerChecks:
    """:class:`~dramatiq_tracker.testing.TrackerChecks` on the broker."""
    return TrackerChecks(request.getfixturevalue(broker_fixture), load_config(request.config))


# Fixture factories ---------------------------------------------------------------------------------
#
# Each returns a pytest fixture; assign it to a name in a conftest.py or a plugin module.


def redis_url_fixture(url: str | None = None) -> Any:
    """A session-scoped fixture: the URL of the test Redis (``provide_redis_url``)."""

    @pytest.fixture(scope="session")
    def tracker_redis_url(request: pytest.FixtureRequest) -> Iterator[str]:
        yield from provide_redis_url(request, url)

    return tracker_redis_url


def redis_client_fixture(url_fixture: str = "tracker_redis_url") -> Any:
    """A fixture: a ``redis.Redis`` client of the test Redis, closed after the test."""

    @pytest.fixture
    def tracker_redis(request: pytest.FixtureRequest) -> Iterator[redis.Redis]:
        yield from provide_redis_client(request, url_fixture)

    return tracker_redis


def namespace_fixture(client_fixture: str = "tracker_redis", prefix: str = "tracker-test") -> Any:
    """A fixture: a tracker namespace of the test's own; its keys are deleted after the test."""

    @pytest.fixture
    def tracker_namespace(request: pytest.FixtureRequest) -> Iterator[str]:
        yield from provide_namespace(request, client_fixture, prefix)

    return tracker_namespace


def broker_fixture(kind: str, **options: Any) -> Any:
    """A fixture: a broker of ``kind`` ("stub" or "redis", on a namespace of its own) with a tracker on the
    test's namespace (``provide_broker``, whose keyword arguments ``options`` are).

    Raises:
      TrackerTestError: When ``kind`` is not "stub" or "redis".
    """
    if kind not in BROKER_KINDS:
        raise TrackerTestError("broker_fixture(): kind must be 'stub' or 'redis', got %r" % (kind,))

    @pytest.fixture
    def tracker_broker_of_kind(request: pytest.FixtureRequest) -> Iterator[Broker]:
        yield from provide_broker(request, kind, **options)

    return tracker_broker_of_kind


def selected_broker_fixture() -> Any:
    """The ``tracker_broker`` fixture (``provide_selected_broker``)."""

    @pytest.fixture
    def tracker_broker(request: pytest.FixtureRequest) -> Broker:
        return provide_selected_broker(request)

    return tracker_broker


def worker_fixture(broker_fixture: str = "tracker_broker", *, threads: int | None = None) -> Any:
    """A fixture: a running in-process ``dramatiq.Worker`` on the broker, stopped after the test (unless
    a crash stopped it first)."""

    @pytest.fixture
    def tracker_worker(request: pytest.FixtureRequest) -> Iterator[Worker]:
        yield from provide_worker(request, broker_fixture, threads=threads)

    return tracker_worker


def crashes_fixture(broker_fixture: str = "tracker_broker", url_fixture: str = "tracker_redis_url") -> Any:
    """A fixture: :class:`~dramatiq_tracker.testing.Crashes` on the broker; the workers and processes it started are
    stopped after."""

    @pytest.fixture
    def tracker_crash(request: pytest.FixtureRequest) -> Iterator[Crashes]:
        yield from provide_crashes(request, broker_fixture, url_fixture)

    return tracker_crash


def checks_fixture(broker_fixture: str = "tracker_broker") -> Any:
    """A fixture: :class:`~dramatiq_tracker.testing.TrackerChecks` on the broker."""

    @pytest.fixture
    def tracker_assert(request: pytest.FixtureRequest) -> TrackerChecks:
        return provide_checks(request, broker_fixture)

    return tracker_assert
