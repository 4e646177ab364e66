"""What the subcommands of ``dramatiq-tracker`` share: the exit codes, the error that carries
one, the options and argument types, the connection to the tracker's Redis, and printing."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from ...errors import ConfigurationError
from ..urls import hide, redact

if TYPE_CHECKING:
    import redis
    from dramatiq import Broker

    from ...middleware import TrackerMiddleware
    from ..views import ClusterStatus, Problem
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

#: What a subcommand runs: the parsed arguments in, an exit code out.
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


# Options shared by the subcommands -------------------------------------------------------


def bounded_int(low: int, high: int) -> Callable[[str], int]:
    """An argument type: an integer from ``low`` to ``high``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError("%r is not an integer" % text) from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError("must be between %d and %d, got %d" % (low, high, value))
        return value

    return parse


def positive_float(text: str) -> float:
    """An argument type: seconds, more than 0 and at most an hour."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError("%r is not a number" % text) from None
    if not 0 < value <= 3600:
        raise argparse.ArgumentTypeError("must be more than 0 and at most 3600 seconds, got %s" % text)
    return value


def duration(text: str) -> int:
    """An argument type: a human duration (``30s``, ``5m``), in milliseconds."""
    from ..formatting import parse_duration

    try:
        return parse_duration(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _connection_options(broker: str) -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("connection")
    if broker != "required":
        group.add_argument(
            "--url",
            help="the tracker's Redis URL (default: $DRAMATIQ_TRACKER_REDIS_URL, else $REDIS_URL, "
            "else redis://localhost:6379/0)",
        )
    group.add_argument(
        "--broker",
        required=broker == "required",
        metavar="MODULE[:ATTRIBUTE]",
        help="the application's broker, with its TrackerMiddleware, as the dramatiq command takes it: "
        "package.module (its global broker once imported) or package.module:attribute; the tracker's "
        "Redis and namespace are then its tracker's (not with --url)",
    )
    group.add_argument(
        "--namespace",
        help="the tracker's namespace, as in TrackerMiddleware(namespace=...) "
        "(default: the --broker's tracker's, else $DRAMATIQ_TRACKER_NAMESPACE, else dramatiq-tracker; "
        "with --broker, refused when its tracker uses another)",
    )
    return parent


def _json_option() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("--json", action="store_true", help="print JSON (schema 1, see docs/cli.md) instead of text")
    return parent


def page_options(parser: argparse.ArgumentParser, limit: int) -> None:
    """Add ``--limit`` (default ``limit``) and ``--cursor`` to a listing's parser."""
    parser.add_argument(
        "--limit",
        type=bounded_int(1, 100_000),
        default=limit,
        help="at most this many (default: %(default)s)",
    )
    parser.add_argument("--cursor", default="", help="go on from the cursor a previous page printed")


def filter_options(parser: argparse.ArgumentParser, older_than: str) -> None:
    """Add ``--older-than`` and the page options of a listing of 50 a page whose items have an age.

    Parameters:
      older_than(str): What ``--older-than`` keeps, after "only those ".
    """
    parser.add_argument("--older-than", type=duration, metavar="DURATION", help="only those " + older_than)
    page_options(parser, 50)


def filters(arguments: argparse.Namespace) -> dict[str, Any]:
    """The inspector's arguments for what :func:`filter_options` added: ``older_than``, ``limit``, ``cursor``."""
    return {"older_than": arguments.older_than, "limit": arguments.limit, "cursor": arguments.cursor}


def add_parser(
    commands: Commands, name: str, help: str, description: str, *, json: bool = True, broker: str = "optional"
) -> argparse.ArgumentParser:
    """Add a subcommand that reads the tracker's Redis: ``--url`` or ``--broker``, ``--namespace``, and ``--json``.

    Parameters:
      broker(str): "optional": ``--url`` or ``--broker``; "required": ``--broker`` only (the command
        acts through the application's broker).
    """
    parents = [_connection_options(broker)] + ([_json_option()] if json else [])
    return commands.add_parser(name, help=help, description=description, parents=parents)


# The connection --------------------------------------------------------------------------


def _url_and_namespace(arguments: argparse.Namespace) -> tuple[str, str, str]:
    """The tracker's Redis URL, where it came from, and the namespace."""
    from ...connection import DEFAULT_URL
    from ...settings import DEFAULT_NAMESPACE

    url, source = getattr(arguments, "url", None), "--url"
    if not url:
        for variable in URL_ENVIRONMENT_VARIABLES:
            if os.environ.get(variable):
                url, source = os.environ[variable], "$" + variable
                break
        else:
            url, source = DEFAULT_URL, "url"
    namespace = arguments.namespace or os.environ.get(NAMESPACE_ENVIRONMENT_VARIABLE) or DEFAULT_NAMESPACE
    return url, source, namespace


