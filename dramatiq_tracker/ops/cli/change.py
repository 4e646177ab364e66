"""The subcommands that change something: recover, unlock (a uniqueness lock), abort."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from .common import RET_NOT_FOUND, RET_OK, CommandError, Connection, add_parser, print_result

if TYPE_CHECKING:
    from ..actions import Operator
    from .common import Commands


def _who() -> str:
    try:
        import getpass

        user = getpass.getuser()
    except (ImportError, KeyError, OSError):
        user = "unknown"
    return "cli:%s" % user


def _operator(connection: Connection) -> Operator:
    from ..actions import Operator

    return Operator(connection.inspector, connection.broker, who=_who())


# recover ---------------------------------------------------------------------------------


def add_recover(commands: Commands) -> None:
    parser = add_parser(
        commands,
        "recover",
        help="recover dead workers now (--dry-run: say what it would do, change nothing)",
        description="Sweep now, as the workers do every sweep_interval: declare the workers whose heartbeat "
        "expired dead and deliver their orphans again (or quarantine, or drop them), through the "
        "application's broker. With --dry-run, list exactly what a sweep would do, and change nothing.",
        broker="required",
    )
    parser.add_argument("--dry-run", action="store_true", help="only say what it would do; change nothing")
    parser.set_defaults(handler=_recover)


def _recover(arguments: argparse.Namespace) -> int:
    from .output import envelope
    from .reports import recovery_item, recovery_lines

    with Connection(arguments) as connection:
        operator = _operator(connection)
        report = operator.recover(dry_run=arguments.dry_run)
        left_out = operator.left_out(report)
        now = connection.inspector.server_time()
        data = envelope("recover", connection.namespace, now, item=recovery_item(report, left_out))
        print_result(arguments, data, lambda style: recovery_lines(report, left_out, style))
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
    from .output import envelope

    with Connection(arguments) as connection:
        lock = _operator(connection).delete_lock(arguments.digest)
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
    parser = add_parser(
        commands,
        "abort",
        help="abort (or --cancel) a message with dramatiq-abort, never to be recovered",
        description="Abort a message with dramatiq-abort (stop it if it runs), or with --cancel only if it has "
        "not started; the request is remembered for history_ttl, so the message is not delivered again "
        "after a crash. Needs the application's broker with dramatiq-abort's Abortable. A message neither "
        "the tracker nor the broker knows is refused (exit 4) unless --force.",
        broker="required",
    )
    parser.add_argument("message_id", metavar="ID", help="the message id")
    parser.add_argument("--cancel", action="store_true", help="cancel only if it has not started yet")
    parser.add_argument(
        "--force",
        action="store_true",
        help="send it even for a message neither the tracker nor the broker knows (one queued on RabbitMQ, "
        "which cannot be looked up, or one not sent yet)",
    )
    parser.set_defaults(handler=_abort)


def _abort(arguments: argparse.Namespace) -> int:
    from .output import envelope

    mode = "cancel" if arguments.cancel else "abort"
    with Connection(arguments) as connection:
        operator = _operator(connection)
        operator.require_abortable()
        if not arguments.force and not operator.knows(arguments.message_id):
            raise CommandError(
                RET_NOT_FOUND,
                "message %r is unknown: the tracker never recorded it running, never recovered it, and it is in "
                "none of the newest events%s; nothing was sent (--force sends the %s anyway)"
                % (arguments.message_id, operator.broker_lookup, mode),
            )
        operator.abort(arguments.message_id, mode=mode)
        now = connection.inspector.server_time()
        data = envelope("abort", connection.namespace, now, item={"message_id": arguments.message_id, "mode": mode})
        print_result(
            arguments,
            data,
            lambda style: [
                "%s of message %s requested; remembered for history_ttl, so it is not delivered again after a crash."
                % ("Cancel" if arguments.cancel else "Abort", arguments.message_id)
            ],
        )
    return RET_OK
