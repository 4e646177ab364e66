"""The subcommands that read: status, workers, inflight, message, orphans, locks, events, watch, check."""

from __future__ import annotations

import argparse
import socket
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from ..failures import CLIENT_ERRORS, explain, misconfigured
from .common import (
    RET_NOT_FOUND,
    RET_OK,
    RET_UNHEALTHY,
    RET_USAGE,
    CommandError,
    Connection,
    add_parser,
    bounded_int,
    filter_options,
    filters,
    more,
    no_data,
    page_options,
    positive_float,
    print_lines,
    print_result,
    styles,
)

if TYPE_CHECKING:
    from ..inspection import Inspector
    from ..views import OrphanView, Page
    from .common import Commands
    from .output import Style

T = TypeVar("T")


# status ----------------------------------------------------------------------------------


def add_status(commands: Commands) -> None:
    parser = add_parser(
        commands,
        "status",
        help="the cluster at a glance: workers by state, messages in flight, orphans, locks, counters",
        description="The namespace at a glance: workers by state, messages in flight by queue and actor, "
        "orphans waiting for recovery, uniqueness locks held, and what the tracker counted.",
    )
    parser.set_defaults(handler=_status)


def _status(arguments: argparse.Namespace) -> int:
    from .output import envelope, status_lines

    with Connection(arguments) as connection:
        status = connection.inspector.status()
        empty = not (sum(status.workers.values()) or status.inflight or status.locks or status.counters.events)
        connection.require_data(empty)
        status = connection.with_broker_queues(status)
        data = envelope("status", connection.namespace, status.at, item=status, problems=status.problems)
        print_result(
            arguments,
            data,
            lambda style: status_lines(status, connection.namespace, connection.where, style),
            status.problems,
        )
    return RET_OK


# workers ---------------------------------------------------------------------------------


def add_workers(commands: Commands) -> None:
    parser = add_parser(
        commands,
        "workers",
        help="the worker processes, their state, heartbeat and messages in flight",
        description="The registered worker processes: alive, unresponsive (heartbeat expired) or recovering "
        "(declared dead); with --all also the dead and fenced ones (tombstones, kept history_ttl).",
    )
    parser.add_argument("--all", action="store_true", help="also list dead and fenced workers (tombstones)")
    parser.add_argument("--host", help="only the workers registered from this host")
    page_options(parser, 1000)
    parser.set_defaults(handler=_workers)


def _workers(arguments: argparse.Namespace) -> int:
    from ..views import Page, WorkerView
    from .output import worker_lines

    with Connection(arguments) as connection:
        inspector = connection.inspector
        page: Page[WorkerView]
        if arguments.host:
            page = Page(inspector.workers_on_host(arguments.host))
        else:
            page = inspector.workers(limit=arguments.limit, cursor=arguments.cursor)
        items = list(page.items)
        if arguments.all and not arguments.cursor:
            tombstones = inspector.dead_workers(limit=arguments.limit)
            items += [view for view in tombstones if not arguments.host]
        return _print_listing(arguments, connection, "workers", page, worker_lines, "No workers registered.", items)


# inflight --------------------------------------------------------------------------------


def add_inflight(commands: Commands) -> None:
    parser = add_parser(
        commands,
        "inflight",
        help="messages being processed, by worker, filtered",
        description="Messages recorded in flight (those running longer than flush_interval), worker by "
        "worker; those of workers that are not alive are orphans waiting for recovery.",
    )
    parser.add_argument("--actor", help="only this actor's")
    parser.add_argument("--queue", help="only this queue's")
    parser.add_argument("--worker", help="only this worker's (a worker id)")
    filter_options(parser, "running for longer than this: 500ms, 30s, 5m, 2h, 1d, 1h30m")
    parser.set_defaults(handler=_inflight)


def _inflight(arguments: argparse.Namespace) -> int:
    from .output import inflight_lines

    with Connection(arguments) as connection:
        page = connection.inspector.inflight(
            worker_id=arguments.worker, actor=arguments.actor, queue=arguments.queue, **filters(arguments)
        )
        return _print_listing(
            arguments,
            connection,
            "inflight",
            page,
            lambda items, now, style: inflight_lines(items, style),
            "No messages in flight.",
        )


# message ---------------------------------------------------------------------------------


