"""What the demo runner tells its worker processes, through environment variables."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from ...settings import TrackerSettings
from . import DemoError

#: The prefix of every environment variable the demo runner sets for its workers.
PREFIX = "DRAMATIQ_TRACKER_DEMO_"

#: The queue of the demo's actor; the broker namespace keeps it apart from any other.
QUEUE = "demo"

#: The name of the demo actor (see :mod:`.app`); the runner enqueues its messages without importing the app.
ACTOR_NAME = "slow_work"


@dataclasses.dataclass(frozen=True)
class DemoConfig:
    """Where the demo's workers connect and how fast the tracker reacts.

    Parameters:
      url(str): The Redis URL of both the RedisBroker and the tracker.
      broker_namespace(str): The RedisBroker's namespace, unique to one run.
      tracker_namespace(str): The tracker's namespace, unique to one run.
      heartbeat_interval(int): In milliseconds; short, so that the demo is quick.
      heartbeat_timeout(int): In milliseconds.
      sweep_interval(int): In milliseconds.
      flush_interval(int): In milliseconds.
    """

    url: str
    broker_namespace: str
    tracker_namespace: str
    heartbeat_interval: int = 500
    heartbeat_timeout: int = 2000
    sweep_interval: int = 1000
    flush_interval: int = 50

    @property
    def events_key(self) -> str:
        """The list where the demo actor reports what it did, inside the broker namespace."""
        return "%s:demo-events" % self.broker_namespace

    def tracker_options(self) -> dict[str, Any]:
        """The tracker settings of the demo's workers, as ``TrackerMiddleware`` and ``TrackerSettings``
        take them: its namespace and timings."""
        return {
            "namespace": self.tracker_namespace,
            "heartbeat_interval": self.heartbeat_interval,
            "heartbeat_timeout": self.heartbeat_timeout,
            "sweep_interval": self.sweep_interval,
            "flush_interval": self.flush_interval,
        }

    def tracker_settings(self) -> TrackerSettings:
        """The tracker settings of the demo's workers.

        Raises:
          ConfigurationError: When a setting is invalid.
        """
        return TrackerSettings(**self.tracker_options())

    def environment(self) -> dict[str, str]:
        """The environment variables that :meth:`from_environment` reads back."""
        return {PREFIX + field.name.upper(): str(getattr(self, field.name)) for field in dataclasses.fields(self)}

    @classmethod
    def from_environment(cls, environ: Mapping[str, str]) -> DemoConfig:
        """Read the configuration that :meth:`environment` wrote.

        Raises:
          DemoError: When a variable is missing, or not an integer where a duration is expected.
        """
        return cls(
            url=_text(environ, "url"),
            broker_namespace=_text(environ, "broker_namespace"),
            tracker_namespace=_text(environ, "tracker_namespace"),
            heartbeat_interval=_milliseconds(environ, "heartbeat_interval", cls.heartbeat_interval),
            heartbeat_timeout=_milliseconds(environ, "heartbeat_timeout", cls.heartbeat_timeout),
            sweep_interval=_milliseconds(environ, "sweep_interval", cls.sweep_interval),
            flush_interval=_milliseconds(environ, "flush_interval", cls.flush_interval),
        )


def _text(environ: Mapping[str, str], field: str) -> str:
    name = PREFIX + field.upper()
    value = environ.get(name)
    if not value:
        raise DemoError("%s is not set: the demo app is meant to be started by `dramatiq-tracker demo`." % name)
    return value


def _milliseconds(environ: Mapping[str, str], field: str, default: int) -> int:
    name = PREFIX + field.upper()
    raw = environ.get(name)
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError:
        raise DemoError("%s must be an integer number of milliseconds, got %r." % (name, raw)) from None
