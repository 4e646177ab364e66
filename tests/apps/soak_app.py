"""The Dramatiq app of the chaos soak (``benchmarks/chaos.py``), run in real ``dramatiq`` worker
processes, and imported by the soak's producer to send its messages.

Everything comes from ``SOAK_*`` environment variables that the soak sets. Every run of every
actor appends two JSON entries to the list ``<SOAK_REPORT_PREFIX>:ledger`` on the report Redis
(never the tracker's Redis, which the soak restarts empty): ``start`` before the actor's work and
``end`` after it, with the message id, the actor, its index, the pid, the time and the message's
``tracker_*`` options. A run killed mid-way has a ``start`` and no ``end``. Each worker process
appends ``{"pid", "ppid", "worker_id", "at"}`` to ``<prefix>:boot`` when it boots, so that the soak
knows which process its ``dramatiq`` command runs the actors in; every tracker event (the
``on_event`` callback) is appended to ``<prefix>:events``.

A lock cleaner is registered (``tracker.add_lock_cleaner``): it sleeps 0-2 s (one call in seven:
2-6 s), a length fixed by ``SOAK_SEED``, the message id and the orphan's attempt, as a cleaner that
talks to another service would, and appends two entries per call to ``<prefix>:cleaners``:
``start`` before it sleeps (message id, the orphan's attempt and dead worker id, pid, call id, time)
and ``end`` after, so that a call whose process was killed midway is still counted. Each ledger
entry also carries the attempt the tracker runs (``attempt``: the recovered copy's, on RabbitMQ
too, where the server's redelivery carries no mark).
"""

from __future__ import annotations

import json
import os
import random
import time
import uuid
from typing import Any

import dramatiq
import redis
from dramatiq.middleware import CurrentMessage, Middleware

from dramatiq_tracker import TrackerMiddleware
from tests.apps.environment import broker_from_environment

QUEUE = os.environ["SOAK_QUEUE"]
REPORT_PREFIX = os.environ["SOAK_REPORT_PREFIX"]
#: The soak's seed: it fixes how long each lock cleaner call takes.
SEED = os.environ.get("SOAK_SEED", "0")
#: Where the ledger goes: the broker's Redis or another one, never the tracker's.
report = redis.Redis.from_url(os.environ["SOAK_REPORT_URL"])

broker = broker_from_environment("SOAK")


#: The event fields kept in the report (read with getattr: the soak relies on no internal type).
EVENT_FIELDS = ("kind", "text", "message_id", "actor_name", "worker_id", "reporter", "recoveries", "at")


def _record_event(event: Any) -> None:
    """Keep every tracker event in the report Redis: the tracker's own stream dies with its Redis."""
    fields = {name: getattr(event, name, None) for name in EVENT_FIELDS}
    fields["details"] = dict(getattr(event, "details", None) or {})
    fields["pid"] = os.getpid()
    report.rpush("%s:events" % REPORT_PREFIX, json.dumps(fields, default=str))


class _Booted(Middleware):
    """Says which process a ``dramatiq`` command runs the actors in, and its tracker worker id."""

    def after_worker_boot(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        boot = {"pid": os.getpid(), "ppid": os.getppid(), "worker_id": tracker.worker_id, "at": time.time()}
        report.rpush("%s:boot" % REPORT_PREFIX, json.dumps(boot))


broker.add_middleware(CurrentMessage())
tracker = TrackerMiddleware(
    url=os.environ["SOAK_TRACKER_URL"],
    namespace=os.environ["SOAK_TRACKER_NAMESPACE"],
    heartbeat_interval=int(os.environ["SOAK_HEARTBEAT_INTERVAL"]),
    heartbeat_timeout=int(os.environ["SOAK_HEARTBEAT_TIMEOUT"]),
    sweep_interval=int(os.environ["SOAK_SWEEP_INTERVAL"]),
    flush_interval=int(os.environ["SOAK_FLUSH_INTERVAL"]),
    max_recoveries=int(os.environ.get("SOAK_MAX_RECOVERIES", "3")),
    on_event=_record_event,
)
broker.add_middleware(tracker)
broker.add_middleware(_Booted())
dramatiq.set_broker(broker)


def cleaner_seconds(message_id: str, attempt: int) -> float:
    """How long the lock cleaner takes for one orphan: 0-2 s, one call in seven 2-6 s."""
    rng = random.Random("%s-%s-%d-cleaner" % (SEED, message_id, attempt))
    return rng.uniform(2.0, 6.0) if rng.random() < 1 / 7 else rng.uniform(0.0, 2.0)


def _clean_locks(orphan: Any) -> None:
    """The soak's lock cleaner: slow, and it says when it started and when it ended."""
    attempt = int(getattr(orphan, "attempt", 0) or 0)
    call = {"call": uuid.uuid4().hex, "id": orphan.message_id, "attempt": attempt, "pid": os.getpid()}
    start = {"event": "start", **call, "worker_id": str(getattr(orphan, "worker_id", "")), "at": time.time()}
    report.rpush("%s:cleaners" % REPORT_PREFIX, json.dumps(start))
    time.sleep(cleaner_seconds(orphan.message_id, attempt))
    report.rpush("%s:cleaners" % REPORT_PREFIX, json.dumps({"event": "end", **call, "at": time.time()}))


tracker.add_lock_cleaner(_clean_locks)


def _ledger(event: str, actor: str, index: int) -> None:
    message = CurrentMessage.get_current_message()
    assert message is not None
    entry: dict[str, Any] = {
        "event": event,
        "id": message.message_id,
        "actor": actor,
        "index": index,
        "pid": os.getpid(),
        "at": time.time(),
        "options": {key: value for key, value in message.options.items() if key.startswith("tracker_")},
    }
    redelivered = getattr(message, "redelivered", None)
    if redelivered is not None:
        entry["redelivered"] = bool(redelivered)
    # The attempt the tracker runs (its delivery, set on the message proxy; read with getattr).
    attempt = getattr(vars(message).get("_tracker_delivery"), "attempt", None)
    if isinstance(attempt, int):
        entry["attempt"] = attempt
    report.rpush("%s:ledger" % REPORT_PREFIX, json.dumps(entry))


def _run(actor: str, index: int, seconds: float) -> None:
    _ledger("start", actor, index)
    time.sleep(seconds)
    _ledger("end", actor, index)


@dramatiq.actor(queue_name=QUEUE, max_retries=0)
def plain(index: int, seconds: float) -> None:
    """No uniqueness: a crash only makes it run again."""
    _run("plain", index, seconds)


@dramatiq.actor(queue_name=QUEUE, max_retries=0, unique=True)
def until_executed(index: int, seconds: float) -> None:
    """``unique=True``: a lock per index from send to completion, which must not outlive it."""
    _run("until_executed", index, seconds)


@dramatiq.actor(queue_name=QUEUE, max_retries=0, unique="while_executing", unique_key="{0}")
def while_executing(key: int, index: int, seconds: float) -> None:
    """One running message per ``key`` at a time; a conflicting delivery is put off."""
    _run("while_executing", index, seconds)


#: The actors the producer sends to, by name.
ACTORS = {"plain": plain, "until_executed": until_executed, "while_executing": while_executing}
