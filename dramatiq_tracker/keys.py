"""The one place where Redis key names are built.

Every key the tracker owns starts with ``{namespace}:v1:``.  The braces
make ``namespace`` a Redis Cluster hash tag, so all of a namespace's
keys live in one slot and every Lua script can touch all of them; ``v1``
is the schema version, bumped if the layout ever changes.

Tracker keys (``$ns`` stands for ``{namespace}:v1``; ``<bid>`` is the short
digest of a broker identity, see :func:`identity_digest`)::

  $ns:workers                     HASH    worker id -> registration (JSON)
  $ns:identities                  HASH    <bid> -> broker identity (the text it digests)
  $ns:deadlines:<bid>             ZSET    worker id -> heartbeat deadline (server ms), per broker identity
  $ns:present:<bid>               HASH    worker id -> its last heartbeat (server ms), of the workers whose
                                          presence the server sees, per broker identity
  $ns:absent:<bid>                HASH    worker id -> "since|beat": when a sweeper found its presence gone
  $ns:server                      HASH    incarnation (the server's run and replication ids), since (ms)
  $ns:dead-workers                ZSET    worker id -> when it was declared dead (server ms)
  $ns:worker:<id>:heartbeat       STRING  present while the worker is alive (PX heartbeat_timeout)
  $ns:worker:<id>:inflight        HASH    message id -> in-flight record (JSON); field "__seq__": write count
  $ns:worker:<id>:revoked         HASH    message id -> the attempt that superseded its copies on this worker
  $ns:worker:<id>:fenced-as       STRING  the new id of a worker declared dead while alive (PX history_ttl)
  $ns:host:<hostname>             SET     worker ids registered from that host
  $ns:broker:<broker_id>          SET     worker ids sharing one RedisBroker ``broker_id``
  $ns:running                     HASH    message id -> "<worker id>|<token>|<retries>" of the attempt running it
  $ns:message:<message id>        HASH    durable per-message history (recoveries, attempt, ...)
  $ns:outbox:<bid>                HASH    message id -> orphan being re-enqueued (JSON)
  $ns:lock:<digest>               HASH    a uniqueness lock: owner message id, attempt, mode, worker, ...
  $ns:locks                       ZSET    lock digest -> expiry (server ms, +inf without a TTL)
  $ns:sweep-lease:<bid>           STRING  owner token of the periodic sweeper of one broker identity
  $ns:events                      STREAM  what the tracker did and why (capped)
  $ns:counters                    HASH    event kind -> how many times it happened, and sweep statistics

And one pub/sub channel per worker process (channels are not keys; on a Redis Cluster they are sharded,
in the namespace's slot)::

  $ns:presence:<id>                       the worker's presence: subscribed to while it lives

Dramatiq's own RedisBroker keys are documented in ``dramatiq/brokers/redis/dispatch.lua``;
:class:`RedisBrokerKeys` spells them for the scripts that move orphans back, plus the one key
the tracker keeps beside them so that recovery survives the loss of the tracker's own Redis.
"""

from __future__ import annotations

import dataclasses
import hashlib

from dramatiq.common import q_name

#: The version of the key layout, part of every key.
SCHEMA_VERSION = "v1"

#: The field of a worker's in-flight hash that counts its writes (see ``lua/flush.lua``).
SEQUENCE_FIELD = "__seq__"

_FORBIDDEN_NAMESPACE_CHARACTERS = frozenset("{}")


def validate_namespace(namespace: str) -> str:
    """Check that ``namespace`` can serve as a key prefix and hash tag.

    Raises:
      ValueError: If it is empty, has whitespace or braces.
    """
    if not isinstance(namespace, str) or not namespace:
        raise ValueError("namespace must be a non-empty string, got %r" % (namespace,))
    bad = _FORBIDDEN_NAMESPACE_CHARACTERS.intersection(namespace)
    if bad or any(character.isspace() for character in namespace):
        raise ValueError("namespace must not contain braces or whitespace, got %r" % (namespace,))
    return namespace


def namespaced_key(namespace: str, *parts: str) -> str:
    """Build a tracker key: ``{namespace}:v1:part:part...``.

    Parameters:
      namespace(str): The tracker namespace; it becomes the key's hash tag.
      *parts(str): The key's path below the namespace.
    """
    return "{%s}:%s:%s" % (namespace, SCHEMA_VERSION, ":".join(parts))


def identity_digest(identity: str) -> str:
    """The short, key-safe digest of a broker identity (12 hex digits of its SHA-1)."""
    return hashlib.sha1(identity.encode("utf-8")).hexdigest()[:12]


