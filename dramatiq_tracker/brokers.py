"""What the tracker needs to know about the broker a worker consumes from.

Recovery differs per broker (see docs/failure-model.md): a RedisBroker's
orphans are still in Redis and are moved back; RabbitMQ redelivers by
itself; any other broker gets the stored payload enqueued again.
"""

from __future__ import annotations

import dataclasses
import os
import socket
from typing import TYPE_CHECKING, Any, cast

from dramatiq.common import dq_name

if TYPE_CHECKING:
    import redis
    from dramatiq import Broker
    from dramatiq.broker import MessageProxy
    from dramatiq.brokers.redis import RedisBroker

REDIS = "redis"
RABBITMQ = "rabbitmq"
STUB = "stub"
OTHER = "other"

_KINDS = {
    "dramatiq.brokers.redis.RedisBroker": REDIS,
    "dramatiq.brokers.rabbitmq.RabbitmqBroker": RABBITMQ,
    "dramatiq.brokers.stub.StubBroker": STUB,
}


def _qualified_name(cls: type) -> str:
    return "%s.%s" % (cls.__module__, cls.__qualname__)


def broker_kind(broker: Broker) -> str:
    """ "redis", "rabbitmq", "stub" or "other", subclasses included.

    Classes are compared by name so that pika need not be importable.
    """
    for cls in type(broker).__mro__:
        kind = _KINDS.get(_qualified_name(cls))
        if kind is not None:
            return kind
    return OTHER


def as_redis_broker(broker: Broker) -> RedisBroker:
    """``broker``, typed as the RedisBroker that :func:`broker_kind` found it to be."""
    return cast("RedisBroker", broker)


#: Prefixed to the redis message id of a message whose ack is withheld (see :func:`withhold_ack`).
WITHHELD_PREFIX = "tracker-withheld:"


def withhold_ack(message: MessageProxy) -> None:
    """Make Dramatiq's ack of a RedisBroker message that is not run a no-op: the id stays in the acks
    set, its payload in the queue's messages, for the recovery that moves it from there.

    A RedisBroker consumer acks by ``options["redis_message_id"]`` (removing it from the acks set and
    deleting its payload); an id that is in neither makes that ack change nothing.
    """
    options = message.options
    redis_message_id = options.get("redis_message_id")
    if redis_message_id and not str(redis_message_id).startswith(WITHHELD_PREFIX):
        options["redis_message_id"] = WITHHELD_PREFIX + str(redis_message_id)


def describe_redis_client(client: redis.Redis) -> str:
    """A stable description of the server and database a client talks to."""
    kwargs: dict[str, Any] = client.connection_pool.connection_kwargs
    database = kwargs.get("db", 0)
    if kwargs.get("path"):
        return "unix://%s?db=%s" % (kwargs["path"], database)
    return "redis://%s:%s/%s" % (kwargs.get("host", "localhost"), kwargs.get("port", 6379), database)


def describe_rabbitmq_parameters(parameters: Any) -> str:
    """``host:port/vhost`` of a RabbitmqBroker's (first) connection parameters."""
    first = parameters[0] if isinstance(parameters, (list, tuple)) and parameters else parameters
    host = getattr(first, "host", "localhost")
    port = getattr(first, "port", 5672)
    vhost = getattr(first, "virtual_host", "/")
    return "%s:%s/%s" % (host, port, vhost)


def _process_local(kind: str, broker: Broker) -> str:
    return "%s:%s:%d:%x" % (kind, socket.gethostname(), os.getpid(), id(broker))


@dataclasses.dataclass(frozen=True)
class BrokerFacts:
    """How a broker is identified in a worker registration.

    Parameters:
      kind(str): See :func:`broker_kind`.
      identity(str): Names one broker deployment: two workers whose identities match share
        their queues, so one may deliver the other's orphans again.
      broker_id(str): RedisBroker's per-process ``broker_id``; "" elsewhere.
      namespace(str): RedisBroker's namespace; "" elsewhere.
      derived(bool): False when the identity was given (the ``broker_identity`` setting).
    """

    kind: str
    identity: str
    broker_id: str = ""
    namespace: str = ""
    derived: bool = True

    @classmethod
    def of(cls, broker: Broker, identity: str | None = None) -> BrokerFacts:
        """The facts of ``broker``; ``identity`` (the ``broker_identity`` setting) overrides the derived one.

        Derived identities: a RedisBroker's server, database and namespace; a RabbitmqBroker's
        first host, port and virtual host; for a StubBroker, and any other broker whose
        deployment the tracker cannot see, this very broker object in this process, so that
        no other process ever takes its orphans (set ``broker_identity`` to share them).
        """
        kind = broker_kind(broker)
        broker_id = namespace = ""
        if kind == REDIS:
            redis_broker = as_redis_broker(broker)
            namespace = redis_broker.namespace
            broker_id = redis_broker.broker_id
            derived = "redis:%s#%s" % (describe_redis_client(redis_broker.client), namespace)
        elif kind == RABBITMQ:
            derived = "rabbitmq:%s" % describe_rabbitmq_parameters(getattr(broker, "parameters", None))
        elif kind == STUB:
            derived = _process_local("stub", broker)
        else:
            derived = _process_local("other:" + _qualified_name(type(broker)), broker)
        if identity:
            return cls(kind, identity, broker_id, namespace, derived=False)
        return cls(kind, derived, broker_id, namespace)


def consumed_queues(broker: Broker, whitelist: set[str] | None) -> tuple[str, ...]:
    """The canonical queues a worker consumes: all declared ones, or its whitelist."""
    declared = broker.get_declared_queues()
    return tuple(sorted(q for q in declared if not whitelist or q in whitelist))


def consumer_queues(queues: tuple[str, ...]) -> list[str]:
    """Every queue a worker fetches from (and holds acks for): each queue and its delay queue."""
    return [name for queue in queues for name in (queue, dq_name(queue))]
