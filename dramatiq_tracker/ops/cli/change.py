"""The subcommands that change something: recover, unlock (a uniqueness lock), abort."""

from __future__ import annotations

import argparse
import contextlib
from typing import TYPE_CHECKING

from .common import RET_NOT_FOUND, RET_OK, CommandError, Connection, add_parser, print_result

if TYPE_CHECKING:
    from dramatiq import Broker

    from .common import Commands


# The application's broker, for recover and abort -----------------------------------------


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


# recover ---------------------------------------------------------------------------------


def add_recover(commands: Commands) -> None:
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
        print_result(arguments, data, lambda style: recovery_lines(report, style))
    return RET_OK


def add_unlock(commands: Commands) -> None:
    parser = add_parser(
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

    with Connection(arguments) as connection:
        lock = Operator(connection.inspector, who=_who()).delete_lock(arguments.digest)
        if lock is None:
            connection.require_data(True)
            raise CommandError(
                RET_NOT_FOUND,
                "no uniqueness lock %r is held in namespace %r (nothing deleted)"
                % (arguments.digest, connection.namespace),
            )
        data = envelope("unlock", connection.namespace, connection.inspector.server_time(), item=lock)
        print_result(
            arguments,
            data,
            lambda style: [
                "Deleted uniqueness lock %s of message %s (actor %s, attempt %d)."
                % (lock.digest, lock.message_id, lock.actor_name, lock.attempt)
            ],
        )
    return RET_OK


# abort -----------------------------------------------------------------------------------


def add_abort(commands: Commands) -> None:
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
        print_result(
            arguments,
            data,
            lambda style: [
                "%s of message %s requested; remembered for history_ttl, so it is not delivered again after a crash."
                % ("Cancel" if arguments.cancel else "Abort", arguments.message_id)
            ],
        )
    return RET_OK
