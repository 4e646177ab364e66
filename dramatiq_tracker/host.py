"""Facts about this host and its processes, to tell at once that a local worker died.

A worker whose heartbeat is still fresh may already be dead: the OOM killer
does not wait for a TTL.  When the dead worker ran on this very host, its pid
tells the truth at once, provided we can be sure that the pid means the same
process: same host, same boot, same pid namespace (containers share hostnames
with ``--network host``, and pids are per namespace), and the same process
start time (pids are reused).
"""

from __future__ import annotations

import dataclasses
import os
import re
import secrets
import socket


def _read(path: str) -> str:
    try:
        with open(path, encoding="ascii") as f:
            return f.read().strip()
    except (OSError, UnicodeDecodeError):
        return ""


def _pid_namespace() -> str:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


def _stat_fields(pid: int) -> list[str]:
    stat = _read("/proc/%d/stat" % pid)
    # The command name (field 2) may hold spaces and parentheses: split after its last ")".
    # fields[0] is then field 3 (the state) and fields[19] field 22 (the start time).
    return stat.rpartition(")")[2].split() if stat else []


def process_start_time(pid: int) -> str:
    """The start time of ``pid`` in clock ticks since boot, or "" where /proc is missing."""
    fields = _stat_fields(pid)
    return fields[19] if len(fields) > 19 else ""


def _is_defunct(pid: int) -> bool:
    # A killed process that its parent has not reaped yet still answers kill(pid, 0).
    fields = _stat_fields(pid)
    return bool(fields) and fields[0] in ("Z", "X")


@dataclasses.dataclass(frozen=True)
class HostFacts:
    """What identifies a process on a host."""

    hostname: str
    pid: int
    process_started: str
    boot_id: str
    pid_namespace: str

    @classmethod
    def current(cls) -> HostFacts:
        pid = os.getpid()
        return cls(
            hostname=socket.gethostname(),
            pid=pid,
            process_started=process_start_time(pid),
            boot_id=_read("/proc/sys/kernel/random/boot_id"),
            pid_namespace=_pid_namespace(),
        )

    def new_worker_id(self) -> str:
        """``<hostname>-<pid>-<random>``: readable, and unique even when pids are reused."""
        hostname = re.sub(r"[^A-Za-z0-9._-]", "_", self.hostname) or "host"
        return "%s-%d-%s" % (hostname, self.pid, secrets.token_hex(3))

    @property
    def knows_processes(self) -> bool:
        """Whether these facts can tell a process apart from another with the same pid: only where
        ``/proc`` gives a boot id, a pid namespace and process start times (Linux)."""
        return bool(self.boot_id and self.pid_namespace and self.process_started)

    def shares_pid_space_with(self, other: HostFacts) -> bool:
        """True when a pid of ``other`` names the same process here."""
        return (
            self.knows_processes
            and other.knows_processes
            and self.hostname == other.hostname
            and self.boot_id == other.boot_id
            and self.pid_namespace == other.pid_namespace
        )

    def process_is_gone(self, other: HostFacts) -> bool:
        """True when ``other``'s process certainly no longer exists.

        Only meaningful for processes that share our pid space; False when unsure, and always
        False where ``/proc`` is missing (other platforms): death is then judged by the heartbeat
        only, and no signal is ever sent (``os.kill`` terminates processes on Windows).
        """
        if not self.shares_pid_space_with(other) or other.pid <= 0 or os.name != "posix":
            return False
        if other.pid == self.pid:
            return other.process_started != self.process_started
        try:
            os.kill(other.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            pass  # It exists, owned by someone else.
        if _is_defunct(other.pid):
            return True
        # The pid exists; it is still our process only if it started at the same time.
        started = process_start_time(other.pid)
        return bool(started) and started != other.process_started
