"""The demo's worker processes: real ``dramatiq`` CLI processes running :mod:`.app`."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Collection
from pathlib import Path

from ...host import HostFacts
from ...records import CorruptRecord, WorkerInfo
from ..reads import InspectionStore
from . import DemoError
from .environment import DemoConfig

#: The module the ``dramatiq`` CLI imports in each demo worker.
APP_MODULE = "dramatiq_tracker.ops.demo.app"

#: How long a worker may take to boot and register with the tracker, in milliseconds.
BOOT_TIMEOUT = 30_000

#: How long a worker may take to stop on SIGTERM before its process group is killed, in milliseconds.
STOP_TIMEOUT = 5_000

#: How often the runner looks at Redis while it waits, in milliseconds.
POLL_INTERVAL = 20


def registered_workers(store: InspectionStore) -> list[WorkerInfo]:
    """The workers registered with the tracker, skipping unreadable registrations."""
    found = []
    for raw in store.workers().values():
        with contextlib.suppress(CorruptRecord):
            found.append(WorkerInfo.from_json(raw))
    return found


class DemoWorker:
    """One ``dramatiq`` CLI process with one worker process, its output in a log file.

    It runs in a session of its own: the terminal's Ctrl-C does not reach it,
    and :meth:`stop` can kill the CLI process and its worker process together.

    Parameters:
      name(str): "A", "B": how the narration calls it.
      config(DemoConfig): Passed to the worker through its environment.
      workdir(Path): Where its log file goes.
      threads(int): Its worker threads.

    Raises:
      DemoError: When the process cannot be started.
    """

    def __init__(self, name: str, config: DemoConfig, workdir: Path, *, threads: int) -> None:
        self.name = name
        self.log_path = workdir / ("worker-%s.log" % name.lower())
        self.info: WorkerInfo | None = None
        command = [
            sys.executable, "-m", "dramatiq", APP_MODULE,
            "--processes", "1", "--threads", str(threads), "--worker-shutdown-timeout", "1000",
        ]  # fmt: skip
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed by stop()
        try:
            self.process = subprocess.Popen(
                command,
                env={**os.environ, **config.environment()},
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except OSError as e:
            self._log.close()
            raise DemoError("Worker %s did not start: %s" % (name, e)) from None

    @property
    def pid(self) -> int:
        """The pid of its worker process (not of the CLI process), once registered."""
        return self.info.pid if self.info else 0

    def wait_registered(self, store: InspectionStore, known: Collection[str]) -> WorkerInfo:
        """Wait until the worker process registers with the tracker.

        Parameters:
          store(InspectionStore): The demo's tracker store.
          known(Collection[str]): Ids of the workers registered before this one started.

        Raises:
          DemoError: When the process exits first, or does not register within :data:`BOOT_TIMEOUT`.
        """
        deadline = time.monotonic() + BOOT_TIMEOUT / 1000
        while time.monotonic() < deadline:
            for info in registered_workers(store):
                if info.worker_id not in known:
                    self.info = info
                    return info
            code = self.process.poll()
            if code is not None:
                raise DemoError("Worker %s exited with code %d before it started.%s" % (self.name, code, self.tail()))
            time.sleep(POLL_INTERVAL / 1000)
        raise DemoError("Worker %s did not start within %d ms.%s" % (self.name, BOOT_TIMEOUT, self.tail()))

    def kill(self) -> None:
        """SIGKILL the worker process, as the OOM killer would; its CLI process is left alone."""
        if self.info is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.info.pid, signal.SIGKILL)

    def stop(self) -> None:
        """Stop the worker: SIGTERM, then SIGKILL to its whole process group if it lingers."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(STOP_TIMEOUT / 1000)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(STOP_TIMEOUT / 1000)
        self._wait_worker_gone()
        self._log.close()

    def _wait_worker_gone(self) -> None:
        # The worker process is not our child: make sure it can no longer write before its keys are deleted.
        if self.info is None:
            return
        info = self.info
        facts = HostFacts(info.hostname, info.pid, info.process_started, info.boot_id, info.pid_namespace)
        here = HostFacts.current()
        deadline = time.monotonic() + STOP_TIMEOUT / 1000
        while not here.process_is_gone(facts) and time.monotonic() < deadline:
            time.sleep(POLL_INTERVAL / 1000)

    def tail(self, lines: int = 15) -> str:
        """The last lines of its log, indented, for error messages."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        last = text.splitlines()[-lines:]
        return "\nLast lines of %s:\n%s" % (self.log_path, "\n".join("  " + line for line in last)) if last else ""
