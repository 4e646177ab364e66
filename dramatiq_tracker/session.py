"""Everything the tracker runs inside one worker process, wired together.

One session per process, however many embedded ``Worker`` objects run in it
(they share the broker and its ``broker_id``): the registration consumes the
union of their queues, and the last one to stop deregisters it.
"""

from __future__ import annotations

import re
import secrets
import time
from typing import TYPE_CHECKING

import dramatiq
import redis
from dramatiq.logging import get_logger

from ._version import __version__
from .admission import Admission
from .brokers import RABBITMQ, REDIS, consumed_queues
from .events import ZOMBIE_ABORTED, ZOMBIE_COMPLETION, ZOMBIE_DETECTED
from .host import HostFacts
from .options import recoveries_of
from .recorder import Recorder
from .records import InflightRecord, WorkerInfo
from .registry import Delivery, InflightRegistry
from .sweeper import Sweeper

if TYPE_CHECKING:
    from dramatiq import Broker, Worker

    from .runtime import TrackerParts

#: How often a fenced worker looks whether the recovery of its old identity is over, in seconds.
_FENCE_POLL = 0.05


def new_worker_id(host: HostFacts) -> str:
    """``<hostname>-<pid>-<random>``: readable, and unique even when pids are reused."""
    hostname = re.sub(r"[^A-Za-z0-9._-]", "_", host.hostname) or "host"
    return "%s-%d-%s" % (hostname, host.pid, secrets.token_hex(3))