@dataclasses.dataclass(frozen=True)
class Keys:
    """The tracker's keys for one namespace."""

    namespace: str

    def __post_init__(self) -> None:
        validate_namespace(self.namespace)

    @property
    def prefix(self) -> str:
        """The common prefix of every key in this namespace."""
        return namespaced_key(self.namespace, "")

    @property
    def workers(self) -> str:
        return namespaced_key(self.namespace, "workers")

    @property
    def identities(self) -> str:
        return namespaced_key(self.namespace, "identities")

    def deadlines(self, identity: str) -> str:
        """The heartbeat deadlines of the workers of one broker identity (given by its digest)."""
        return namespaced_key(self.namespace, "deadlines", identity)

    @property
    def dead_workers(self) -> str:
        return namespaced_key(self.namespace, "dead-workers")

    @property
    def running(self) -> str:
        return namespaced_key(self.namespace, "running")

    def present(self, identity: str) -> str:
        """The workers of one broker identity whose presence the server sees, with their last heartbeat."""
        return namespaced_key(self.namespace, "present", identity)

    def absent(self, identity: str) -> str:
        """The workers of one broker identity whose presence a sweeper found gone, and since when."""
        return namespaced_key(self.namespace, "absent", identity)

    @property
    def server(self) -> str:
        """The incarnation of the server the namespace lives on, and when the namespace first saw it."""
        return namespaced_key(self.namespace, "server")

    @property
    def presence_prefix(self) -> str:
        """What every presence channel starts with: the worker id follows."""
        return namespaced_key(self.namespace, "presence", "")

    def presence_channel(self, worker_id: str) -> str:
        """The pub/sub channel a worker process stays subscribed to while it lives (see presence.py)."""
        return self.presence_prefix + worker_id

    def outbox(self, identity: str) -> str:
        """Orphans being re-enqueued onto the brokers of one identity (given by its digest)."""
        return namespaced_key(self.namespace, "outbox", identity)

    @property
    def events(self) -> str:
        return namespaced_key(self.namespace, "events")

    @property
    def counters(self) -> str:
        return namespaced_key(self.namespace, "counters")

    @property
    def locks(self) -> str:
        return namespaced_key(self.namespace, "locks")

    def lock(self, digest: str) -> str:
        return namespaced_key(self.namespace, "lock", digest)

    def sweep_lease(self, identity: str) -> str:
        """The lease of the periodic sweeper of one broker identity (given by its digest)."""
        return namespaced_key(self.namespace, "sweep-lease", identity)

    def heartbeat(self, worker_id: str) -> str:
        return namespaced_key(self.namespace, "worker", worker_id, "heartbeat")

    def inflight(self, worker_id: str) -> str:
        return namespaced_key(self.namespace, "worker", worker_id, "inflight")

    def revoked(self, worker_id: str) -> str:
        return namespaced_key(self.namespace, "worker", worker_id, "revoked")

    def recovery(self, worker_id: str) -> str:
        """HASH: the claim a sweeper holds on a dead worker's recovery (see ``lua/_recovery.lua``)."""
        return namespaced_key(self.namespace, "worker", worker_id, "recovery")

    def fenced_as(self, worker_id: str) -> str:
        return namespaced_key(self.namespace, "worker", worker_id, "fenced-as")

    def host(self, hostname: str) -> str:
        return namespaced_key(self.namespace, "host", hostname)

    def broker(self, broker_id: str) -> str:
        return namespaced_key(self.namespace, "broker", broker_id)

    def message(self, message_id: str) -> str:
        return namespaced_key(self.namespace, "message", message_id)


@dataclasses.dataclass(frozen=True)
class RedisBrokerKeys:
    """Dramatiq's RedisBroker keys (``dramatiq/brokers/redis/dispatch.lua``).

    Parameters:
      namespace(str): The RedisBroker's namespace (``"dramatiq"`` by default).
    """

    namespace: str

    def acks(self, broker_id: str, queue_name: str) -> str:
        """The set of message ids a broker process fetched and has not acked yet."""
        return "%s:__acks__.%s.%s" % (self.namespace, broker_id, queue_name)

    def queue(self, queue_name: str) -> str:
        """The list of message ids waiting on a queue."""
        return "%s:%s" % (self.namespace, queue_name)

    def messages(self, queue_name: str) -> str:
        """The hash of message id -> payload of a queue."""
        return "%s:%s.msgs" % (self.namespace, queue_name)

    def dead_letters(self, queue_name: str) -> str:
        """The dead-letter set of a queue; a delay queue's messages die in its canonical queue's."""
        return "%s:%s.XQ" % (self.namespace, q_name(queue_name))

    def dead_letter_messages(self, queue_name: str) -> str:
        """The payloads of a queue's dead letters."""
        return "%s:%s.XQ.msgs" % (self.namespace, q_name(queue_name))

    @property
    def heartbeats(self) -> str:
        """Dramatiq's ZSET of broker ids scored by their last command (client ms)."""
        return "%s:__heartbeats__" % self.namespace

    def tracked_processes(self, tracker_namespace: str) -> str:
        """The tracker's own HASH beside Dramatiq's keys: broker id -> registration (JSON) of each
        tracked worker process, so that a dead one is found even if the tracker's Redis lost it."""
        return "%s:__tracker__.%s" % (self.namespace, tracker_namespace)

    @property
    def deployment(self) -> str:
        """A random id drawn once per broker Redis: every process that reads it shares the broker."""
        return "%s:__tracker__.deployment" % self.namespace
