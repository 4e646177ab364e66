"""What an operator may change, for the ``dramatiq-tracker`` command and the dashboard.

Deleting a uniqueness lock needs only the tracker's Redis.  Recovering now, and
cancelling or aborting a message, go through the application's broker (its
``TrackerMiddleware``, and dramatiq-abort's ``Abortable`` for aborts), loaded the way
the ``dramatiq`` command loads it: ``package.module`` or ``package.module:attribute``.
Every change is written to the event stream, saying who made it.
"""

from __future__ import annotations

import importlib
import os
import socket
import sys
import time
from typing import TYPE_CHECKING, Any, cast

import dramatiq
import redis
import redis.exceptions
from dramatiq import Broker

from ..abort import find_abortable
from ..brokers import RABBITMQ, REDIS, BrokerFacts, broker_kind
from ..errors import ConfigurationError, TrackerNotConfigured
from ..events import ABORT_REQUESTED, LOCK_DELETED, TrackerEvent
from ..middleware import TrackerMiddleware, find_tracker
from ..settings import DEFAULT_EVENTS_MAXLEN
from .queues import holds
from .views import GONE, LeftOut

#: The most workers a look at every registered worker reads.
LISTED = 1_000_000

if TYPE_CHECKING:
    from ..orphans import RecoveryReport
    from ..records import LockInfo
    from .inspection import Inspector


def load_broker(spec: str) -> Broker:
    """Import an application's broker: ``package.module`` (its global broker once imported) or
    ``package.module:attribute``, from the current directory too, as the ``dramatiq`` command does.

    Raises:
      ConfigurationError: When the module cannot be imported or the attribute is not a broker.
    """
    module_name, _, attribute = spec.partition(":")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except (redis.RedisError, redis.exceptions.RedisClusterException):
        raise  # the application made a client of a Redis that does not answer: said as such, not as a usage error
    except Exception as e:
        raise ConfigurationError("broker", "cannot import %r: %s: %s" % (module_name, type(e).__name__, e)) from None
    if not attribute:
        return dramatiq.get_broker()
    broker = getattr(module, attribute, None)
    if not isinstance(broker, Broker):
        raise ConfigurationError("broker", "%r is not a dramatiq broker in module %r" % (attribute, module_name))
    return broker


def tracker_client(tracker: TrackerMiddleware, broker: Broker) -> redis.Redis:
    """The Redis client of ``broker``'s tracker, bound to it as declaring an actor would, whether or not
    it is the global broker.

    Raises:
      redis.RedisError, RedisClusterException: When its client is made and cannot connect (a Cluster).
    """
    return tracker.bind(broker).store.client


