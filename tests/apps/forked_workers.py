"""Two worker processes forked from one that built the broker and the tracker first, as an application
server that preloads its app and runs embedded Dramatiq workers does: both share one RedisBroker
``broker_id`` (and so its acks sets and its heartbeat).

    python -m tests.apps.forked_workers -- --threads N   (the other arguments of the dramatiq command are ignored)
"""

from __future__ import annotations

import os
import signal
import sys
import time

import dramatiq

from tests.apps import worker_app

#: How many worker processes share the broker.
CHILDREN = 2


def run_child(threads: int) -> None:
    # One message per thread, none prefetched: each child runs its own.
    worker = dramatiq.Worker(worker_app.broker, worker_threads=threads)
    worker.queue_prefetch = threads
    worker.start()

    def stop(*_: object) -> None:
        worker.stop()
        os._exit(0)

    signal.signal(signal.SIGTERM, stop)
    while True:
        time.sleep(1)


def main() -> None:
    threads = int(sys.argv[sys.argv.index("--threads") + 1]) if "--threads" in sys.argv else 1
    children = []
    for _ in range(CHILDREN):
        pid = os.fork()
        if pid == 0:
            run_child(threads)
        children.append(pid)
    for pid in children:
        os.waitpid(pid, 0)


if __name__ == "__main__":
    main()
