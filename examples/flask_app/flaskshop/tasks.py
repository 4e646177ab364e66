"""The actors (``dramatiq flaskshop.tasks`` runs them).

``build_report`` is unique (one build of a report at a time) and at least once: if its worker dies
mid-build, the tracker delivers it again within seconds and releases its lock.  It reads the app's
configuration through ``current_app``: the broker's AppContext middleware gives it one.
"""

from __future__ import annotations

import logging
import os
import time

import dramatiq
from flask import current_app

from .broker import broker

__all__ = ["broker", "build_report", "built"]

logger = logging.getLogger(__name__)

#: The titles of the reports this process built.
built: list[str] = []


@dramatiq.actor(queue_name="reports", unique=True, max_retries=3)
def build_report(week: int) -> None:
    """Build a week's report: safe to do again."""
    time.sleep(float(os.environ.get("FLASKSHOP_BUILD_SECONDS", "0.05")))
    built.append("%s %d" % (current_app.config["REPORT_TITLE"], week))
    logger.info("Built the report of week %d.", week)
