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
from .events import ZOMBIE_ABORTED, ZOMBIE_COMPLETION, ZOMBIE_DETECTED
from .health import ConnectionHealth
from .heartbeat import Heartbeat
from .host import HostFacts
from .quarantine import QUARANTINE_OPTION
from .recorder import DEFERRED_OPTION, RECOVERIES_OPTION, Delivery, InflightRecorder
from .records import WorkerInfo
from .recovery import Recovery, Sweeper
from .unique import attempt_of

#: Options of messages whose start is recorded before they run.
_AT_RISK_OPTIONS = frozenset({RECOVERIES_OPTION, DEFERRED_OPTION, QUARANTINE_OPTION})

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
        self.events = recovery.events
        self.aborts = recovery.handling.aborts
        self.recorder = InflightRecorder(
            store, settings, self.health, info, lambda: new_worker_id(host), on_fenced=self.fenced
        )
        self.heartbeat = Heartbeat(store, settings, self.health, self.recorder)
        self.recovery = recovery
        self.sweeper = Sweeper(self.recovery, store, settings, self.health, lambda: self.heartbeat.fresh)
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

    def begin(self, message: MessageProxy, options: dict[str, Any], max_recoveries: int) -> Delivery:
        """Record that a message starts processing in this worker.

        Most messages are recorded in the background (the per-message path never waits on
        Redis).  Those whose start must not be missed are recorded before they run:
        messages delivered again, put-off duplicates, and at-most-once messages
        (``max_recoveries=0``); see :meth:`Recovery.begin_at_risk`.
        """
        # RabbitMQ's message proxy sets its redelivered flag as an attribute; reading it from
        # vars() spares every other proxy a failed lookup through MessageProxy.__getattr__.
        if max_recoveries == 0 or vars(message).get("redelivered") is True or not _AT_RISK_OPTIONS.isdisjoint(options):
            return self.recovery.begin_at_risk(self.recorder, message, max_recoveries)
        return self.recorder.begin(message, attempt_of(options))

    def end(self, delivery: Delivery) -> None:
        """Record that an attempt was acked or nacked."""
        if not self.recorder.end(delivery):
            self.events.emit(
                ZOMBIE_COMPLETION,
                "Message %r (actor %r) completed on this worker after it was recovered for delivery elsewhere, "
                "while this worker was presumed dead.",
                delivery.message_id,
                delivery.message.actor_name,
                message_id=delivery.message_id,
                actor_name=delivery.message.actor_name,
                queue_name=delivery.message.queue_name,
                worker_id=delivery.worker_id,
                recoveries=delivery.recoveries,
            )

    def fenced(self, old_worker_id: str, zombies: list[Delivery]) -> None:
        """This worker learned it was declared dead: report it, and abort its zombie copies if it can."""
        self.events.emit(
            ZOMBIE_DETECTED,
            "This worker (%r) was declared dead while it was alive (a stall longer than heartbeat_timeout, "
            "or a partition from the tracker's Redis); its %d running messages were recovered for delivery "
            "elsewhere and no longer belong to it. It continues as worker %r.",
            old_worker_id,
            len(zombies),
            self.worker_id,
            worker_id=old_worker_id,
            details={"new_worker_id": self.worker_id, "zombies": " ".join(d.message_id for d in zombies)},
        )
        if not zombies or not self.aborts.available:
            return
        for message_id in self.aborts.abort_locally(d.message for d in zombies):
            self.events.emit(
                ZOMBIE_ABORTED,
                "Aborting the zombie copy of message %r on this worker: it was recovered for delivery elsewhere.",
                message_id,
                message_id=message_id,
                worker_id=old_worker_id,
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
            self.recorder.flush(everything=True)
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
