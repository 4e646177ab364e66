"""The claim a sweeper holds on a dead worker's recovery, step by step, in one process against the real
Redis (the whole story, with real processes stalled and killed, is in tests/test_sweeper_fencing.py)."""

from __future__ import annotations

import threading
import time

import pytest

from dramatiq_tracker import TrackerMiddleware
from dramatiq_tracker.errors import RecoveryTakenOver
from dramatiq_tracker.orphans import Candidate, Orphan
from dramatiq_tracker.recovery_claim import RecoveryClaim

from .conftest import Sweep
from .support import kinds, reads


def _declare(tracker: TrackerMiddleware, worker_id: str) -> tuple[RecoveryClaim, dict[str, str]]:
    """Declare a worker dead and claim its recovery, as a sweeper does: the claim, and the records."""
    wiring = tracker.wiring
    token, sent = RecoveryClaim.new_token(), time.monotonic()
    declared = wiring.store.declare_dead(
        worker_id,
        wiring.digest,
        reason="process",
        retry_after=wiring.settings.takeover_after,
        settle=0,
        grace=0,
        claim=token,
        history_ttl=wiring.settings.history_ttl,
    )
    assert declared.status == "dead"
    return RecoveryClaim(wiring.store, wiring.settings, wiring.digest, worker_id, token, sent), declared.records


def test_a_sweeper_whose_claim_was_taken_over_is_refused_at_every_step(sweep: Sweep) -> None:
    info, messages = sweep.dead_worker(2, running=2)
    first, _ = _declare(sweep.tracker, info.worker_id)
    # Another sweeper finds the worker dead: the claim is fresh, so it leaves it alone.
    assert sweep.tracker.recover().message_ids == []
    assert sweep.client.llen("%s:%s" % (sweep.names.broker, sweep.names.queue)) == 0

    # Given the first sweeper went takeover_after without renewing its claim
    sweep.client.hset(sweep.tracker.store.keys.recovery(info.worker_id), "renewed", 0)
    # When another sweeper recovers the worker
    report = sweep.tracker.recover()
    # Then it does everything, and the first one is refused wherever it goes on
    assert sorted(report.message_ids) == sorted(m.message_id for m in messages)
    with pytest.raises(RecoveryTakenOver):
        first.renew()
    with pytest.raises(RecoveryTakenOver):
        sweep.tracker.wiring.claims.claim(
            info, [Candidate(messages[0].message_id, "work", sweep.names.queue, None)], "deliver", claim=first
        )
    assert not sweep.tracker.store.finish_recovery(info, sweep.tracker.wiring.digest, 60_000, first.token)
    assert sweep.client.llen("%s:%s" % (sweep.names.broker, sweep.names.queue)) == 2


def test_a_lock_cleaner_call_noted_under_a_claim_is_never_made_again(sweep: Sweep) -> None:
    calls: list[str] = []
    sweep.tracker.add_lock_cleaner(lambda orphan: calls.append(orphan.message_id))
    info, messages = sweep.dead_worker(2, running=2)
    first, _ = _declare(sweep.tracker, info.worker_id)
    # Given the first sweeper noted (began) the call for the first orphan, then stopped
    name = sweep.tracker.wiring.cleaners._cleaners[0].__qualname__
    assert first.note_call(messages[0].message_id, name)
    assert not first.note_call(messages[0].message_id, name)
    sweep.client.hset(sweep.tracker.store.keys.recovery(info.worker_id), "renewed", 0)

    # When another sweeper takes over
    report = sweep.tracker.recover()

    # Then it calls the cleaner of the other orphan only, and settles both
    assert sorted(report.message_ids) == sorted(m.message_id for m in messages)
    assert calls == [messages[1].message_id]
    # The claim went with the worker.
    assert not sweep.client.exists(sweep.tracker.store.keys.recovery(info.worker_id))


