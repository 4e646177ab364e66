"""The tracked worker process: its registration, the Workers attached to it, its threads.

One per process, however many embedded ``Worker`` objects run in it (they
share the broker and its ``broker_id``): the registration consumes the union
of their queues, and the last one to stop deregisters it.
"""

from __future__ import annotations

import dataclasses
import os
import time
import weakref
from typing import TYPE_CHECKING, Any

import dramatiq
import redis
from dramatiq.logging import get_logger

from ._version import __version__
from .at_risk import AtRiskStarts
from .brokers import RABBITMQ, REDIS, consumed_queues
from .fencing import WorkerFencing
from .host import HostFacts
from .presence import Presence
from .recorder import Recorder
from .records import WorkerInfo
from .registry import Delivery, InflightRegistry
from .sweeper import Sweeper

if TYPE_CHECKING:
    from dramatiq import Worker
    from dramatiq.broker import MessageProxy

    from .wiring import Wiring


#: What holds a tracked process in this process, told when the process forks (see forget_at_fork).
_holders: weakref.WeakSet[Any] = weakref.WeakSet()


def forget_at_fork(holder: Any) -> None:
    """Have ``holder._forget_process_in_child()`` called in every child forked from this process.

    An actor that forks (``multiprocessing`` with fork, ``os.fork``) makes a child that is no tracked
    worker.  Without this, its sends would heartbeat under its parent's worker id, it could wait for
    ever on a lock a tracker thread held at the fork, and its copy of the presence connection would
    keep a dead parent present.
    """
    _holders.add(holder)


