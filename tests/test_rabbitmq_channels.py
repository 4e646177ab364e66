"""Which consumer may ack a RabbitMQ delivery: the pure logic of dramatiq_tracker.rabbitmq.

The behaviour with real workers and a real RabbitMQ is in tests/test_rabbitmq_reconnect.py.
"""

from __future__ import annotations

import types
from typing import Any

from dramatiq.broker import Consumer, MessageProxy
from dramatiq.message import Message

from dramatiq_tracker.rabbitmq import ChannelConsumer, fetched_on_closed_channel, unwatch_channels, watch_channels


class FakeConsumer(Consumer):
    """Dramatiq's consumer as the wrapper sees it: deliveries, acks, and a channel that may close."""

    def __init__(self) -> None:
        self.channel = types.SimpleNamespace(is_closed=False)
        self.connection = types.SimpleNamespace(is_closed=False)
        self.acked: list[str] = []
        self.nacked: list[str] = []
        self.closed = False

    def __next__(self) -> MessageProxy:
        return MessageProxy(Message(queue_name="q", actor_name="a", args=(), kwargs={}, options={}))

    def ack(self, message: MessageProxy) -> None:
        self.acked.append(message.message_id)

    def nack(self, message: MessageProxy) -> None:
        self.nacked.append(message.message_id)

    def close(self) -> None:
        self.closed = True


def wrapped() -> tuple[ChannelConsumer, FakeConsumer, list[tuple[str, str]]]:
    withheld: list[tuple[str, str]] = []
    inner = FakeConsumer()
    return ChannelConsumer(inner, lambda m, c: withheld.append((m.message_id, c))), inner, withheld


def test_a_delivery_is_acked_and_nacked_through_the_consumer_that_fetched_it_while_its_channel_is_open() -> None:
    consumer, inner, withheld = wrapped()
    first, second = next(consumer), next(consumer)
    assert first is not None and second is not None
    consumer.ack(first)
    consumer.nack(second)
    assert (inner.acked, inner.nacked, withheld) == ([first.message_id], [second.message_id], [])
    assert not fetched_on_closed_channel(first)


def test_a_delivery_of_another_consumer_is_never_acked_through_this_one() -> None:
    old, old_inner, _ = wrapped()
    new, new_inner, withheld = wrapped()
    message = next(old)
    assert message is not None
    old.close()
    new.ack(message)
    new.nack(message)
    assert old_inner.closed and (old_inner.acked, new_inner.acked, new_inner.nacked) == ([], [], [])
    assert withheld == [(message.message_id, "ack"), (message.message_id, "nack")]
    assert fetched_on_closed_channel(message)


def test_a_delivery_whose_channel_closed_is_withheld_before_its_consumer_is_replaced() -> None:
    for side in ("channel", "connection"):
        consumer, inner, withheld = wrapped()
        message = next(consumer)
        assert message is not None
        getattr(inner, side).is_closed = True
        assert fetched_on_closed_channel(message)
        consumer.ack(message)
        assert (inner.acked, withheld) == ([], [(message.message_id, "ack")])


def test_a_message_no_wrapper_fetched_is_left_to_dramatiq() -> None:
    consumer, inner, withheld = wrapped()
    message = MessageProxy(Message(queue_name="q", actor_name="a", args=(), kwargs={}, options={}))
    consumer.ack(message)
    assert (inner.acked, withheld) == ([message.message_id], [])
    assert not fetched_on_closed_channel(message)


def test_a_broker_is_wrapped_once_and_unwrapped() -> None:
    made: list[Any] = []

    class Broker:
        def consume(self, queue_name: str, prefetch: int = 1, timeout: int = 30000) -> Consumer:
            made.append(queue_name)
            return FakeConsumer()

    broker: Any = Broker()
    watch_channels(broker, lambda m, c: None)
    watch_channels(broker, lambda m, c: None)
    consumer = broker.consume("q", prefetch=2)
    assert isinstance(consumer, ChannelConsumer) and isinstance(consumer.consumer, FakeConsumer)
    unwatch_channels(broker)
    assert isinstance(broker.consume("q"), FakeConsumer) and made == ["q", "q"]
