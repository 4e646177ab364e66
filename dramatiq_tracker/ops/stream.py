"""What the inspection API reads of the event stream and the counters, and the server's clock: the
methods of :class:`~dramatiq_tracker.ops.inspection.Inspector` that need nothing but its store (no
worker registration, no record in flight)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

from ..errors import ConfigurationError
from ..events import TrackerEvent
from .reads import TIMELINE_BATCH
from .views import Counters, Problem, Timeline

if TYPE_CHECKING:
    from .reads import InspectionStore

#: A Redis stream entry id: milliseconds, and a sequence number (optional in a query).
STREAM_ID = re.compile(r"[0-9]{1,20}(?:-[0-9]{1,20})?")


class StreamReads:
    """Read the event stream, the counters and the clock of a namespace: the base of
    :class:`~dramatiq_tracker.ops.inspection.Inspector`, which has all these methods."""

    @property
    def store(self) -> InspectionStore:
        """Every read of the namespace."""
        raise NotImplementedError

    def server_time(self) -> int:
        """The Redis server's clock, in ms since the epoch.

        Raises:
          redis.RedisError: When Redis cannot be reached (every method raises it then).
        """
        return self.store.server_time()

    def events(
        self,
        count: int = 50,
        *,
        kinds: Sequence[str] | None = None,
        before: str = "+",
        since: int | None = None,
        worker_id: str | None = None,
    ) -> list[TrackerEvent]:
        """The newest events, newest first.

        Parameters:
          count(int): How many stream entries to read (fewer are returned with ``kinds`` or ``worker_id``).
          kinds(list[str]): Only these kinds.
          before(str): Only those before this stream id (exclusive), to page back.
          since(int): Only those written at or after this time (server ms since the epoch).
          worker_id(str): Only those about this worker (the dead one, the zombie).

        Raises:
          ConfigurationError: When ``before`` is not "+" or a stream id (``1764391201000-0``).
        """
        if before != "+" and not STREAM_ID.fullmatch(before):
            raise ConfigurationError("before", "%r is not an event id (such as 1764391201000-0)" % (before,))
        maximum = before if before == "+" else "(" + before
        entries = self.store.events(count, before=maximum, after="-" if since is None else str(since))
        found = [TrackerEvent.from_fields(fields, entry_id) for entry_id, fields in entries]
        return [
            event
            for event in found
            if (not kinds or event.kind in kinds) and (worker_id is None or event.worker_id == worker_id)
        ]

    def timeline(
        self,
        kinds: Sequence[str],
        *,
        window: int = 3_600_000,
        buckets: int = 60,
        limit: int = 10_000,
        since: int | None = None,
    ) -> Timeline:
        """Events of some kinds counted over the last ``window``, in ``buckets`` of equal width
        aligned on multiples of their width (by the stream ids: the Redis server's clock).  They are
        counted on the server, a batch of entries per script call; none is sent to the client.

        Parameters:
          kinds(list[str]): The kinds to count (``"recovered"``, ``"worker-dead"``, ...).
          window(int): How far back, in milliseconds.
          buckets(int): How many buckets.
          limit(int): At most this many stream entries are read, the newest first; beyond it the
            timeline is not ``complete``.
          since(int): Count only the events written at or after this time (server ms): the buckets
            before it stay 0 (for a caller that kept the counts of the buckets that ended).

        Raises:
          ConfigurationError: When ``window`` or ``buckets`` is not positive.
        """
        if buckets < 1 or window < buckets:
            raise ConfigurationError("timeline", "needs at least one bucket of at least 1 ms")
        step = window // buckets
        end = -(-self.server_time() // step) * step
        start = end - step * buckets
        counts = {kind: [0] * buckets for kind in kinds}
        before, read = "+", 0
        while read < limit:
            asked = min(TIMELINE_BATCH, limit - read)
            found, oldest, batch = self.store.count_events(
                kinds, start, step, buckets, before=before, after=max(start, since or 0), count=asked
            )
            for kind, series in batch.items():
                counts[kind] = [a + b for a, b in zip(counts[kind], series, strict=True)]
            read += found
            if found < asked:
                return Timeline(start, step, counts)
            before = "(" + oldest
        return Timeline(start, step, counts, complete=False)

    def events_after(self, after: str, *, count: int = 100) -> list[TrackerEvent]:
        """Events written after the stream id ``after`` ("0" for the oldest), oldest first: to follow
        the stream, pass the id of the last event seen."""
        entries = self.store.events_after(after, count)
        return [TrackerEvent.from_fields(fields, entry_id) for entry_id, fields in entries]

    def last_event_id(self) -> str:
        """The stream id of the newest event, or "0" when there is none."""
        newest = self.store.events(1)
        return newest[0][0] if newest else "0"

    def counters(self) -> Counters:
        """What the tracker counted: events by kind, its sweeps, and how soon orphans started again."""
        return self.read_counters()[0]

    def read_counters(self) -> tuple[Counters, list[Problem]]:
        """:meth:`counters`, and the counters that do not hold a whole number (read as 0)."""
        events: dict[str, int] = {}
        latency: dict[str, int] = {}
        other: dict[str, int] = {}
        problems = []
        for field, raw in self.store.raw_counters().items():
            count = int(raw) if INTEGER.fullmatch(raw) else 0
            if count == 0 and not INTEGER.fullmatch(raw):
                problems.append(Problem(self.store.keys.counters, field, "not a whole number: %r (read as 0)" % raw))
            if field.startswith(LATENCY_BUCKET):
                latency[field[len(LATENCY_BUCKET) :]] = count
            elif field in _NOT_EVENTS:
                other[field] = count
            else:
                events[field] = count
        counters = Counters(
            events=events,
            sweeps=other.get("sweeps", 0),
            sweep_ms=other.get("sweep_ms", 0),
            last_sweep_ms=other.get("last_sweep_ms", 0),
            recovery_latency=latency,
            recovery_latency_sum_ms=other.get("recovery_latency_sum_ms", 0),
            recovery_latency_count=other.get("recovery_latency_count", 0),
        )
        return counters, problems


#: The counters' fields that count no event: the sweeps, and the recovery latency's sum and count.
_NOT_EVENTS = frozenset({"sweeps", "sweep_ms", "last_sweep_ms", "recovery_latency_sum_ms", "recovery_latency_count"})
#: The prefix of the recovery latency's bucket fields: ``recovery_latency_le:<ms>`` (and ``:inf``).
LATENCY_BUCKET = "recovery_latency_le:"
#: A counter's value.
INTEGER = re.compile(r"-?[0-9]+")
