"""Options of the pytest plugin, the test timings, and the configuration they make."""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

import pytest

from ..brokers import REDIS, STUB
from ..errors import TrackerError
from ..settings import TrackerSettings

T = TypeVar("T")

#: The tracker timings of tests, in milliseconds: a dead worker is found within 1.5 s.
TEST_TIMINGS = {"heartbeat_interval": 200, "heartbeat_timeout": 1000, "sweep_interval": 500, "flush_interval": 20}

#: How many worker threads in-process workers and worker subprocesses run, by default.
DEFAULT_WORKER_THREADS = 2

#: How long in-process worker threads wait for a message before they look again, in milliseconds.
WORKER_TIMEOUT = 100

#: How long a worker subprocess may take to start and register, in seconds (imports on a loaded machine).
STARTUP_TIMEOUT = 60.0

#: The environment variable that tells a worker subprocess (:func:`~dramatiq_tracker.testing.boot_worker`) what to do
#: (JSON).
WORKER_ENVIRONMENT_VARIABLE = "DRAMATIQ_TRACKER_TEST_WORKER"

#: The broker kinds the fixtures make.
BROKER_KINDS = (STUB, REDIS)

#: How often waits look again, in seconds.
_POLL = 0.02

#: Marks a broker made by these helpers, so that two of them are never installed in one test.
_FIXTURE_MARK = "_tracker_test_broker"


class TrackerTestError(TrackerError):
    """Raised when a testing helper is misused, or the test's environment lacks what it needs."""


# Configuration ------------------------------------------------------------------------------------

_INTEGER_OPTIONS = {
    "heartbeat_interval",
    "heartbeat_timeout",
    "sweep_interval",
    "flush_interval",
    "worker_threads",
}
_BOOLEAN_OPTIONS = {"app_middleware"}
_BOOLEANS = {"true": True, "yes": True, "on": True, "1": True, "false": False, "no": False, "off": False, "0": False}


@dataclasses.dataclass(frozen=True)
class TrackerTestConfig:
    """What the fixtures are configured with: each field is the ``tracker_<field>`` option of the
    plugin (see :data:`~dramatiq_tracker.testing.OPTIONS`).

    Parameters:
      redis_url(str|None): The Redis given by the option, or None to look for one
        (:func:`~dramatiq_tracker.testing.find_redis`).
      broker(str): The kind of the ``tracker_broker`` fixture: "stub" or "redis".
      app(str|None): The application's broker module, as for the ``dramatiq`` command, optionally
        followed by more modules to import, space-separated (``django_dramatiq.setup orders.tasks``).
      app_middleware(bool): Whether the test brokers keep the application's middleware (in its
        order, its tracker replaced by the test's); False: the broker class's default middleware.
      heartbeat_interval(int): In milliseconds.
      heartbeat_timeout(int): In milliseconds.
      sweep_interval(int): In milliseconds.
      flush_interval(int): In milliseconds.
      worker_threads(int): Threads of in-process workers and worker subprocesses.

    Raises:
      ConfigurationError: When a timing is invalid (the tracker's own validation).
      TrackerTestError: When ``broker`` or ``worker_threads`` is.
    """

    redis_url: str | None = None
    broker: str = STUB
    app: str | None = None
    app_middleware: bool = True
    heartbeat_interval: int = TEST_TIMINGS["heartbeat_interval"]
    heartbeat_timeout: int = TEST_TIMINGS["heartbeat_timeout"]
    sweep_interval: int = TEST_TIMINGS["sweep_interval"]
    flush_interval: int = TEST_TIMINGS["flush_interval"]
    worker_threads: int = DEFAULT_WORKER_THREADS

    def __post_init__(self) -> None:
        if self.broker not in BROKER_KINDS:
            raise TrackerTestError("tracker_broker must be 'stub' or 'redis', got %r" % (self.broker,))
        if isinstance(self.worker_threads, bool) or not isinstance(self.worker_threads, int) or self.worker_threads < 1:
            raise TrackerTestError("tracker_worker_threads must be a positive integer, got %r" % (self.worker_threads,))
        TrackerSettings(
            heartbeat_interval=self.heartbeat_interval,
            heartbeat_timeout=self.heartbeat_timeout,
            sweep_interval=self.sweep_interval,
            flush_interval=self.flush_interval,
        )

    @property
    def timings(self) -> dict[str, int]:
        """The tracker settings these tests run with."""
        return {
            "heartbeat_interval": self.heartbeat_interval,
            "heartbeat_timeout": self.heartbeat_timeout,
            "sweep_interval": self.sweep_interval,
            "flush_interval": self.flush_interval,
        }

    @property
    def recovery_bound(self) -> int:
        """The tracker's promise: an orphan is delivered again within this, in milliseconds."""
        return self.heartbeat_timeout + self.sweep_interval

    @property
    def wait_timeout(self) -> float:
        """How long helpers wait for something the tracker promises, in seconds: twice the recovery
        bound plus 5 s, so that a loaded machine does not fail a test; a wait that succeeds ends sooner."""
        return 2 * self.recovery_bound / 1000 + 5

    def replace(self, **changes: Any) -> TrackerTestConfig:
        """A copy with some settings changed (validated again)."""
        return dataclasses.replace(self, **changes)


def load_config(config: pytest.Config) -> TrackerTestConfig:
    """Read the plugin's options: the ``--tracker-*`` flag, else the ``tracker_*`` ini setting, else the default.

    Raises:
      pytest.UsageError: When a value is invalid; the message names the option.
    """
    values: dict[str, Any] = {}
    for field in (f.name for f in dataclasses.fields(TrackerTestConfig)):
        name = "tracker_" + field
        raw = config.getoption(name, default=None)
        source = "--" + name.replace("_", "-")
        if raw is None or raw == "":
            raw = config.getini(name) or None
            source = "the %s ini setting" % name
        if raw is None:
            continue
        if field in _INTEGER_OPTIONS:
            try:
                values[field] = int(raw)
            except ValueError:
                raise pytest.UsageError("%s must be an integer, got %r" % (source, raw)) from None
        elif field in _BOOLEAN_OPTIONS:
            if str(raw).strip().lower() not in _BOOLEANS:
                raise pytest.UsageError("%s must be true or false, got %r" % (source, raw))
            values[field] = _BOOLEANS[str(raw).strip().lower()]
        else:
            values[field] = str(raw)
    try:
        return TrackerTestConfig(**values)
    except (TrackerError, ValueError) as e:
        raise pytest.UsageError("dramatiq-tracker: %s" % e) from None
