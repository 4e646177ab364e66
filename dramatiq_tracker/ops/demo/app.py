"""The Dramatiq app of ``dramatiq-tracker demo``, run by the ``dramatiq`` CLI in each demo worker.

Its configuration comes from environment variables that the demo runner
sets (see :class:`~dramatiq_tracker.ops.demo.environment.DemoConfig`), so that
every run has namespaces of its own.  The broker is built at import time,
as the ``dramatiq`` CLI requires.
"""

from __future__ import annotations

import os
import time

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import CurrentMessage

from ...middleware import TrackerMiddleware
from .environment import QUEUE, DemoConfig
from .journal import DONE, STARTED, record

config = DemoConfig.from_environment(os.environ)
broker = RedisBroker(url=config.url, namespace=config.broker_namespace)  # type: ignore[no-untyped-call]
broker.add_middleware(CurrentMessage())
broker.add_middleware(TrackerMiddleware(url=config.url, **config.tracker_options()))
dramatiq.set_broker(broker)


def _record(kind: str) -> None:
    message = CurrentMessage.get_current_message()
    if message is not None:
        record(broker.client, config.events_key, kind, message.message_id)


@dramatiq.actor(queue_name=QUEUE, max_retries=0)
def slow_work(index: int, duration: int) -> None:
    """Work quietly for ``duration`` milliseconds, reporting when it starts and when it is done.

    Parameters:
      index(int): The message's number in the demo, for the worker logs.
      duration(int): How long the work takes, in milliseconds.
    """
    _record(STARTED)
    time.sleep(duration / 1000)
    _record(DONE)
