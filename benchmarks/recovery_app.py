"""The Dramatiq app that ``benchmarks/recovery.py`` runs in real ``dramatiq`` worker processes.

Not meant to be run by hand: everything comes from environment variables
that the benchmark sets, so that every run has namespaces of its own.

- ``BENCH_BROKER_URL``, ``BENCH_BROKER_NAMESPACE``, ``BENCH_QUEUE``: the RedisBroker and queue.
- ``BENCH_TRACKER_NAMESPACE``: add a TrackerMiddleware with its default timings; empty for plain Dramatiq.
- ``BENCH_REPORT_PREFIX``: where the processes report what they did (RPUSH of ``<prefix>:boot`` / ``:started``).
- ``BENCH_ROLE``: "victim" or "survivor", reported at boot with the worker process's pid.
- ``BENCH_SLOW_SECONDS``: how long ``slow`` sleeps in this process.
"""

from __future__ import annotations

import os
import time
from typing import Any

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import CurrentMessage, Middleware

from dramatiq_tracker import TrackerMiddleware

BROKER_URL = os.environ["BENCH_BROKER_URL"]
QUEUE = os.environ["BENCH_QUEUE"]
REPORT_PREFIX = os.environ["BENCH_REPORT_PREFIX"]
ROLE = os.environ["BENCH_ROLE"]
TRACKER_NAMESPACE = os.environ.get("BENCH_TRACKER_NAMESPACE", "")
SLOW_SECONDS = float(os.environ.get("BENCH_SLOW_SECONDS", "3600"))

report = redis.Redis.from_url(BROKER_URL)


class BootReport(Middleware):
    """Tell the benchmark which pid the worker process has, once its consumers run."""

    def after_worker_boot(self, broker: dramatiq.Broker, worker: Any) -> None:
        report.rpush("%s:boot" % REPORT_PREFIX, "%s|%d|%f" % (ROLE, os.getpid(), time.time()))


# Dramatiq's defaults: heartbeat_timeout 60 s, maintenance_chance 1000 per million.
broker = RedisBroker(url=BROKER_URL, namespace=os.environ["BENCH_BROKER_NAMESPACE"])
broker.add_middleware(CurrentMessage())
if TRACKER_NAMESPACE:
    # The tracker's default timings: heartbeat_timeout 15 s, sweep_interval 5 s.
    broker.add_middleware(TrackerMiddleware(url=BROKER_URL, namespace=TRACKER_NAMESPACE))
broker.add_middleware(BootReport())
dramatiq.set_broker(broker)


@dramatiq.actor(queue_name=QUEUE, max_retries=0)
def slow(index: int) -> None:
    message = CurrentMessage.get_current_message()
    assert message is not None
    report.rpush("%s:started" % REPORT_PREFIX, "%s|%d|%f" % (message.message_id, os.getpid(), time.time()))
    time.sleep(SLOW_SECONDS)
