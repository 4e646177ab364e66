"""Flushing a test broker releases the uniqueness locks of the messages it drops.

A unique message that never runs (sent in a test that then raises, or left in its queue when the test
ends) keeps its lock: only its completion, or recovery, releases it.  Dramatiq's ``flush`` and
``flush_all`` drop such messages without a hook, so their locks outlive the test, and the next run of
the suite meets them as duplicates.  These functions flush, then release the locks the dropped
messages own (owner-checked: a lock another message holds is left alone); the fixtures' brokers do it
in their own ``flush`` and ``flush_all``.
"""

from __future__ import annotations

from collections.abc import Iterable
from itertools import chain
from typing import Any

import redis
from dramatiq import Broker, Message
from dramatiq.brokers.redis import RedisBroker
from dramatiq.brokers.stub import StubBroker
from dramatiq.common import dq_name
from dramatiq.logging import get_logger

from ..brokers import REDIS, STUB, as_redis_broker, broker_kind
from ..keys import RedisBrokerKeys
from ..middleware import TrackerMiddleware
from ..options import DUPLICATE_OPTION, attempt_of
from ..unique import lock_of


def _queued_payloads(broker: Broker, queue_name: str) -> list[bytes]:
    """The encoded messages a flush of ``queue_name`` drops (its delay queue's too on a RedisBroker,
    whose ``flush`` purges both)."""
    kind = broker_kind(broker)
    if kind == STUB:
        queue = broker.queues.get(queue_name)
        return list(queue.queue) if queue is not None else []
    if kind == REDIS:
        redis_broker = as_redis_broker(broker)
        keys = RedisBrokerKeys(redis_broker.namespace)
        pipe = redis_broker.client.pipeline(transaction=False)
        for name in (queue_name, dq_name(queue_name)):
            pipe.hvals(keys.messages(name))
        return [payload for payloads in pipe.execute() for payload in payloads]
    return []


def release_locks(broker: Broker, payloads: Iterable[bytes | Message[Any]]) -> int:
    """Release the uniqueness locks that these messages own, if they still do.

    Parameters:
      broker(Broker): Its tracker's Redis holds the locks (none: nothing to do).
      payloads(list[bytes|Message]): Encoded or decoded messages; undecodable ones are skipped.

    Returns:
      int: How many locks were released.  A tracker Redis that cannot be reached releases none: it is
      logged, and the flush is not undone.
    """
    tracker = next((m for m in broker.middleware if isinstance(m, TrackerMiddleware)), None)
    if tracker is None:
        return 0
    released = 0
    try:
        for payload in payloads:
            try:
                message = payload if isinstance(payload, Message) else Message.decode(payload)
            except Exception:
                continue
            digest, _ = lock_of(message.options)
            if digest and DUPLICATE_OPTION not in message.options:
                released += tracker.store.release_lock(digest, message.message_id, attempt_of(message.options), "")
    except redis.RedisError as e:
        get_logger(__name__).warning("Could not release the locks of flushed messages: %s", e)
    return released


def flush(broker: Broker, queue_name: str) -> None:
    """``broker.flush(queue_name)``, then release the uniqueness locks of the messages it dropped."""
    if isinstance(broker, _ReleasingFlush):
        broker.flush(queue_name)
        return
    payloads = _queued_payloads(broker, queue_name)
    broker.flush(queue_name)
    release_locks(broker, payloads)


def flush_all(broker: Broker) -> None:
    """``broker.flush_all()``, then release the uniqueness locks of the messages it dropped.

    Use it in place of ``broker.flush_all()`` in the teardown of your own broker fixture, so that a
    unique message a test left behind does not make the next run's first send of it a duplicate.
    """
    if isinstance(broker, _ReleasingFlush):
        broker.flush_all()
        return
    queues = chain(broker.queues, getattr(broker, "delay_queues", ())) if broker_kind(broker) == STUB else broker.queues
    payloads = [payload for queue_name in list(queues) for payload in _queued_payloads(broker, queue_name)]
    broker.flush_all()
    release_locks(broker, payloads)


class _ReleasingFlush(Broker):
    """A broker whose ``flush`` (and so ``flush_all``) releases the uniqueness locks of the messages it drops."""

    def flush(self, queue_name: str) -> None:
        payloads = _queued_payloads(self, queue_name)
        super().flush(queue_name)
        release_locks(self, payloads)


class StubTestBroker(_ReleasingFlush, StubBroker):
    """The StubBroker the fixtures make: its ``flush`` (and so ``flush_all``) releases the uniqueness
    locks of the messages it drops."""


class RedisTestBroker(_ReleasingFlush, RedisBroker):
    """The RedisBroker the fixtures make: its ``flush`` (and so ``flush_all``) releases the uniqueness
    locks of the messages it drops."""
