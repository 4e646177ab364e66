"""How the demo tells what happens: time-stamped lines, short ids, and the final account."""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Sequence
from typing import TextIO

from .journal import DONE, STARTED, Journal

#: How many characters of a message id the narration shows.
SHORT_ID = 8


def short(message_id: str) -> str:
    """A message id, shortened for reading."""
    return message_id[:SHORT_ID]


def shorts(message_ids: Sequence[str]) -> str:
    return " ".join(short(message_id) for message_id in message_ids)


class Narrator:
    """Print lines stamped with the time elapsed since the demo began.

    Parameters:
      out(TextIO): Where to print; ``sys.stdout`` at the time of printing by default.
    """

    def __init__(self, out: TextIO | None = None) -> None:
        self.began = time.time()
        self._out = out

    def say(self, text: str, at: float | None = None) -> None:
        """Print ``text`` stamped with ``at`` (seconds since the epoch; now by default)."""
        elapsed = max(0.0, (time.time() if at is None else at) - self.began)
        self.note("[%4.1fs] %s" % (elapsed, text))

    def note(self, text: str = "") -> None:
        """Print ``text`` without a time stamp."""
        print(text, file=self._out or sys.stdout, flush=True)


@dataclasses.dataclass(frozen=True)
class Kill:
    """What the killed worker held when it died.

    Parameters:
      worker(str): Its name in the narration.
      at(float): When it was killed, in seconds since the epoch.
      running(list[str]): Ids of the messages it was processing.
      prefetched(list[str]): Ids of the messages it had fetched and not started.
    """

    worker: str
    at: float
    running: list[str]
    prefetched: list[str]

    @property
    def orphans(self) -> list[str]:
        return self.running + self.prefetched

    def state(self, message_id: str) -> str:
        if message_id in self.running:
            return "running"
        if message_id in self.prefetched:
            return "prefetched"
        return "done"


def account(
    narrator: Narrator, message_ids: Sequence[str], kill: Kill, journal: Journal, recovered_at: float | None, bound: int
) -> bool:
    """Print, per message, how often it started after the kill and completed; then the timings and the verdict.

    Parameters:
      recovered_at(float|None): When the orphans were delivered again, in seconds since the epoch.
      bound(int): The tracker's recovery bound, in milliseconds.

    Returns:
      bool: True when every message completed exactly once and every orphan started exactly once after the kill.
    """
    completed = journal.count(DONE)
    restarted = journal.count(STARTED, after=kill.at)
    narrator.note()
    narrator.note("Summary, counted by message id:")
    row = "  %-9s  %-17s  %-21s  %s"
    narrator.note(row % ("message", "when %s was killed" % kill.worker, "starts after the kill", "completions"))
    lost, twice = [], []
    for message_id in message_ids:
        starts, done = restarted.get(message_id, 0), completed.get(message_id, 0)
        narrator.note(row % (short(message_id), kill.state(message_id), starts, done))
        expected_starts = 1 if message_id in kill.orphans else 0
        if done == 0 or starts < expected_starts:
            lost.append(message_id)
        elif done > 1 or starts > expected_starts:
            twice.append(message_id)

    restarts = sorted(e.at - kill.at for e in journal.events if e.kind == STARTED and e.at >= kill.at)
    if recovered_at is not None:
        narrator.note(
            "  Orphans delivered again %.2f s after the SIGKILL (the tracker's bound, heartbeat_timeout + "
            "sweep_interval: %.1f s)." % (recovered_at - kill.at, bound / 1000)
        )
    if restarts:
        narrator.note(
            "  First orphan started again after %.2f s, the last after %.2f s (the survivor runs as many "
            "at a time as it has threads)." % (restarts[0], restarts[-1])
        )
    if lost or twice:
        narrator.note(
            "FAILED: never completed: %s; ran more than once: %s." % (shorts(lost) or "none", shorts(twice) or "none")
        )
        return False
    narrator.note(
        "OK: all %d messages completed, each exactly once; each of the %d orphans ran again exactly once."
        % (len(message_ids), len(kill.orphans))
    )
    return True
