"""The inspection API's view of a namespace at a glance: workers by state, messages in flight by queue
and actor (counted on the Redis server), orphans and how long the oldest has waited, broker identities
whose orphans no live worker sweeps, locks, counters; and the messages in flight longest.  A base of
:class:`~dramatiq_tracker.ops.inspection.Inspector`, which has all these methods."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from ..records import parse_outbox_entry
from .reads import InflightSummary, script_batches
from .views import STATES, ClusterStatus, InflightView, Page, Problem, QueueStatus, Unswept, WorkerView
from .workers import WorkerReads


class StatusReads(WorkerReads):
    """Read a namespace at a glance."""

    def status(self) -> ClusterStatus:
        """The namespace at a glance: workers by state, messages in flight by queue and actor,
        orphans waiting and the age of the oldest, broker identities no live worker sweeps, locks
        held, counters.  The records are counted on the server, a batch of workers per script call
        (see ``benchmarks/inspection.py`` for what it costs)."""
        now = self.server_time()
        views, problems = self._worker_views(self.store.all_registrations(), now)
        states = dict.fromkeys(STATES, 0)
        for view in views:
            states[view.state] += 1
        for view in self.dead_workers(limit=self.store.tombstone_count() or 1):
            states[view.state] += 1
        queues: dict[str, list[int]] = {}
        actors: dict[str, int] = {}
        for summary in self._summaries([v for v in views if v.inflight]):
            for name, (count, orphaned, oldest) in summary.queues.items():
                totals = queues.setdefault(name, [0, 0, oldest])
                totals[0] += count
                totals[1] += orphaned
                totals[2] = min(totals[2], oldest)
            for name, count in summary.actors.items():
                actors[name] = actors.get(name, 0) + count
            problems += [
                Problem(self.keys.inflight(worker_id), message_id, "unreadable record")
                for worker_id, message_id in summary.corrupt
            ]
        identities = self.store.identities()
        outboxes, locks = self.store.outbox_and_lock_counts(sorted(identities), now)
        counters, unreadable = self.read_counters()
        orphaned_since = [v.dead_since for v in views if not v.alive and v.inflight and v.dead_since is not None]
        orphaned_since += self._parked_since([digest for digest, count in outboxes.items() if count], problems)
        return ClusterStatus(
            at=now,
            workers=states,
            inflight=sum(totals[0] for totals in queues.values()),
            orphans=sum(totals[1] for totals in queues.values()) + sum(outboxes.values()),
            outbox=sum(outboxes.values()),
            locks=locks,
            queues=[
                QueueStatus(name, totals[0], totals[1], max(0, now - totals[2]))
                for name, totals in sorted(queues.items())
            ],
            actors=dict(sorted(actors.items())),
            counters=counters,
            problems=problems + unreadable,
            oldest_orphan=max(0, now - min(orphaned_since)) if orphaned_since else 0,
            unswept=unswept(views, {identities.get(d, d): n for d, n in outboxes.items() if n}),
        )

    def _parked_since(self, digests: Sequence[str], problems: list[Problem]) -> list[int]:
        """When the oldest entry of each of these outboxes was parked (server ms)."""
        found = []
        for digest in digests:
            parked = []
            for message_id, raw in self.store.outbox_entries(digest, OUTBOX_ENTRIES_READ):
                try:
                    parked.append(parse_outbox_entry(raw)[0])
                except (ValueError, KeyError, TypeError) as e:
                    problems.append(Problem(self.keys.outbox(digest), message_id, "unreadable outbox entry: %s" % e))
            found += [min(parked)] if parked else []
        return found

    def oldest(self, limit: int = 10) -> Page[InflightView]:
        """The messages in flight that have been running longest, oldest first (those of workers
        that are not alive included: see ``worker_state``).  They are found on the server, a batch
        of workers per script call, as :meth:`status` counts them.

        Parameters:
          limit(int): How many.
        """
        now = self.server_time()
        views, problems = self._worker_views(self.store.all_registrations(), now)
        workers = {view.worker_id: view for view in views}
        found: list[tuple[str, str, int]] = []
        for batch in script_batches([v for v in views if v.inflight], _records):
            found += self.store.oldest_inflight([view.worker_id for view in batch], limit)
        found = sorted(found, key=lambda entry: (entry[2], entry[1]))[: max(0, limit)]
        records = self.store.records([(worker_id, [message_id]) for worker_id, message_id, _ in found])
        items = []
        for (worker_id, message_id, _), (raw,) in zip(found, records, strict=True):
            if raw is None:  # it completed since
                continue
            view = self._inflight_view(message_id, raw, workers[worker_id], now, problems)
            if view is not None:
                items.append(view)
        return Page(items, "", problems)

    def _summaries(self, workers: Sequence[WorkerView]) -> list[InflightSummary]:
        """The workers' records counted on the server, in batches of about :data:`SUMMARY_RECORDS`."""
        return [
            self.store.summarize_inflight([(view.worker_id, view.alive) for view in batch])
            for batch in script_batches(workers, _records)
        ]


#: How many entries of an outbox are read to find the oldest: an outbox holds the orphans of one sweep
#: while they are enqueued again, a few at a time.
OUTBOX_ENTRIES_READ = 1000


def unswept(views: Sequence[WorkerView], outboxes: Mapping[str, int]) -> list[Unswept]:
    """The broker identities whose workers are not alive (or whose outbox holds orphans) while none of
    their workers is alive to sweep them.

    Parameters:
      views(list[WorkerView]): The registered workers.
      outboxes(dict): broker identity -> how many orphans its outbox holds.
    """
    live = {view.broker_identity for view in views if view.alive}
    waiting: dict[str, list[WorkerView]] = {}
    for view in views:
        if not view.alive and view.swept:
            waiting.setdefault(view.broker_identity, []).append(view)
    found = []
    for identity in sorted(set(waiting) | set(outboxes)):
        if identity in live:
            continue
        workers = sorted(waiting.get(identity, []), key=lambda view: view.worker_id)
        orphans = sum(view.inflight for view in workers) + outboxes.get(identity, 0)
        found.append(Unswept(identity, [view.worker_id for view in workers], orphans))
    return found


def _records(worker: WorkerView) -> int:
    return worker.inflight
