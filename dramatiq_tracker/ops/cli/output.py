"""How the ``dramatiq-tracker`` command shows what it read: aligned tables, ages in
human units (:mod:`dramatiq_tracker.ops.formatting`), colour on a terminal, and the one ``--json`` schema.

Everything here is pure: it takes the inspection API's views
(:mod:`dramatiq_tracker.ops.views`) and returns lines of text or JSON-ready
dictionaries; the subcommands print them (:mod:`dramatiq_tracker.ops.cli.common`).

The ``--json`` schema (version :data:`JSON_SCHEMA`) is one object per command::

  {"schema": 1, "command": "inflight", "namespace": "dramatiq-tracker", "at": 1764391201000,
   "items": [...], "cursor": "", "total": null, "problems": [{"key": ..., "field": ..., "reason": ...}]}

Listings have ``items`` (each a view as :func:`dataclasses.asdict` makes it), ``cursor`` ("" on the
last page) and ``total`` (null when unknown); commands about one thing have ``item`` instead.
``at`` is the Redis server's clock in ms.  Fields may be added in a version; none is removed or
changes meaning without a new ``schema`` number.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TextIO

from ..formatting import age, precise_timestamp
from ..views import ALIVE, DEAD, FENCED, GONE, PRESENCE_LOST, RECOVERING, STATES, STOPPING, UNRESPONSIVE

if TYPE_CHECKING:
    from ...events import TrackerEvent
    from ..views import (
        ClusterStatus,
        InflightView,
        LockView,
        MessageView,
        OrphanView,
        Problem,
        QueueDepth,
        WorkerView,
    )

#: The version of the ``--json`` output; bumped when a field is removed or changes meaning.
JSON_SCHEMA = 1

#: How many unreadable entries are listed one per line before the rest are only counted.
PROBLEMS_LISTED = 5

# Words -----------------------------------------------------------------------------------


def plural(count: int, word: str) -> str:
    """``1 worker``, ``2 workers``, ``1 message``, ``0 messages``."""
    return "%d %s%s" % (count, word, "" if count == 1 else "s")


# Colour ----------------------------------------------------------------------------------


def use_colour(stream: TextIO) -> bool:
    """Colour only on a terminal, and never with ``NO_COLOR`` set (https://no-color.org) or ``TERM=dumb``."""
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty()) and not os.environ.get("NO_COLOR") and os.environ.get("TERM") != "dumb"


_STATE_COLOURS = {
    ALIVE: "32",
    STOPPING: "36",
    GONE: "31",
    UNRESPONSIVE: "33",
    RECOVERING: "33",
    DEAD: "31",
    FENCED: "35",
}


@dataclasses.dataclass(frozen=True)
class Style:
    """ANSI colours, or none.

    Parameters:
      colour(bool): Whether to colour.
    """

    colour: bool = False

    def paint(self, text: str, code: str) -> str:
        return "\x1b[%sm%s\x1b[0m" % (code, text) if self.colour and code and text else text

    def bold(self, text: str) -> str:
        return self.paint(text, "1")

    def state(self, text: str) -> str:
        """A worker state in its colour: green alive, cyan stopping, yellow unresponsive or recovering, red
        gone or dead, magenta fenced."""
        return self.paint(text, _STATE_COLOURS.get(text.strip(), ""))

    def warn(self, text: str) -> str:
        return self.paint(text, "33")

    def bad(self, text: str) -> str:
        return self.paint(text, "31")

    def good(self, text: str) -> str:
        return self.paint(text, "32")


PLAIN = Style()

# Tables ----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Column:
    """A table column.

    Parameters:
      title(str): Its header, in capitals, without spaces (so that ``awk`` can split lines).
      right(bool): Right-aligned (numbers, ages).
      paint(callable): Colours a cell, given the Style and the padded text.
    """

    title: str
    right: bool = False
    paint: Callable[[Style, str], str] | None = None


def table(columns: Sequence[Column], rows: Iterable[Sequence[object]], style: Style = PLAIN) -> list[str]:
    """Aligned lines: a header, then one line per row; cells are padded before they are coloured."""
    cells = [[str(value) for value in row] for row in rows]
    widths = [max([len(column.title)] + [len(row[index]) for row in cells]) for index, column in enumerate(columns)]
    last = len(columns) - 1

    def line(values: Sequence[str], header: bool) -> str:
        parts = []
        for index, (column, value) in enumerate(zip(columns, values, strict=True)):
            if index == last and not column.right:
                padded = value
            else:
                padded = value.rjust(widths[index]) if column.right else value.ljust(widths[index])
            if header:
                padded = style.bold(padded)
            elif column.paint is not None:
                padded = column.paint(style, padded)
            parts.append(padded)
        return "  ".join(parts).rstrip()

    return [line([c.title for c in columns], True)] + [line(row, False) for row in cells]


