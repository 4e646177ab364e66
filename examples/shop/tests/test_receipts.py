"""Receipts: one at a time per order, and a dead worker never keeps an order's receipt locked."""

from __future__ import annotations

import pytest

from dramatiq_tracker import DuplicateMessage
from shop.tasks import send_receipt


def test_a_second_receipt_for_an_order_is_refused_while_the_first_waits(tracker_broker):
    send_receipt.send(7)
    with pytest.raises(DuplicateMessage):
        send_receipt.send(7)
    send_receipt.send(8)


def test_the_receipt_of_a_worker_that_died_is_sent_again_and_unlocked(
    tracker_worker, tracker_crash, tracker_assert, monkeypatch
):
    # Given a receipt being sent, slowly
    monkeypatch.setenv("SHOP_MAIL_SECONDS", "5")
    message = send_receipt.send(7)
    tracker_assert.running(message)

    # When its worker dies, and a worker starts again
    tracker_crash.crash(tracker_worker)
    monkeypatch.setenv("SHOP_MAIL_SECONDS", "0")
    tracker_crash.start_worker()

    # Then the receipt is sent again, and its lock is gone once it is
    tracker_assert.delivered_again(message)
    tracker_assert.succeeded(message)
    tracker_assert.no_locks()
    again = send_receipt.send(7)
    tracker_assert.succeeded(again)
