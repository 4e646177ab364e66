"""The application of the examples in docs/cli.md: ``cli_examples.py`` runs its workers.

Its broker and tracker read ``SHOP_REDIS_URL``; the tracker uses short timings, so that the
examples show a dead worker within seconds.  dramatiq-abort is added when it is installed.
"""

from __future__ import annotations

import os
import time

import dramatiq
from dramatiq.brokers.redis import RedisBroker

from dramatiq_tracker import TrackerMiddleware

broker = RedisBroker(url=os.environ["SHOP_REDIS_URL"])
try:
    from dramatiq_abort import Abortable
    from dramatiq_abort.backends import RedisBackend
except ImportError:  # pragma: no cover
    pass
else:
    broker.add_middleware(Abortable(backend=RedisBackend(client=broker.client)))
broker.add_middleware(
    TrackerMiddleware(url=os.environ["SHOP_REDIS_URL"], heartbeat_interval=1000, heartbeat_timeout=3000)
)
dramatiq.set_broker(broker)

#: How long each actor works, in seconds.
WORK = float(os.environ.get("SHOP_WORK_SECONDS", "600"))


def work() -> None:
    # Short sleeps: an abort lands between two of them.
    for _ in range(int(WORK * 10)):
        time.sleep(0.1)


@dramatiq.actor(max_retries=0)
def resize_image(image_id: int) -> None:
    work()


@dramatiq.actor(queue_name="billing", max_retries=0, unique=True)
def charge(order_id: int) -> None:
    work()


@dramatiq.actor(queue_name="billing", max_retries=0)
def send_invoice(order_id: int) -> None:
    work()
