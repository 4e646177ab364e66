"""Waits and assertions about what the tracker did with messages, with readable failures."""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from dramatiq.common import q_name
from dramatiq.message import Message

from ..brokers import REDIS, STUB, as_redis_broker, broker_kind
from ..events import QUARANTINED, RECOVERED, TrackerEvent
from ..keys import RedisBrokerKeys
from ..middleware import find_tracker
from ..ops.reads import InspectionStore
from ..orphans import BROKER_REDELIVERS, REDELIVERED
from ..scripts import text

if TYPE_CHECKING:
    from dramatiq import Broker

    from ..records import LockInfo
from .config import _POLL, TrackerTestConfig, TrackerTestError
from .runs import Run, read_runs

T = TypeVar("T")

# Assertions -------------------------------------------------------------------------------------


class TrackerChecks:
    """Waits and assertions about what happened to messages, with failure messages that tell the story.

    Each wait ends as soon as what it waits for happens, or fails after ``timeout`` seconds (default:
    :attr:`~dramatiq_tracker.testing.TrackerTestConfig.wait_timeout`).  Messages are given as ``Message`` objects (what
    ``send()`` returns) or ids.

    Parameters:
      broker(Broker): The test broker, with a tracker.
      config(TrackerTestConfig)

    Raises:
      TrackerNotConfigured: When ``broker`` has no TrackerMiddleware.
    """

    def __init__(self, broker: Broker, config: TrackerTestConfig) -> None:
        self.broker = broker
        self.tracker = find_tracker(broker)
        self.config = config
        self.namespace = self.tracker.settings.namespace

    @functools.cached_property
    def store(self) -> InspectionStore:
        """The tracker's Redis, read as the inspection API reads it."""
        return InspectionStore(self.tracker.store.client, self.namespace)

    # What is known --------------------------------------------------------------------------

    def runs(self, message: Message[Any] | str | None = None) -> list[Run]:
        """What ran (starts and ends), in this process and in worker subprocesses, of one message or all."""
        found = read_runs(self.store.client, self.namespace)
        if message is None:
            return found
        message_id = _id(message)
        return [run for run in found if run.message_id == message_id]

    def starts(self, message: Message[Any] | str) -> int:
        """How many times the message started."""
        return sum(1 for run in self.runs(message) if run.event == "started")

    def events(self, message: Message[Any] | str | None = None) -> list[TrackerEvent]:
        """The tracker's events (of one message, or all), oldest first."""
        found = list(reversed(self.tracker.recent_events(100_000)))
        if message is None:
            return found
        message_id = _id(message)
        return [event for event in found if event.message_id == message_id]

    def recoveries(self, message: Message[Any] | str) -> int:
        """How many times the tracker delivered the message again after its worker died."""
        return sum(
            1
            for event in self.events(message)
            if event.kind == RECOVERED and event.details.get("outcome") in (REDELIVERED, BROKER_REDELIVERS)
        )

    def inflight(self) -> dict[str, dict[str, str]]:
        """Every in-flight record, by worker id, then message id (raw JSON)."""
        found = {}
        for worker_id in self.store.workers():
            records = self.store.inflight(worker_id)
            if records:
                found[worker_id] = records
        return found

    def describe(self, message: Message[Any] | str) -> str:
        """Everything known about a message, for a failure message."""
        message_id = _id(message)
        runs = self.runs(message_id)
        events = self.events(message_id)
        where = [worker_id for worker_id, records in self.inflight().items() if message_id in records]
        history = self.store.message_history(message_id)
        lines = [self._label(message, runs, events) + ":"]
        lines.append(
            "  runs: %s"
            % (", ".join("%s (pid %d)" % (run.event, run.pid) for run in runs) or "none (it never started)")
        )
        lines.append("  tracker events: %s" % (", ".join(_event_text(e) for e in events) or "none"))
        lines.append("  in flight on: %s" % (", ".join(repr(w) for w in where) or "no worker"))
        if history:
            lines.append("  history: %s" % ", ".join("%s=%s" % item for item in sorted(history.items())))
        return "\n".join(lines)

    def _label(self, message: Message[Any] | str, runs: list[Run], events: list[TrackerEvent]) -> str:
        actor = message.actor_name if isinstance(message, Message) else ""
        actor = actor or next((r.actor_name for r in runs), "") or next((e.actor_name for e in events), "")
        return "message %r (actor %r)" % (_id(message), actor or "?")

    def label(self, message: Message[Any] | str) -> str:
        """``message '<id>' (actor '<name>')``."""
        return self._label(message, self.runs(message), self.events(message))

    # Waits and assertions --------------------------------------------------------------------------

    def _wait(self, predicate: Callable[[], T], failure: Callable[[], str], timeout: float | None) -> T:
        timeout = self.config.wait_timeout if timeout is None else timeout

        def failed() -> str:
            headline, _, story = failure().partition("\n")
            return "%s (waited %.1f s).\n%s" % (headline.rstrip("."), timeout, story)

        return poll(predicate, timeout, failed)

    def running(self, message: Message[Any] | str, *, timeout: float | None = None) -> str:
        """Wait until the message runs and its in-flight record is written (so that a crash now leaves
        it to recovery); returns the id of the worker running it."""
        message_id = _id(message)

        def where() -> str:
            if self.starts(message_id) == 0:
                return ""
            return next((w for w, records in self.inflight().items() if message_id in records), "")

        return self._wait(
            where, lambda: "%s is not running.\n%s" % (self.label(message), self.describe(message)), timeout
        )

    def ran(self, message: Message[Any] | str, times: int, *, timeout: float | None = None) -> None:
        """Assert that the message started ``times`` times: wait until it did, fail at once if it
        started more often."""
        self._wait_exactly(message, times, self.starts, "ran", timeout)

    def succeeded(self, message: Message[Any] | str, *, timeout: float | None = None) -> None:
        """Wait until a run of the message succeeded."""
        self._wait(
            lambda: any(run.event == "succeeded" for run in self.runs(message)),
            lambda: "%s has not succeeded.\n%s" % (self.label(message), self.describe(message)),
            timeout,
        )

    def delivered_again(self, message: Message[Any] | str, times: int = 1, *, timeout: float | None = None) -> None:
        """Assert that the tracker delivered the message again ``times`` times after its workers died
        (``recovered`` events): wait until it did, fail at once if it did more often."""
        self._wait_exactly(message, times, self.recoveries, "was delivered again", timeout)

    def _wait_exactly(
        self,
        message: Message[Any] | str,
        times: int,
        count: Callable[[Message[Any] | str], int],
        did: str,
        timeout: float | None,
    ) -> None:
        """Wait until ``count(message)`` is ``times``; fail at once when it goes past it.

        Parameters:
          did(str): What was counted, as the failure says it: "<message> <did> <count>, expected <times>".

        Raises:
          AssertionError: When the count goes past ``times``, or does not reach it in time.
        """

        def failure(counted: int) -> str:
            return "%s %s %s, expected %s.\n%s" % (
                self.label(message),
                did,
                _times(counted),
                _times(times),
                self.describe(message),
            )

        def enough() -> bool:
            counted = count(message)
            if counted > times:
                raise AssertionError(failure(counted))
            return counted == times

        self._wait(enough, lambda: failure(count(message)), timeout)

    def quarantined(self, message: Message[Any] | str, *, timeout: float | None = None) -> None:
        """Assert that the message was quarantined: a ``quarantined`` event, the message dead-lettered
        (once a worker received its quarantined copy, on a StubBroker), and its ``on_recovery_exhausted``
        actor, if it has one, run with it."""
        message_id = _id(message)
        self._wait(
            lambda: any(event.kind == QUARANTINED for event in self.events(message_id)),
            lambda: "%s was not quarantined.\n%s" % (self.label(message), self.describe(message)),
            timeout,
        )
        self._wait(
            lambda: message_id in self.dead_letters(),
            lambda: (
                "%s was quarantined but is not dead-lettered (dead letters: %s).\n%s"
                % (self.label(message), ", ".join(sorted(self.dead_letters())) or "none", self.describe(message))
            ),
            timeout,
        )
        callback = self._callback_of(message)
        if callback:
            self._wait(
                lambda: any(r.actor_name == callback and r.about == message_id for r in self.runs()),
                lambda: (
                    "%s was quarantined but its on_recovery_exhausted actor %r did not run with it.\n%s"
                    % (self.label(message), callback, self.describe(message))
                ),
                timeout,
            )

    def _callback_of(self, message: Message[Any] | str) -> str:
        options: dict[str, Any] = dict(message.options) if isinstance(message, Message) else {}
        actor_name = message.actor_name if isinstance(message, Message) else ""
        if not actor_name:
            actor_name = next((e.actor_name for e in self.events(message) if e.actor_name), "")
        if "on_recovery_exhausted" not in options and actor_name in self.broker.actors:
            options = {**self.broker.get_actor(actor_name).options, **options}
        return str(options.get("on_recovery_exhausted") or "")

    def dead_letters(self) -> set[str]:
        """The ids of the broker's dead-lettered messages (StubBroker and RedisBroker)."""
        kind = broker_kind(self.broker)
        if kind == STUB:
            return {m.message_id for m in self.broker.dead_letters}  # type: ignore[attr-defined]
        if kind != REDIS:
            raise TrackerTestError("dead_letters() knows StubBroker and RedisBroker only, not %r." % self.broker)
        broker = as_redis_broker(self.broker)
        keys = RedisBrokerKeys(broker.namespace)
        found = set()
        for queue in broker.get_declared_queues():
            for payload in broker.client.hvals(keys.dead_letter_messages(q_name(queue))):
                with contextlib.suppress(Exception):
                    found.add(
                        Message.decode(payload if isinstance(payload, bytes) else str(payload).encode()).message_id
                    )
        return found

    def no_locks(self, *, timeout: float | None = None) -> None:
        """Assert that no uniqueness lock is held (waiting for locks released after an ack)."""

        def text(locks: list[LockInfo]) -> str:
            return "; ".join(
                "lock %s held by message %r (actor %r, attempt %d, mode %s, worker %s)"
                % (lock.digest, lock.message_id, lock.actor_name, lock.attempt, lock.mode, lock.worker_id or "none")
                for lock in locks
            )

        self._wait(lambda: not self.store.locks(), lambda: "Locks are held: %s." % text(self.store.locks()), timeout)

    def nothing_in_flight(self, *, timeout: float | None = None) -> None:
        """Assert that no message is in flight: no in-flight record on any worker, nothing in the running
        index, and nothing waiting in the outbox (waiting for records written a flush interval late)."""

        def leftovers() -> list[str]:
            found = []
            for worker_id, records in self.inflight().items():
                for message_id in records:
                    found.append("%s on worker %r" % (self.label(message_id), worker_id))
            running = self.store.client.hkeys(self.store.keys.running)
            found += ["%s in the running index" % self.label(text(m)) for m in running]
            outbox = self.store.outbox(self.tracker.identity_digest)
            found += ["%s in the outbox" % self.label(message_id) for message_id in outbox]
            return found

        self._wait(lambda: not leftovers(), lambda: "Messages are in flight: %s." % "; ".join(leftovers()), timeout)


def poll(predicate: Callable[[], T], timeout: float, failure: Callable[[], str], interval: float = _POLL) -> T:
    """Call ``predicate`` every ``interval`` seconds until it returns something truthy, and return that.

    Parameters:
      failure(callable): What went wrong; called only when the time is up.

    Raises:
      AssertionError: With ``failure()``, when ``timeout`` seconds passed first.
    """
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(failure())
        time.sleep(interval)
    return value


def _times(count: int) -> str:
    return {1: "once", 2: "twice"}.get(count, "%d times" % count)


def _id(message: Message[Any] | str) -> str:
    return message.message_id if isinstance(message, Message) else str(message)


def _event_text(event: TrackerEvent) -> str:
    details = event.details.get("outcome", "")
    return "%s%s%s" % (
        event.kind,
        " (%s)" % details if details else "",
        " from %r" % event.worker_id if event.worker_id else "",
    )
