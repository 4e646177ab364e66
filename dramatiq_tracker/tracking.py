"""Module-level helpers that find the tracker on a broker."""

from __future__ import annotations

from typing import TYPE_CHECKING

import dramatiq

from .errors import TrackerNotConfigured
from .middleware import TrackerMiddleware

if TYPE_CHECKING:
    from dramatiq import Broker

    from .orphans import RecoveryReport


def find_tracker(broker: Broker | None = None) -> TrackerMiddleware:
    """The TrackerMiddleware of ``broker`` (default: the global broker).

    Raises:
      TrackerNotConfigured: When the broker has none.
    """
    broker = broker or dramatiq.get_broker()
    for middleware in broker.middleware:
        if isinstance(middleware, TrackerMiddleware):
            return middleware
    raise TrackerNotConfigured("Broker %r has no TrackerMiddleware; add it with broker.add_middleware()." % broker)


def recover(broker: Broker | None = None) -> RecoveryReport:
    """Recover dead workers now: deliver their orphans again.

    Parameters:
      broker(Broker): The broker whose tracker sweeps (default: the global broker).

    Raises:
      TrackerNotConfigured: When the broker has no TrackerMiddleware.
      redis.RedisError: When Redis fails; nothing is lost, a later sweep finishes.
    """
    return find_tracker(broker).recover()
