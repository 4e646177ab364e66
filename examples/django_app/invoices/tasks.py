"""The invoices' actors (rundramatiq finds this module).

- ``render_invoice``: unique (one rendering of an invoice at a time) and at least once: if its worker
  dies mid-rendering, the tracker delivers it again within seconds and releases its lock.  It reads its
  delivery attempt through Dramatiq's CurrentMessage middleware: a recovered attempt may check what
  the dead one already did.
- ``email_invoice``: at most once (``max_recoveries=0``): an email that may have gone out is never
  sent twice; ``invoice_needs_review`` is told instead.
"""

import logging
import os
import time
from typing import Any

import dramatiq
from dramatiq.middleware import CurrentMessage

from dramatiq_tracker import ATTEMPT_OPTION

logger = logging.getLogger(__name__)

#: (invoice id, delivery attempt) of each rendering this process did.
rendered: list[tuple[int, int]] = []


@dramatiq.actor(queue_name="invoices", unique=True, max_retries=3)
def render_invoice(invoice_id: int) -> None:
    """Render an invoice's PDF: safe to do again."""
    message = CurrentMessage.get_current_message()
    attempt = message.options.get(ATTEMPT_OPTION, 0) if message is not None else 0
    if attempt:
        logger.info("Rendering invoice %d again (attempt %d): its worker died.", invoice_id, attempt)
    time.sleep(float(os.environ.get("DJANGOSHOP_RENDER_SECONDS", "0.05")))
    rendered.append((invoice_id, attempt))


@dramatiq.actor(queue_name="invoices", max_retries=0, max_recoveries=0, on_recovery_exhausted="invoice_needs_review")
def email_invoice(invoice_id: int) -> None:
    """Email an invoice: never twice."""
    time.sleep(float(os.environ.get("DJANGOSHOP_EMAIL_SECONDS", "0.05")))


@dramatiq.actor(queue_name="invoices")
def invoice_needs_review(message: dict[str, Any], info: dict[str, Any]) -> None:
    """Told of an email whose worker died while sending it."""
    logger.warning("The email of invoice %d may have gone out (worker %s died).", message["args"][0], info["worker_id"])
