"""The in-flight registry of one worker process, and the thread that writes it.

Worker threads never wait on Redis here: :meth:`InflightRecorder.begin`
and :meth:`InflightRecorder.end` only touch in-memory dicts.  Every
``flush_interval`` the recorder thread writes what changed in one script
call.  A message is written once it has been running for a whole flush
interval, so one that ends sooner is never written at all, and a busy worker
of short messages costs no Redis call and no encoding.

The in-memory registry is the truth about this process.  Whenever the
tracker's Redis may have lost it (an outage, a restart, an unknown worker
id), the whole registry is written again through ``lua/register.lua``.
This thread is the only writer of this worker's registration and records.

A record therefore lags its message by one to two ``flush_interval``.  Recovery
does not depend on it where the broker keeps the truth (RedisBroker's acks
sets, RabbitMQ's unacked deliveries); see docs/failure-model.md.
"""

from __future__ import annotations

import dataclasses
import itertools
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import redis

from .records import InflightRecord, WorkerInfo, encode_payload
from .threads import PeriodicThread

if TYPE_CHECKING:
    from dramatiq import MessageProxy

    from .health import ConnectionHealth
    from .settings import TrackerSettings
    from .store import TrackerStore

#: The message option the tracker sets on a message it delivers again:
#: how many times it has been recovered from dead workers.
RECOVERIES_OPTION = "tracker_recoveries"

#: The option of a duplicate delivery the tracker put off: the attempt ("worker id|token") it waits for.
DEFERRED_OPTION = "tracker_deferred_behind"

#: Verdicts on a delivery decided before it runs: skip it (ack it unrun), or fail it (dead-letter it).
SKIP, FAIL = "skip", "fail"


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclasses.dataclass(eq=False)
class Delivery:
    """One attempt at processing a message in this process."""

    message: MessageProxy
    token: str
    worker_id: str
    started_at: int
    recoveries: int
    #: The recorder's flush count when it began; it is written once a whole flush interval passed.
    generation: int = 0
    #: Decided before it runs: None to run it, :data:`SKIP` or :data:`FAIL`.
    verdict: str | None = None
    #: Recovered elsewhere while this process was presumed dead: it runs on as a zombie.
    zombie: bool = False

    @property
    def message_id(self) -> str:
        return str(self.message.message_id)

    def record(self) -> InflightRecord:
        """The record written to Redis for this attempt."""
        try:
            payload, encoding = encode_payload(self.message.encode())
        except Exception:
            # Recovery of brokers that keep the payload themselves does not need it.
            payload, encoding = "", "utf-8"
        return InflightRecord(
            message_id=self.message_id,
            actor_name=self.message.actor_name,
            queue_name=self.message.queue_name,
            redis_message_id=str(self.message.options.get("redis_message_id", "")),
            worker_id=self.worker_id,
            token=self.token,
            started_at=self.started_at,
            recoveries=self.recoveries,
            payload=payload,
            payload_encoding=encoding,
        )


