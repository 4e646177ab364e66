"""What the application's broker holds, read through the broker itself: how many messages wait on
each queue and how long the oldest has waited, and whether a message is there at all.

The tracker's Redis knows the messages being processed; the broker knows those waiting.  With the
application's broker (``--broker``), the command line, the exporter and the dashboard show both:

- RedisBroker: per queue, the messages ready (``LLEN``), fetched and not acked yet, delayed (its
  ``.DQ``), dead-lettered (its ``.XQ``), and the age of the next one to be fetched (its
  ``message_timestamp``, the producer's clock, against the broker's Redis server's clock).
- RabbitMQ: the messages ready on each queue, its delay queue and its dead letters (a passive
  ``queue.declare``, on a connection of its own, closed after).  RabbitMQ tells neither how many are
  unacked nor how old the oldest is without consuming it: those are None.

Other brokers hold nothing that can be read: no depths.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, cast

from dramatiq.common import dq_name, q_name, xq_name

from ..brokers import RABBITMQ, REDIS, broker_kind
from ..keys import RedisBrokerKeys
from ..scripts import Scripts, text
from .reads import OPS_SCRIPTS
from .views import QueueDepth

#: How many payloads one ``find_message`` call reads: about a millisecond of Redis.
FIND_BATCH = 1000
#: The most payloads of one queue searched for a message.
FIND_LIMIT = 1_000_000

if TYPE_CHECKING:
    from dramatiq import Broker


def canonical_queues(broker: Broker, extra: Sequence[str] = ()) -> list[str]:
    """The queues a broker declared (and ``extra`` ones), without their delay and dead-letter queues."""
    return sorted({q_name(name) for name in [*broker.get_declared_queues(), *extra]})


def queue_depths(broker: Broker, queues: Sequence[str] = ()) -> list[QueueDepth]:
    """How many messages the broker holds on each of its declared queues (and ``queues``).

    Raises:
      redis.RedisError: RedisBroker, when its Redis cannot be read.
      pika.exceptions.AMQPError: RabbitMQ, when the server cannot be reached.
    """
    names = canonical_queues(broker, queues)
    kind = broker_kind(broker)
    if not names:
        return []
    if kind == REDIS:
        return _redis_depths(broker, names)
    if kind == RABBITMQ:
        return _rabbitmq_depths(broker, names)
    return []


def holds(broker: Broker, message_id: str) -> bool:
    """Whether a RedisBroker holds this message on one of its declared queues (waiting, delayed, or
    fetched and not acked); always False on other brokers, which cannot look a message up.

    Dramatiq keys payloads by an id of its own: each queue's are searched on the server
    (``lua/find_message.lua``), :data:`FIND_BATCH` at a time, at most :data:`FIND_LIMIT` per queue.
    """
    if broker_kind(broker) != REDIS or not message_id:
        return False
    redis_broker: Any = broker
    keys = RedisBrokerKeys(redis_broker.namespace)
    scripts = Scripts(redis_broker.client, OPS_SCRIPTS)
    for name in canonical_queues(broker):
        for queue in (name, dq_name(name)):
            cursor, read = "0", 0
            while read < FIND_LIMIT:
                cursor, found = scripts("find_message", [keys.messages(queue)], [cursor, FIND_BATCH, message_id])
                if int(found):
                    return True
                cursor, read = text(cursor), read + FIND_BATCH
                if cursor == "0":
                    break
    return False


def _redis_depths(broker: Any, names: Sequence[str]) -> list[QueueDepth]:
    keys = RedisBrokerKeys(broker.namespace)
    pipe = broker.client.pipeline(transaction=False)
    pipe.time()
    for name in names:
        pipe.llen(keys.queue(name))
        pipe.hlen(keys.messages(name))
        pipe.hlen(keys.messages(dq_name(name)))
        pipe.zcard(keys.dead_letters(name))
        pipe.lindex(keys.queue(name), 0)
    (seconds, micros), *replies = pipe.execute()
    now = int(seconds) * 1000 + int(micros) // 1000
    counts = [replies[index : index + 5] for index in range(0, len(replies), 5)]
    heads = [(name, text(found[4])) for name, found in zip(names, counts, strict=True) if found[4] is not None]
    payloads = dict(zip([name for name, _ in heads], _payloads(broker, keys, heads), strict=True))
    depths = []
    for name, (ready, stored, delayed, dead, _) in zip(names, counts, strict=True):
        enqueued = _enqueued_at(payloads.get(name))
        depths.append(
            QueueDepth(
                queue_name=name,
                ready=int(ready),
                unacked=max(0, int(stored) - int(ready)),
                delayed=int(delayed),
                dead_letters=int(dead),
                oldest_age=max(0, now - enqueued) if enqueued is not None else None,
            )
        )
    return depths


def _payloads(broker: Any, keys: RedisBrokerKeys, heads: Sequence[tuple[str, str]]) -> list[Any]:
    if not heads:
        return []
    pipe = broker.client.pipeline(transaction=False)
    for name, message_id in heads:
        pipe.hget(keys.messages(name), message_id)
    return cast("list[Any]", pipe.execute())


def _enqueued_at(payload: bytes | None) -> int | None:
    """When a RedisBroker message was enqueued (its ``message_timestamp``), or None if unreadable."""
    if payload is None:
        return None
    from dramatiq import Message

    try:
        return int(Message.decode(payload).message_timestamp)
    except Exception:  # a message this process's encoder cannot read: its age is unknown
        return None


def _rabbitmq_depths(broker: Any, names: Sequence[str]) -> list[QueueDepth]:
    import pika
    import pika.exceptions

    # A connection of its own: the broker's are per thread (the exporter serves each scrape in a thread).
    connection = pika.BlockingConnection(broker.parameters)
    try:
        channel = connection.channel()

        def ready(queue: str) -> int:
            nonlocal channel
            try:
                return int(channel.queue_declare(queue=queue, passive=True).method.message_count)
            except pika.exceptions.ChannelClosedByBroker:  # no such queue (404): the channel is closed
                channel = connection.channel()
                return 0

        return [QueueDepth(name, ready(name), None, ready(dq_name(name)), ready(xq_name(name)), None) for name in names]
    finally:
        connection.close()