def add_message(commands: Commands) -> None:
    parser = add_parser(
        commands,
        "message",
        help="one message: where it runs now, what recovery did with it, its events",
        description="Everything the tracker knows of one message: the worker running it, its recovery "
        "history, its uniqueness lock and its events among the newest ones.",
    )
    parser.add_argument("message_id", metavar="ID", help="the message id")
    parser.set_defaults(handler=_message)


def _message(arguments: argparse.Namespace) -> int:
    from ..inspection import MESSAGE_EVENTS_SCANNED
    from .output import envelope, message_lines

    with Connection(arguments) as connection:
        inspector = connection.inspector
        view = inspector.message(arguments.message_id)
        if view is None:
            connection.require_data(True)
            raise CommandError(
                RET_NOT_FOUND,
                "message %r is unknown to the tracker: it was never recorded running (shorter than "
                "flush_interval, or long done), never recovered, and is in none of the newest %d events"
                % (arguments.message_id, MESSAGE_EVENTS_SCANNED),
            )
        now = inspector.server_time()
        data = envelope("message", connection.namespace, now, item=view, problems=view.problems)
        print_result(arguments, data, lambda style: message_lines(view, now, style), view.problems)
    return RET_OK


# orphans ---------------------------------------------------------------------------------


def add_orphans(commands: Commands) -> None:
    parser = add_parser(
        commands,
        "orphans",
        help="messages of dead workers waiting for recovery",
        description="Messages waiting for recovery: recorded by workers that are not alive, and parked in "
        "outboxes while they are enqueued again. The next sweep delivers them again (at most "
        "heartbeat_timeout + sweep_interval after their worker's last heartbeat); `recover` does it now.",
    )
    parser.add_argument(
        "--limit", type=bounded_int(1, 100_000), default=100, help="at most this many (default: %(default)s)"
    )
    parser.set_defaults(handler=_orphans)


def _orphans(arguments: argparse.Namespace) -> int:
    from .output import orphan_lines, plural

    with Connection(arguments) as connection:
        page = connection.inspector.orphans(limit=arguments.limit)
        total = page.total or 0

        def lines(items: Sequence[OrphanView], now: int, style: Style) -> list[str]:
            shown = "" if total <= len(items) else " (%d shown)" % len(items)
            return [*orphan_lines(items, style), "%s waiting for recovery%s." % (plural(total, "message"), shown)]

        return _print_listing(
            arguments, connection, "orphans", page, lines, "No orphans waiting for recovery.", total=page.total
        )


# locks -----------------------------------------------------------------------------------


def add_locks(commands: Commands) -> None:
    parser = add_parser(
        commands,
        "locks",
        help="uniqueness locks held, soonest to expire first",
        description="Uniqueness locks held: the message and attempt that own each, its mode, its worker, "
        "how long it has been held and when it expires.",
    )
    parser.add_argument("--actor", help="only this actor's")
    parser.add_argument("--owner", help="only those owned by this message id, or held by this worker id")
    filter_options(parser, "held longer than this: 30s, 5m, 2h")
    parser.set_defaults(handler=_locks)


def _locks(arguments: argparse.Namespace) -> int:
    from .output import lock_lines

    with Connection(arguments) as connection:
        page = connection.inspector.locks(actor=arguments.actor, owner=arguments.owner, **filters(arguments))
        return _print_listing(
            arguments, connection, "locks", page, lock_lines, "No uniqueness locks held.", total=page.total
        )


def _print_listing(
    arguments: argparse.Namespace,
    connection: Connection,
    command: str,
    page: Page[T],
    lines: Callable[[Sequence[T], int, Style], list[str]],
    nothing: str,
    items: Sequence[T] | None = None,
    *,
    total: int | None = None,
) -> int:
    """Print a listing as JSON or text (``nothing`` when it is empty), then its problems and how to
    get its next page.

    Parameters:
      page(Page): What the inspector read; its items are those listed unless ``items`` are given.
      lines(callable): The text of the items, given the server's time and stdout's style.
      total(int|None): How many there are in all, for the listings that know it.

    Raises:
      CommandError: Nothing was found because no tracker ever used the namespace.
    """
    from .output import envelope

    listed = page.items if items is None else items
    connection.require_data(not listed)
    now = connection.inspector.server_time()
    data = envelope(
        command, connection.namespace, now, items=listed, cursor=page.cursor, total=total, problems=page.problems
    )
    print_result(
        arguments,
        data,
        lambda style: lines(listed, now, style) if listed else [nothing],
        page.problems,
        more(page.cursor, command),
    )
    return RET_OK


