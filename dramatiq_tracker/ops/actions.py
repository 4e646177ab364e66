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
from typing import TYPE_CHECKING, Any

import dramatiq
from dramatiq import Broker

from ..errors import ConfigurationError, TrackerNotConfigured
from ..events import ABORT_REQUESTED, LOCK_DELETED, TrackerEvent
from ..middleware import TrackerMiddleware, find_tracker
from ..settings import DEFAULT_EVENTS_MAXLEN

if TYPE_CHECKING:
    from ..orphans import RecoveryReport
    from ..store import LockInfo
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
    except Exception as e:
        raise ConfigurationError("broker", "cannot import %r: %s: %s" % (module_name, type(e).__name__, e)) from None
    if not attribute:
        return dramatiq.get_broker()
    broker = getattr(module, attribute, None)
    if not isinstance(broker, Broker):
        raise ConfigurationError("broker", "%r is not a dramatiq broker in module %r" % (attribute, module_name))
    return broker


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
