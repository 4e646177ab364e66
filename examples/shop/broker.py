"""The shop's broker: a RedisBroker on ``$REDIS_URL`` with the tracker.

Import :mod:`shop.tasks` (which imports this module) to get the actors too; that is what the
``dramatiq`` command runs: ``dramatiq shop.tasks``.
"""

from __future__ import annotations

import os

import dramatiq
from dramatiq.brokers.redis import RedisBroker

from dramatiq_tracker import TrackerMiddleware

broker = RedisBroker(url=os.environ.get("REDIS_URL", "redis://localhost:6379/0"), namespace="shop")
# Before the actors are declared, so that they may use the tracker's options. The tracker keeps its
# keys in the broker's Redis (its client), under its own namespace.
broker.add_middleware(TrackerMiddleware(namespace="shop-tracker", max_recoveries=2))
dramatiq.set_broker(broker)
