"""How the dashboard writes durations, times and states (Jinja filters)."""

from __future__ import annotations

import time

#: What an absent value shows as.
NONE = "\u2014"


def duration(ms: int | None) -> str:
    """A duration for humans: ``850 ms``, ``12.3 s``, ``4 min 05 s``, ``2 h 03 min``, ``3 d 04 h``."""
    if ms is None:
        return NONE
    if ms < 1000:
        return "%d ms" % ms
    seconds = ms / 1000
    if seconds < 60:
        return "%.1f s" % seconds
    minutes, seconds = divmod(int(seconds), 60)
    if minutes < 60:
        return "%d min %02d s" % (minutes, seconds)
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return "%d h %02d min" % (hours, minutes)
    days, hours = divmod(hours, 24)
    return "%d d %02d h" % (days, hours)


def timestamp(ms: int | None) -> str:
    """A time in UTC, to the second: ``2025-06-01 12:34:56 UTC``; a dash for none or 0."""
    if not ms:
        return NONE
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ms / 1000))


def ago(ms: int | None, now: int) -> str:
    """How long before ``now`` a time was (``now`` and ``ms`` in ms since the epoch)."""
    if not ms:
        return NONE
    return duration(max(0, now - ms)) + " ago"