# events ----------------------------------------------------------------------------------


def add_events(commands: Commands) -> None:
    from ...events import KINDS

    parser = add_parser(
        commands,
        "events",
        help="what the tracker did and why: the event stream (--follow to tail it)",
        description="The newest events of the stream (recoveries, dead workers, quarantines, released locks, "
        "zombies, duplicates...), oldest first; with --follow, then every new one as it is written. "
        "Event kinds: " + ", ".join(KINDS) + ".",
    )
    parser.add_argument(
        "--count", type=bounded_int(1, 100_000), default=20, help="how many of the newest (default: %(default)s)"
    )
    parser.add_argument(
        "--kind", action="append", default=[], metavar="KIND", help="only events of this kind (repeat it for more)"
    )
    parser.add_argument("--before", default="", metavar="ID", help="only events before this stream id (to page back)")
    parser.add_argument("--follow", "-f", action="store_true", help="then print new events as they are written")
    parser.add_argument(
        "--interval", type=positive_float, default=0.5, help="seconds between reads with --follow (default: 0.5)"
    )
    parser.set_defaults(handler=_events)


def _events(arguments: argparse.Namespace) -> int:
    from ...events import KINDS
    from .output import dumps, envelope, event_line, jsonable

    unknown = [kind for kind in arguments.kind if kind not in KINDS]
    if unknown:
        raise CommandError(RET_USAGE, "unknown event kind %r (known: %s)" % (unknown[0], ", ".join(KINDS)))
    kinds = arguments.kind or None
    out, err = styles()
    with Connection(arguments) as connection:
        inspector = connection.inspector
        newest_before = inspector.last_event_id()
        events = inspector.events(arguments.count, kinds=kinds, before=arguments.before or "+")
        if not events and not arguments.follow:
            connection.require_data(True)
        elif not events and not inspector.has_data():
            print(err.warn("warning: ") + no_data(connection.namespace, connection.where), file=sys.stderr)
        cursor = ""
        if events and inspector.events(1, before=events[-1].id):
            cursor = events[-1].id
        chronological = list(reversed(events))
        if arguments.follow and arguments.json:
            print_lines([dumps(jsonable(event), indent=None) for event in chronological])
        elif arguments.json:
            data = envelope("events", connection.namespace, inspector.server_time(), items=chronological, cursor=cursor)
            print_lines([dumps(data)])
        else:
            print_lines(
                [event_line(event, out) for event in chronological] or (["No events."] if not arguments.follow else [])
            )
        if cursor and not arguments.follow:
            print("More: dramatiq-tracker events ... --before '%s'" % cursor, file=sys.stderr)
        if arguments.follow:
            last = events[0].id if events else newest_before
            for event in _follow(inspector, last, arguments.interval, connection.where, err):
                if kinds is None or event.kind in kinds:
                    print_lines([dumps(jsonable(event), indent=None) if arguments.json else event_line(event, out)])
    return RET_OK


def _follow(inspector: Inspector, last: str, interval: float, where: str, err: Style) -> Iterator[Any]:
    """Every event written after ``last``, forever; a lost Redis is waited for, said once."""
    failing = False
    while True:
        try:
            batch = inspector.events_after(last, count=500)
        except CLIENT_ERRORS as e:
            if not failing:
                print(err.warn("warning: ") + explain(e, where) + "; retrying", file=sys.stderr)
                failing = True
            time.sleep(interval)
            continue
        if failing:
            print("The tracker's Redis is back.", file=sys.stderr)
            failing = False
        for event in batch:
            last = event.id
            yield event
        if not batch:
            time.sleep(interval)


# watch -----------------------------------------------------------------------------------


def add_watch(commands: Commands) -> None:
    parser = add_parser(
        commands,
        "watch",
        help="a live view: status, workers and the oldest messages in flight, refreshed",
        description="Refresh the status, the workers and the oldest messages in flight every --interval "
        "seconds until Ctrl-C. On a terminal the screen is redrawn; elsewhere each view follows the last.",
        json=False,
    )
    parser.add_argument(
        "--interval", type=positive_float, default=2.0, help="seconds between refreshes (default: %(default)s)"
    )
    parser.add_argument(
        "--workers", type=bounded_int(0, 10_000), default=20, help="how many workers to show (default: %(default)s)"
    )
    parser.add_argument(
        "--oldest",
        type=bounded_int(0, 1000),
        default=10,
        help="how many of the oldest messages in flight to show (default: %(default)s)",
    )
    parser.set_defaults(handler=_watch)


