"""The thread that runs recovery in a worker process.

Every ``sweep_interval`` it recovers dead workers of this host whose process
is gone, then, if this worker holds the sweep lease of its broker identity,
workers whose heartbeat expired.  In between, every quarter of
``presence_grace``, the lease holder asks which workers lost their presence
(:mod:`dramatiq_tracker.presence`) and recovers those gone for the whole
grace.  The holder renews the lease between sweeps, so that it never lapses
while the holder lives; every ``presence_grace`` the others ask whether the
holder's own presence is gone, and take the lease over if so (a dead holder
would keep every judgment of presence waiting until its lease expires).
The first sweep, at boot, does all of it without the lease.  Right
after an outage of the tracker's Redis, expired heartbeats are not trusted
until live workers have had two heartbeat intervals to renew theirs; right
after a restart or a failover of the server, the server itself refuses to
judge anyone by presence or heartbeat for as long (see ``lua/_server.lua``).

Each broker identity has its own lease, so that several apps sharing a
namespace each sweep their own dead workers, and a sweep stops when it has
used half its interval, so that it never outlives its lease: the next tick
goes on where it stopped.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from typing import TYPE_CHECKING

import redis

from .threads import PeriodicThread

if TYPE_CHECKING:
    from .recorder import Recorder
    from .registry import InflightRegistry
    from .wiring import Wiring


class Sweeper(PeriodicThread):
    """Runs :class:`~dramatiq_tracker.recovery.Recovery` every ``sweep_interval``.

    Parameters:
      wiring(Wiring): The tracker's machinery.
      recorder(Recorder): This worker's recorder: whether its own heartbeat went through lately.
      registry(InflightRegistry): This worker's registry: its id, which it never recovers.
    """

    def __init__(self, wiring: Wiring, recorder: Recorder, registry: InflightRegistry) -> None:
        settings = wiring.settings
        interval = settings.presence_check_interval if settings.presence else settings.sweep_interval
        super().__init__("dramatiq-tracker-sweeper", interval)
        self.recovery, self.store, self.settings, self.health = wiring.recovery, wiring.store, settings, wiring.health
        self.recorder, self.registry = recorder, registry
        self.token = uuid.uuid4().hex
        self._booted = False
        self._next_sweep = 0.0
        self._next_contest = 0.0
        #: The worker id this sweeper last took the lease under (a zombie goes on under a new one).
        self._lease_worker = ""
        #: Until when (``time.monotonic()``) this worker holds the sweep lease, and is booting.
        self._lease_until = 0.0
        self._boot_until = 0.0
        #: How long the lease is taken for, in ms: a bit shorter than the interval, so that the holder's
        #: next sweep finds it free or renews it.
        self._lease_duration = max(1, settings.sweep_interval * 9 // 10)

    @property
    def budget(self) -> float:
        """How long one sweep may take, in seconds: half the interval, well inside the lease."""
        return self.settings.sweep_interval / 2000

    def heartbeat_fresh(self) -> bool:
        """Whether this worker's heartbeat went through within ``heartbeat_timeout``: if not, it may
        have been declared dead.  (A stricter bound would trip on ordinary scheduling delays.)"""
        return time.time() - self.recorder.last_beat < self.settings.heartbeat_timeout / 1000

    def tick(self) -> None:
        started = time.monotonic()
        try:
            if started >= self._next_sweep:
                self._next_sweep = started + self.settings.sweep_interval / 1000
                self._sweep()
            elif self.settings.presence and self._may_judge() and self._judges_presence(started):
                self.recovery.recover_absent(self.registry.worker_id, booting=started < self._boot_until)
            else:
                # Nothing asked of the tracker's Redis: this tick says nothing about it.
                return
        except redis.RedisError as e:
            self.health.failed("sweeping for dead workers", e)
        else:
            self.health.succeeded(started)

    def _may_judge(self) -> bool:
        # Right after an outage of its own, a worker does not judge others: they may be reconnecting.
        return self.heartbeat_fresh() and self.health.settled_for(2 * self.settings.heartbeat_interval / 1000)

    def _judges_presence(self, now: float) -> bool:
        """Whether this worker judges presence now: while it boots, and while it holds the lease, which
        it renews once half of it is left, or takes over from a holder whose presence is gone (asked once
        per ``presence_grace``)."""
        if now < self._boot_until or now < self._lease_until - self._lease_duration / 2000:
            return True
        if now < self._lease_until or (self._booted and now >= self._next_contest):
            self._next_contest = now + self.settings.presence_grace / 1000
            return self._holds_lease()
        return False

    def _sweep(self) -> None:
        identity = self.recovery.digest
        own = self.registry.worker_id
        self.recovery.recover_local(own)
        if not self.heartbeat_fresh():
            # A worker whose own heartbeat is late may be the one declared dead: it leaves
            # judging others to healthy workers.
            self._lease_until = 0.0
            self.store.release_lease(identity, self.token, self._lease_worker)
        elif not self._booted or self._holds_lease():
            if self.health.settled_for(2 * self.settings.heartbeat_interval / 1000):
                swept = time.monotonic()
                deadline = swept + self.budget
                report = self.recovery.recover_expired(own, deadline=deadline)
                if self.settings.presence and not report.partial:
                    report.extend(self.recovery.recover_absent(own, booting=not self._booted))
                if not report.partial and self.recovery.adopt_forgotten():
                    report.extend(self.recovery.recover_expired(own, deadline=deadline))
                if report.dead_workers:
                    self.store.record_sweep(int((time.monotonic() - swept) * 1000))
            self.recovery.retry_outbox(own)
        if not self._booted:
            # At boot, presence is checked without the lease until the next sweep, and the process this
            # one replaces on its host (a container that restarted) is recovered at once.
            self._boot_until = time.monotonic() + self.settings.sweep_interval / 1000
        self._booted = True

    def _holds_lease(self) -> bool:
        self._lease_worker = self.registry.worker_id
        held = self.store.acquire_lease(
            self.recovery.digest, self.token, self._lease_duration, self._lease_worker, presence=self.settings.presence
        )
        self._lease_until = time.monotonic() + self._lease_duration / 1000 if held else 0.0
        return held

    def stop(self, timeout: float | None = 5.0) -> None:
        super().stop(timeout)
        with contextlib.suppress(redis.RedisError):
            self.store.release_lease(self.recovery.digest, self.token, self._lease_worker)
