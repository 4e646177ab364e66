"""A Prometheus exporter for a whole tracker namespace: ``dramatiq-tracker exporter``.

One process serves ``/metrics`` for every worker of the namespace, read from the
tracker's Redis on each scrape (:meth:`Inspector.status <dramatiq_tracker.ops.inspection.Inspector.status>`,
which includes the counters): nothing is kept between scrapes, so any number of
exporters may run, and none needs Dramatiq's multiprocess directory.  When Redis
cannot be read, whatever the client (a Redis Cluster none of whose nodes answers
included), a scrape still answers, with ``dramatiq_tracker_up 0``.  Given the
application's broker, it also serves what the broker holds on each queue.

Label names are Dramatiq's own (``queue_name``, ``actor_name``), so that its
``dramatiq_messages_*`` metrics and these join on them.

It needs ``prometheus-client`` (the ``exporter`` extra), imported here only.
"""

from __future__ import annotations

import platform
import socket
import time
from collections.abc import Iterable, Iterator
from socketserver import ThreadingMixIn
from typing import TYPE_CHECKING
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import dramatiq
import redis
from dramatiq.logging import get_logger

from .._version import __version__
from ..events import KINDS
from .failures import explain
from .queues import queue_depths
from .views import STATES

try:
    from prometheus_client import CollectorRegistry, make_wsgi_app
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
    from prometheus_client.registry import Collector
except ImportError:  # pragma: no cover - exercised by a test without the extra, in a subprocess
    raise ImportError(
        "The exporter needs prometheus-client: pip install 'dramatiq-tracker[exporter]'", name="prometheus_client"
    ) from None

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment
    from dramatiq import Broker

    from .inspection import Inspector
    from .views import ClusterStatus, QueueDepth

__all__ = ["BROKER_METRICS", "DEFAULT_PORT", "METRICS", "TrackerCollector", "exporter_app", "make_exporter_server"]

#: The port ``dramatiq-tracker exporter`` listens on by default: beside the dashboard's 8711, and not
#: Dramatiq's own 9191 (``dramatiq_prom_port``), so that both may run in one pod.
DEFAULT_PORT = 9711

#: Every metric the exporter serves from the tracker's Redis, with its type and what it measures.
METRICS = {
    "dramatiq_tracker_up": ("gauge", "1 when this scrape read the tracker's Redis, 0 when it could not"),
    "dramatiq_tracker_scrape_duration_seconds": ("gauge", "How long reading the tracker's Redis took"),
    "dramatiq_tracker_build_info": ("gauge", "Always 1: the versions of this exporter, in its labels"),
    "dramatiq_tracker_workers": ("gauge", "Worker processes by state (dead and fenced: tombstones kept history_ttl)"),
    "dramatiq_tracker_inflight_messages": ("gauge", "Messages recorded in flight, by queue (orphans included)"),
    "dramatiq_tracker_orphans_waiting": (
        "gauge",
        "Messages recorded in flight by workers that are not alive, waiting for recovery, by queue",
    ),
    "dramatiq_tracker_outbox_messages": ("gauge", "Orphans parked in an outbox while they are enqueued again"),
    "dramatiq_tracker_oldest_orphan_age_seconds": (
        "gauge",
        "How long the longest-waiting orphan has waited since its worker died (0 without orphans)",
    ),
    "dramatiq_tracker_unswept_orphans": (
        "gauge",
        "Orphans of broker identities no live worker sweeps: they wait until one starts, or `recover` is run",
    ),
    "dramatiq_tracker_oldest_inflight_age_seconds": ("gauge", "How long the oldest message in flight ran, by queue"),
    "dramatiq_tracker_actor_inflight_messages": ("gauge", "Messages recorded in flight, by actor"),
    "dramatiq_tracker_uniqueness_locks": ("gauge", "Uniqueness locks held"),
    "dramatiq_tracker_events_total": ("counter", "Tracker events by kind, counted by every process"),
    "dramatiq_tracker_sweeps_total": ("counter", "Periodic sweeps that recovered something"),
    "dramatiq_tracker_sweep_seconds_total": ("counter", "Time spent in periodic sweeps that recovered something"),
    "dramatiq_tracker_last_sweep_duration_seconds": (
        "gauge",
        "How long the last periodic sweep that recovered something took",
    ),
    "dramatiq_tracker_recovery_latency_seconds": (
        "histogram",
        "Time from a worker's death (its presence lost, else its last heartbeat) to each of its orphans starting again",
    ),
    "dramatiq_tracker_unreadable_entries": ("gauge", "Corrupt or foreign entries skipped (left as they are)"),
}

