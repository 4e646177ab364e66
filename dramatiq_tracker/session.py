"""Everything the tracker runs inside one worker process, wired together."""

from __future__ import annotations

import re
import secrets
import time
from typing import TYPE_CHECKING, Any

import dramatiq
import redis
from dramatiq.logging import get_logger

from ._version import __version__
from .brokers import BrokerFacts, consumed_queues
from .health import ConnectionHealth
from .heartbeat import Heartbeat
from .host import HostFacts
from .recorder import RECOVERIES_OPTION, Delivery, InflightRecorder
from .records import WorkerInfo
from .recovery import Recovery, Sweeper

if TYPE_CHECKING:
    from dramatiq import Broker, MessageProxy, Worker

    from .settings import TrackerSettings
    from .store import TrackerStore


def new_worker_id(host: HostFacts) -> str:
    """``<hostname>-<pid>-<random>``: readable, and unique even when pids are reused."""
    hostname = re.sub(r"[^A-Za-z0-9._-]", "_", host.hostname) or "host"
    return "%s-%d-%s" % (hostname, host.pid, secrets.token_hex(3))


class WorkerSession:
    """The registration, in-flight recorder, heartbeat and sweeper of one worker process.

    Parameters:
      broker(Broker)
      worker(Worker): The embedded or CLI Worker being started.
      store(TrackerStore)
      settings(TrackerSettings)
      recovery(Recovery): Recovers dead workers, periodically and at boot.
      health(ConnectionHealth): Shared by everything that talks to the tracker's Redis.
    """

    def __init__(
        self,
        broker: Broker,
        worker: Worker,
        store: TrackerStore,
        settings: TrackerSettings,
        recovery: Recovery,
        health: ConnectionHealth,
    ) -> None:
        self.logger = get_logger(__name__, type(self))
        self.store = store
        self.broker = broker
        self.whitelist = set(worker.consumer_whitelist) if worker.consumer_whitelist else None
        self.health = health
        host = HostFacts.current()
        facts = BrokerFacts.of(broker)
        info = WorkerInfo(
            worker_id=new_worker_id(host),
            hostname=host.hostname,
            pid=host.pid,
            process_started=host.process_started,
            boot_id=host.boot_id,
            pid_namespace=host.pid_namespace,
            queues=consumed_queues(broker, self.whitelist),
            broker_kind=facts.kind,
            broker_identity=facts.identity,
            broker_id=facts.broker_id,
            broker_namespace=facts.namespace,
            worker_threads=worker.worker_threads,
            started_at=int(time.time() * 1000),
            tracker_version=__version__,
            dramatiq_version=dramatiq.__version__,
        )
        self.recorder = InflightRecorder(store, settings, self.health, info, lambda: new_worker_id(host))
        self.heartbeat = Heartbeat(store, settings, self.health, self.recorder)
        self.recovery = recovery
        self.sweeper = Sweeper(self.recovery, store, settings, self.health)
        self.health.on_reconnect.append(self.recorder.request_resync)

    @property
    def worker_id(self) -> str:
        return self.recorder.worker_id

    def start(self) -> None:
        """Register the worker, then start the tracker's threads.

        Registration happens before the worker fetches anything, so that none
        of its messages can belong to an unknown worker.  If the tracker's Redis
        is down, the worker starts anyway and registers when it comes back.
        """
        try:
            self.recorder.register()
        except redis.RedisError as e:
            self.health.failed("registering worker %r" % self.worker_id, e)
        self.recorder.start()
        self.heartbeat.start()
        self.sweeper.start()
        self.logger.info(
            "Tracking worker %r (queues %s, broker %s).",
            self.worker_id,
            ", ".join(self.recorder.info.queues) or "none",
            self.recorder.info.broker_identity,
        )

    def begin(self, message: MessageProxy, options: dict[str, Any]) -> Delivery:
        """Record that a message starts processing in this worker."""
        # RabbitMQ's message proxy sets its redelivered flag as an attribute; reading it from
        # vars() spares every other proxy a failed lookup through MessageProxy.__getattr__.
        if vars(message).get("redelivered") is True:
            return self.recovery.begin_redelivered(self.recorder, message)
        recoveries = options.get(RECOVERIES_OPTION, 0)
        return self.recorder.begin(message, recoveries if isinstance(recoveries, int) else 0)

    def end(self, delivery: Delivery) -> None:
        """Record that an attempt was acked or nacked."""
        if not self.recorder.end(delivery):
            self.logger.warning(
                "Message %r (actor %r) completed here after it was recovered for delivery elsewhere, "
                "while this worker was presumed dead.",
                delivery.message_id,
                delivery.message.actor_name,
            )

    def queue_declared(self, queue_name: str) -> None:
        """A queue was declared after boot: consume it in the registration too."""
        queues = consumed_queues(self.broker, self.whitelist)
        if queues != self.recorder.info.queues:
            self.recorder.update_queues(queues)

    def stop_sweeping(self) -> None:
        """Stop recovering other workers: this one is shutting down."""
        self.sweeper.stop()

    def stop(self) -> None:
        """Deregister the worker and stop the tracker's threads.

        Messages still running (the shutdown timeout abandoned them) stay
        registered and are recovered by the next sweep.
        """
        self.sweeper.stop()
        self.heartbeat.stop()
        self.recorder.stop()
        try:
            if self.recorder.needs_registration:
                self.recorder.register()
            self.recorder.flush()
            left = self.store.deregister(self.recorder.info)
        except redis.RedisError as e:
            self.logger.warning(
                "Could not deregister worker %r (%s); it will be recovered once its heartbeat expires.",
                self.worker_id,
                e,
            )
            return
        if left:
            self.logger.warning(
                "Worker %r stopped with %d messages still running; they are recovered by the next sweep.",
                self.worker_id,
                left,
            )
        else:
            self.logger.info("Worker %r deregistered.", self.worker_id)