def _state(style: Style, text: str) -> str:
    return style.state(text)


def _queues(queues: Sequence[str]) -> str:
    return ",".join(queues) or "-"


# JSON ------------------------------------------------------------------------------------


def jsonable(value: Any) -> Any:
    """A view as JSON-ready data: dataclasses as dicts (``dataclasses.asdict``), tuples as lists."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {field.name: jsonable(getattr(value, field.name)) for field in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(key): jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(item) for item in value]
    return value


def envelope(
    command: str,
    namespace: str,
    at: int,
    *,
    items: Sequence[Any] | None = None,
    item: Any = None,
    cursor: str = "",
    total: int | None = None,
    problems: Sequence[Problem] = (),
) -> dict[str, Any]:
    """The ``--json`` output of a command: a listing (``items``) or one thing (``item``)."""
    data: dict[str, Any] = {"schema": JSON_SCHEMA, "command": command, "namespace": namespace, "at": at}
    if items is not None:
        data.update(items=jsonable(items), cursor=cursor, total=total)
    else:
        data["item"] = jsonable(item)
    data["problems"] = jsonable(list(problems))
    return data


def dumps(data: Any, *, indent: int | None = 2) -> str:
    return json.dumps(data, indent=indent, ensure_ascii=False)


# Problems --------------------------------------------------------------------------------


def problem_lines(problems: Sequence[Problem], style: Style = PLAIN) -> list[str]:
    """One warning line per unreadable entry, up to :data:`PROBLEMS_LISTED`, then a count."""
    lines = [
        style.warn("warning:")
        + " skipped an unreadable entry (left as it is): %s %s: %s"
        % (problem.key, problem.field or "-", problem.reason)
        for problem in problems[:PROBLEMS_LISTED]
    ]
    if len(problems) > PROBLEMS_LISTED:
        lines.append(
            style.warn("warning:") + " and %d more unreadable entries (see --json)" % (len(problems) - PROBLEMS_LISTED)
        )
    return lines


# Views -----------------------------------------------------------------------------------


def status_lines(status: ClusterStatus, namespace: str, where: str, style: Style = PLAIN) -> list[str]:
    """The namespace at a glance; what no live worker sweeps, and what to run; the broker's queues."""
    workers = status.workers
    states = ", ".join("%d %s" % (workers.get(state, 0), style.state(state)) for state in STATES)
    orphans = "%s waiting" % plural(status.orphans, "orphan")
    if status.orphans:
        orphans = style.warn(orphans + ", the oldest for %s" % age(status.oldest_orphan))
    lines = [
        "Namespace %s on %s, at %s UTC" % (style.bold(namespace), where, precise_timestamp(status.at)),
        "Workers:    %s" % states,
        "In flight:  %s, %s (%d in the outbox)" % (plural(status.inflight, "message"), orphans, status.outbox),
        "Locks:      %s held" % plural(status.locks, "uniqueness lock"),
    ]
    lines += unswept_lines(status, style)
    if status.queues:
        lines.append("")
        lines += table(
            [Column("QUEUE"), Column("INFLIGHT", True), Column("ORPHANS", True), Column("OLDEST", True)],
            [(q.queue_name, q.inflight, q.orphans, age(q.oldest)) for q in status.queues],
            style,
        )
    if status.actors:
        lines.append("")
        lines += table([Column("ACTOR"), Column("INFLIGHT", True)], sorted(status.actors.items()), style)
    if status.broker_queues is not None:
        lines += ["", "Messages the broker holds:"]
        lines += broker_queue_lines(status.broker_queues, style) if status.broker_queues else ["  (no queue declared)"]
    counters = status.counters
    events = ", ".join("%s %d" % (kind, count) for kind, count in sorted(counters.events.items()) if count)
    lines.append("")
    lines.append("Events:     %s" % (events or "none yet"))
    if counters.sweeps:
        lines.append(
            "Sweeps:     %d that recovered something, %d ms in all, the last %d ms"
            % (counters.sweeps, counters.sweep_ms, counters.last_sweep_ms)
        )
    return lines


