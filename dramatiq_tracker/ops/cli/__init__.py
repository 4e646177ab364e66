"""The ``dramatiq-tracker`` command: its parser, its exit codes, and what it says when something fails.

Each subcommand is a subparser whose ``handler`` default takes the parsed
arguments and returns an exit code.  The subcommands live by what they do:
:mod:`.read` (status, workers, inflight, message, orphans, locks, events,
watch, check), :mod:`.change` (recover, unlock, abort) and :mod:`.serve`
(exporter, demo, dashboard); add one with a function like
:func:`~dramatiq_tracker.ops.cli.serve.add_demo` in the module of its kind and
one line in :func:`build_parser`.  Handlers import what they need when they
run, so that ``--help`` stays fast.  The commands only wire: the reads go
through :class:`~dramatiq_tracker.ops.inspection.Inspector`, the changes
through :class:`~dramatiq_tracker.ops.actions.Operator`, the output through
:mod:`dramatiq_tracker.ops.cli.output` and the metrics through
:mod:`dramatiq_tracker.ops.exporter`; what they share is in :mod:`.common`.

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
import sys

from ..._version import __version__
from ...errors import ConfigurationError, TrackerError
from ..failures import CLIENT_ERRORS, explain
from . import change, read, serve
from .common import (
    RET_ERROR,
    RET_FAILED,
    RET_INTERRUPTED,
    RET_NOT_FOUND,
    RET_OK,
    RET_UNHEALTHY,
    RET_USAGE,
    CommandError,
    Handler,
)

__all__ = [
    "RET_ERROR",
    "RET_FAILED",
    "RET_INTERRUPTED",
    "RET_NOT_FOUND",
    "RET_OK",
    "RET_UNHEALTHY",
    "RET_USAGE",
    "CommandError",
    "build_parser",
    "main",
]


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
    except TrackerError as e:
        print(prefix + str(e), file=sys.stderr)
        return RET_ERROR
    except BrokenPipeError:
        # The reader went away (| head): not an error of ours; say nothing more.
        with contextlib.suppress(Exception):
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - closed at exit
        return RET_OK
    except CLIENT_ERRORS as e:
        # Any client's error (a Redis Cluster's is not a redis.RedisError), in one line.
        print(prefix + explain(e, getattr(arguments, "where", "") or "its URL"), file=sys.stderr)
        return RET_ERROR


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
    read.add_status(commands)
    read.add_workers(commands)
    read.add_inflight(commands)
    read.add_message(commands)
    read.add_orphans(commands)
    change.add_recover(commands)
    read.add_locks(commands)
    change.add_unlock(commands)
    change.add_abort(commands)
    read.add_events(commands)
    read.add_watch(commands)
    read.add_check(commands)
    serve.add_exporter(commands)
    serve.add_demo(commands)
    serve.add_dashboard(commands)
    return parser
