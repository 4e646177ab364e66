"""One run of the demo on one Redis: the acts, what Redis says, and how it is told.

Worker A takes every message, running some and prefetching the rest;
worker B starts; A's worker process is SIGKILLed; B's tracker declares A
dead and moves its orphans back, and B runs each of them exactly once.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import redis
from dramatiq.brokers.redis import RedisBroker
from dramatiq.errors import DecodeError
from dramatiq.message import Message

from ...broker_store import BrokerStore
from ...brokers import consumer_queues
from ...connection import delete_keys
from ...keys import Keys
from ...records import WorkerInfo
from ..reads import InspectionStore
from . import DemoError
from .environment import ACTOR_NAME, QUEUE, DemoConfig
from .journal import DONE, STARTED, Event, Journal
from .narration import Kill, Narrator, account, short, shorts
from .options import THREADS, DemoOptions
from .workers import APP_MODULE, POLL_INTERVAL, DemoWorker

#: How long worker A may take to fetch the messages, in milliseconds.
FETCH_TIMEOUT = 15_000

#: Extra time, beyond what the work should take, before the demo gives up, in milliseconds.
SLACK = 20_000


class Scene:
    """One run of the demo on one Redis.

    Parameters:
      client(redis.Redis): The runner's client of the demo's Redis.
      config(DemoConfig): What the workers are told.
      options(DemoOptions)
      workdir(Path): Where the worker logs go.
      narrator(Narrator)
    """

    def __init__(
        self, client: redis.Redis, config: DemoConfig, options: DemoOptions, workdir: Path, narrator: Narrator
    ) -> None:
        self.client = client
        self.config = config
        self.options = options
        self.workdir = workdir
        self.narrator = narrator
        self.settings = config.tracker_settings()
        self.store = InspectionStore(client, config.tracker_namespace)
        self.broker_store = BrokerStore(client, config.broker_namespace, config.tracker_namespace)
        self.journal = Journal(client, config.events_key)
        self.workers: list[DemoWorker] = []
        self.kill: Kill | None = None
        self.recovered_at: float | None = None
        # Tombstones carry the Redis server's time; events, ours.
        self.server_offset = self.store.server_time() / 1000 - time.time()

    def play(self) -> bool:
        """Run the scene; True when every message completed exactly once."""
        a = self.start_worker("A")
        message_ids = self.enqueue()
        self.wait_busy(a, len(message_ids))
        b = self.start_worker("B")
        # Past its boot-time sweep, B finds A's death the way a running cluster does: on a periodic sweep.
        self.pause(self.config.sweep_interval // 2)
        self.kill = self.kill_worker(a)
        self.watch(a, b, message_ids, self.kill)
        bound = self.settings.recovery_bound
        return account(self.narrator, message_ids, self.kill, self.journal, self.recovered_at, bound)

    # Acts ---------------------------------------------------------------------------

    def start_worker(self, name: str) -> DemoWorker:
        """Start a worker and wait until it registers with the tracker."""
        known = {worker.info.worker_id for worker in self.workers if worker.info}
        self.narrator.say("starting worker %s: dramatiq %s --processes 1 --threads %d" % (name, APP_MODULE, THREADS))
        worker = DemoWorker(name, self.config, self.workdir, threads=THREADS)
        self.workers.append(worker)
        info = worker.wait_registered(self.store, known)
        self.narrator.say("worker %s is up: worker process pid %d, tracker id %s" % (name, info.pid, info.worker_id))
        return worker

    def enqueue(self) -> list[str]:
        """Enqueue the demo's messages; returns their ids."""
        producer = RedisBroker(client=self.client, namespace=self.config.broker_namespace)  # type: ignore[no-untyped-call]
        message_ids = []
        for index in range(self.options.messages):
            message: Message[Any] = Message(
                queue_name=QUEUE, actor_name=ACTOR_NAME, args=(index, self.options.duration), kwargs={}, options={}
            )
            message_ids.append(producer.enqueue(message).message_id)
        self.narrator.say("enqueued %d messages: %s" % (len(message_ids), shorts(message_ids)))
        return message_ids

    def wait_busy(self, worker: DemoWorker, count: int) -> None:
        """Wait until ``worker`` runs as many messages as it can and holds all ``count``."""
        info = _info(worker)
        running = min(THREADS, count)
        deadline = time.monotonic() + FETCH_TIMEOUT / 1000
        while True:
            self.tell(self.journal.poll())
            inflight = self.store.inflight(info.worker_id)
            if len(inflight) >= running and len(self.held(info)) == count:
                break
            if time.monotonic() > deadline:
                raise DemoError("Worker %s did not take the messages within %d ms." % (worker.name, FETCH_TIMEOUT))
            time.sleep(POLL_INTERVAL / 1000)
        self.narrator.say(
            "worker %s (pid %d) is running %d messages, %d more prefetched"
            % (worker.name, info.pid, len(inflight), count - len(inflight))
        )

    def pause(self, duration: int) -> None:
        """Wait ``duration`` milliseconds, telling the events meanwhile."""
        deadline = time.monotonic() + duration / 1000
        while time.monotonic() < deadline:
            self.tell(self.journal.poll())
            time.sleep(POLL_INTERVAL / 1000)

    def kill_worker(self, worker: DemoWorker) -> Kill:
        """Note what ``worker`` holds, then SIGKILL its worker process."""
        info = _info(worker)
        running = sorted(self.store.inflight(info.worker_id))
        prefetched = sorted(self.held(info) - set(running))
        kill = Kill(worker.name, time.time(), running, prefetched)
        worker.kill()
        self.narrator.say(
            "SIGKILL worker %s (pid %d), running %s; prefetched %s"
            % (worker.name, info.pid, shorts(running) or "nothing", shorts(prefetched) or "nothing"),
            kill.at,
        )
        return kill

    def watch(self, dead: DemoWorker, survivor: DemoWorker, message_ids: Sequence[str], kill: Kill) -> None:
        """Narrate the recovery and the work until every message is done and nothing is left anywhere."""
        batches = math.ceil(len(message_ids) / THREADS)
        timeout = self.settings.recovery_bound + batches * self.options.duration + SLACK
        deadline = time.monotonic() + timeout / 1000
        while True:
            # Read the events first: an orphan that started again was delivered again before.
            events = self.journal.poll()
            lines = [(event.at, self.describe(event)) for event in events]
            if self.recovered_at is None:
                declared = self.delivered_again_at(_info(dead))
                if declared is not None:
                    # The server's clock, corrected to ours, may put it a hair before the kill.
                    self.recovered_at = max(kill.at, declared)
                    lines.append((self.recovered_at, self.recovery_line(dead, survivor, kill, self.recovered_at)))
            for at, text in sorted(lines):
                self.narrator.say(text, at)
            if self.recovered_at is not None and self.finished(message_ids, _info(survivor)):
                return
            if survivor.process.poll() is not None:
                self.narrator.say("worker %s exited unexpectedly (code %s)" % (survivor.name, survivor.process.poll()))
                return
            if time.monotonic() > deadline:
                self.narrator.say("giving up after %d ms" % timeout)
                return
            time.sleep(POLL_INTERVAL / 1000)

    def close(self) -> None:
        """Stop every worker, then delete the run's keys."""
        for worker in reversed(self.workers):
            worker.stop()
        patterns = ["%s:*" % self.config.broker_namespace, Keys(self.config.tracker_namespace).prefix + "*"]
        try:
            deleted = sum(delete_keys(self.client, pattern) for pattern in patterns)
        except redis.RedisError as e:
            self.narrator.say("could not delete the keys of namespace %s: %s" % (self.config.broker_namespace, e))
        else:
            self.narrator.say(
                "stopped the workers; deleted the %d keys of namespace %s" % (deleted, self.config.broker_namespace)
            )

    # What Redis says ------------------------------------------------------------------

    def held(self, info: WorkerInfo) -> set[str]:
        """Ids of the messages a worker fetched and did not ack: running or prefetched."""
        found = set()
        for messages in self.broker_store.unacked(info.broker_id, consumer_queues(info.queues)).values():
            for _, payload in messages:
                with contextlib.suppress(DecodeError):
                    found.add(Message.decode(payload or b"").message_id)
        return found

    def delivered_again_at(self, info: WorkerInfo) -> float | None:
        """When the tracker declared the worker dead, once its orphans are back in the queue."""
        declared = self.store.dead_workers().get(info.worker_id)
        if declared is None or self.held(info):
            return None
        return declared / 1000 - self.server_offset

    def finished(self, message_ids: Sequence[str], survivor: WorkerInfo) -> bool:
        """True when every message is done and none is queued or held anywhere."""
        if set(message_ids) - set(self.journal.count(DONE)):
            return False
        return self.client.llen(self.broker_store.keys.queue(QUEUE)) == 0 and not self.held(survivor)

    # Narration --------------------------------------------------------------------------

    def name_of(self, pid: int) -> str:
        """How the narration calls the worker process ``pid``."""
        for worker in self.workers:
            if worker.pid == pid:
                return "worker %s" % worker.name
        return "pid %d" % pid

    def tell(self, events: Sequence[Event]) -> None:
        """Narrate ``events``, each at its own time."""
        for event in events:
            self.narrator.say(self.describe(event), event.at)

    def describe(self, event: Event) -> str:
        """One line for ``event``, saying whether a start is a recovered orphan's."""
        where = self.name_of(event.pid)
        if event.kind != STARTED:
            return "message %s completed on %s" % (short(event.message_id), where)
        kill = self.kill
        if kill is None or event.at < kill.at:
            return "message %s started on %s" % (short(event.message_id), where)
        if event.message_id in kill.running:
            return "message %s started again on %s" % (short(event.message_id), where)
        if event.message_id in kill.prefetched:
            return "message %s started on %s (prefetched by %s)" % (short(event.message_id), where, kill.worker)
        return "message %s started on %s" % (short(event.message_id), where)

    def recovery_line(self, dead: DemoWorker, survivor: DemoWorker, kill: Kill, at: float) -> str:
        """The line telling that ``survivor`` delivered the orphans of ``dead`` again, at time ``at``."""
        return "worker %s recovered %d orphans of dead worker %s (%d running, %d prefetched), %.2f s after the kill" % (
            survivor.name,
            len(kill.orphans),
            dead.name,
            len(kill.running),
            len(kill.prefetched),
            at - kill.at,
        )


def _info(worker: DemoWorker) -> WorkerInfo:
    if worker.info is None:
        raise DemoError("Worker %s is not registered." % worker.name)
    return worker.info
