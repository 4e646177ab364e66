"""Charges: at most once. A charge whose worker dies is never run again: it goes to review."""

from __future__ import annotations

from shop.tasks import charge_card


def test_a_charge_runs_once(tracker_worker, tracker_assert):
    message = charge_card.send(1, 1999)
    tracker_assert.succeeded(message)
    tracker_assert.ran(message, 1)


def test_a_charge_whose_worker_dies_is_never_run_again_and_goes_to_review(
    tracker_worker, tracker_crash, tracker_assert, monkeypatch
):
    # Given a charge in progress (the bank is slow)
    monkeypatch.setenv("SHOP_BANK_SECONDS", "5")
    message = charge_card.send(9, 4200)
    tracker_assert.running(message)

    # When its worker dies, and a worker starts again
    tracker_crash.crash(tracker_worker)
    tracker_crash.start_worker()

    # Then the charge is quarantined (dead-lettered, payment_needs_review told), never run again
    tracker_assert.quarantined(message)
    tracker_assert.ran(message, 1)
    assert tracker_assert.recoveries(message) == 0