def test_a_hung_lock_cleaner_is_left_behind_and_its_orphan_delivered(sweep: Sweep) -> None:
    hang = threading.Event()
    sweep.tracker.add_lock_cleaner(lambda orphan: hang.wait(120))
    sweep.tracker.wiring.cleaners.timeout = 1.0
    _info, messages = sweep.dead_worker(1, running=1)
    try:
        started = time.monotonic()
        report = sweep.tracker.recover()
        waited = time.monotonic() - started
    finally:
        hang.set()
    assert report.message_ids == [messages[0].message_id]
    assert 1.0 <= waited < sweep.tracker.wiring.settings.takeover_after / 1000
    assert "lock-cleaner-failed" in kinds(reads(sweep.tracker), messages[0].message_id)
    assert sweep.client.llen("%s:%s" % (sweep.names.broker, sweep.names.queue)) == 1


def test_the_dead_copy_of_an_orphan_a_starting_copy_took_over_is_dropped_not_moved_back(sweep: Sweep) -> None:
    cleaned: list[Orphan] = []
    sweep.tracker.add_lock_cleaner(cleaned.append)
    info, messages = sweep.dead_worker(2, running=2)
    wiring = sweep.tracker.wiring
    records = {
        k.decode(): v.decode() for k, v in sweep.client.hgetall(wiring.store.keys.inflight(info.worker_id)).items()
    }
    records.pop("__seq__", None)
    candidates = wiring.recovery.redelivery._found(  # type: ignore[attr-defined]
        info, wiring.recovery.redelivery.parse_records(info, records)
    )[0]
    # Given a put-off copy of the first message started and took it over from the dead worker
    # (as at_risk does: a claim without a sweeper's claim)
    taken = [c for c in candidates if c.message_id == messages[0].message_id]
    ((_orphan, reply),) = wiring.claims.claim(info, taken, "deliver")
    assert reply.taken

    # When a sweeper recovers the dead worker
    report = sweep.tracker.recover()

    # Then only the other message is moved back, and only its cleaner runs: the first one runs elsewhere
    assert report.message_ids == [messages[1].message_id]
    assert [o.message_id for o in cleaned] == [messages[1].message_id]
    queued = sweep.client.lrange("%s:%s" % (sweep.names.broker, sweep.names.queue), 0, -1)
    assert len(queued) == 1
    assert not sweep.client.exists(sweep.tracker.store.keys.recovery(info.worker_id))


def test_a_recovery_that_runs_out_of_its_budget_lets_the_next_sweep_go_on(sweep: Sweep) -> None:
    calls: list[str] = []
    sweep.tracker.add_lock_cleaner(lambda orphan: calls.append(orphan.message_id))
    info, messages = sweep.dead_worker(3, running=3)
    first, records = _declare(sweep.tracker, info.worker_id)
    first._budget_until = time.monotonic()  # its budget is spent after the first orphan
    recovered = sweep.tracker.wiring.recovery.redelivery.recover(info, records, claim=first)
    assert not recovered.complete
    assert len(recovered.orphans) == 1
    first.release()

    # The next sweep takes the claim at once, and settles the rest, cleaning each once.
    report = sweep.tracker.recover()
    assert sorted([*report.message_ids, recovered.orphans[0].message_id]) == sorted(m.message_id for m in messages)
    assert sweep.client.llen("%s:%s" % (sweep.names.broker, sweep.names.queue)) == 3
    assert sorted(calls) == sorted(m.message_id for m in messages)


def test_a_start_that_claims_an_orphan_takes_its_place_in_the_running_index_in_the_same_step(sweep: Sweep) -> None:
    # Given a dead worker recorded running a message
    info, (message,) = sweep.dead_worker(1, running=1)
    running = sweep.tracker.store.keys.running
    assert sweep.client.hget(running, message.message_id).decode().startswith(info.worker_id + "|")

    # When a copy of it starts elsewhere and claims it (a redelivery, a put-off copy)
    candidate = Candidate(message.message_id, "work", sweep.names.queue, message)
    starting = "live-worker|token|0"
    ((_, reply),) = sweep.tracker.wiring.claims.claim(info, [candidate], "deliver", starting=starting)

    # Then that attempt is in the running index at once, while its lock cleaners run: a copy delivered
    # meanwhile is put off behind it, never run as a first delivery
    assert reply.taken
    assert sweep.client.hget(running, message.message_id) == starting.encode()
