"""What the site does with the tracker's events: a poison invoice pages someone."""

import logging

from dramatiq_tracker import TrackerEvent

logger = logging.getLogger(__name__)

#: The events of this process's tracker that page someone, newest last (a real site sends them on).
paged: list[TrackerEvent] = []


def on_tracker_event(event: TrackerEvent) -> None:
    """Called by the tracker, in the thread that emits the event: keep it short."""
    if event.kind in ("quarantined", "zombie-detected"):
        paged.append(event)
        logger.error("Paging: %s", event.text)