def _after_fork_in_child() -> None:
    for holder in list(_holders):
        holder._forget_process_in_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class TrackedProcess:
    """The registration, in-flight registry, recorder, sweeper and start decisions of one worker process.

    Parameters:
      wiring(Wiring): The tracker's machinery, bound to its broker.
    """

    def __init__(self, wiring: Wiring) -> None:
        self.logger = get_logger(__name__, type(self))
        self.wiring = wiring
        self.settings = settings = wiring.settings
        self.store = wiring.store
        self.host = HostFacts.current()
        self._workers: list[Worker] = []
        facts = wiring.facts
        info = WorkerInfo(
            worker_id=self.host.new_worker_id(),
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
        broker = wiring.broker
        self.registry = InflightRegistry(
            info,
            settings.preview_length,
            facts.kind not in (REDIS, RABBITMQ),
            lambda actor_name: wiring.policies.callback_queue(broker, actor_name),
        )
        self.fencing = WorkerFencing(wiring, self.registry)
        self.presence: Presence | None = None
        if settings.presence:
            keys = wiring.store.keys
            self.presence = Presence(
                wiring.store.client, keys.presence_channel, lambda: self.recorder.presence_changed()
            )
        self.recorder = Recorder(wiring, self.registry, self.host, self.fencing, self.presence)
        self.at_risk = AtRiskStarts(wiring, self.registry, self.recorder, self.fencing)
        self.sweeper = Sweeper(wiring, self.recorder, self.registry)
        wiring.health.on_reconnect.append(self.recorder.request_resync)

    @property
    def worker_id(self) -> str:
        return self.registry.worker_id

    # Workers ---------------------------------------------------------------------------

    def attach(self, worker: Worker) -> bool:
        """Add an embedded or CLI Worker to this process.

        Returns:
          bool: True for the first one: the process must be started.
        """
        first = not self._workers
        self._workers.append(worker)
        self._update_registration()
        return first

    def detach(self, worker: Worker) -> bool:
        """Remove a Worker that stops.

        Returns:
          bool: True when it was the last one: the process must be stopped.
        """
        if worker in self._workers:
            self._workers.remove(worker)
        if self._workers:
            self._update_registration()
        return not self._workers

    def is_last(self, worker: Worker) -> bool:
        """Whether ``worker`` is the only Worker left in this process."""
        return self._workers == [worker]

    def queue_declared(self) -> None:
        """A queue was declared after boot: consume it in the registration too."""
        self._update_registration()

    def _update_registration(self) -> None:
        queues: set[str] = set()
        threads = 0
        for worker in self._workers:
            whitelist = set(worker.consumer_whitelist) if worker.consumer_whitelist else None
            queues.update(consumed_queues(self.wiring.broker, whitelist))
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
            self.wiring.health.failed("registering worker %r" % self.worker_id, e)
        self.recorder.start()
        if self.presence is not None:
            self.presence.follow(self.worker_id)
            self.presence.start()
        self.sweeper.start()
        info = self.registry.info
        self.logger.info(
            "Tracking worker %r (queues %s, broker %s).",
            info.worker_id,
            ", ".join(info.queues) or "none",
            info.broker_identity,
        )

    def stop_sweeping(self) -> None:
        """Stop recovering other workers, and say in the registration that this one is shutting down."""
        self.sweeper.stop()
        self.registry.update_info(dataclasses.replace(self.registry.info, stopping_at=int(time.time() * 1000)))
        try:
            self.store.note_stopping(self.registry.info)
        except redis.RedisError as e:
            self.wiring.health.failed("noting that this worker is stopping", e)

    def stop(self) -> None:
        """Deregister the worker and stop the tracker's threads.

        Messages still running (the shutdown timeout abandoned them) stay
        registered and are recovered by the next sweep.
        """
        self.sweeper.stop()
        self.wiring.master.on_change.remove(self.recorder.master_moved)
        try:
            self.recorder.stop_and_flush()
            info = self.registry.info
            left = self.store.deregister(info, self.wiring.digest)
            broker_store = self.wiring.broker_store
            if not left and broker_store is not None and info.broker_id:
                broker_store.forget_process(info.broker_id)
        except redis.RedisError as e:
            self.logger.warning(
                "Could not deregister worker %r (%s); it will be recovered once its heartbeat expires.",
                self.worker_id,
                e,
            )
            return
        finally:
            if self.presence is not None:
                self.presence.stop()
        if left:
            self.logger.warning(
                "Worker %r stopped with %d messages still running; they are recovered by the next sweep.",
                self.worker_id,
                left,
            )
        else:
            self.logger.info("Worker %r deregistered.", self.worker_id)

    def abandon(self, *, flush: bool) -> str:
        """Stop this process's tracker threads without deregistering it, as a SIGKILL would (the
        narrow hook :mod:`dramatiq_tracker.testing` uses to declare an in-process worker dead).

        Parameters:
          flush(bool): Write what the recorder still holds in memory first.

        Returns:
          str: The abandoned worker id.

        Raises:
          redis.RedisError: When ``flush`` cannot reach the tracker's Redis (the threads are stopped).
        """
        self.sweeper.stop()
        self.wiring.master.on_change.remove(self.recorder.master_moved)
        if self.presence is not None:
            self.presence.stop()
        if flush:
            self.recorder.stop_and_flush()
        else:
            self.recorder.stop()
        return self.worker_id

    def forget_in_child(self) -> None:
        """This process was forked (an actor's child): the child is no tracked worker, and must hold no
        copy of the parent's presence connection, which would keep a dead parent present."""
        if self.presence is not None:
            self.presence.close_inherited()

    # Ends ------------------------------------------------------------------------------------

    def before_ack(self, proxy: MessageProxy, delivery: Delivery | None) -> None:
        """A RedisBroker message is about to be acked: a completed copy of a unique message that may be a
        zombie's (this worker is fenced, or its heartbeat is late) is acked by the fencing first
        (:meth:`~dramatiq_tracker.fencing.WorkerFencing.ack_zombie`), and a stale delayed copy moved to its
        queue keeps its place in the acks (:meth:`~dramatiq_tracker.fencing.WorkerFencing.withhold_delayed`).
        Nothing waits here: an ack that comes before the recovery's move is what keeps the message from
        running twice."""
        if delivery is not None and delivery.succeeded:
            # A copy it knows was superseded, or any while its heartbeat is late (it may have been declared
            # dead meanwhile): not every message of a worker that was fenced once.
            late = time.time() - self.recorder.last_beat > self.recorder.stale_after
            if late or self.fencing.is_stale(delivery.message_id, delivery.attempt):
                self.fencing.ack_zombie(delivery, proxy)
        elif self.fencing.revoked:
            self.fencing.withhold_delayed(proxy)

    def end(self, delivery: Delivery, completion: str) -> None:
        """Record that an attempt was acked or nacked; report a zombie's late completion."""
        if not self.registry.end(delivery, "nack" if completion == "nack" else "ack"):
            self.fencing.zombie_ended(delivery, completion)

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
            "unconfirmed_by": delivery.name.text,
            "unconfirmed_attempt": str(delivery.attempt),
            "unconfirmed_with": completion,
        }
        try:
            self.store.note_history(delivery.message_id, self.settings.history_ttl, fields)
        except redis.RedisError as e:
            self.wiring.health.failed("noting a completion its broker did not confirm", e)
