"""``python manage.py rundramatiq``: the site's workers, configured by DRAMATIQ_BROKER and the environment."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from invoices.tasks import render_invoice

from dramatiq_tracker.ops import Inspector

SITE = Path(__file__).resolve().parent.parent


def test_rundramatiq_runs_tracked_workers_on_the_namespace_of_the_environment(
    tracker_redis_broker, tracker_redis, tracker_namespace, tracker_redis_url, tmp_path
):
    # Given rundramatiq started as a deployment starts it: the broker and the tracker from the environment
    env = {
        **os.environ,
        "REDIS_URL": tracker_redis_url,
        "DJANGOSHOP_BROKER_NAMESPACE": tracker_redis_broker.namespace,
        "DRAMATIQ_TRACKER_NAMESPACE": tracker_namespace,
    }
    log = (tmp_path / "rundramatiq.log").open("wb")
    command = [sys.executable, "manage.py", "rundramatiq", "--processes", "1", "--threads", "2"]
    process = subprocess.Popen(command, cwd=SITE, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        # When its worker process registers with the tracker, and a rendering is sent
        inspector = Inspector(client=tracker_redis, namespace=tracker_namespace)
        deadline = time.monotonic() + 60
        while not inspector.workers().items:
            assert process.poll() is None, (tmp_path / "rundramatiq.log").read_text()
            assert time.monotonic() < deadline, (tmp_path / "rundramatiq.log").read_text()
            time.sleep(0.1)
        render_invoice.send(11)
        # Then it renders it
        tracker_redis_broker.join(render_invoice.queue_name, timeout=30_000)
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(30)
        log.close()