def unswept_lines(status: ClusterStatus, style: Style = PLAIN) -> list[str]:
    """What no live worker sweeps, and what to run."""
    lines = []
    for found in status.unswept:
        workers = ", ".join(found.workers) or "none registered"
        lines.append(
            style.bad("Not swept:  ")
            + "no live worker of broker %s sweeps: %s of its dead workers (%s) wait until one starts; "
            "run `dramatiq-tracker recover --broker <its application's broker>` to recover them now."
            % (found.broker_identity, plural(found.orphans, "orphan"), workers)
        )
    return lines


def broker_queue_lines(depths: Sequence[QueueDepth], style: Style = PLAIN) -> list[str]:
    """A table of what the application's broker holds on each queue ("-" where it cannot tell)."""
    rows = [
        (
            depth.queue_name,
            depth.ready,
            "-" if depth.unacked is None else depth.unacked,
            depth.delayed,
            depth.dead_letters,
            age(depth.oldest_age),
        )
        for depth in depths
    ]
    columns = [Column("QUEUE"), Column("READY", True), Column("UNACKED", True), Column("DELAYED", True)]
    return table([*columns, Column("DEAD", True), Column("WAITING", True)], rows, style)


WORKER_COLUMNS = (
    Column("WORKER"),
    Column("STATE", paint=_state),
    Column("HOST"),
    Column("PID", True),
    Column("THREADS", True),
    Column("INFLIGHT", True),
    Column("HEARTBEAT", True),
    Column("UPTIME", True),
    Column("QUEUES"),
    Column("NOTE"),
)


def _worker_note(view: WorkerView, now: int) -> str:
    if view.state == FENCED:
        return "goes on as %s" % view.fenced_as
    if view.declared_dead_at is not None:
        return "declared dead %s ago" % age(now - view.declared_dead_at)
    if not view.swept:
        return "no heartbeat deadline: no sweep finds it"
    if view.state == GONE:
        how = "presence lost" if view.gone == PRESENCE_LOST else "process exited"
        return "dead, not recovered yet (%s)" % how
    if view.state == STOPPING:
        return "stopping for %s" % age(now - view.stopping_at)
    if view.overdue is not None:
        return "heartbeat overdue %s" % age(view.overdue)
    return ""


def worker_lines(views: Sequence[WorkerView], now: int, style: Style = PLAIN) -> list[str]:
    """A table of workers, tombstones included (their host, pid and queues are gone: "-")."""
    rows = []
    for view in views:
        registered = bool(view.hostname)
        rows.append(
            (
                view.worker_id,
                view.state,
                view.hostname or "-",
                view.pid if registered else "-",
                view.worker_threads if registered else "-",
                view.inflight if registered else "-",
                age(view.heartbeat_age) if registered else "-",
                age(now - view.started_at) if registered and view.started_at else "-",
                _queues(view.queues) if registered else "-",
                _worker_note(view, now),
            )
        )
    return table(WORKER_COLUMNS, rows, style)


def _message_columns(waited: str, last: str) -> tuple[Column, ...]:
    """The columns of a table of messages of workers: how long each ran or waited, then ``last``."""
    return (
        Column("MESSAGE"),
        Column("ACTOR"),
        Column("QUEUE"),
        Column("WORKER"),
        Column("STATE", paint=_state),
        Column(waited, True),
        Column("ATTEMPT", True),
        Column("RECOVERIES", True),
        Column(last),
    )


def _message_row(view: InflightView | OrphanView, state: str, waited: int, last: str) -> tuple[object, ...]:
    """A row of the columns of :func:`_message_columns`."""
    return (
        view.message_id,
        view.actor_name,
        view.queue_name,
        view.worker_id,
        state,
        age(waited),
        view.attempt,
        view.recoveries,
        last,
    )


INFLIGHT_COLUMNS = _message_columns("RUNNING", "ARGS")


def inflight_lines(views: Sequence[InflightView], style: Style = PLAIN) -> list[str]:
    """A table of messages in flight, with their worker's state (not alive: an orphan waiting)."""
    rows = [_message_row(v, v.worker_state, v.running_for, v.preview) for v in views]
    return table(INFLIGHT_COLUMNS, rows, style)


ORPHAN_COLUMNS = _message_columns("WAITING", "WHERE")


def orphan_lines(views: Sequence[OrphanView], style: Style = PLAIN) -> list[str]:
    """A table of messages waiting for recovery."""
    rows = [_message_row(v, v.worker_state or "-", v.waiting_for, v.where) for v in views]
    return table(ORPHAN_COLUMNS, rows, style)


