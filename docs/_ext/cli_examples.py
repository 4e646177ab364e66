"""Run the examples of docs/cli.md for real and write their output into it.

    .venv/bin/python docs/_ext/cli_examples.py

It starts a throwaway redis-server, two real ``dramatiq`` worker processes of
docs/_ext/shop.py, gives them work, runs every command, then SIGKILLs one worker and
stops the other past its heartbeat timeout, recovers by hand, resumes the stopped one
(it finds itself fenced) and runs the commands again.  Each output replaces the block
between ``<!-- cli: NAME -->`` and ``<!-- /cli -->`` in docs/cli.md; a block the run
does not produce is an error.  tests/test_cli.py checks that the tables the command
prints today have the columns these blocks show.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
PAGE = ROOT / "docs" / "cli.md"
sys.path.insert(0, str(ROOT))

from dramatiq_tracker.ops.inspection import ALIVE, FENCED, GONE, UNRESPONSIVE, Inspector  # noqa: E402
from tests.support import RedisServer, free_port, wait_for  # noqa: E402

BLOCK = re.compile(r"(<!-- cli: (?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- /cli -->)", flags=re.DOTALL)


def port_is_free(port: int) -> bool:
    with contextlib.closing(socket.socket()) as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


class Run:
    """The scenario: a server, workers, and the outputs captured so far."""

    def __init__(self) -> None:
        self.server = RedisServer(6380 if port_is_free(6380) else free_port()).start()
        self.url = self.server.url
        self.env = {
            **os.environ,
            "SHOP_REDIS_URL": self.url,
            "DRAMATIQ_TRACKER_REDIS_URL": self.url,
            "PYTHONPATH": os.pathsep.join([str(ROOT), str(HERE)]),
            "NO_COLOR": "1",
            "COLUMNS": "100",
        }
        os.environ.update(SHOP_REDIS_URL=self.url, DRAMATIQ_TRACKER_REDIS_URL=self.url)
        self.inspector = Inspector(url=self.url)
        self.workers: list[subprocess.Popen[bytes]] = []
        self.logs = tempfile.mkdtemp(prefix="cli-examples-")
        self.outputs: dict[str, str] = {}

    def worker(self) -> str:
        """Start a worker process; returns its worker id once registered."""
        known = {w.worker_id for w in self.inspector.workers().items}
        log = open(os.path.join(self.logs, "worker-%d.log" % len(self.workers)), "wb")  # noqa: SIM115
        command = [sys.executable, "-m", "dramatiq", "shop", "--processes", "1", "--threads", "8"]
        self.workers.append(
            subprocess.Popen(
                command, cwd=HERE, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        )
        return str(
            wait_for(
                lambda: next((w.worker_id for w in self.inspector.workers().items if w.worker_id not in known), None),
                30,
                message="a worker",
            )
        )

    def cli(self, name: str, *args: str, show_code: bool = False) -> subprocess.CompletedProcess[str]:
        """Run the command; its output goes to block ``name``."""
        result = subprocess.run(
            [sys.executable, "-m", "dramatiq_tracker", *args],
            cwd=HERE,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        shown = "$ dramatiq-tracker " + " ".join(shlex.quote(arg) for arg in args) + "\n"
        shown += result.stdout + result.stderr
        if show_code:
            shown += "$ echo $?\n%d\n" % result.returncode
        self.outputs[name] = shown
        return result

    def watch(self, name: str) -> None:
        """One view of ``watch`` (piped, so not redrawn)."""
        process = subprocess.Popen(
            [sys.executable, "-m", "dramatiq_tracker", "watch", "--interval", "1"],
            cwd=HERE,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert process.stdout is not None
        lines: list[str] = []
        while True:
            line = process.stdout.readline()
            if line.startswith("dramatiq-tracker watch") and lines:
                break
            lines.append(line)
        process.send_signal(signal.SIGINT)
        process.communicate(timeout=20)
        self.outputs[name] = "$ dramatiq-tracker watch --interval 1\n" + "".join(lines).rstrip("\n") + "\n"

    def exporter(self, name: str) -> None:
        """One scrape of the exporter; event kinds never counted are left out of the block."""
        port = 9711 if port_is_free(9711) else free_port()
        process = subprocess.Popen(
            [sys.executable, "-m", "dramatiq_tracker", "exporter", "--port", str(port), "--host", "127.0.0.1"],
            cwd=HERE,
            env=self.env,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert process.stderr is not None
            started = process.stderr.readline()
            with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=30) as response:
                text = response.read().decode()
        finally:
            process.terminate()
            process.wait(20)
        kept = [
            line
            for line in text.splitlines()
            if not re.match(r'dramatiq_tracker_events_total\{kind="[\w-]+"\} 0\.0$', line)
        ]
        self.outputs[name] = (
            "$ dramatiq-tracker exporter --port %d &\n%s$ curl -s http://127.0.0.1:%d/metrics\n%s\n"
            "(event kinds not counted yet, each at 0.0, are left out here)\n" % (port, started, port, "\n".join(kept))
        )

    def close(self) -> None:
        for process in self.workers:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)
        self.inspector.close()
        self.server.close()


def scenario(run: Run) -> None:
    import shop  # the application, as a producer: it sends the work

    run.cli("help", "--help")
    first = run.worker()
    images = [shop.resize_image.send(i).message_id for i in (101, 102, 103)]
    charges = [shop.charge.send(order).message_id for order in (41, 42)]
    shop.send_invoice.send(41)
    wait_for(lambda: run.inspector.status().inflight == 6, 30, message="6 messages recorded")
    # The second worker starts once the first runs everything: it holds nothing when it is stopped.
    second = run.worker()
    time.sleep(3)  # ages worth showing

    run.cli("status", "status")
    run.cli("workers", "workers")
    run.cli("inflight", "inflight")
    run.cli("inflight-filtered", "inflight", "--queue", "billing", "--older-than", "2s")
    run.cli("inflight-json", "inflight", "--actor", "charge", "--limit", "1", "--json")
    run.cli("message-running", "message", charges[0])
    run.cli("locks", "locks")
    run.cli("check-ok", "check", show_code=True)
    run.watch("watch")

    # A worker SIGKILLed (gone at once: this host sees its process gone), the other stopped past its
    # heartbeat timeout: nobody sweeps.  Two more images wait on the broker's queue meanwhile.
    pid_of = {w.worker_id: w.pid for w in run.inspector.workers().items}
    os.kill(pid_of[second], signal.SIGSTOP)
    os.kill(pid_of[first], signal.SIGKILL)
    wait_for(
        lambda: run.inspector.worker(first).state == GONE and run.inspector.worker(second).state == UNRESPONSIVE,
        30,
        message="one gone, one unresponsive",
    )
    for image in (104, 105):
        shop.resize_image.send(image)
    run.cli("status-orphans", "status")
    run.cli("status-broker", "status", "--broker", "shop")
    run.cli("orphans", "orphans")
    run.cli("check-unhealthy", "check", "--worker-id", first, show_code=True)
    run.cli("recover-dry-run", "recover", "--broker", "shop", "--dry-run")
    run.cli("recover", "recover", "--broker", "shop")

    # The stopped worker resumes: it finds itself declared dead, and goes on under a new id.
    os.kill(pid_of[second], signal.SIGCONT)
    view = wait_for(
        lambda: (v := run.inspector.worker(second)) is not None and v.state == FENCED and v, 30, message="fenced"
    )
    wait_for(lambda: run.inspector.worker(view.fenced_as).state == ALIVE, 30, message="alive again")
    wait_for(lambda: run.inspector.status().inflight == 8, 30, message="running again, and the two waiting")
    time.sleep(2)
    run.cli("workers-all", "workers", "--all")
    run.cli("check-fenced", "check", "--worker-id", second, show_code=True)
    recovered = next((i for i in images if (m := run.inspector.message(i)) and m.history and m.running), images[0])
    run.cli("message-recovered", "message", recovered)
    run.cli("abort", "abort", images[2], "--broker", "shop")
    run.cli("abort-unknown", "abort", "no-such-message", "--broker", "shop", show_code=True)
    locks = run.inspector.locks().items
    if locks:
        run.cli("unlock", "unlock", locks[0].digest)
    run.cli("events", "events")
    run.cli("events-kind", "events", "--kind", "worker-dead", "--count", "100")
    run.exporter("exporter")
    run.cli("error-namespace", "status", "--namespace", "dramatiq-trackr", show_code=True)
    run.cli("error-unreachable", "status", "--url", "redis://127.0.0.1:1/0", show_code=True)
    run.cli("error-cluster", "check", "--url", "redis+cluster://127.0.0.1:1", show_code=True)
    run.cli("error-unreachable-ok", "check", "--unreachable-ok", "--url", "redis+cluster://127.0.0.1:1", show_code=True)
    run.cli("error-usage", "inflight", "--cursor", "garbage", show_code=True)
    run.cli("error-message", "message", "no-such-message", show_code=True)


def rewrite(outputs: dict[str, str]) -> None:
    page = PAGE.read_text(encoding="utf-8")
    wanted = {match["name"] for match in BLOCK.finditer(page)}
    missing = wanted - set(outputs)
    if missing:
        raise SystemExit("The run produced no output for these blocks of docs/cli.md: %s" % ", ".join(sorted(missing)))

    def block(match: re.Match[str]) -> str:
        return "%s```console\n%s```\n%s" % (match[1], outputs[match["name"]], match[4])

    PAGE.write_text(BLOCK.sub(block, page), encoding="utf-8")
    print(
        "Rewrote %d blocks of %s; not used: %s" % (len(wanted), PAGE, ", ".join(sorted(set(outputs) - wanted)) or "-")
    )


def main() -> int:
    run = Run()
    try:
        scenario(run)
    finally:
        run.close()
    rewrite(run.outputs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