def _watch(arguments: argparse.Namespace) -> int:
    from ..formatting import precise_timestamp
    from .output import inflight_lines, status_lines, worker_lines

    out, _ = styles()
    terminal = out.colour or sys.stdout.isatty()
    with Connection(arguments) as connection:
        inspector = connection.inspector
        while True:
            started = time.monotonic()
            lines = [
                out.bold("dramatiq-tracker watch")
                + " every %gs, Ctrl-C to quit; %s UTC"
                % (arguments.interval, precise_timestamp(int(time.time() * 1000)))
            ]
            try:
                status = inspector.status()
                lines += ["", *status_lines(status, connection.namespace, connection.where, out)]
                if not sum(status.workers.values()) and not inspector.has_data():
                    lines += ["", out.warn(no_data(connection.namespace, connection.where))]
                if arguments.workers:
                    page = inspector.workers(limit=arguments.workers)
                    shown = page.items[: arguments.workers]
                    lines += ["", *worker_lines(shown, status.at, out)] if shown else []
                    hidden = sum(status.workers.values()) - len(shown)
                    if hidden > 0:
                        lines.append("... and %d more (dramatiq-tracker workers)" % hidden)
                if arguments.oldest:
                    oldest = inspector.oldest(arguments.oldest).items
                    if oldest:
                        lines += ["", "Oldest messages in flight:", *inflight_lines(oldest, out)]
            except CLIENT_ERRORS as e:
                lines += ["", out.bad(explain(e, connection.where))]
            frame = "\n".join(lines)
            if terminal:
                sys.stdout.write("\x1b[H\x1b[2J" + frame + "\n")
            else:
                sys.stdout.write(frame + "\n\n")
            sys.stdout.flush()
            time.sleep(max(0.0, arguments.interval - (time.monotonic() - started)))


# check -----------------------------------------------------------------------------------


def add_check(commands: Commands) -> None:
    parser = add_parser(
        commands,
        "check",
        help="exit 0 when this host's workers are alive and heartbeating: a liveness probe",
        description="Exit 0 when the workers registered from this host (or --host, or one --worker-id) are "
        "alive and heartbeating, 5 when not (a worker unresponsive, declared dead, fenced, its process gone, "
        "or fewer than --min-workers), 1 when the tracker's Redis cannot be read. For Kubernetes: "
        "livenessProbe: exec: command: [dramatiq-tracker, check].",
    )
    target = parser.add_mutually_exclusive_group()
    target.add_argument("--host", help="judge the workers registered from this host (default: this host's name)")
    target.add_argument("--worker-id", help="judge this one worker")
    parser.add_argument(
        "--min-workers",
        type=bounded_int(0, 100_000),
        default=1,
        help="how many workers of the host must be alive (default: %(default)s)",
    )
    parser.add_argument(
        "--unreachable-ok",
        action="store_true",
        help="exit 0 (with a warning) when the tracker's Redis cannot be read: workers go on without it, "
        "so a liveness probe should not restart them for it",
    )
    parser.set_defaults(handler=_check)


def _check(arguments: argparse.Namespace) -> int:
    from .output import envelope
    from .reports import check_lines

    try:
        with Connection(arguments) as connection:
            inspector = connection.inspector
            if arguments.worker_id:
                check = inspector.check(worker_id=arguments.worker_id)
            else:
                host = arguments.host or socket.gethostname()
                check = inspector.check(hostname=host, min_workers=arguments.min_workers)
            now = inspector.server_time()
            if not check.healthy and not check.workers and not inspector.has_data():
                check.reasons.append(no_data(connection.namespace, connection.where))
            data = envelope("check", connection.namespace, now, item=check)
    except CLIENT_ERRORS as e:
        # A Redis that is away comes back, and the workers go on without it meanwhile; credentials or
        # certificates that are wrong do not fix themselves: the probe fails for them even so.
        if not arguments.unreachable_ok or misconfigured(e):
            raise
        print(
            "dramatiq-tracker check: warning: %s; healthy as far as we know (--unreachable-ok)"
            % explain(e, getattr(arguments, "where", "") or "its URL"),
            file=sys.stderr,
        )
        return RET_OK
    print_result(arguments, data, lambda style: check_lines(check, style))
    return RET_OK if check.healthy else RET_UNHEALTHY