class Operator:
    """Change what an operator may change.

    Parameters:
      inspector(Inspector): The tracker's Redis and namespace.
      broker(Broker): The application's broker, with its TrackerMiddleware; needed to recover
        and to cancel or abort, not to delete a lock.
      who(str): Who acts, written in the events ("cli", "dashboard", a user name).
    """

    def __init__(self, inspector: Inspector, broker: Broker | None = None, *, who: str = "operator") -> None:
        self.inspector = inspector
        self.broker = broker
        self.who = who

    @property
    def tracker(self) -> TrackerMiddleware:
        """The broker's TrackerMiddleware.

        Raises:
          TrackerNotConfigured: When there is no broker, or it has no tracker.
        """
        if self.broker is None:
            raise TrackerNotConfigured("This needs the application's broker (the --broker option).")
        tracker = find_tracker(self.broker)
        namespace = tracker.settings.namespace
        if namespace != self.inspector.namespace:
            message = "the broker's tracker uses namespace %r, not %r" % (namespace, self.inspector.namespace)
            raise ConfigurationError("namespace", message)
        return tracker

    def require_abortable(self) -> None:
        """Check that cancelling and aborting can be asked for.

        Raises:
          TrackerNotConfigured: Without the application's broker, or when it has no ``Abortable``.
        """
        self.tracker  # noqa: B018 - raises without the application's broker and its tracker
        if self.broker is None or find_abortable(self.broker) is None:
            raise TrackerNotConfigured(
                "Cancelling and aborting need dramatiq-abort's Abortable middleware in the application's broker."
            )

    def knows(self, message_id: str) -> bool:
        """Whether the message exists as far as anyone can tell: the tracker knows it (recorded running,
        recovered, or in an event), or the application's RedisBroker holds it on a declared queue."""
        if self.inspector.message(message_id) is not None:
            return True
        return self.broker is not None and holds(self.broker, message_id)

    @property
    def broker_lookup(self) -> str:
        """What :meth:`knows` could ask the broker, said after what the tracker does not know."""
        kind = broker_kind(self.broker) if self.broker is not None else ""
        if kind == REDIS:
            return ", and the RedisBroker holds it on none of its declared queues"
        if kind == RABBITMQ:
            return " (RabbitMQ cannot be asked whether it holds a message)"
        return ""

    def delete_lock(self, digest: str) -> LockInfo | None:
        """Delete a uniqueness lock whoever owns it, so that a duplicate may be sent again.

        Returns:
          LockInfo|None: The lock deleted, or None when it was not held.
        """
        lock = self.inspector.lock(digest)
        if lock is None or not self.inspector.store.delete_lock(digest):
            return None
        self._note(
            LOCK_DELETED,
            "Uniqueness lock %s of message %r (actor %r) deleted by %s."
            % (digest, lock.message_id, lock.actor_name, self.who),
            message_id=lock.message_id,
            actor_name=lock.actor_name,
            queue_name=lock.queue_name,
            worker_id=lock.worker_id,
            details={"digest": digest, "mode": lock.mode},
        )
        return lock

    def recover(self, *, dry_run: bool = False) -> RecoveryReport:
        """Recover dead workers now (see :meth:`TrackerMiddleware.recover`).

        Raises:
          TrackerNotConfigured: Without the application's broker.
          redis.RedisError: When Redis fails; nothing is lost, a later sweep finishes.
        """
        return self.tracker.recover(dry_run=dry_run)

    def left_out(self, report: RecoveryReport) -> list[LeftOut]:
        """The workers that are not alive and hold orphans, which a recovery (or its plan) did not take,
        each with the reason: so that a plan that changes nothing while orphans wait says why.

        Raises:
          TrackerNotConfigured: Without the application's broker.
        """
        tracker = self.tracker
        identity = BrokerFacts.of(cast("Broker", self.broker), tracker.settings.broker_identity).identity
        taken = set(report.dead_workers)
        found = []
        for view in self.inspector.workers(limit=LISTED).items:
            if view.alive or view.worker_id in taken or not (view.inflight or not view.swept):
                continue
            if not view.swept:
                reason = "it has no heartbeat deadline (written by hand, or partly lost): no sweep finds it"
            elif view.broker_identity != identity:
                reason = (
                    "it consumes from another broker (%s): recover it with that application's --broker"
                    % view.broker_identity
                )
            elif view.state == GONE:
                reason = "its death is not confirmed yet (%s): a sweep takes it within seconds" % view.why_gone
            else:
                reason = "a sweep does not find it dead yet (%s)" % view.state
            found.append(LeftOut(view.worker_id, view.state, view.inflight, reason))
        return found

    def abort(self, message_id: str, *, mode: str = "abort") -> None:
        """Cancel (``mode="cancel"``: only if it has not started) or abort a message with
        dramatiq-abort, remembered so that it is not delivered again after a crash.

        Raises:
          TrackerNotConfigured: Without the application's broker, or when it has no ``Abortable``.
          ConfigurationError: When ``mode`` is not "cancel" or "abort".
        """
        self.tracker.abort(message_id, mode=mode)
        self._note(
            ABORT_REQUESTED,
            "%s of message %r requested by %s." % ("Cancel" if mode == "cancel" else "Abort", message_id, self.who),
            message_id=message_id,
            details={"mode": mode},
        )

    def _note(self, kind: str, text: str, *, details: dict[str, str], **fields: Any) -> None:
        event = TrackerEvent(
            kind=kind,
            text=text,
            reporter="%s@%s" % (self.who, _PROCESS),
            at=int(time.time() * 1000),
            details={**details, "by": self.who},
            **fields,
        )
        self.inspector.store.append_events([event.to_fields()], {kind: 1}, DEFAULT_EVENTS_MAXLEN)


_PROCESS = "%s:%d" % (socket.gethostname(), os.getpid())
