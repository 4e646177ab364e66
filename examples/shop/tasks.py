"""The shop's actors.

- ``pack_order``: at least once. If its worker dies mid-order, the tracker delivers the order again
  within seconds (packing twice is harmless: it is idempotent); one that kills its worker three times
  is quarantined (``max_recoveries=2``, the broker's default here).
- ``send_receipt``: unique. One receipt per order at a time: a second one sent while the first waits or
  runs is refused; the lock never outlives a dead worker.
- ``charge_card``: at most once (``max_recoveries=0``). If its worker dies mid-charge, nobody knows
  whether the bank took the money: the charge is never run again, it goes to the dead letters and
  ``payment_needs_review`` is told.

How long each one works comes from the environment (seconds), read when it runs, so that tests and
demos can make a worker slow enough to kill mid-message.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import dramatiq

from .broker import broker

__all__ = ["broker", "charge_card", "pack_order", "payment_needs_review", "send_receipt"]

logger = logging.getLogger(__name__)


def _work(variable: str, default: float) -> None:
    time.sleep(float(os.environ.get(variable, default)))


@dramatiq.actor(queue_name="orders", max_retries=3)
def pack_order(order_id: int) -> None:
    """Pack an order: safe to run again after a crash."""
    _work("SHOP_PACKING_SECONDS", 0.1)
    logger.info("Packed order %d.", order_id)


@dramatiq.actor(queue_name="mail", unique=True, max_retries=3)
def send_receipt(order_id: int) -> None:
    """Mail an order's receipt: one at a time per order."""
    _work("SHOP_MAIL_SECONDS", 0.05)
    logger.info("Sent the receipt of order %d.", order_id)


@dramatiq.actor(queue_name="payments", max_retries=0, max_recoveries=0, on_recovery_exhausted="payment_needs_review")
def charge_card(order_id: int, cents: int) -> None:
    """Charge a card: never twice."""
    _work("SHOP_BANK_SECONDS", 0.05)
    logger.info("Charged %d cents for order %d.", cents, order_id)


@dramatiq.actor(queue_name="payments")
def payment_needs_review(message: dict[str, Any], info: dict[str, Any]) -> None:
    """Told of a charge whose worker died mid-charge: a human checks with the bank."""
    order_id, cents = message["args"]
    logger.warning(
        "The charge of %d cents for order %d may or may not have happened (its worker %s died); "
        "check with the bank before charging again.",
        cents,
        order_id,
        info["worker_id"],
    )
