"""``dramatiq-tracker demo``: watch a SIGKILLed worker's messages come back on a live one.

:mod:`.runner` plays the scene; :mod:`.app` is the Dramatiq app that the
demo's ``dramatiq`` worker processes run.
"""

from __future__ import annotations

from ...errors import TrackerError


class DemoError(TrackerError):
    """Raised when the demo cannot run: no Redis, a missing dependency, a worker that does not start."""
