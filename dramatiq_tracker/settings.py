"""Tracker settings, their defaults and their validation."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any

from .errors import ConfigurationError
from .keys import validate_namespace
from .unique import DEFAULT_UNIQUE_DELAY, validate_defaults

#: The default namespace of the tracker's keys.
DEFAULT_NAMESPACE = "dramatiq-tracker"

#: How often a worker refreshes its heartbeat, in milliseconds.
DEFAULT_HEARTBEAT_INTERVAL = 5_000

#: How long a worker may go without a heartbeat before it is dead, in milliseconds.
DEFAULT_HEARTBEAT_TIMEOUT = 15_000

#: How often the periodic sweep for dead workers runs, cluster-wide, in milliseconds.
DEFAULT_SWEEP_INTERVAL = 5_000

#: How many times a message may be recovered from dead workers before it is quarantined.
DEFAULT_MAX_RECOVERIES = 3

#: How long in-flight records may wait in memory before they are written, in milliseconds.
#: A message that starts and ends within this window costs no Redis call at all.
DEFAULT_FLUSH_INTERVAL = 50

#: How long per-message history (recovery counts) and dead-worker tombstones are kept, in milliseconds.
DEFAULT_HISTORY_TTL = 7 * 86_400_000

#: The approximate length of the Redis stream of tracker events.
DEFAULT_EVENTS_MAXLEN = 10_000

#: How many characters of a message's arguments its in-flight record keeps, for operators to see.
DEFAULT_PREVIEW_LENGTH = 24

#: How long a worker's presence may be gone, its heartbeat not renewed, before it is dead, in ms.
DEFAULT_PRESENCE_GRACE = 1_000

#: The smallest interval the tracker accepts, in milliseconds.
MINIMUM_INTERVAL = 10

#: The prefix of the environment variables that configure a ``TrackerMiddleware()`` and the command line.
ENVIRONMENT_PREFIX = "DRAMATIQ_TRACKER_"

#: The settings an environment variable may give (``DRAMATIQ_TRACKER_<NAME>``), and how each is read.
ENVIRONMENT_SETTINGS = {
    "namespace": str,
    "heartbeat_interval": int,
    "heartbeat_timeout": int,
    "sweep_interval": int,
    "max_recoveries": int,
    "presence": bool,
    "presence_grace": int,
}

_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def environment_variable(setting: str) -> str:
    """The environment variable that gives ``setting``: ``DRAMATIQ_TRACKER_<SETTING>``."""
    return ENVIRONMENT_PREFIX + setting.upper()


def from_environment(given: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The settings that were not given (None), read from ``DRAMATIQ_TRACKER_<NAME>`` variables.

    Parameters:
      given(dict): Setting name -> value given to the middleware, None when not given.
      environ(dict): The environment (``os.environ`` by default).

    Raises:
      ConfigurationError: When a variable's value is not a valid value of its setting; the error
        names the variable.
    """
    environ = os.environ if environ is None else environ
    found: dict[str, Any] = {}
    for name, value in given.items():
        variable = environment_variable(name)
        raw = environ.get(variable, "").strip() if value is None else ""
        if value is not None or not raw or name not in ENVIRONMENT_SETTINGS:
            if value is not None:
                found[name] = value
            continue
        kind = ENVIRONMENT_SETTINGS[name]
        if kind is bool:
            if raw.lower() not in _TRUE + _FALSE:
                raise ConfigurationError(variable, "must be 1 or 0 (true or false), got %r" % raw)
            found[name] = raw.lower() in _TRUE
        elif kind is int:
            try:
                found[name] = int(raw)
            except ValueError:
                raise ConfigurationError(variable, "must be an integer number, got %r" % raw) from None
        else:
            found[name] = raw
    return found


def _no_unique_defaults() -> Mapping[str, Any]:
    return {"unique": False, "unique_ttl": None, "unique_on_conflict": None, "unique_delay": DEFAULT_UNIQUE_DELAY}