LOCK_COLUMNS = (
    Column("DIGEST"),
    Column("MODE"),
    Column("ACTOR"),
    Column("QUEUE"),
    Column("OWNER"),
    Column("ATTEMPT", True),
    Column("RUNNING"),
    Column("HELD", True),
    Column("EXPIRES", True),
)


def lock_lines(locks: Sequence[LockView], now: int, style: Style = PLAIN) -> list[str]:
    """A table of uniqueness locks: who owns each, the worker its owner runs on ("-" when it is not
    recorded running: queued, or started less than a flush_interval ago), for how long, until when."""
    rows = [
        (
            lock.digest,
            lock.mode,
            lock.actor_name,
            lock.queue_name,
            lock.message_id,
            lock.attempt,
            lock.running_on or lock.worker_id or "-",
            age(now - lock.acquired_at) if lock.acquired_at else "-",
            "never" if lock.ttl is None else "in " + age(lock.ttl),
        )
        for lock in locks
    ]
    return table(LOCK_COLUMNS, rows, style)


def event_line(event: TrackerEvent, style: Style = PLAIN) -> str:
    """One event: its time (the reporter's clock, UTC), its kind, and its sentence."""
    when = precise_timestamp(event.at) if event.at else "-"
    kind = event.kind.ljust(19)
    if event.kind in ("worker-dead", "quarantined", "zombie-detected", "deferral-failed"):
        kind = style.bad(kind)
    elif event.kind in ("recovered", "lock-released", "duplicate-dropped"):
        kind = style.good(kind)
    return "%s  %s  %s" % (when, kind, event.text)


def message_lines(view: MessageView, now: int, style: Style = PLAIN) -> list[str]:
    """Everything the tracker knows of one message: where it runs, its history, its lock, its events."""
    lines = [style.bold("Message %s" % view.message_id)]
    running = view.running
    if running is not None:
        lines.append(
            "  running:   on worker %s (host %s, pid %d, %s) for %s; actor %s, queue %s; attempt %d, "
            "recoveries %d, retries %d; args %s"
            % (
                running.worker_id,
                running.hostname,
                running.pid,
                style.state(running.worker_state),
                age(running.running_for),
                running.actor_name,
                running.queue_name,
                running.attempt,
                running.recoveries,
                running.retries,
                running.preview or "-",
            )
        )
    elif view.running_owner:
        lines.append("  running:   by %s (its record is not written yet, or its worker is gone)" % view.running_owner)
    else:
        lines.append("  running:   no (not recorded in flight: queued, done, or running under one flush_interval)")
    history = view.history
    if history is not None:
        parts = ["recovered %s" % ("once" if history.recoveries == 1 else "%d times" % history.recoveries)]
        if history.outcome:
            parts.append("last recovery: %s, attempt %d" % (history.outcome, history.attempt))
        if history.orphaned_from:
            when = " %s ago" % age(now - history.orphaned_at) if history.orphaned_at else ""
            running_then = "running" if history.orphaned_running else "fetched"
            parts.append("orphaned%s from worker %s (%s)" % (when, history.orphaned_from, running_then))
        if history.awaiting_from:
            parts.append("awaiting the broker's redelivery from %s" % history.awaiting_from)
        if history.abort:
            parts.append("%s requested" % history.abort)
        if history.done_by_attempt is not None:
            parts.append("completed by attempt %d on a worker declared dead" % history.done_by_attempt)
        if history.deferred_behind:
            parts.append("a duplicate waits for attempt %s" % history.deferred_behind)
        if history.completed_by:
            parts.append("completed by %s (%s)" % (history.completed_by, history.completed_with or "?"))
        if history.unconfirmed_by:
            parts.append(
                "completed by %s (%s), unconfirmed: its channel closed"
                % (history.unconfirmed_by, history.unconfirmed_with or "?")
            )
        parts += ["%s=%s" % item for item in sorted(history.other.items())]
        if history.ttl is not None:
            parts.append("history kept %s more" % age(history.ttl))
        lines.append("  history:   " + "; ".join(parts))
    else:
        lines.append("  history:   none (never recovered, deferred or aborted)")
    if view.lock is not None:
        lock = view.lock
        expires = "never expires" if lock.ttl is None else "expires in %s" % age(lock.ttl)
        lines.append(
            "  lock:      %s (%s), owned by attempt %d, held %s, %s"
            % (lock.digest, lock.mode, lock.attempt, age(now - lock.acquired_at), expires)
        )
    if view.events:
        lines.append("  events (oldest first):")
        lines += ["    " + event_line(event, style) for event in reversed(view.events)]
    else:
        lines.append("  events:    none among the newest")
    return lines