class WorkerSession:
    """The registration, in-flight registry, recorder, sweeper and start decisions of one worker process.

    Parameters:
      parts(TrackerParts): The tracker's machinery, bound to its broker.
    """

    def __init__(self, parts: TrackerParts) -> None:
        self.logger = get_logger(__name__, type(self))
        self.parts = parts
        self.broker: Broker = parts.broker
        self.settings = parts.settings
        self.store = parts.store
        self.host = HostFacts.current()
        self._workers: list[Worker] = []
        facts = parts.facts
        info = WorkerInfo(
            worker_id=new_worker_id(self.host),
            hostname=self.host.hostname,
            pid=self.host.pid,
            process_started=self.host.process_started,
            boot_id=self.host.boot_id,
            pid_namespace=self.host.pid_namespace,
            queues=(),
            broker_kind=facts.kind,
            broker_identity=facts.identity,
            broker_id=facts.broker_id,
            broker_namespace=facts.namespace,
            worker_threads=0,
            started_at=int(time.time() * 1000),
            tracker_version=__version__,
            dramatiq_version=dramatiq.__version__,
        )
        self.registry = InflightRegistry(info)
        #: Messages recovered from this worker while it was presumed dead, with the attempt that
        #: superseded the copies it fetched before (see :meth:`fenced`).
        self.revoked: dict[str, int] = {}
        self._keep_payload = facts.kind not in (REDIS, RABBITMQ)
        self._callbacks: dict[str, str] = {}
        self.recorder = Recorder(
            parts.store,
            parts.settings,
            parts.health,
            self.registry,
            parts.digest,
            self.describe,
            self.new_worker_id,
            self,
        )
        self.admission = Admission(
            parts.broker,
            parts.store,
            parts.settings,
            parts.health,
            self.registry,
            self.recorder,
            self.describe,
            self.revoked,
            parts.claims,
            parts.cleaners,
            parts.settlement,
            parts.events,
        )
        self.sweeper = Sweeper(parts.recovery, parts.store, parts.settings, parts.health, self.heartbeat_fresh)
        parts.health.on_reconnect.append(self.recorder.request_resync)

    @property
    def worker_id(self) -> str:
        return self.registry.worker_id

    def new_worker_id(self) -> str:
        return new_worker_id(self.host)

    def heartbeat_fresh(self) -> bool:
        """Whether this worker's heartbeat went through within ``heartbeat_timeout``: if not, it may
        have been declared dead.  (A stricter bound would trip on ordinary scheduling delays.)"""
        return time.time() - self.recorder.last_beat < self.settings.heartbeat_timeout / 1000

    # Workers ---------------------------------------------------------------------------

    def attach(self, worker: Worker) -> bool:
        """Add an embedded or CLI Worker to this process's session.

        Returns:
          bool: True for the first one: the session must be started.
        """
        first = not self._workers
        self._workers.append(worker)
        self._update_registration()
        return first

    def detach(self, worker: Worker) -> bool:
        """Remove a Worker that stops.

        Returns:
          bool: True when it was the last one: the session must be stopped.
        """
        if worker in self._workers:
            self._workers.remove(worker)
        if self._workers:
            self._update_registration()
        return not self._workers

    def queue_declared(self) -> None:
        """A queue was declared after boot: consume it in the registration too."""
        self._update_registration()

    def _update_registration(self) -> None:
        queues: set[str] = set()
        threads = 0
        for worker in self._workers:
            whitelist = set(worker.consumer_whitelist) if worker.consumer_whitelist else None
            queues.update(consumed_queues(self.broker, whitelist))
            threads += worker.worker_threads
        info = self.registry.info
        if tuple(sorted(queues)) != info.queues or threads != info.worker_threads:
            self.registry.update_info(
                WorkerInfo(**{**info.__dict__, "queues": tuple(sorted(queues)), "worker_threads": threads})
            )
            if self.recorder.is_alive():
                self.recorder.request_resync()

    # Lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        """Register the worker, then start the tracker's threads.

        Registration happens before the worker fetches anything, so that none
        of its messages can belong to an unknown worker.  If the tracker's Redis
        is down, the worker starts anyway and registers when it comes back.
        """
        try:
            self.recorder.register()
        except redis.RedisError as e:
            self.parts.health.failed("registering worker %r" % self.worker_id, e)
        self.recorder.start()
        self.sweeper.start()
        info = self.registry.info
        self.logger.info(
            "Tracking worker %r (queues %s, broker %s).",
            info.worker_id,
            ", ".join(info.queues) or "none",
            info.broker_identity,
        )

    def stop_sweeping(self) -> None:
        """Stop recovering other workers: this one is shutting down."""
        self.sweeper.stop()

    def stop(self) -> None:
        """Deregister the worker and stop the tracker's threads.

        Messages still running (the shutdown timeout abandoned them) stay
        registered and are recovered by the next sweep.
        """
        self.sweeper.stop()
        try:
            self.recorder.stop_and_flush()
            info = self.registry.info
            left = self.store.deregister(info, self.parts.digest)
            if not left and self.parts.broker_store is not None and info.broker_id:
                self.parts.broker_store.forget_process(info.broker_id)
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

    # What is recorded -----------------------------------------------------------------------

    def describe(self, delivery: Delivery) -> InflightRecord:
        """The record of an attempt, with the policy that travels with it."""
        policy = delivery.policy
        on_exhausted = ""
        if policy.on_exhausted:
            on_exhausted = self._callbacks.get(policy.on_exhausted, "")
            if not on_exhausted:
                queue = self.parts.policies.callback_queue(self.broker, policy.on_exhausted)
                on_exhausted = self._callbacks[policy.on_exhausted] = "%s|%s" % (policy.on_exhausted, queue)
        delivery.recoveries = max(delivery.recoveries, recoveries_of(delivery.message.options))
        return delivery.record(self.settings.preview_length, self._keep_payload, on_exhausted)

    def end(self, delivery: Delivery, completion: str) -> None:
        """Record that an attempt was acked or nacked; report a zombie's late completion."""
        if self.registry.end(delivery, "nack" if completion == "nack" else "ack"):
            return
        message = delivery.message
        if delivery.succeeded and completion == "ack":
            self._note_done(delivery.message_id, delivery.attempt)
        self.parts.events.emit(
            ZOMBIE_COMPLETION,
            "Message %r (actor %r) completed on this worker after it was recovered for delivery elsewhere, "
            "while this worker was presumed dead.",
            delivery.message_id,
            message.actor_name,
            message_id=delivery.message_id,
            actor_name=message.actor_name,
            queue_name=message.queue_name,
            worker_id=delivery.worker_id,
            recoveries=delivery.recoveries,
        )

    def unconfirmed(self, delivery: Delivery, completion: str) -> None:
        """An attempt ran, but its ack or nack cannot reach RabbitMQ: the channel that delivered it
        closed meanwhile, and the server delivers the message again.  Noted in its history, so that
        the redelivery is dropped (or dead-lettered, after a failure) instead of run again."""
        if delivery.zombie:
            # Recovered elsewhere while this worker was presumed dead: the attempt that replaced it decides.
            self.logger.debug(
                "The %s of zombie message %r was not sent: its channel closed.", completion, delivery.message_id
            )
            return
        self.logger.warning(
            "The %s of message %r (actor %r) cannot reach RabbitMQ: the channel that delivered it closed while "
            "it ran.  The server delivers it again; that delivery will be %s.",
            completion,
            delivery.message_id,
            delivery.message.actor_name,
            "dead-lettered" if completion == "nack" else "dropped",
        )
        fields = {
            "unconfirmed_by": delivery.running_entry,
            "unconfirmed_attempt": str(delivery.attempt),
            "unconfirmed_with": completion,
        }
        try:
            self.store.note_history(delivery.message_id, self.settings.history_ttl, fields)
        except redis.RedisError as e:
            self.parts.health.failed("noting a completion its broker did not confirm", e)

    def _completed_as_zombie(self, message_id: str, attempt: int, old_worker_id: str) -> None:
        """An attempt succeeded here after this worker was declared dead, before it learned it."""
        self._note_done(message_id, attempt)
        self.parts.events.emit(
            ZOMBIE_COMPLETION,
            "Message %r (attempt %d) completed on this worker after it was declared dead (as %r) and the message "
            "was recovered for delivery elsewhere.",
            message_id,
            attempt,
            old_worker_id,
            message_id=message_id,
            worker_id=old_worker_id,
        )

    def _note_done(self, message_id: str, attempt: int) -> None:
        """The work of ``attempt`` is done: the copy recovery made of it is dropped if it has not started."""
        try:
            self.store.note_history(message_id, self.settings.history_ttl, {"done_by_attempt": str(attempt)})
        except redis.RedisError as e:
            self.parts.health.failed("noting a zombie's completion", e)

    # What the recorder learns (RecorderHooks) -------------------------------------------------

    def registered(self, info: WorkerInfo) -> None:
        self.parts.events.reporter = info.worker_id
        if self.parts.broker_store is not None and info.broker_id:
            try:
                self.parts.broker_store.note_process(info.broker_id, info.to_json())
            except redis.RedisError as e:
                self.logger.warning("Could not note worker %r beside its broker's keys: %s.", info.worker_id, e)

    def fenced(self, old_worker_id: str, zombies: list[Delivery], completed: list[tuple[str, int]]) -> None:
        """This worker learned it was declared dead while alive.

        It waits (at most ``takeover_after``) until the recovery of its old identity is over,
        then learns which messages recovery took from it: copies of them that it fetched
        before are stale and never start (:class:`~dramatiq_tracker.admission.Admission`);
        its running copies of them are zombies, aborted with dramatiq-abort if it can.
        Running messages recovery did not take (RabbitMQ keeps delivering them to this live
        connection) run on as this worker's own.  Those it completed after it was declared
        dead, before it learned it, are zombie completions: their recovered copies are
        dropped if they have not started.
        """
        deadline = time.monotonic() + self.settings.takeover_after / 1000
        while self.store.registration(old_worker_id) is not None and time.monotonic() < deadline:
            time.sleep(_FENCE_POLL)
        for message_id, attempt in self.store.revoked(old_worker_id).items():
            self.revoked[message_id] = max(attempt, self.revoked.get(message_id, 0))
        for message_id, attempt in completed:
            if self.admission.is_stale(message_id, attempt):
                self._completed_as_zombie(message_id, attempt, old_worker_id)
        taken = []
        for delivery in zombies:
            if self.admission.is_stale(delivery.message_id, delivery.attempt):
                taken.append(delivery)
            else:
                self.registry.readopt(delivery)
                self.store.note_history(delivery.message_id, self.settings.history_ttl, {}, forget="awaiting_from")
        try:
            self.store.note_fenced(old_worker_id, self.worker_id, self.settings.history_ttl)
        except redis.RedisError as e:
            self.parts.health.failed("noting that this worker was fenced", e)
        events = self.parts.events
        events.emit(
            ZOMBIE_DETECTED,
            "This worker (%r) was declared dead while it was alive (a stall longer than heartbeat_timeout, "
            "or a partition from the tracker's Redis); %d of its messages were recovered for delivery elsewhere "
            "and no longer belong to it, %d of them still running here. It continues as worker %r.",
            old_worker_id,
            len(self.store.revoked(old_worker_id)),
            len(taken),
            self.worker_id,
            worker_id=old_worker_id,
            details={"new_worker_id": self.worker_id, "zombies": " ".join(d.message_id for d in taken)},
        )
        aborts = self.parts.aborts
        if not taken or not aborts.available:
            return
        for message_id in aborts.abort_locally((d.message, d.thread) for d in taken):
            events.emit(
                ZOMBIE_ABORTED,
                "Aborting the zombie copy of message %r on this worker: it was recovered for delivery elsewhere.",
                message_id,
                message_id=message_id,
                worker_id=old_worker_id,
            )