#: The metrics served with the application's broker (``--broker``): what it holds on each queue.
BROKER_METRICS = {
    "dramatiq_tracker_broker_up": ("gauge", "1 when this scrape read the application's broker, 0 when it could not"),
    "dramatiq_tracker_broker_messages": (
        "gauge",
        "Messages the broker holds, by queue and state (ready, unacked, delayed, dead_letter)",
    ),
    "dramatiq_tracker_broker_oldest_message_age_seconds": (
        "gauge",
        "How long the next message to be fetched has waited since it was enqueued (RedisBroker), by queue",
    ),
}


def _gauge(name: str, labels: Iterable[str] = (), value: float | None = None) -> GaugeMetricFamily:
    help_text = {**METRICS, **BROKER_METRICS}[name][1]
    return GaugeMetricFamily(name, help_text, value=value, labels=list(labels) or None)


class TrackerCollector(Collector):
    """Collect a namespace's metrics from Redis, on each scrape.

    Parameters:
      inspector(Inspector): The tracker's Redis and namespace.
      broker(Broker): The application's broker, to read what it holds on each queue; optional.
      where(str): The tracker's Redis as it may be logged (a redacted URL).
    """

    def __init__(self, inspector: Inspector, broker: Broker | None = None, where: str = "") -> None:
        self.logger = get_logger(__name__, type(self))
        self.inspector = inspector
        self.broker = broker
        self.where = where or "its URL"
        self._failing = False
        self._broker_failing = False

    def describe(self) -> Iterable[Metric]:
        # Registering must not read Redis: no description.
        return []

    def collect(self) -> Iterator[Metric]:
        started = time.perf_counter()
        yield _build_info()
        try:
            status = self.inspector.status()
        except Exception as e:
            if not self._failing:
                self._failing = True
                self.logger.warning("%s; dramatiq_tracker_up is 0 until it is back.", explain(e, self.where))
            yield from self._up(0, started)
            return
        if self._failing:
            self._failing = False
            self.logger.info("The tracker's Redis can be read again.")
        yield from self._up(1, started)
        yield from _status_metrics(status)
        if self.broker is not None:
            yield from self._broker_metrics(self.broker)

    def _up(self, up: int, started: float) -> Iterator[Metric]:
        yield _gauge("dramatiq_tracker_up", value=up)
        yield _gauge("dramatiq_tracker_scrape_duration_seconds", value=time.perf_counter() - started)

    def _broker_metrics(self, broker: Broker) -> Iterator[Metric]:
        try:
            depths = queue_depths(broker)
        except Exception as e:  # any broker's client: the tracker's metrics stand without them
            if not self._broker_failing:
                self._broker_failing = True
                self.logger.warning("Cannot read the broker's queues (%s: %s).", type(e).__name__, e)
            yield _gauge("dramatiq_tracker_broker_up", value=0)
            return
        self._broker_failing = False
        yield _gauge("dramatiq_tracker_broker_up", value=1)
        yield from _broker_queue_metrics(depths)


def _build_info() -> Metric:
    info = _gauge("dramatiq_tracker_build_info", ["version", "dramatiq_version", "redis_py_version", "python_version"])
    info.add_metric([__version__, dramatiq.__version__, redis.__version__, platform.python_version()], 1)
    return info


