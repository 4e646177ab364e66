"""The decision taken when an at-risk delivery starts (dramatiq_tracker.at_risk.decide): pure, no Redis."""

from __future__ import annotations

from collections.abc import Mapping

import pytest

from dramatiq_tracker.at_risk import Decision, Start, decide
from dramatiq_tracker.records import AttemptName

ME = "host-1-aaaaaa"
OTHER = "host-2-bbbbbb"


def start(
    *,
    attempt: int = 0,
    retries: int = 0,
    deferred_behind: str = "",
    previous: str = "",
    ended_here: bool = False,
    history: Mapping[str, str] | None = None,
    copy: str = "",
) -> Start:
    return Start(ME, attempt, retries, deferred_behind, previous, ended_here, history or {}, copy)


def never_asked(worker_id: str) -> bool:
    raise AssertionError("asked whether %r is alive" % worker_id)


def test_a_first_start_with_no_previous_attempt_runs() -> None:
    assert decide(start(), never_asked) == Decision("run")


@pytest.mark.parametrize(("completion", "action"), [("ack", "drop"), ("nack", "dead-letter"), ("", "drop")])
def test_a_put_off_duplicate_whose_awaited_attempt_ended_is_dropped_or_dead_lettered(
    completion: str, action: str
) -> None:
    behind = OTHER + "|1f"
    history = {"completed_by": behind, "completed_with": completion}
    assert decide(start(deferred_behind=behind, history=history), never_asked) == Decision(
        action, because="completed_by", by=behind
    )


def test_a_twin_of_the_first_started_copy_of_a_recovered_attempt_is_dropped() -> None:
    # Two sweepers enqueued attempt 3 from the outbox, under claim tokens t1 and t2; t1's copy started first
    history = {"copy": "3|t1"}
    assert decide(start(attempt=3, copy="3|t2", history=history), never_asked) == Decision(
        "drop", because="copy", by="3|t1"
    )
    # The first copy itself (or its put-off or redelivered self, same token) runs
    assert decide(start(attempt=3, copy="3|t1", history=history), never_asked).action == "run"
    # And a copy of a later attempt (recovered again since) is no twin of it
    assert decide(start(attempt=4, copy="4|t9", history=history), never_asked).action == "run"
    # Nor is a delivery that was not enqueued from the outbox
    assert decide(start(attempt=3, history=history), never_asked).action == "run"


def test_a_put_off_duplicate_waiting_for_another_attempt_is_not_dropped() -> None:
    history = {"completed_by": OTHER + "|2", "completed_with": "ack"}
    assert decide(start(deferred_behind=OTHER + "|1", history=history), never_asked).action == "run"


def test_the_redelivery_of_an_attempt_whose_ack_never_reached_rabbitmq_is_dropped() -> None:
    unconfirmed = OTHER + "|1f|0"
    history = {"unconfirmed_by": unconfirmed, "unconfirmed_attempt": "2", "unconfirmed_with": "ack"}
    decision = decide(start(attempt=2, history=history), never_asked)
    assert decision == Decision("drop", because="unconfirmed_by", by=unconfirmed)


@pytest.mark.parametrize(("attempt", "retries"), [(3, 0), (2, 1)])
def test_a_newer_attempt_than_the_unconfirmed_one_is_not_its_redelivery(attempt: int, retries: int) -> None:
    # A recovery since (attempt 3) or a retry by Dramatiq (retries 1) is a new attempt, not a duplicate.
    history = {"unconfirmed_by": OTHER + "|1f|0", "unconfirmed_attempt": "2", "unconfirmed_with": "ack"}
    assert decide(start(attempt=attempt, retries=retries, history=history), never_asked).action == "run"


def test_a_copy_whose_older_attempt_a_zombie_completed_is_dropped() -> None:
    assert decide(start(attempt=4, history={"done_by_attempt": "3"}), never_asked) == Decision(
        "drop", because="done_by_attempt", by="3"
    )
    assert decide(start(attempt=3, history={"done_by_attempt": "3"}), never_asked).action == "run"


def test_a_delivery_of_a_message_still_running_on_a_live_worker_is_put_off_behind_it() -> None:
    asked = []

    def alive(worker_id: str) -> bool:
        asked.append(worker_id)
        return True

    decision = decide(start(previous=OTHER + "|1f|0"), alive)
    assert decision == Decision("defer", behind=AttemptName(OTHER, "1f", 0))
    assert asked == [OTHER]


def test_a_delivery_of_a_message_whose_previous_worker_is_dead_claims_it_and_takes_its_place() -> None:
    decision = decide(start(previous=OTHER + "|1f|0"), lambda worker_id: False)
    assert decision == Decision("claim", dead_worker=OTHER, replaces=AttemptName(OTHER, "1f", 0))


def test_an_orphan_a_sweeper_left_awaiting_this_redelivery_is_claimed() -> None:
    assert decide(start(history={"awaiting_from": OTHER}), never_asked) == Decision("claim", dead_worker=OTHER)


@pytest.mark.parametrize(
    ("previous", "ended_here", "retries"),
    [
        (OTHER + "|1f|0", False, 1),  # Dramatiq retried the message since: a new attempt of its own
        (ME + "|2a|0", True, 0),  # the previous attempt ran in this very worker and ended
    ],
)
def test_a_superseded_previous_attempt_is_never_taken_for_a_duplicate(
    previous: str, ended_here: bool, retries: int
) -> None:
    decision = decide(start(previous=previous, ended_here=ended_here, retries=retries), never_asked)
    assert decision == Decision("run", superseded=AttemptName.parse(previous))


def test_a_previous_attempt_still_running_in_this_worker_puts_the_delivery_off() -> None:
    # This worker's own attempt is alive (the worker is): the redelivery waits for it.
    decision = decide(start(previous=ME + "|2a|0", ended_here=False), lambda worker_id: worker_id == ME)
    assert decision.action == "defer"


def test_a_remembered_cancel_or_abort_is_honoured_unless_the_message_is_a_dead_workers_orphan() -> None:
    assert decide(start(history={"abort": "cancel"}), never_asked) == Decision("honour-abort", by="cancel")
    # An orphan is claimed: the claim itself drops a cancelled one (see lua/claim_orphans.lua).
    history = {"abort": "abort", "awaiting_from": OTHER}
    assert decide(start(history=history), never_asked).action == "claim"


def test_the_attempt_name_reads_back_what_it_writes() -> None:
    name = AttemptName("host-1-aaaaaa", "1f", 3)
    assert AttemptName.parse(name.text) == name
    assert AttemptName.parse(name.attempt_id) == AttemptName("host-1-aaaaaa", "1f", 0)
    assert name.attempt_id == "host-1-aaaaaa|1f"
