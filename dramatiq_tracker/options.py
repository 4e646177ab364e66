"""Every actor and message option the tracker reads or writes, in one place.

Actor options are declared by the middleware (``actor_options``) and resolved
as Dramatiq's own middleware resolve theirs: message option, then actor
option, then the middleware's default (see :mod:`dramatiq_tracker.policies`).

Message options starting with ``tracker_`` are marks the tracker sets on
copies it delivers again; ``unique_*`` ones are set on unique messages when
they are sent.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# Actor options -----------------------------------------------------------------------------

#: False opts an actor (or one message) out of tracking.
TRACK = "track"
#: How many times a message may be recovered from dead workers before it is quarantined.
MAX_RECOVERIES = "max_recoveries"
#: The name of an actor sent each quarantined message.
ON_RECOVERY_EXHAUSTED = "on_recovery_exhausted"
#: False, True, or a lock mode (see :mod:`dramatiq_tracker.unique`).
UNIQUE = "unique"
#: What identifies a duplicate: a callable or a format string over the actor's arguments.
UNIQUE_KEY = "unique_key"
#: The backstop expiry of a uniqueness lock, in milliseconds.
UNIQUE_TTL = "unique_ttl"
#: What happens to a duplicate: "raise" or "drop" when sent; "skip", "delay" or "fail" when started.
UNIQUE_ON_CONFLICT = "unique_on_conflict"
#: How long a delayed ``while_executing`` duplicate waits, in milliseconds.
UNIQUE_DELAY = "unique_delay"

QUARANTINE_OPTIONS = frozenset({MAX_RECOVERIES, ON_RECOVERY_EXHAUSTED})
UNIQUE_OPTIONS = frozenset({UNIQUE, UNIQUE_KEY, UNIQUE_TTL, UNIQUE_ON_CONFLICT, UNIQUE_DELAY})
#: Every actor option the middleware declares; also accepted as message options.
ACTOR_OPTIONS = frozenset({TRACK}) | QUARANTINE_OPTIONS | UNIQUE_OPTIONS

# Marks the tracker sets on messages --------------------------------------------------------

#: How many times the message has been recovered from dead workers (running when their worker died).
RECOVERIES_OPTION = "tracker_recoveries"
#: The delivery attempt a copy belongs to: raised each time recovery moves the message
#: (running, prefetched or delayed), so that copies left on a worker declared dead are told apart.
ATTEMPT_OPTION = "tracker_attempt"
#: A duplicate delivery the tracker put off: the attempt ("worker id|token") it waits for.
DEFERRED_OPTION = "tracker_deferred_behind"
#: A delivery whose start could not be decided (the tracker's Redis did not answer), put off rather than
#: run blind: why.
PUT_OFF_OPTION = "tracker_put_off"
#: A message enqueued again only to be dead-lettered (brokers the tracker cannot dead-letter directly).
QUARANTINE_OPTION = "tracker_quarantined"
#: A copy enqueued again from the outbox: the recovery claim token it was enqueued under.  Two copies of one
#: recovered attempt (a sweeper whose claim was taken over while it enqueued, and the one that took it
#: over) are told apart by it: the first to start runs, the other is dropped.
COPY_OPTION = "tracker_copy"
#: A stale copy that a worker declared dead enqueued before it learned it: skipped when it starts.
REVOKED_OPTION = "tracker_revoked"
#: The uniqueness digest and lock mode of a unique message.
DIGEST_OPTION = "unique_digest"
MODE_OPTION = "unique_mode"
#: A duplicate dropped when it was sent: the message id that holds the lock.
DUPLICATE_OPTION = "unique_duplicate_of"

#: Marks of a delivery whose start is recorded, and decided, before it runs.
AT_RISK_MARKS = frozenset({ATTEMPT_OPTION, DEFERRED_OPTION, PUT_OFF_OPTION, QUARANTINE_OPTION, REVOKED_OPTION})
#: Marks of a unique message.
UNIQUE_MARKS = frozenset({DIGEST_OPTION, MODE_OPTION, DUPLICATE_OPTION})
#: Any of these among a message's options sends it off the per-message fast path.
SPECIAL_OPTIONS = ACTOR_OPTIONS | AT_RISK_MARKS | UNIQUE_MARKS


def _count(options: Mapping[str, Any], name: str) -> int:
    value = options.get(name, 0)
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def attempt_of(options: Mapping[str, Any]) -> int:
    """The delivery attempt a message carries (0 until recovery moves it)."""
    return _count(options, ATTEMPT_OPTION)


def recoveries_of(options: Mapping[str, Any]) -> int:
    """How many times a message says it was recovered from dead workers."""
    return _count(options, RECOVERIES_OPTION)


def retries_of(options: Mapping[str, Any]) -> int:
    """How many times Dramatiq's Retries has retried a message."""
    return _count(options, "retries")