def _status_metrics(status: ClusterStatus) -> Iterator[Metric]:
    """The metrics of what the tracker's Redis holds."""
    workers = _gauge("dramatiq_tracker_workers", ["state"])
    for state in STATES:
        workers.add_metric([state], status.workers.get(state, 0))
    yield workers

    inflight = _gauge("dramatiq_tracker_inflight_messages", ["queue_name"])
    orphans = _gauge("dramatiq_tracker_orphans_waiting", ["queue_name"])
    oldest = _gauge("dramatiq_tracker_oldest_inflight_age_seconds", ["queue_name"])
    for queue in status.queues:
        inflight.add_metric([queue.queue_name], queue.inflight)
        orphans.add_metric([queue.queue_name], queue.orphans)
        oldest.add_metric([queue.queue_name], queue.oldest / 1000)
    yield from (inflight, orphans, oldest)

    actors = _gauge("dramatiq_tracker_actor_inflight_messages", ["actor_name"])
    for actor, count in status.actors.items():
        actors.add_metric([actor], count)
    yield actors

    yield _gauge("dramatiq_tracker_outbox_messages", value=status.outbox)
    yield _gauge("dramatiq_tracker_oldest_orphan_age_seconds", value=status.oldest_orphan / 1000)
    yield _gauge("dramatiq_tracker_unswept_orphans", value=sum(found.orphans for found in status.unswept))
    yield _gauge("dramatiq_tracker_uniqueness_locks", value=status.locks)
    yield _gauge("dramatiq_tracker_unreadable_entries", value=len(status.problems))

    counters = status.counters
    events = CounterMetricFamily(
        "dramatiq_tracker_events", METRICS["dramatiq_tracker_events_total"][1], labels=["kind"]
    )
    for kind in sorted(set(KINDS) | set(counters.events)):
        events.add_metric([kind], counters.of(kind))
    yield events
    yield CounterMetricFamily("dramatiq_tracker_sweeps", METRICS["dramatiq_tracker_sweeps_total"][1], counters.sweeps)
    yield CounterMetricFamily(
        "dramatiq_tracker_sweep_seconds", METRICS["dramatiq_tracker_sweep_seconds_total"][1], counters.sweep_ms / 1000
    )
    yield _gauge("dramatiq_tracker_last_sweep_duration_seconds", value=counters.last_sweep_ms / 1000)
    yield HistogramMetricFamily(
        "dramatiq_tracker_recovery_latency_seconds",
        METRICS["dramatiq_tracker_recovery_latency_seconds"][1],
        buckets=[
            ("+Inf" if bound == float("inf") else repr(bound), count) for bound, count in counters.latency_buckets()
        ],
        sum_value=counters.recovery_latency_sum_ms / 1000,
    )


def _broker_queue_metrics(depths: Iterable[QueueDepth]) -> Iterator[Metric]:
    """The metrics of what the application's broker holds on each queue."""
    messages = _gauge("dramatiq_tracker_broker_messages", ["queue_name", "state"])
    oldest = _gauge("dramatiq_tracker_broker_oldest_message_age_seconds", ["queue_name"])
    for depth in depths:
        for state, count in (
            ("ready", depth.ready),
            ("unacked", depth.unacked),
            ("delayed", depth.delayed),
            ("dead_letter", depth.dead_letters),
        ):
            if count is not None:
                messages.add_metric([depth.queue_name, state], count)
        if depth.oldest_age is not None or depth.ready == 0:
            oldest.add_metric([depth.queue_name], (depth.oldest_age or 0) / 1000)
    yield from (messages, oldest)


_LANDING = b"""<html><head><title>dramatiq-tracker exporter</title></head>
<body><h1>dramatiq-tracker exporter</h1><p><a href="/metrics">Metrics</a></p></body></html>
"""


def exporter_app(inspector: Inspector, broker: Broker | None = None, where: str = "") -> WSGIApplication:
    """The exporter as a WSGI application: ``/metrics``, a landing page at ``/``, 404 elsewhere.

    Parameters:
      inspector(Inspector): The tracker's Redis and namespace.
      broker(Broker): The application's broker, for its queues' metrics; optional.
      where(str): The tracker's Redis as it may be logged (a redacted URL).
    """
    registry = CollectorRegistry(auto_describe=False)
    registry.register(TrackerCollector(inspector, broker, where))
    metrics = make_wsgi_app(registry)

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "/")
        if path == "/metrics":
            body: Iterable[bytes] = metrics(environ, start_response)
            return body
        if path == "/":
            start_response("200 OK", [("Content-Type", "text/html; charset=utf-8")])
            return [_LANDING]
        start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8")])
        return [b"Not found: the metrics are at /metrics\n"]

    return app


class _Server(ThreadingMixIn, WSGIServer):
    """Each scrape in a thread of its own, so that a slow one does not hold the others."""

    daemon_threads = True


class _Server6(_Server):
    address_family = socket.AF_INET6


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        """Scrapes are not logged."""


def make_exporter_server(
    inspector: Inspector,
    host: str = "0.0.0.0",
    port: int = DEFAULT_PORT,
    *,
    broker: Broker | None = None,
    where: str = "",
) -> WSGIServer:
    """An HTTP server of the exporter, bound and ready for ``serve_forever()``.

    Parameters:
      inspector(Inspector): The tracker's Redis and namespace.
      host(str): The address to listen on ("0.0.0.0": every IPv4 interface; "::" for IPv6).
      port(int): The port; 0 picks a free one (``server.server_port`` says which).
      broker(Broker): The application's broker, for its queues' metrics; optional.
      where(str): The tracker's Redis as it may be logged (a redacted URL).

    Raises:
      OSError: When the address cannot be bound.
    """
    server_class = _Server6 if ":" in host else _Server
    app = exporter_app(inspector, broker, where)
    return make_server(host, port, app, server_class=server_class, handler_class=_QuietHandler)
