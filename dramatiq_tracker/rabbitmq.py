"""RabbitMQ deliveries that outlive their channel.

RabbitMQ numbers the deliveries of a channel from 1.  When a worker's
connection closes (a network blip, a ``consumer_timeout``, a server
restart), the server requeues every delivery of the channel not yet acked,
and Dramatiq opens a new channel, whose delivery tags start at 1 again.  The
messages of the old channel still run, or wait in the worker's queue, and
Dramatiq acks them through the new consumer, by their old tags.  Such an ack
can land on another delivery of the new channel (acked before it ran: lost
if the worker then stops or dies), such a nack dead-letters it, and a copy
prefetched on the old channel runs beside its redelivery.

A worker's consumers are wrapped (:func:`watch_channels`): each delivery is
stamped with the consumer that fetched it, and its ack or nack reaches the
server only through that consumer, while its channel is open.  Otherwise it
is withheld and reported (the server requeued the message and delivers it
again), and a copy whose channel closed before it started is not run
(:func:`fetched_on_closed_channel`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dramatiq.broker import Consumer

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from dramatiq import Broker, MessageProxy

    #: Told of a withheld ack or nack: the message, and "ack" or "nack".
    Withheld = Callable[[MessageProxy, str], None]

#: The attribute of a message proxy that holds the consumer that fetched it.
_FETCHED_BY = "_tracker_fetched_by"


class ChannelConsumer(Consumer):
    """A RabbitMQ consumer whose acks and nacks name only deliveries of its own open channel.

    Parameters:
      consumer(Consumer): Dramatiq's consumer.
      withheld(callable): Told of each ack or nack withheld.
    """

    def __init__(self, consumer: Consumer, withheld: Withheld) -> None:
        self.consumer = consumer
        self.withheld = withheld
        #: Closed by its consumer thread (after a connection error, when paused or stopped).
        self.retired = False

    @property
    def is_open(self) -> bool:
        """Whether its channel may still take acks: not closed, by either side."""
        if self.retired:
            return False
        consumer: Any = self.consumer
        channel = getattr(consumer, "channel", None)
        connection = getattr(consumer, "connection", None)
        return not (getattr(channel, "is_closed", False) or getattr(connection, "is_closed", False))

    def __next__(self) -> MessageProxy | None:
        message = next(self.consumer)
        if message is not None:
            setattr(message, _FETCHED_BY, self)
        return message

    def ack(self, message: MessageProxy) -> None:
        if self._fetched_here(message):
            self.consumer.ack(message)
        else:
            self.withheld(message, "ack")

    def nack(self, message: MessageProxy) -> None:
        if self._fetched_here(message):
            self.consumer.nack(message)
        else:
            self.withheld(message, "nack")

    def requeue(self, messages: Iterable[MessageProxy]) -> None:
        self.consumer.requeue(messages)

    def close(self) -> None:
        self.retired = True
        self.consumer.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.consumer, name)

    def _fetched_here(self, message: MessageProxy) -> bool:
        fetched_by = vars(message).get(_FETCHED_BY)
        # A message this wrapper never stamped (fetched before the worker booted): Dramatiq decides.
        return fetched_by is None or (fetched_by is self and self.is_open)


def fetched_on_closed_channel(message: MessageProxy) -> bool:
    """Whether the channel that delivered ``message`` has closed: the server requeued it."""
    fetched_by = vars(message).get(_FETCHED_BY)
    return fetched_by is not None and not fetched_by.is_open


class _Consume:
    """The broker's ``consume``, its consumers wrapped in :class:`ChannelConsumer`."""

    def __init__(self, consume: Callable[..., Consumer], withheld: Withheld) -> None:
        self.consume = consume
        self.withheld = withheld

    def __call__(self, *args: Any, **kwargs: Any) -> Consumer:
        return ChannelConsumer(self.consume(*args, **kwargs), self.withheld)


def watch_channels(broker: Broker, withheld: Withheld) -> None:
    """Wrap the consumers ``broker`` makes from now on (once; :func:`unwatch_channels` undoes it)."""
    if not isinstance(vars(broker).get("consume"), _Consume):
        broker.consume = _Consume(broker.consume, withheld)  # type: ignore[method-assign]


def unwatch_channels(broker: Broker) -> None:
    """Let ``broker`` make Dramatiq's own consumers again."""
    if isinstance(vars(broker).get("consume"), _Consume):
        del broker.consume
