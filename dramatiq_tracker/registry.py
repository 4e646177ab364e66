"""The in-memory registry of one worker process: who it is and what it runs.

This is the per-message path: :meth:`InflightRegistry.begin` and
:meth:`InflightRegistry.end` do one dict insert and one removal under a lock,
and never wait on Redis.  The recorder thread
(:mod:`dramatiq_tracker.recorder`) writes what changed, in batches.  The
registry is the truth about this process: whenever the tracker's Redis may
have lost it, it is written again whole.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import threading
from typing import TYPE_CHECKING, Any

from .options import recoveries_of
from .records import AttemptName, InflightRecord, WorkerInfo, encode_payload, preview_of
from .unique import lock_of

#: How many recent completions a worker remembers, in case it was declared dead while it ran
#: them (see :meth:`InflightRegistry.take_completed`); beyond it, during a long outage of the
#: tracker's Redis, the oldest are forgotten.
RECENT_COMPLETIONS = 50_000

if TYPE_CHECKING:
    from collections.abc import Callable

    from dramatiq import MessageProxy

    from .policies import ActorPolicy
    from .scripts import Completion, RecordEntry
    from .unique import UniqueAttempt


class Delivery:
    """One attempt at processing a message in this process.

    Parameters:
      message(MessageProxy)
      token(int): Unique in this process; ``"<worker id>|<token in hex>"`` names the attempt.
      started(float): When it began, in seconds since the epoch.
      attempt(int): Its delivery attempt (see :data:`~dramatiq_tracker.options.ATTEMPT_OPTION`).
      retries(int): Dramatiq's retry count when it began.
      policy(ActorPolicy): What the tracker does with it.
      generation(int): The registry's flush count when it began; it is written once a whole
        flush interval has passed, so that a message shorter than that is never written.
    """

    __slots__ = (
        "attempt",
        "generation",
        "message",
        "policy",
        "ran",
        "recoveries",
        "retries",
        "started",
        "succeeded",
        "thread",
        "token",
        "unique",
        "worker_id",
        "written",
        "zombie",
    )

    def __init__(
        self,
        message: MessageProxy,
        token: int,
        started: float,
        attempt: int,
        retries: int,
        policy: ActorPolicy,
        generation: int,
    ) -> None:
        self.message = message
        self.token = token
        self.worker_id = ""
        self.started = started
        self.attempt = attempt
        self.recoveries = 0
        self.retries = retries
        self.policy = policy
        self.generation = generation
        #: The uniqueness lock state of this attempt, if its message is unique.
        self.unique: UniqueAttempt | None = None
        #: Its record is written (or being written) in Redis: its end must be written too.
        self.written = False
        #: Recovered elsewhere while this process was presumed dead: it runs on as a zombie.
        self.zombie = False
        #: Its actor returned (no exception, not failed).
        self.succeeded = False
        #: It was processed (its actor ran, or a middleware failed it), not skipped.
        self.ran = False
        #: The thread that runs it: dramatiq-abort aborts a thread, and a zombie's copy and the copy
        #: that replaced it may run in two threads of one process.
        self.thread = threading.current_thread()

    @property
    def message_id(self) -> str:
        # The message itself, not the proxy's attribute lookup: this runs once per message.
        return self.message._message.message_id

    @property
    def token_text(self) -> str:
        return "%x" % self.token

    def event_fields(self) -> dict[str, Any]:
        """The fields of a tracker event about this attempt: its message, actor, queue and recoveries."""
        return {
            "message_id": self.message_id,
            "actor_name": self.message.actor_name,
            "queue_name": self.message.queue_name,
            "recoveries": self.recoveries,
        }

    @property
    def attempt_id(self) -> str:
        """``"<worker id>|<token>"``: this attempt, as the history names it."""
        return "%s|%x" % (self.worker_id, self.token)

    @property
    def owner(self) -> str:
        """``"<token>|<retries>"``: what the running index holds for it, after the worker id."""
        return "%x|%d" % (self.token, self.retries)

    @property
    def name(self) -> AttemptName:
        """This attempt as the running index (and the history) names it."""
        return AttemptName(self.worker_id, self.token_text, self.retries)

    def record(self, preview_length: int, keep_payload: bool, on_exhausted: str) -> InflightRecord:
        """The record written to Redis for this attempt.

        Parameters:
          preview_length(int): How many characters of its arguments to keep.
          keep_payload(bool): Keep the whole message (brokers that lose a dead consumer's messages).
          on_exhausted(str): "actor|queue" of its ``on_recovery_exhausted`` actor, or "".
        """
        message = self.message
        payload = encoding = ""
        if keep_payload:
            try:
                payload, encoding = encode_payload(message.encode())
            except Exception:
                payload = encoding = ""
        unique = self.unique
        if unique is not None:
            lock = "%s|%s" % (unique.digest, unique.mode)
        else:
            # Written before its lock state is known (a start at risk): the lock the message names.
            digest, mode = lock_of(message.options)
            lock = "%s|%s" % (digest, mode) if digest else ""
        return InflightRecord(
            message_id=self.message_id,
            worker_id=self.worker_id,
            actor_name=message.actor_name,
            queue_name=message.queue_name,
            token=self.token_text,
            started_at=int(self.started * 1000),
            attempt=self.attempt,
            recoveries=self.recoveries,
            retries=self.retries,
            max_recoveries=self.policy.max_recoveries,
            on_exhausted=on_exhausted,
            lock=lock,
            preview=preview_of(message.args, message.kwargs, preview_length),
            payload=payload,
            payload_encoding=encoding,
        )


@dataclasses.dataclass
class Pending:
    """What the recorder takes from the registry for one flush."""

    started: list[Delivery]
    ended: list[tuple[Delivery, Completion]]


class InflightRegistry:
    """This process's registration and every attempt it runs.

    Parameters:
      info(WorkerInfo): The registration; its ``worker_id`` changes if the worker is ever
        declared dead while alive (see :meth:`fence`).
      preview_length(int): How many characters of a message's arguments its record keeps.
      keep_payload(bool): Records keep the whole message (brokers that lose a dead consumer's messages).
      callback_queue(callable): The queue of an ``on_recovery_exhausted`` actor, "" when not declared here.
    """

    def __init__(
        self, info: WorkerInfo, preview_length: int, keep_payload: bool, callback_queue: Callable[[str], str]
    ) -> None:
        self.info = info
        self._preview_length = preview_length
        self._keep_payload = keep_payload
        self._callback_queue = callback_queue
        #: "actor|queue" of each ``on_recovery_exhausted`` actor whose queue is known.
        self._callbacks: dict[str, str] = {}
        self._lock = threading.Lock()
        self._tokens = itertools.count(1)
        #: Every attempt running in this process, by token.
        self._active: dict[int, Delivery] = {}
        #: Ended attempts whose record was written and must be removed.
        self._ended: list[tuple[Delivery, Completion]] = []
        #: How many flushes have begun.
        self._generation = 0
        #: (message id, attempt) of the attempts that succeeded since a write last proved this worker
        #: alive: if it turns out to have been declared dead meanwhile, these are zombie completions.
        #: Bounded, for a long outage of the tracker's Redis; ``_completions`` counts every one.
        self._completed: collections.deque[tuple[str, int]] = collections.deque(maxlen=RECENT_COMPLETIONS)
        self._completions = 0
        #: Writes confirmed since the last registration, and writes on their way (see ``lua/flush.lua``).
        self._writes = 0
        self._pending_writes = 0

    @property
    def worker_id(self) -> str:
        return self.info.worker_id

    # Worker threads: memory only. -----------------------------------------------------------

    def begin(
        self, message: MessageProxy, policy: ActorPolicy, attempt: int, retries: int, now: float, written: bool
    ) -> Delivery:
        """Record that ``message`` starts processing (one dict insert).

        Parameters:
          written(bool): The caller writes its record itself, before it runs (an at-risk start):
            the recorder must not write it meanwhile.
        """
        delivery = Delivery(message, next(self._tokens), now, attempt, retries, policy, self._generation)
        delivery.written = written
        with self._lock:
            delivery.worker_id = self.info.worker_id
            self._active[delivery.token] = delivery
        return delivery

    def end(self, delivery: Delivery, completion: Completion) -> bool:
        """Record that an attempt was acked, nacked or skipped (one dict removal).

        Returns:
          bool: False when the attempt was recovered elsewhere while it ran here (a zombie).
        """
        if delivery.zombie and completion == "nack":
            # A zombie's failure (often the abort of it) says nothing of the message: the attempt
            # that replaced it decides.  Its end is still written, so that nobody waits for it.
            completion = "void"
        with self._lock:
            if self._active.pop(delivery.token, None) is not None and delivery.written:
                self._ended.append((delivery, completion))
            if delivery.succeeded and completion == "ack" and not delivery.zombie:
                self._completed.append((delivery.message_id, delivery.attempt))
                self._completions += 1
        return not delivery.zombie

    def is_active(self, token: int) -> bool:
        return token in self._active

    def find(self, worker_id: str, token: int) -> Delivery | None:
        """The active attempt with this id, if it runs here."""
        delivery = self._active.get(token)
        return delivery if delivery is not None and delivery.worker_id == worker_id else None

    def readopt(self, delivery: Delivery) -> None:
        """An attempt caught by a fencing, but not one recovery took: it runs on as this worker's own."""
        with self._lock:
            delivery.zombie = False
            delivery.worker_id = self.info.worker_id
            delivery.written = False
            delivery.generation = -2

    def unwritten(self, delivery: Delivery) -> None:
        """A record written outside the recorder is not there after all: the recorder writes it."""
        with self._lock:
            delivery.written = False
            delivery.generation = -2

    # The recorder thread. ---------------------------------------------------------------------

    def take_pending(self, *, everything: bool = False) -> Pending:
        """The attempts to write: those that began a whole flush interval ago (all with
        ``everything``), and those ended after being written.  They count as written from now."""
        with self._lock:
            self._generation += 1
            if not self._active and not self._ended:
                return Pending([], [])
            settled = self._generation if everything else self._generation - 2
            started = [d for d in self._active.values() if not d.written and not d.zombie and d.generation <= settled]
            for delivery in started:
                delivery.written = True
            ended, self._ended = self._ended, []
        return Pending(started, ended)

    def restore(self, pending: Pending) -> None:
        """A write failed: take its attempts back, to be written again."""
        with self._lock:
            # An attempt that ended meanwhile counted as written: its end is already queued.
            for delivery in pending.started:
                if delivery.token in self._active:
                    delivery.written = False
            self._ended[:0] = pending.ended

    def take_all(self) -> tuple[list[Delivery], list[Delivery]]:
        """Everything in flight, to register it whole: (attempts to record, zombie attempts).
        They count as written from now; the pending ends are forgotten (the registration replaces them)."""
        with self._lock:
            active = list(self._active.values())
            for delivery in active:
                delivery.written = True
            self._ended.clear()
        return [d for d in active if not d.zombie], [d for d in active if d.zombie]

    def fence(self, new_worker_id: str) -> tuple[str, list[Delivery]]:
        """This worker was declared dead while alive: continue as ``new_worker_id``.

        Returns:
          tuple: The old worker id, and the attempts that run on under it as zombies.
        """
        with self._lock:
            old_id = self.info.worker_id
            self.info = dataclasses.replace(self.info, worker_id=new_worker_id)
            zombies = [d for d in self._active.values() if d.worker_id == old_id]
            for delivery in zombies:
                delivery.zombie = True
                delivery.worker_id = new_worker_id
                delivery.written = False
            self._ended = [(d, c) for d, c in self._ended if d.worker_id != old_id]
        return old_id, zombies

    def update_info(self, info: WorkerInfo) -> None:
        with self._lock:
            self.info = dataclasses.replace(info, worker_id=self.info.worker_id)

    # Completions since the worker was last known alive. --------------------------------------

    def completed_mark(self) -> int:
        """How many attempts succeeded so far: taken just before a write is sent."""
        with self._lock:
            return self._completions

    def alive_at(self, mark: int) -> None:
        """A write sent at ``mark`` proved this worker alive: completions before it are not zombies'."""
        with self._lock:
            for _ in range(mark - (self._completions - len(self._completed))):
                self._completed.popleft()

    def take_completed(self) -> list[tuple[str, int]]:
        """The attempts that succeeded since this worker was last known alive (at a fencing)."""
        with self._lock:
            completed = list(self._completed)
            self._completed.clear()
        return completed

    # The write count, checked against Redis's (anti-entropy). ---------------------------------

    def expected_writes(self) -> tuple[int, int]:
        """The lowest and highest write count Redis may hold for this worker now."""
        with self._lock:
            return self._writes, self._writes + self._pending_writes

    def write_started(self) -> None:
        with self._lock:
            self._pending_writes += 1

    def write_ended(self, confirmed: bool) -> None:
        with self._lock:
            self._pending_writes -= 1
            if confirmed:
                self._writes += 1

    def wrote(self) -> None:
        with self._lock:
            self._writes += 1

    def registered(self) -> None:
        with self._lock:
            self._writes = 0

    def describe(self, delivery: Delivery) -> InflightRecord:
        """The record of an attempt, with the policy that travels with it."""
        name = delivery.policy.on_exhausted
        on_exhausted = ""
        if name:
            on_exhausted = self._callbacks.get(name, "")
            if not on_exhausted:
                queue = self._callback_queue(name)
                on_exhausted = "%s|%s" % (name, queue)
                if queue:
                    self._callbacks[name] = on_exhausted
        delivery.recoveries = max(delivery.recoveries, recoveries_of(delivery.message.options))
        return delivery.record(self._preview_length, self._keep_payload, on_exhausted)

    @staticmethod
    def entries(deliveries: list[Delivery], records: list[InflightRecord]) -> list[RecordEntry]:
        """Record entries as the scripts take them."""
        return [(r.message_id, d.owner, r.to_json()) for d, r in zip(deliveries, records, strict=True)]