def _require_int(setting: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigurationError(setting, "must be an integer number of milliseconds, got %r" % (value,))
    if value < minimum:
        raise ConfigurationError(setting, "must be at least %d, got %d" % (minimum, value))
    return value


@dataclasses.dataclass(frozen=True)
class TrackerSettings:
    """Validated tracker settings.  Every duration is in milliseconds.

    Raises:
      ConfigurationError: When a setting is invalid; the error names it.
    """

    namespace: str = DEFAULT_NAMESPACE
    heartbeat_interval: int = DEFAULT_HEARTBEAT_INTERVAL
    heartbeat_timeout: int = DEFAULT_HEARTBEAT_TIMEOUT
    sweep_interval: int = DEFAULT_SWEEP_INTERVAL
    max_recoveries: int = DEFAULT_MAX_RECOVERIES
    flush_interval: int = DEFAULT_FLUSH_INTERVAL
    history_ttl: int = DEFAULT_HISTORY_TTL
    events_maxlen: int = DEFAULT_EVENTS_MAXLEN
    preview_length: int = DEFAULT_PREVIEW_LENGTH
    #: The default uniqueness options (``unique``, ``unique_ttl``, ``unique_on_conflict``, ``unique_delay``).
    unique_defaults: Mapping[str, Any] = dataclasses.field(default_factory=_no_unique_defaults)
    #: Names the broker deployment this worker consumes from; None to derive it from the broker.
    broker_identity: str | None = None
    #: Whether workers keep a presence connection, so that their death is known within about a second.
    presence: bool = True
    #: How long a worker's presence may be gone, its heartbeat not renewed, before it is dead, in ms.
    presence_grace: int = DEFAULT_PRESENCE_GRACE

    def __post_init__(self) -> None:
        try:
            validate_namespace(self.namespace)
        except ValueError as e:
            raise ConfigurationError("namespace", str(e)) from None

        _require_int("heartbeat_interval", self.heartbeat_interval, MINIMUM_INTERVAL)
        _require_int("heartbeat_timeout", self.heartbeat_timeout, MINIMUM_INTERVAL)
        _require_int("sweep_interval", self.sweep_interval, MINIMUM_INTERVAL)
        _require_int("max_recoveries", self.max_recoveries, 0)
        _require_int("flush_interval", self.flush_interval, 1)
        _require_int("history_ttl", self.history_ttl, 1)
        _require_int("presence_grace", self.presence_grace, 100)
        if not isinstance(self.presence, bool):
            raise ConfigurationError("presence", "must be True or False, got %r" % (self.presence,))
        if isinstance(self.events_maxlen, bool) or not isinstance(self.events_maxlen, int) or self.events_maxlen < 1:
            raise ConfigurationError("events_maxlen", "must be a positive integer, got %r" % (self.events_maxlen,))
        if isinstance(self.preview_length, bool) or not isinstance(self.preview_length, int):
            raise ConfigurationError(
                "preview_length", "must be a number of characters, got %r" % (self.preview_length,)
            )
        if not 0 <= self.preview_length <= 1000:
            raise ConfigurationError("preview_length", "must be between 0 and 1000, got %d" % self.preview_length)
        validate_defaults(self.unique_defaults)
        if self.broker_identity is not None and (
            not isinstance(self.broker_identity, str) or not self.broker_identity.strip()
        ):
            raise ConfigurationError("broker_identity", "must be a non-empty string, got %r" % (self.broker_identity,))

        # One late beat must not kill a worker: the timeout has to cover at least two intervals.
        if self.heartbeat_timeout < 2 * self.heartbeat_interval:
            raise ConfigurationError(
                "heartbeat_timeout",
                "must be at least twice heartbeat_interval (%d ms), got %d"
                % (self.heartbeat_interval, self.heartbeat_timeout),
            )
        if self.flush_interval >= self.heartbeat_interval:
            raise ConfigurationError(
                "flush_interval",
                "must be shorter than heartbeat_interval (%d ms), got %d"
                % (self.heartbeat_interval, self.flush_interval),
            )
        if self.history_ttl < self.heartbeat_timeout:
            raise ConfigurationError(
                "history_ttl",
                "must be at least heartbeat_timeout (%d ms), got %d" % (self.heartbeat_timeout, self.history_ttl),
            )

    @property
    def stale_after(self) -> int:
        """How long after its last heartbeat went through a worker checks, before it starts a
        message, that it was not declared dead meanwhile, in milliseconds.  A heartbeat key lives
        ``heartbeat_timeout`` from the moment it is sent, so a worker whose last beat is younger
        than this cannot have been declared dead by heartbeat expiry."""
        return self.heartbeat_timeout - self.heartbeat_interval // 2

    @property
    def takeover_after(self) -> int:
        """How long a recovery interrupted midway waits before another sweeper finishes it, in ms."""
        return max(10_000, 2 * self.sweep_interval)

    @property
    def settle(self) -> int:
        """How long after the tracker's Redis was restarted or failed over no death is judged by
        presence or heartbeat, in ms: its workers reach it and heartbeat within one interval."""
        return 2 * self.heartbeat_interval

    @property
    def presence_check_interval(self) -> int:
        """How often the sweeping worker asks who lost their presence, in milliseconds."""
        return max(MINIMUM_INTERVAL, min(self.presence_grace // 4, self.sweep_interval))

    @property
    def recovery_bound(self) -> int:
        """The longest an orphan waits before it is delivered again, in milliseconds."""
        return self.heartbeat_timeout + self.sweep_interval
