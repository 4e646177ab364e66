"""How the ``dramatiq-tracker`` command shows what it did or judged: a recovery (or its dry run), a
liveness check.  Pure, as :mod:`~dramatiq_tracker.ops.cli.output` is."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ..formatting import age
from .output import PLAIN, Column, Style, jsonable, plural, table

if TYPE_CHECKING:
    from ...orphans import RecoveryReport
    from ..views import HealthCheck, LeftOut


RECOVERY_COLUMNS = (
    Column("MESSAGE"),
    Column("ACTOR"),
    Column("QUEUE"),
    Column("WORKER"),
    Column("RUNNING"),
    Column("OUTCOME"),
    Column("ATTEMPT", True),
    Column("RECOVERIES", True),
)


def recovery_item(report: RecoveryReport, left_out: Sequence[LeftOut] = ()) -> dict[str, Any]:
    """A recovery report as JSON-ready data: its dead workers and each orphan's fate (not its payload),
    and the workers it left out with their orphans, and why."""
    return {
        "dry_run": report.dry_run,
        "dead_workers": list(report.dead_workers),
        "forgotten": list(report.forgotten),
        "partial": report.partial,
        "orphans": [
            {
                "message_id": orphan.message_id,
                "actor_name": orphan.actor_name,
                "queue_name": orphan.queue_name,
                "worker_id": orphan.worker_id,
                "running": orphan.running,
                "started_at": orphan.started_at,
                "recoveries": orphan.recoveries,
                "attempt": orphan.attempt,
                "max_recoveries": orphan.max_recoveries,
                "outcome": orphan.outcome,
                "lock": orphan.lock,
            }
            for orphan in report.recovered
        ],
        "left_out": jsonable(list(left_out)),
    }


def recovery_lines(report: RecoveryReport, left_out: Sequence[LeftOut] = (), style: Style = PLAIN) -> list[str]:
    """What a recovery did, or (a dry run) would do; and what it left out, and why."""
    settled = "%s dead (%s) and settle%s %s%s" % (
        plural(len(report.dead_workers), "worker"),
        ", ".join(report.dead_workers) or "none",
        "" if report.dry_run else "d",
        plural(len(report.recovered), "message"),
        ":" if report.recovered else ".",
    )
    if report.dry_run:
        lines = ["Dry run: nothing was changed. A sweep now would declare " + settled]
    else:
        lines = ["Declared " + settled]
    if report.recovered:
        rows = [
            (
                o.message_id,
                o.actor_name,
                o.queue_name,
                o.worker_id,
                "yes" if o.running else "no",
                o.outcome,
                o.attempt,
                o.recoveries,
            )
            for o in report.recovered
        ]
        lines += table(RECOVERY_COLUMNS, rows, style)
    if report.forgotten:
        verb = "would find" if report.dry_run else "found"
        lines.append(
            "It %s %s the tracker's Redis forgot, from their broker's records: %s"
            % (verb, plural(len(report.forgotten), "worker"), ", ".join(report.forgotten))
        )
    if report.partial:
        lines.append(style.warn("The sweep stopped before its end; the next one goes on."))
    for worker in left_out:
        lines.append(
            style.warn("Left out: ")
            + "worker %s (%s) with %s: %s."
            % (worker.worker_id, worker.state, plural(worker.orphans, "orphan"), worker.reason)
        )
    return lines


def check_lines(check: HealthCheck, style: Style = PLAIN) -> list[str]:
    """A probe's verdict: one line, then one per problem."""
    if check.worker_id:
        subject = "worker %s" % check.worker_id
    else:
        subject = "%s of host %s" % (plural(len(check.workers), "worker"), check.hostname)
    if check.healthy:
        beats = ", ".join("%s %s" % (w.worker_id, age(w.heartbeat_age)) for w in check.workers)
        return ["%s %s alive (last heartbeats: %s)" % (style.good("OK:"), subject, beats)]
    return [style.bad("UNHEALTHY:") + " " + reason for reason in check.reasons]
