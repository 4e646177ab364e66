"""The tracker thread of one worker process: it writes the registry and heartbeats.

Worker threads never wait on Redis: they only touch the in-memory registry
(:mod:`dramatiq_tracker.registry`).  Every ``flush_interval`` this thread
writes what changed in one script call; a message is written once it has
been running for a whole flush interval, so one that ends sooner is never
written at all.  Every ``heartbeat_interval`` it heartbeats (liveness is
judged by a TTL on the Redis server, so client clocks do not matter).

The heartbeat is also the anti-entropy check.  Each worker counts its writes,
and Redis counts them beside its records; when the two differ, writes were
lost (a failover to a replica that missed them, a restart, an eviction), and
the worker writes its whole registry again.  The same happens when the
worker is unknown (the tracker's Redis lost its state).  When the heartbeat
says the worker was declared dead while alive, it continues under a new
identity (see :meth:`Recorder.fence`).

A record therefore lags its message by one to two ``flush_interval``.
Recovery does not depend on it where the broker keeps the truth (RedisBroker's
acks sets, RabbitMQ's unacked deliveries); see docs/failure-model.md.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

import redis

from .threads import PeriodicThread

if TYPE_CHECKING:
    from .fencing import WorkerFencing
    from .host import HostFacts
    from .presence import Presence
    from .records import WorkerInfo
    from .registry import InflightRegistry
    from .scripts import PresenceSeen, WriteStatus
    from .wiring import Wiring


class Recorder(PeriodicThread):
    """Writes a worker's registry, heartbeats, and re-registers it whenever Redis may have lost it.

    Parameters:
      wiring(Wiring): The tracker's machinery: its events name the worker that reports them, and on
        RedisBroker the worker is noted beside the broker's keys, so that recovery survives the loss
        of the tracker's Redis.
      registry(InflightRegistry): The worker's in-memory truth.
      host(HostFacts): This process, to make a new worker id when it is fenced.
      fencing(WorkerFencing): What the worker does when it learns it was declared dead while alive.
      presence(Presence|None): The worker's presence subscription, None when presence is off.
    """

    def __init__(
        self,
        wiring: Wiring,
        registry: InflightRegistry,
        host: HostFacts,
        fencing: WorkerFencing,
        presence: Presence | None = None,
    ) -> None:
        super().__init__("dramatiq-tracker-recorder", wiring.settings.flush_interval)
        self.store, self.settings, self.health = wiring.store, wiring.settings, wiring.health
        self.identity, self.events, self.broker_store = wiring.digest, wiring.events, wiring.broker_store
        self.registry, self.host, self.fencing, self.presence = registry, host, fencing, presence
        self.master = wiring.master
        self.master.on_change.append(self.master_moved)
        settings = self.settings
        #: When the last heartbeat that went through was sent (seconds since the epoch).  The
        #: per-message path compares it with the clock it reads anyway (see :meth:`ensure_alive`).
        self.last_beat = 0.0
        #: How old that heartbeat may be before a message starts without asking Redis whether this
        #: worker was declared dead meanwhile, in seconds: shorter while its presence is gone.
        self.stale_after = settings.stale_after / 1000
        self._presence_gap = False
        self._next_beat = 0.0
        self._resync_needed = True
        self._last_attempt = 0.0
        # Serialises every write of this worker's state: this thread, and worker threads that
        # check their worker is still alive before a message starts.
        self._lock = threading.RLock()

    @property
    def needs_registration(self) -> bool:
        return self._resync_needed

    def request_resync(self) -> None:
        """Write the whole registration and registry again at the next tick."""
        self._resync_needed = True
        self.wake()

    # The thread. -----------------------------------------------------------------------

    def tick(self) -> None:
        # During an outage, try again about once a second, not every flush_interval.
        now = time.monotonic()
        if self.health.is_down and now - self._last_attempt < 1.0:
            return
        self._last_attempt = started = now
        try:
            with self._lock:
                wrote = True
                if self._resync_needed:
                    self.register()
                else:
                    wrote = self.flush()
                    if time.monotonic() >= self._next_beat:
                        self.beat()
                        wrote = True
        except redis.RedisError as e:
            self.health.failed("writing in-flight records", e)
        else:
            # A tick with nothing to write says nothing about the tracker's Redis.
            if wrote:
                self.health.succeeded(started)

    def register(self) -> None:
        """Register this worker with every attempt in flight (``lua/register.lua``).

        Raises:
          redis.RedisError: When the tracker's Redis is unreachable; a later tick retries.
        """
        with self._lock:
            self._resync_needed = True
            deliveries, zombies = self.registry.take_all()
            info = self.registry.info
            records = [self.registry.describe(d) for d in deliveries]
            sent = time.time()
            mark = self.registry.completed_mark()
            status, seen = self.store.register(
                info,
                self.identity,
                self.settings.heartbeat_timeout,
                self.registry.entries(deliveries, records),
                [(d.message_id, d.owner) for d in zombies],
                present=self._present(),
            )
            if status == "fenced":
                self.fence(info.worker_id)
                return
            self.registry.registered()
            self.registry.alive_at(mark)
            self._resync_needed = False
            self.last_beat = sent
            self._schedule_beat()
            self._presence_seen(seen)
        self.logger.debug("Registered worker %r with %d messages in flight.", info.worker_id, len(deliveries))
        self._registered(info)

    def _registered(self, info: WorkerInfo) -> None:
        self.events.reporter = info.worker_id
        if self.broker_store is not None and info.broker_id:
            try:
                self.broker_store.note_process(info.broker_id, info.to_json())
            except redis.RedisError as e:
                self.logger.warning("Could not note worker %r beside its broker's keys: %s.", info.worker_id, e)

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
            pending = self.registry.take_pending(everything=everything)
            if not pending.started and not pending.ended:
                return False
            worker_id = self.registry.worker_id
            started = [d for d in pending.started if d.worker_id == worker_id]
            ended = [(d.message_id, d.token_text, c) for d, c in pending.ended if d.worker_id == worker_id]
            if not started and not ended:
                return False
            records = [self.registry.describe(d) for d in started]
            mark = self.registry.completed_mark()
            try:
                status = self.store.flush(
                    worker_id, self.registry.expected_writes(), self.registry.entries(started, records), ended
                )
            except BaseException:
                self.registry.restore(pending)
                raise
            if status == "ok":
                self.registry.wrote()
                self.registry.alive_at(mark)
            self.logger.debug(
                "Wrote %d starts and %d ends of worker %r: %s.", len(started), len(ended), worker_id, status
            )
            self._handle(worker_id, status)
            return True

    def beat(self) -> WriteStatus:
        """Heartbeat, and check that Redis holds what this worker wrote (``lua/heartbeat.lua``).

        Raises:
          redis.RedisError: When the tracker's Redis is unreachable.
        """
        with self._lock:
            self._follow_master()
            worker_id = self.registry.worker_id
            sent = time.time()
            mark = self.registry.completed_mark()
            self._schedule_beat()
            status, seen = self.store.heartbeat(
                worker_id,
                self.identity,
                self.settings.heartbeat_timeout,
                self.registry.expected_writes(),
                present=self._present(),
            )
            if status in ("ok", "diverged"):
                self.last_beat = sent
                self.registry.alive_at(mark)
                self._presence_seen(seen)
            self._handle(worker_id, status)
            return status

    # Presence ------------------------------------------------------------------------

    def _present(self) -> bool:
        return self.presence is not None and self.presence.subscribed

    def presence_changed(self) -> None:
        """The presence subscription dropped, or was made (again): called by the presence thread.

        A sweeper that saw the gap takes the worker for dead unless its heartbeat is renewed within
        ``presence_grace`` of it: heartbeat at once, and, until the server sees the subscription
        again, every half grace; messages then start only if the last heartbeat is that recent too.
        """
        if not self._present():
            self._begin_gap()
        self._next_beat = 0.0
        self.wake()

    def _presence_seen(self, seen: PresenceSeen) -> None:
        presence = self.presence
        if presence is None:
            return
        if seen == "seen":
            presence.seen()
            self._end_gap()
        elif seen == "unseen":
            self._begin_gap()
            presence.unseen()
        elif presence.disabled:
            # Given up: sweepers no longer judge this worker by presence.
            self._end_gap()

    def _begin_gap(self) -> None:
        self._presence_gap = True
        self.stale_after = min(self.settings.stale_after, self.settings.presence_grace // 2) / 1000

    def _end_gap(self) -> None:
        if self._presence_gap:
            self._presence_gap = False
            self.stale_after = self.settings.stale_after / 1000
            self._schedule_beat()

    def _schedule_beat(self) -> None:
        interval = self.settings.heartbeat_interval
        if self._presence_gap:
            interval = min(interval, self.settings.presence_grace // 2)
        self._next_beat = time.monotonic() + interval / 1000

    def _follow_master(self) -> None:
        """With a Sentinel-managed tracker Redis, ask the Sentinels which server is the master, at each
        heartbeat (see :class:`~dramatiq_tracker.connection.MasterWatch`)."""
        self.master.moved()

    def master_moved(self) -> None:
        """Every connection moved to a new master: subscribe there, and write this worker's state again."""
        if self.presence is not None:
            self.presence.reconnect()
        self.request_resync()

    def _handle(self, worker_id: str, status: WriteStatus) -> None:
        if status == "ok":
            return
        if status == "fenced":
            self.fence(worker_id)
        elif status == "unknown":
            self.logger.info("Worker %r is not registered in the tracker; registering it again.", worker_id)
            self.request_resync()
        else:
            self.logger.info(
                "The tracker's Redis does not hold what worker %r wrote (writes were lost: a failover, a "
                "restart or an eviction); writing its registration and records again.",
                worker_id,
            )
            self.request_resync()

    def wrote(self, status: WriteStatus, worker_id: str) -> None:
        """A write made outside this thread (a start recorded before it ran) came back with ``status``:
        a worker fenced, or unknown to the tracker's Redis, registers again at once, so that its caller
        may record again.

        Raises:
          redis.RedisError: When registering again fails.
        """
        if status == "ok":
            return
        with self._lock:
            self._handle(worker_id, status)
            if status == "unknown" and self._resync_needed:
                self.register()

    # Worker threads. ---------------------------------------------------------------------

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        """Hold off this thread's writes while a worker thread writes a record of its own.

        A registration replaces the worker's whole registry from a snapshot: a record written
        between the snapshot and the registration would be wiped, and the write counts would
        still agree.
        """
        with self._lock:
            yield

    def ensure_alive(self) -> None:
        """Make sure this worker was not declared dead, before a message starts.

        Called when the last heartbeat that went through is older than ``stale_after``:
        the worker may have been stalled (SIGSTOP, a GIL hold, a partition) long enough to
        be declared dead, and every message it fetched before may have been delivered again
        elsewhere.  The heartbeat is sent now, from the caller's thread; if it says the worker
        was fenced, the fencing is done before the caller goes on.  During an outage of the
        tracker's Redis nothing can be known: messages go on (see docs/failure-model.md).
        """
        if not self.health.should_try():
            return
        started = time.monotonic()
        try:
            with self._lock:
                if time.time() - self.last_beat <= self.stale_after:
                    return
                if self._resync_needed:
                    self.register()
                else:
                    self.beat()
        except redis.RedisError as e:
            self.health.failed("checking that this worker is still alive", e)
        else:
            self.health.succeeded(started)

    def fence(self, worker_id: str) -> None:
        """Worker ``worker_id`` (this one) was declared dead while alive: continue under a new identity.

        Its running attempts were recovered and delivered elsewhere, so it stops claiming
        them: they keep no record (they are nobody's orphans any more), only a place in the
        running index, so that a redelivery waits for them instead of running beside them;
        their completions are zombie completions.  Every message it fetched under its old
        identity is checked before it starts (see :class:`~dramatiq_tracker.admission.Admission`).
        """
        with self._lock:
            if self.registry.worker_id != worker_id:
                return
            # Until the fencing is done, every start waits for it (see ensure_alive).
            self.last_beat = 0.0
            old_id, zombies = self.registry.fence(self.host.new_worker_id())
            if self.presence is not None:
                self.presence.follow(self.registry.worker_id)
            self.fencing.fenced(old_id, zombies, self.registry.take_completed())
            self.register()

    def stop_and_flush(self) -> None:
        """Stop the thread, then write everything in flight (at shutdown).

        Raises:
          redis.RedisError: When the tracker's Redis is unreachable.
        """
        self.stop()
        with self._lock:
            if self._resync_needed:
                self.register()
            self.flush(everything=True)
