"""A short chaos soak (``benchmarks/chaos.py``): workers SIGKILLed, frozen past their heartbeat
timeout, and the tracker's Redis restarted empty, while messages flow; after some kills the sweeper
recovering the dead worker is frozen past ``takeover_after`` in the middle of the recovery (often in
a call of the soak's slow lock cleaner), so that another takes it over; on RabbitMQ, workers'
connections are closed from the server (``rabbitmqctl close_connection``), which requeues their
unacked messages while they run on. Nothing may be lost, no uniqueness lock may be left behind, a
message may run again only in the documented windows, and each recovery of a running orphan must
call the lock cleaner exactly once, never after the orphan ran again.

It runs only when selected (``pytest -m soak``, or ``SOAK=1``): it takes a minute or more per broker.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from .support import ROOT

pytestmark = [pytest.mark.soak, pytest.mark.slow, pytest.mark.timeout(600)]

#: A fixed seed, so that a failure replays: python benchmarks/chaos.py --seed 1 --duration 60 --broker ...
SEED = 1
DURATION = 60
RABBITMQ_URL = os.environ.get("RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")


@pytest.fixture(autouse=True)
def _only_when_selected(request: pytest.FixtureRequest) -> None:
    if "soak" not in (request.config.getoption("markexpr") or "") and not os.environ.get("SOAK"):
        pytest.skip("the chaos soak runs only when selected: pytest -m soak (or SOAK=1)")


def _rabbitmq_answers() -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", 5672), timeout=1):
        return True
    return False


@pytest.mark.parametrize("broker", ["redis", pytest.param("rabbitmq", marks=pytest.mark.rabbitmq)])
def test_a_short_chaos_soak_loses_nothing_and_leaks_no_lock(broker: str, tmp_path: Path) -> None:
    if broker == "rabbitmq" and "RABBITMQ_URL" not in os.environ and not _rabbitmq_answers():
        if os.environ.get("CI"):
            pytest.fail("RabbitMQ is not reachable on 127.0.0.1:5672")
        pytest.skip("RabbitMQ is not reachable on 127.0.0.1:5672 (set RABBITMQ_URL)")
    command = [
        sys.executable, str(ROOT / "benchmarks" / "chaos.py"),
        "--seed", str(SEED), "--duration", str(DURATION), "--broker", broker,
        "--rabbitmq-url", RABBITMQ_URL, "--logs", str(tmp_path),
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("DRAMATIQ_TRACKER_REDIS_URL", None)
    soak = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=540)
    # The whole report, so that a failure shows what was lost or leaked, and why.
    print(soak.stdout[-20000:], soak.stderr[-5000:])
    assert soak.returncode == 0, "the chaos soak failed (exit %d); its report is above" % soak.returncode
    assert "RESULT: passed" in soak.stdout