class InflightRecorder(PeriodicThread):
    """Records this process's in-flight messages and owns its registration.

    Parameters:
      store(TrackerStore)
      settings(TrackerSettings)
      health(ConnectionHealth)
      info(WorkerInfo): The registration; its ``worker_id`` changes if the
        worker is ever declared dead while alive (see :meth:`fence`).
      new_worker_id(callable): Makes a fresh worker id.
      on_fenced(callable): Called from the recorder thread with the old worker id and
        the zombie attempts, when the worker learns it was declared dead.
    """

    def __init__(
        self,
        store: TrackerStore,
        settings: TrackerSettings,
        health: ConnectionHealth,
        info: WorkerInfo,
        new_worker_id: Callable[[], str],
        on_fenced: Callable[[str, list[Delivery]], None] = lambda old_id, zombies: None,
    ) -> None:
        super().__init__("dramatiq-tracker-recorder", settings.flush_interval)
        self.store = store
        self.settings = settings
        self.health = health
        self.info = info
        self._new_worker_id = new_worker_id
        self._on_fenced = on_fenced
        self._tokens = itertools.count(1)
        self._lock = threading.Lock()
        #: Every attempt running in this process under the current identity, by token.
        self._active: dict[str, Delivery] = {}
        #: Started attempts whose record is not written yet, by token.
        self._unwritten: dict[str, Delivery] = {}
        #: Ended attempts whose record was written and must be removed.
        self._ended: list[Delivery] = []
        self._resync_needed = True
        self._last_attempt = 0.0
        #: How many flushes have begun.
        self._generation = 0

    @property
    def worker_id(self) -> str:
        return self.info.worker_id

    # Called from worker threads: memory only. ------------------------------------

    def begin(self, message: MessageProxy, recoveries: int, *, written: bool = False) -> Delivery:
        """Record that ``message`` starts processing.

        Parameters:
          written(bool): True when the caller already wrote the record itself.
        """
        delivery = Delivery(
            message, "%x" % next(self._tokens), self.info.worker_id, now_ms(), recoveries, self._generation
        )
        with self._lock:
            self._active[delivery.token] = delivery
            if not written:
                self._unwritten[delivery.token] = delivery
        return delivery

    def unwritten(self, delivery: Delivery) -> None:
        """The caller could not write a record it meant to write itself: the recorder writes it."""
        with self._lock:
            if delivery.token in self._active:
                self._unwritten[delivery.token] = delivery

    def end(self, delivery: Delivery) -> bool:
        """Record that an attempt was acked, nacked or skipped.

        Returns:
          bool: False when the attempt was fenced off: it was recovered elsewhere
          while it ran here (a zombie's late completion).
        """
        with self._lock:
            if self._active.pop(delivery.token, None) is None:
                return True
            if self._unwritten.pop(delivery.token, None) is None:
                self._ended.append(delivery)
        return not delivery.zombie

    @property
    def needs_registration(self) -> bool:
        return self._resync_needed

    def update_queues(self, queues: tuple[str, ...]) -> None:
        """Change the queues in the registration; it is written again at the next tick."""
        self.info = dataclasses.replace(self.info, queues=queues)
        self.request_resync()

    def request_resync(self) -> None:
        """Write the whole registration and registry again at the next tick."""
        self._resync_needed = True
        self.wake()

    # The recorder thread. ----------------------------------------------------------

    def tick(self) -> None:
        # During an outage, try again about once a second, not every flush_interval.
        if self.health.is_down and time.monotonic() - self._last_attempt < 1.0:
            return
        self._last_attempt = started = time.monotonic()
        try:
            wrote = True
            if self._resync_needed:
                self.register()
            else:
                wrote = self.flush()
        except redis.RedisError as e:
            self.health.failed("writing in-flight records", e)
        else:
            # A tick with nothing to write says nothing about the tracker's Redis.
            if wrote:
                self.health.succeeded(started)

    def register(self) -> str:
        """Register this worker with every attempt in flight (``lua/register.lua``).

        Raises:
          redis.RedisError: When the tracker's Redis is unreachable; a later tick retries.
        """
        with self._lock:
            deliveries = list(self._active.values())
            self._unwritten.clear()
            self._ended.clear()
            self._resync_needed = False
        records = [d.record() for d in deliveries if not d.zombie]
        zombies = [(d.message_id, d.token) for d in deliveries if d.zombie]
        try:
            status = self.store.register(self.info, records, self.settings.heartbeat_timeout, zombies)
        except BaseException:
            self._resync_needed = True
            raise
        if status == "fenced":
            self.fence()
            return self.register()
        self.logger.debug("Registered worker %r with %d messages in flight.", self.worker_id, len(deliveries))
        return status

    def flush(self, *, everything: bool = False) -> bool:
        """Write what started and ended since the last flush (``lua/flush.lua``).

        Parameters:
          everything(bool): Also write what began less than a flush interval ago (at shutdown).

        Returns:
          bool: Whether there was anything to write.

        Raises:
          redis.RedisError: When the tracker's Redis is unreachable; nothing is lost.
        """
        with self._lock:
            self._generation += 1
            if not self._unwritten and not self._ended:
                return False
            # Only what began before the previous flush: it has run for a whole interval.
            settled = self._generation if everything else self._generation - 2
            started = [d for d in self._unwritten.values() if d.generation <= settled and not d.zombie]
            for delivery in started:
                del self._unwritten[delivery.token]
            ended, self._ended = self._ended, []
            if not started and not ended:
                return False
        worker_id = self.worker_id
        try:
            written = self.store.flush(
                worker_id,
                [d.record() for d in started if d.worker_id == worker_id],
                [(d.message_id, d.token) for d in ended if d.worker_id == worker_id],
            )
        except BaseException:
            with self._lock:
                for delivery in started:
                    if delivery.token in self._active:
                        self._unwritten.setdefault(delivery.token, delivery)
                self._ended[:0] = ended
            raise
        if not written:
            # Not registered (the tracker's Redis lost it) or declared dead: register() tells which.
            self.request_resync()
        return True

    def fence(self) -> None:
        """This worker was declared dead while alive: continue under a new identity.

        Its running attempts were recovered and delivered elsewhere, so it stops
        claiming them: they keep no record (they are nobody's orphans any more), only
        a place in the running index, so that a redelivery waits for them instead of
        running beside them; their completions are zombie completions.
        """
        old_id = self.info.worker_id
        self.info = dataclasses.replace(self.info, worker_id=self._new_worker_id())
        with self._lock:
            zombies = [d for d in self._active.values() if d.worker_id == old_id]
            for delivery in zombies:
                delivery.zombie = True
                delivery.worker_id = self.info.worker_id
                self._unwritten.pop(delivery.token, None)
            self._ended = [d for d in self._ended if d.worker_id != old_id]
            self._resync_needed = True
        self._on_fenced(old_id, zombies)
