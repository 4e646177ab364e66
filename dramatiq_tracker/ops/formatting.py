"""Durations and times for humans, as the command line and the dashboard write them (and read them).

The command line is terse, to fit its tables (``3m05s``, ``2026-11-29 04:40:01.123``); the
dashboard spells units out (``3 min 05 s``, ``2026-11-29 04:40:01 UTC``).  Both break a duration
into the same units and show a time in UTC.
"""

from __future__ import annotations

import re
import time

#: What an absent value shows as on the dashboard.
NONE = "\u2014"

_UNITS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
#: How the dashboard spells the units of :func:`_two_units`.
_SPELLED = {"s": "s", "m": "min", "h": "h", "d": "d"}


def parse_duration(text: str) -> int:
    """Read a human duration (``500ms``, ``30s``, ``5m``, ``1h30m``, ``1.5d``) as milliseconds.

    Raises:
      ValueError: When it is not one; a bare number is refused, since its unit would be a guess.
    """
    compact = text.strip().lower().replace(" ", "")
    parts = _DURATION.findall(compact)
    if not compact or "".join(number + unit for number, unit in parts) != compact:
        raise ValueError("%r is not a duration: give a number and a unit, such as 500ms, 30s, 5m, 2h or 1d" % text)
    return round(sum(float(number) * _UNITS[unit] for number, unit in parts))


def _two_units(ms: int) -> tuple[int, str, int, str]:
    """A duration of a minute or more in its two largest units: ``(3, "m", 5, "s")`` for 185 s."""
    minutes, seconds = divmod(ms // 1000, 60)
    if minutes < 60:
        return minutes, "m", seconds, "s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return hours, "h", minutes, "m"
    days, hours = divmod(hours, 24)
    return days, "d", hours, "h"


def age(ms: int | None) -> str:
    """A duration in milliseconds, tersely (the command line): ``0.4s``, ``12s``, ``3m05s``, ``2h01m``,
    ``3d04h``; "-" for None."""
    if ms is None:
        return "-"
    ms = max(0, int(ms))
    if ms < 10_000:
        return "%.1fs" % (ms / 1000)
    if ms < 60_000:
        return "%ds" % (ms // 1000)
    return "%d%s%02d%s" % _two_units(ms)


def duration(ms: int | None) -> str:
    """A duration in milliseconds, spelled out (the dashboard): ``850 ms``, ``12.3 s``, ``4 min 05 s``,
    ``2 h 03 min``, ``3 d 04 h``; a dash for None."""
    if ms is None:
        return NONE
    if ms < 1000:
        return "%d ms" % ms
    if ms < 60_000:
        return "%.1f s" % (ms / 1000)
    large, large_unit, small, small_unit = _two_units(ms)
    return "%d %s %02d %s" % (large, _SPELLED[large_unit], small, _SPELLED[small_unit])


def ago(ms: int | None, now: int) -> str:
    """How long before ``now`` a time was (``now`` and ``ms`` in ms since the epoch), spelled out; a dash
    for none or 0."""
    if not ms:
        return NONE
    return duration(max(0, now - ms)) + " ago"


def _utc(ms: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ms // 1000))


def timestamp(ms: int | None) -> str:
    """A time in UTC, to the second (the dashboard): ``2025-06-01 12:34:56 UTC``; a dash for none or 0."""
    if not ms:
        return NONE
    return _utc(ms) + " UTC"


def precise_timestamp(ms: int) -> str:
    """Milliseconds since the epoch as a UTC time, to the millisecond (the command line):
    ``2026-11-29 04:40:01.123``."""
    return "%s.%03d" % (_utc(ms), ms % 1000)
