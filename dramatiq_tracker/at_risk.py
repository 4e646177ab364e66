"""A start that must not be missed: recorded before it runs, and decided.

Most messages start without a word to Redis (see :mod:`dramatiq_tracker.registry`).
A few are recorded before they run, and what is known about them decides their
fate.  :func:`decide` is that decision, pure (it asks whether a worker is alive
through the function it is given); :class:`AtRiskStarts` gathers what it needs
and carries it out:

- a stale copy (fetched by this worker before it was declared dead, and
  delivered again elsewhere since) does not run (:mod:`dramatiq_tracker.fencing`);
- a copy marked for the dead-letter queue (quarantine on brokers the tracker
  cannot dead-letter directly) is failed;
- a put-off duplicate whose awaited attempt completed is dropped, or
  dead-lettered when that attempt failed (its nack may not have reached the
  broker); so is the broker's redelivery of an attempt whose ack or nack could
  not reach RabbitMQ, and a copy whose attempt a zombie completed;
- a delivery of a message whose previous attempt still runs on a live worker
  (RabbitMQ's redelivery after a connection loss or a ``consumer_timeout``) is
  put off (enqueued again later), never run beside it;
- the orphan of a dead worker (a sweeper left it awaiting this redelivery, or
  the previous attempt's worker is dead) is claimed now, like a sweeper would
  (:class:`~dramatiq_tracker.orphans.Claims`): run, quarantined or dropped; a
  copy whose orphan another copy or a sweeper took over is dropped;
- a message whose cancel or abort the tracker remembers does not run.

Such a start fails closed: when it cannot be recorded or decided (the tracker's
Redis does not answer, or fails midway), it is put off (enqueued again later,
marked so that it is decided when it comes back), never run blind; and a
previous attempt whose worker cannot be known dead counts as alive.

A new attempt made by Dramatiq itself (a retry, whose ``retries`` option
advanced) or a previous attempt that ended in this very worker is never taken
for a duplicate.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Literal

import redis
from dramatiq.logging import get_logger
from dramatiq.message import Message

from .brokers import REDIS, broker_kind, withhold_ack
from .events import (
    ABORT_HONOURED,
    DEFERRAL_FAILED,
    DUPLICATE_DEAD_LETTERED,
    DUPLICATE_DEFERRED,
    DUPLICATE_DROPPED,
    START_PUT_OFF,
)
from .host import HostFacts
from .options import COPY_OPTION, DEFERRED_OPTION, PUT_OFF_OPTION, QUARANTINE_OPTION, REVOKED_OPTION
from .orphans import BROKER_REDELIVERS, DROPPED, QUARANTINED_OUTCOME, REDELIVERED, Candidate
from .records import AttemptName, CorruptRecord, WorkerInfo
from .scripts import AtRiskStart
from .unique import UNTIL_EXECUTED, UNTIL_EXECUTING, lock_of

if TYPE_CHECKING:
    from .fencing import WorkerFencing
    from .recorder import Recorder
    from .registry import Delivery, InflightRegistry
    from .wiring import Wiring

#: What happens to a delivery before it runs: None to run it, "skip" (ack it unrun) or "fail" (dead-letter it).
Verdict = Literal["skip", "fail"] | None

#: What :func:`decide` can decide.
Action = Literal["run", "drop", "dead-letter", "defer", "claim", "honour-abort"]

#: How long a put-off duplicate's enqueue is retried while its broker fails, in seconds.
DEFERRAL_RETRY_SECONDS = 5.0

#: How often a start waiting for a worker's presence to come back looks again, in seconds.
PRESENCE_POLL = 0.05


@dataclasses.dataclass(frozen=True)
class Start:
    """What is known when an at-risk delivery starts, once its start is recorded.

    Parameters:
      worker_id(str): This worker.
      attempt(int): The delivery's attempt.
      retries(int): Its Dramatiq retry count.
      deferred_behind(str): For a put-off duplicate, the attempt ("worker id|token") it waited for.
      previous(str): Another attempt recorded running the message, as the running index names it, or "".
      previous_ended_here(bool): That attempt ran in this worker and has ended.
      history(dict[str, str]): The message's history.
      copy(str): For a copy enqueued again from the outbox, "<attempt>|<claim token>"; else "".
    """

    worker_id: str
    attempt: int
    retries: int
    deferred_behind: str
    previous: str
    previous_ended_here: bool
    history: Mapping[str, str]
    copy: str = ""


@dataclasses.dataclass(frozen=True)
class Decision:
    """What to do with an at-risk delivery.

    Parameters:
      action(str): "run"; "drop" or "dead-letter" (a duplicate of an attempt that ended);
        "defer" (put off behind ``behind``); "claim" (the orphan of ``dead_worker``);
        "honour-abort" (a cancel or abort is remembered).
      because(str): For "drop" and "dead-letter", the history field that told.
      by(str): Its value: the attempt that ended (or the abort mode, for "honour-abort").
      behind(AttemptName|None): For "defer", the attempt still running.
      dead_worker(str): For "claim", the dead worker whose orphan this is.
      superseded(AttemptName|None): An earlier attempt that ended (here, or as an older retry): this
        one takes its place in the running index, whatever else happens.
      replaces(AttemptName|None): The attempt of a dead worker: this one takes its place if it runs.
    """

    action: Action
    because: str = ""
    by: str = ""
    behind: AttemptName | None = None
    dead_worker: str = ""
    superseded: AttemptName | None = None
    replaces: AttemptName | None = None


def decide(start: Start, alive: Callable[[str], bool]) -> Decision:
    """Decide the fate of an at-risk delivery.

    Parameters:
      start(Start): What is known.
      alive(callable): Whether a worker (by id) is alive: asked only about the worker of a previous
        attempt that still holds its place in the running index.
    """
    history = start.history
    first_copy = history.get("copy", "")
    if start.copy and first_copy != start.copy and first_copy.partition("|")[0] == start.copy.partition("|")[0]:
        # A twin of the copy of this attempt that started first (two sweepers enqueued it): that one runs it.
        return Decision("drop", because="copy", by=first_copy)
    behind = start.deferred_behind
    if behind and history.get("completed_by") == behind:
        return _ended("completed_by", behind, history.get("completed_with", ""))
    unconfirmed = history.get("unconfirmed_by", "")
    if unconfirmed and _redelivers(start, unconfirmed, history.get("unconfirmed_attempt", "")):
        return _ended("unconfirmed_by", unconfirmed, history.get("unconfirmed_with", ""))
    done_by = history.get("done_by_attempt", "")
    if done_by.isdigit() and int(done_by) < start.attempt:
        return Decision("drop", because="done_by_attempt", by=done_by)

    dead = history.get("awaiting_from", "")
    superseded = replaces = None
    if start.previous:
        previous = AttemptName.parse(start.previous)
        if previous.retries < start.retries or (previous.worker_id == start.worker_id and start.previous_ended_here):
            # Dramatiq retried the message since, or the previous attempt ran here and ended.
            superseded = previous
        elif alive(previous.worker_id):
            return Decision("defer", behind=previous)
        else:
            dead, replaces = dead or previous.worker_id, previous
    if dead:
        return Decision("claim", dead_worker=dead, superseded=superseded, replaces=replaces)
    if history.get("abort"):
        return Decision("honour-abort", by=history["abort"], superseded=superseded)
    return Decision("run", superseded=superseded, replaces=replaces)


def _ended(because: str, by: str, completion: str) -> Decision:
    # A failed attempt's own dead-lettering may not have reached the broker: this copy takes its place.
    return Decision("dead-letter" if completion == "nack" else "drop", because=because, by=by)


def _redelivers(start: Start, unconfirmed: str, attempt: str) -> bool:
    # The broker's redelivery of that very attempt: neither a retry by Dramatiq nor a recovery since.
    return (
        AttemptName.parse(unconfirmed).retries == start.retries and attempt.isdigit() and start.attempt <= int(attempt)
    )


def _copy(delivery: Delivery) -> str:
    """A copy enqueued again from the outbox, as "<attempt>|<claim token>"; "" for any other delivery."""
    token = delivery.message.options.get(COPY_OPTION)
    return "%d|%s" % (delivery.attempt, token) if token else ""


#: How each ended-attempt cause reads in an event, by the history field that told.
_WHOSE = {
    "completed_by": "the attempt it waited for",
    "unconfirmed_by": "an attempt whose RabbitMQ channel closed while it ran",
}


class AtRiskStarts:
    """Records at-risk deliveries before they run, decides their fate and carries it out.

    Parameters:
      wiring(Wiring): The tracker's machinery.
      registry(InflightRegistry): This worker's deliveries.
      recorder(Recorder): Told what a write outside its thread found.
      fencing(WorkerFencing): Which copies are stale.
    """

    def __init__(self, wiring: Wiring, registry: InflightRegistry, recorder: Recorder, fencing: WorkerFencing) -> None:
        self.logger = get_logger(__name__, type(self))
        self.broker, self.store, self.settings = wiring.broker, wiring.store, wiring.settings
        self.health, self.events, self.claims = wiring.health, wiring.events, wiring.claims
        self.cleaners, self.settlement, self.master = wiring.cleaners, wiring.settlement, wiring.master
        self.registry, self.recorder, self.fencing = registry, recorder, fencing
        self.host = HostFacts.current()
        self.redis_broker = broker_kind(self.broker) == REDIS

    def admit(self, delivery: Delivery) -> Verdict:
        """Decide a delivery's fate before it runs, recording it first when it may run."""
        options = delivery.message.options
        if self.fencing.is_stale(delivery.message_id, delivery.attempt) or options.get(REVOKED_OPTION):
            delivery.written = False
            if not options.get(REVOKED_OPTION) and self.redis_broker:
                # Still in this process's acks: the recovery that revoked it moves it from there, unless
                # the skip's ack deletes its payload first (the message would be lost).
                withhold_ack(delivery.message)
            self.fencing.skip_stale(delivery)
            return "skip"
        if options.get(QUARANTINE_OPTION):
            delivery.written = False
            return "fail"
        try:
            recorded = self._record(delivery)
            if recorded == "again":
                # This worker learned it was fenced, or registered again: record under its new registration.
                recorded = self._record(delivery)
            if not isinstance(recorded, AtRiskStart):
                return self._put_off(delivery, "its start could not be recorded: the tracker's Redis did not answer")
            start = self._start(delivery, recorded)
            self.logger.debug(
                "Message %r starts at risk (attempt %d, retries %d); previous attempt %r, history %r.",
                delivery.message_id,
                delivery.attempt,
                delivery.retries,
                start.previous,
                start.history,
            )
            with contextlib.suppress(ValueError):
                delivery.recoveries = max(delivery.recoveries, int(start.history.get("recoveries", "0")))
            return self._carry_out(delivery, decide(start, self._alive), start.previous)
        except redis.RedisError as e:
            self.health.failed("deciding a message before it runs", e)
            return self._put_off(delivery, "the tracker's Redis failed while its start was decided")

    def _record(self, delivery: Delivery) -> AtRiskStart | Literal["again"] | None:
        """Record a delivery before it runs.

        Returns:
          AtRiskStart|str|None: What is known of it; "again" when this worker was fenced or must register
          again first (it has done so: record again); None when the tracker's Redis did not answer.
        """
        worker_id = delivery.worker_id
        self.registry.write_started()
        confirmed = False
        started = time.monotonic()
        record = self.registry.describe(delivery).to_json()
        try:
            with self.recorder.exclusive():
                reply = self.store.begin_at_risk(
                    worker_id, delivery.owner, delivery.message_id, record, _copy(delivery), self.settings.history_ttl
                )
        except redis.RedisError as e:
            self.health.failed("recording a message before it runs", e)
            self.registry.unwritten(delivery)
            return None
        else:
            self.health.succeeded(started)
            if isinstance(reply, str):
                self.registry.unwritten(delivery)
                self.recorder.wrote(reply, worker_id)
                if delivery.zombie and not self.fencing.is_stale(delivery.message_id, delivery.attempt):
                    # Fenced just now, but this copy is not one recovery took: it runs as this worker's.
                    self.registry.readopt(delivery)
                return "again" if self.registry.worker_id != worker_id or reply == "unknown" else None
            confirmed = True
            delivery.written = True
            return reply
        finally:
            self.registry.write_ended(confirmed)

    def _start(self, delivery: Delivery, recorded: AtRiskStart) -> Start:
        previous = recorded.previous_owner
        ended_here = False
        if previous:
            name = AttemptName.parse(previous)
            if name.worker_id == self.registry.worker_id:
                with contextlib.suppress(ValueError):
                    ended_here = not self.registry.is_active(int(name.token, 16))
        return Start(
            worker_id=self.registry.worker_id,
            attempt=delivery.attempt,
            retries=delivery.retries,
            deferred_behind=str(delivery.message.options.get(DEFERRED_OPTION) or ""),
            previous=previous,
            previous_ended_here=ended_here,
            history=recorded.history,
            copy=_copy(delivery),
        )

    def _carry_out(self, delivery: Delivery, decision: Decision, previous: str) -> Verdict:
        if decision.superseded is not None:
            self._take_place(delivery, previous, decision.superseded)
        action = decision.action
        if action in ("drop", "dead-letter"):
            self._ended_before(delivery, decision)
            return "fail" if action == "dead-letter" else "skip"
        if action == "defer":
            assert decision.behind is not None
            return self._defer(delivery, decision.behind)
        if action == "honour-abort":
            self.events.emit(
                ABORT_HONOURED,
                "Did not run message %r (actor %r) delivered again: it was %sed.",
                delivery.message_id,
                delivery.message.actor_name,
                decision.by.rstrip("e"),
                **delivery.event_fields(),
            )
            self._release_lock(delivery)
            return "skip"
        verdict: Verdict = None
        if action == "claim":
            verdict = self._claim(delivery, decision.dead_worker)
        if decision.replaces is not None and verdict is None:
            # The previous attempt is dead: this one takes its place in the running index.
            self._take_place(delivery, previous, decision.replaces)
        return verdict

    def _ended_before(self, delivery: Delivery, decision: Decision) -> None:
        message = delivery.message
        if decision.because == "copy":
            # The lock is its attempt's, which the first copy holds: left alone.
            self.events.emit(
                DUPLICATE_DROPPED,
                "Dropped message %r (actor %r), attempt %d: another copy of this recovered attempt started "
                "first (a sweeper enqueued it again while another took its recovery over).",
                delivery.message_id,
                message.actor_name,
                delivery.attempt,
                **delivery.event_fields(),
                details={"copy": decision.by},
            )
            return
        if decision.because == "done_by_attempt":
            self.events.emit(
                DUPLICATE_DROPPED,
                "Dropped message %r (actor %r), attempt %d: its attempt %s completed on a worker that was declared "
                "dead while alive, before this copy started.",
                delivery.message_id,
                message.actor_name,
                delivery.attempt,
                decision.by,
                **delivery.event_fields(),
                details={"done_by_attempt": decision.by},
            )
        else:
            failed = decision.action == "dead-letter"
            self.events.emit(
                DUPLICATE_DEAD_LETTERED if failed else DUPLICATE_DROPPED,
                "%s duplicate delivery of message %r (actor %r): %s (%s) %s.",
                "Dead-lettered" if failed else "Dropped",
                delivery.message_id,
                message.actor_name,
                _WHOSE[decision.because],
                decision.by,
                "failed, and its own dead-lettering may not have reached the broker" if failed else "completed",
                **delivery.event_fields(),
                details={decision.because: decision.by},
            )
        # (A newer attempt than the one it waited for, a zombie's, holds the lock: it is done.)
        self._release_lock(delivery)

    def _release_lock(self, delivery: Delivery) -> None:
        """A delivery that will never run is done: release the lock its attempt holds from enqueue."""
        digest, mode = lock_of(delivery.message.options)
        if digest and mode in (UNTIL_EXECUTED, UNTIL_EXECUTING):
            self.store.release_lock(digest, delivery.message_id, delivery.attempt, delivery.worker_id)

    def _take_place(self, delivery: Delivery, previous: str, owner: AttemptName) -> None:
        if owner.worker_id == delivery.worker_id:
            # begin_at_risk kept the previous attempt's record (same worker): the recorder writes ours,
            # and its place in the running index with it.  Taken here, the place could outlive an
            # attempt that ends before the recorder writes it (its end is then never written).
            self.registry.unwritten(delivery)
            return
        self.store.take_running(delivery.message_id, previous, delivery.name.text)

    def _alive(self, worker_id: str) -> bool:
        """Whether the worker of a previous attempt may still run it.  Unsure is alive: the delivery is
        then put off, never run beside a copy that may still run."""
        if worker_id == self.registry.worker_id:
            return True
        if not self.health.settled_for(2 * self.settings.heartbeat_interval / 1000):
            # Just back from an outage of our own: heartbeats may have lapsed meanwhile.
            return True
        raw = self.store.registration(worker_id)
        if raw is None:
            return False
        try:
            info = WorkerInfo.from_json(raw)
        except CorruptRecord:
            return bool(self.store.alive([worker_id])[0])
        if self.host.process_is_gone(info.host):
            return False
        if self.settings.presence:
            present = self._present(worker_id)
            if present is not None:
                return present
        return bool(self.store.alive([worker_id])[0])

    def _present(self, worker_id: str) -> bool | None:
        """What presence says of ``worker_id``: True when the server still sees it after a grace (its
        process runs, whatever its heartbeat says after an outage), or is new to the namespace, or unsure;
        False once its presence stayed gone for half ``presence_grace``, when it is declared dead here (the
        broker's redelivery already says that its connection closed: together they tell a death from a
        blip); None when it is not judged by presence."""
        grace = self.settings.presence_grace // 2
        # Up to a whole grace to see it gone for half of one: Redis may notice the closed connection after
        # the broker did, and a loaded worker polls late (a copy put off now waits heartbeat_timeout).
        deadline = time.monotonic() + (self.settings.presence_grace + self.settings.presence_check_interval) / 1000
        identity, own = self.claims.identity, self.registry.worker_id
        while True:
            status, absences = self.store.check_presence(identity, self.settings.settle, own)
            if status != "ok":
                return True
            if worker_id not in absences:
                if not self.store.presence_seen(identity, worker_id):
                    return None
                if time.monotonic() > deadline:
                    return True
                time.sleep(PRESENCE_POLL)
                continue
            if absences[worker_id] >= grace:
                if self.master.moved():
                    return True
                declared = self.store.declare_dead(
                    worker_id,
                    identity,
                    reason="presence",
                    retry_after=0,
                    settle=self.settings.settle,
                    grace=grace,
                    caller=own,
                    history_ttl=self.settings.history_ttl,
                    heartbeat_timeout=self.settings.heartbeat_timeout,
                )
                return declared.status not in ("dead", "gone")
            if time.monotonic() > deadline:
                return True
            time.sleep(PRESENCE_POLL)

    def _put_off(self, delivery: Delivery, why: str) -> Verdict:
        """A start that must be decided before it runs could not be: enqueued again later, marked so that it
        is decided when it comes back, rather than run blind (an at-most-once message could run twice, a
        redelivery beside the copy it duplicates).  Dead-lettered if its broker fails too."""
        delivery.written = False
        if not self._enqueue_later(
            delivery,
            {PUT_OFF_OPTION: why},
            "Message %r (actor %r) could not be decided before it ran (%s) nor put off (its broker fails); "
            "it is dead-lettered rather than run blind.",
            why,
        ):
            return "fail"
        self.events.emit(
            START_PUT_OFF,
            "Message %r (actor %r) was put off by %d ms instead of running: %s.",
            delivery.message_id,
            delivery.message.actor_name,
            self.settings.heartbeat_timeout,
            why,
            **delivery.event_fields(),
        )
        return "skip"

    def _defer(self, delivery: Delivery, owner: AttemptName) -> Verdict:
        # Not run beside the attempt that is still running, and not lost if that one then dies:
        # enqueued again later, marked so that its start is checked again then.
        message = delivery.message
        behind = owner.attempt_id
        self.store.note_history(
            delivery.message_id, self.settings.history_ttl, {"deferred_behind": behind}, forget="completed_by"
        )
        if not self._enqueue_later(
            delivery,
            {DEFERRED_OPTION: behind},
            "Message %r (actor %r) was delivered again while attempt %s still runs it on a live worker, and "
            "could not be put off (its broker fails); it is dead-lettered rather than run beside it.",
            behind,
            details={"running": behind},
        ):
            return "fail"
        self.events.emit(
            DUPLICATE_DEFERRED,
            "Message %r (actor %r) was delivered again while attempt %s still runs it on a live worker; "
            "this delivery is put off by %d ms instead of running beside it.",
            delivery.message_id,
            message.actor_name,
            behind,
            self.settings.heartbeat_timeout,
            **delivery.event_fields(),
            details={"running": behind},
        )
        return "skip"

    def _enqueue_later(self, delivery: Delivery, mark: dict[str, str], failed: str, *args: Any, **fields: Any) -> bool:
        """Enqueue a copy of the delivery's message again, heartbeat_timeout later, marked.

        Parameters:
          mark(dict): The options that tell the copy's start why it was put off.
          failed(str): The DEFERRAL_FAILED event's text when the broker fails: a %-format of the message
            id, the actor's name and ``args``; ``fields`` are the event's other fields.

        Returns:
          bool: False when the broker failed (the event is emitted): the delivery is dead-lettered instead.
        """
        message = delivery.message
        copy = Message(**message.asdict()).copy(options=mark)
        if self._enqueue(copy, self.settings.heartbeat_timeout):
            return True
        self.events.emit(
            DEFERRAL_FAILED, failed, delivery.message_id, message.actor_name, *args, **delivery.event_fields(), **fields
        )
        return False

    def _enqueue(self, message: Message[Any], delay: int) -> bool:
        # A broker error is not an outage of the tracker's Redis: retry for a while, never run beside.
        deadline = time.monotonic() + DEFERRAL_RETRY_SECONDS
        while True:
            try:
                self.broker.enqueue(message, delay=delay)
                return True
            except Exception as e:
                if time.monotonic() > deadline:
                    self.logger.warning(
                        "Could not put off message %r: %s: %s.", message.message_id, type(e).__name__, e
                    )
                    return False
                time.sleep(0.2)

    def _claim(self, delivery: Delivery, dead_worker_id: str) -> Verdict:
        raw = self.store.registration(dead_worker_id)
        worker = WorkerInfo.unknown(dead_worker_id)
        if raw is not None:
            with contextlib.suppress(CorruptRecord):
                worker = WorkerInfo.from_json(raw)
        message = delivery.message
        candidate = Candidate(
            delivery.message_id,
            message.actor_name,
            message.queue_name,
            Message(**message.asdict()),
            redis_message_id=str(message.options.get("redis_message_id", "")),
            policy=delivery.policy,
        )
        ((orphan, reply),) = self.claims.claim(worker, [candidate], "deliver", starting=delivery.name.text)
        if not reply.taken:
            # Another copy of the orphan (a twin put-off copy, the broker's redelivery) or a sweeper took
            # it, and delivers it under a new attempt: this copy is a duplicate of that one.
            self.events.emit(
                DUPLICATE_DROPPED,
                "Dropped message %r (actor %r), attempt %d: another copy of dead worker %r's orphan took it over "
                "(attempt %d).",
                delivery.message_id,
                message.actor_name,
                delivery.attempt,
                dead_worker_id,
                reply.attempt,
                **delivery.event_fields(),
                details={"taken_by_attempt": str(reply.attempt)},
            )
            self._release_lock(delivery)
            return "skip"
        delivery.recoveries = orphan.recoveries
        delivery.attempt = orphan.attempt
        self.cleaners.clean(orphan)
        if orphan.outcome == BROKER_REDELIVERS:
            orphan = dataclasses.replace(orphan, outcome=REDELIVERED)
        self.settlement.report([orphan], int(time.time() * 1000))
        if orphan.outcome == QUARANTINED_OUTCOME:
            return "fail"
        if orphan.outcome == DROPPED:
            return "skip"
        return None
