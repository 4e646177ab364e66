"""The optional bridge to dramatiq-abort, found at runtime on the broker.

Without dramatiq-abort nothing here imports it or changes behaviour.  With
its ``Abortable`` middleware on the broker:

- a cancel or abort request is remembered by the tracker for ``history_ttl``
  (dramatiq-abort keeps it 90 s), and an orphan with such a request is not
  delivered again, however late it is recovered;
- requests still in dramatiq-abort's backend are probed with ``EXISTS``,
  never ``LPOP``: probing must not consume the event a worker is waiting for;
- a worker that learns it was declared dead while alive aborts its own
  still-running copies of abortable messages, in its own process.  It does not
  push an abort event through Redis: any process running the message may pop
  it, including the one running the recovered copy, and an event pushed for a
  worker that really is dead would abort the recovered copy instead.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from dramatiq.logging import get_logger

if TYPE_CHECKING:
    from dramatiq import Broker, MessageProxy

ABORTABLE_CLASS = "dramatiq_abort.middleware.Abortable"


def find_abortable(broker: Broker) -> Any | None:
    """dramatiq-abort's Abortable middleware on ``broker``, or None (without importing it)."""
    for middleware in broker.middleware:
        for cls in type(middleware).__mro__:
            if "%s.%s" % (cls.__module__, cls.__qualname__) == ABORTABLE_CLASS:
                return middleware
    return None


class AbortBridge:
    """What the tracker does with dramatiq-abort, if the broker has it.

    Parameters:
      broker(Broker)
      remember(callable): Persists an abort intent: ``remember(message_id, mode)``.
    """

    def __init__(self, broker: Broker, remember: Callable[[str, str], None]) -> None:
        self.logger = get_logger(__name__, type(self))
        self.broker = broker
        self._remember = remember
        self._abortable: Any = None

    @property
    def abortable(self) -> Any:
        """dramatiq-abort's Abortable on the broker, or None; looked for again until found, as it may
        be added after the tracker."""
        if self._abortable is None:
            found = find_abortable(self.broker)
            if found is not None:
                self._abortable = found
                self._remember_requests(self._remember)
        return self._abortable

    @property
    def available(self) -> bool:
        return self.abortable is not None

    def _remember_requests(self, remember: Callable[[str, str], None]) -> None:
        # Nothing in dramatiq-abort calls a hook on abort requests: wrap this instance's abort().
        abortable = self.abortable
        original = abortable.abort
        if getattr(original, "__tracker_wrapped__", False):
            return

        def abort(message_id: str, abort_ttl: int | None = None, mode: Any = None, abort_timeout: int = 0) -> None:
            if mode is None:
                from dramatiq_abort.middleware import AbortMode

                mode = AbortMode.ABORT
            original(message_id, abort_ttl=abort_ttl, mode=mode, abort_timeout=abort_timeout)
            try:
                remember(message_id, str(getattr(mode, "value", mode)))
            except Exception:
                self.logger.warning(
                    "Could not remember the %s request of message %r; it is honoured only for "
                    "dramatiq-abort's own TTL.",
                    getattr(mode, "value", mode),
                    message_id,
                    exc_info=True,
                )

        abort.__tracker_wrapped__ = True  # type: ignore[attr-defined]
        abortable.abort = abort

    def pending(self, message_ids: Iterable[str]) -> set[str]:
        """The message ids with a cancel or abort request in dramatiq-abort's backend (EXISTS only)."""
        ids = list(message_ids)
        if not ids or self.abortable is None:
            return set()
        backend = getattr(self.abortable, "backend", None)
        client, namespace = getattr(backend, "client", None), getattr(backend, "namespace", None)
        if client is None or namespace is None:
            return set()
        pipe = client.pipeline(transaction=False)
        for message_id in ids:
            pipe.exists(namespace + "cancel:" + message_id, namespace + "abort:" + message_id)
        return {message_id for message_id, found in zip(ids, pipe.execute(), strict=True) if found}

    def abort(self, message_id: str, mode: str, abort_timeout: int) -> None:
        """Ask dramatiq-abort to cancel or abort a message.

        Raises:
          ValueError: When ``mode`` is not "cancel" or "abort".
        """
        from dramatiq_abort.middleware import AbortMode

        self.abortable.abort(message_id, mode=AbortMode(mode), abort_timeout=abort_timeout)

    def abort_locally(self, copies: Iterable[tuple[MessageProxy, object]]) -> list[str]:
        """Abort, in this process, running copies of abortable messages.

        Parameters:
          copies: (message, the thread that runs it) of each copy to abort.  dramatiq-abort knows
            one thread per message id: when another copy of the message registered since (the
            copy that replaced a zombie's, in this same process), the zombie's is left alone rather
            than the other one aborted.

        Returns:
          list[str]: The ids of the messages that will be aborted.
        """
        abortable = self.abortable
        manager = getattr(abortable, "manager", None)
        if abortable is None or manager is None:
            return []
        registered = getattr(manager, "abortable_messages", None)
        aborted = []
        for message, thread in copies:
            actor = self.broker.actors.get(message.actor_name)
            if actor is None or not abortable.is_abortable(actor, message):
                continue
            if message.message_id not in manager.get_abortables():
                continue
            if isinstance(registered, dict) and registered.get(message.message_id) is not thread:
                continue
            manager.add_abort_request(message.message_id, abort_timeout=0)
            aborted.append(message.message_id)
        if aborted:
            manager.abort_pending()
        return aborted
