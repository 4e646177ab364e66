"""The heartbeat thread of a worker process.

It is a thread of its own, not a side effect of consuming (Dramatiq's own
heartbeat stops when consumer threads starve, dramatiq #692), and liveness
is judged by a TTL on the Redis server, so client clocks do not matter.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import redis

from .threads import PeriodicThread

if TYPE_CHECKING:
    from .health import ConnectionHealth
    from .recorder import InflightRecorder
    from .settings import TrackerSettings
    from .store import TrackerStore

#: How often to retry during an outage, in milliseconds, so that a worker re-registers soon after it ends.
OUTAGE_RETRY_INTERVAL = 1_000


class Heartbeat(PeriodicThread):
    """Refresh the worker's heartbeat every ``heartbeat_interval``.

    When the heartbeat reports that the worker is unknown (the tracker's
    Redis lost its state) or was declared dead, the recorder registers it
    again, under a new identity in the second case.
    """

    def __init__(
        self,
        store: TrackerStore,
        settings: TrackerSettings,
        health: ConnectionHealth,
        recorder: InflightRecorder,
    ) -> None:
        super().__init__("dramatiq-tracker-heartbeat", settings.heartbeat_interval)
        self.store = store
        self.settings = settings
        self.health = health
        self.recorder = recorder
        #: When the last heartbeat went through (time.monotonic()).
        self.last_beat = time.monotonic()

    @property
    def fresh(self) -> bool:
        """Whether this worker's heartbeat went through within ``heartbeat_timeout``: if not, it
        may have been declared dead.  (A stricter bound would trip on ordinary scheduling delays.)"""
        return time.monotonic() - self.last_beat < self.settings.heartbeat_timeout / 1000

    def next_interval(self) -> float:
        if self.health.is_down:
            return min(self.interval, OUTAGE_RETRY_INTERVAL) / 1000
        return self.interval / 1000

    def tick(self) -> None:
        started = time.monotonic()
        try:
            status = self.store.heartbeat(self.recorder.worker_id, self.settings.heartbeat_timeout)
        except redis.RedisError as e:
            self.health.failed("heartbeat", e)
            return
        self.health.succeeded(started)
        if status == "ok":
            self.last_beat = time.monotonic()
        if status == "fenced":
            self.recorder.request_resync()
        elif status == "unknown":
            self.logger.info(
                "Worker %r is not registered in the tracker; registering it again.", self.recorder.worker_id
            )
            self.recorder.request_resync()
