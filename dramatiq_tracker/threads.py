"""A stoppable background loop, the base of the tracker's threads."""

from __future__ import annotations

import threading

from dramatiq.logging import get_logger


class PeriodicThread(threading.Thread):
    """Call :meth:`tick` every ``interval`` milliseconds until stopped.

    An exception in a tick is logged and the loop goes on: a tracker thread
    that dies silently would turn a healthy worker into a "dead" one.

    Parameters:
      name(str): The thread's name.
      interval(int): The time between ticks, in milliseconds.
    """

    def __init__(self, name: str, interval: int) -> None:
        super().__init__(name=name, daemon=True)
        self.logger = get_logger(__name__, type(self))
        self.interval = interval
        self._stopping = threading.Event()
        self._woken = threading.Event()

    def tick(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def next_interval(self) -> float:
        """Seconds to wait before the next tick."""
        return self.interval / 1000

    def run(self) -> None:
        while not self._stopping.is_set():
            try:
                self.tick()
            except Exception:
                self.logger.exception("Unexpected error in %s; it keeps running.", self.name)
            self._woken.wait(self.next_interval())
            self._woken.clear()

    def wake(self) -> None:
        """Run the next tick now."""
        self._woken.set()

    def stop(self, timeout: float | None = 5.0) -> None:
        """Stop the loop and wait for the current tick to end."""
        self._stopping.set()
        self._woken.set()
        if self.is_alive() and threading.current_thread() is not self:
            self.join(timeout)