class Connection:
    """The inspector of a command, and where it reads: the ``--url`` (or the environment's) and the
    ``--namespace``, or the Redis and namespace of the ``--broker``'s tracker.

    Nothing connects here (but a Redis Cluster client, which the inspector makes again at its first
    read when no node answers): a Redis that cannot be read raises at the first read, one of
    :data:`~dramatiq_tracker.ops.failures.CLIENT_ERRORS`, which ``main()`` explains in one line.

    Raises:
      ConfigurationError: A bad URL or namespace, or a broker module that does not import.
      CommandError: With ``--broker``, a ``--namespace`` other than its tracker's.
      TrackerNotConfigured: A broker without a TrackerMiddleware.
    """

    def __init__(self, arguments: argparse.Namespace) -> None:
        from ..inspection import Inspector

        #: The application's broker and its tracker, with --broker.
        self.broker: Broker | None = None
        self.tracker: TrackerMiddleware | None = None
        if getattr(arguments, "broker", None):
            if getattr(arguments, "url", None):
                raise CommandError(RET_USAGE, "give --url or --broker, not both")
            client, namespace = self._from_broker(arguments)
            self.inspector: Inspector = Inspector(client=client, namespace=namespace)
        else:
            url, source, namespace = _url_and_namespace(arguments)
            #: The Redis as it may be printed; read by main() to say which Redis failed.
            self.where = arguments.where = redact(url)
            try:
                self.inspector = Inspector(url=url, namespace=namespace)
            except ConfigurationError as e:
                setting = source if e.setting == "url" else e.setting
                raise ConfigurationError(setting, hide(str(e).partition(": ")[2], url)) from None
        self.namespace = namespace

    def _from_broker(self, arguments: argparse.Namespace) -> tuple[redis.Redis, str]:
        from ...middleware import find_tracker
        from ..actions import load_broker, tracker_client
        from ..urls import describe_client

        self.where = arguments.where = "the Redis of the tracker of %s" % arguments.broker
        self.broker = load_broker(arguments.broker)
        self.tracker = find_tracker(self.broker)
        namespace = self.tracker.settings.namespace
        if arguments.namespace and arguments.namespace != namespace:
            raise CommandError(
                RET_USAGE,
                "the tracker of %s uses namespace %r, not %r" % (arguments.broker, namespace, arguments.namespace),
            )
        client = tracker_client(self.tracker, self.broker)
        self.where = arguments.where = "%s (the tracker of %s)" % (describe_client(client), arguments.broker)
        return client, namespace

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.inspector.close()
        if self.tracker is not None:
            with contextlib.suppress(Exception):
                self.tracker.close()
        if self.broker is not None:
            with contextlib.suppress(Exception):
                self.broker.close()

    def with_broker_queues(self, status: ClusterStatus) -> ClusterStatus:
        """``status`` with what the ``--broker`` holds on each queue; unchanged without ``--broker``, and
        with a warning on stderr when the broker cannot be read."""
        if self.broker is None:
            return status
        from ..queues import queue_depths

        try:
            return dataclasses.replace(status, broker_queues=queue_depths(self.broker))
        except Exception as e:  # any broker's client (redis-py, pika): the tracker's figures stand without it
            print("warning: cannot read the broker's queues: %s: %s" % (type(e).__name__, e), file=sys.stderr)
            return status

    def require_data(self, empty: bool) -> None:
        """Fail with RET_NOT_FOUND when a command found nothing because the namespace was never used."""
        if empty and not self.inspector.has_data():
            raise CommandError(RET_NOT_FOUND, no_data(self.namespace, self.where))


def no_data(namespace: str, where: str) -> str:
    """What to say when a namespace holds nothing of a tracker."""
    return (
        "namespace %r on %s has no tracker data: no worker ever registered there. Is it the namespace "
        "of TrackerMiddleware(namespace=...)? (--namespace or $%s; --url or $%s)"
        % (namespace, where, NAMESPACE_ENVIRONMENT_VARIABLE, URL_ENVIRONMENT_VARIABLES[0])
    )


# Printing --------------------------------------------------------------------------------


def styles() -> tuple[Style, Style]:
    """The styles of stdout and stderr: colour on a terminal only."""
    from .output import Style, use_colour

    return Style(use_colour(sys.stdout)), Style(use_colour(sys.stderr))


def print_lines(lines: Sequence[str]) -> None:
    """Print lines on stdout, at once."""
    for line in lines:
        print(line)
    sys.stdout.flush()


def print_result(
    arguments: argparse.Namespace,
    data: dict[str, Any],
    lines: Callable[[Style], Sequence[str]],
    problems: Sequence[Problem] = (),
    notes: Sequence[str] = (),
) -> None:
    """Print JSON or text, then warnings and notes (more pages...) on stderr."""
    from .output import dumps, problem_lines

    out, err = styles()
    if arguments.json:
        print_lines([dumps(data)])
    else:
        print_lines(lines(out))
    for line in [*problem_lines(problems, err), *notes]:
        print(line, file=sys.stderr)


def more(page_cursor: str, command: str) -> list[str]:
    """The note that says how to get the next page, if there is one."""
    return ["More: dramatiq-tracker %s ... --cursor '%s'" % (command, page_cursor)] if page_cursor else []
