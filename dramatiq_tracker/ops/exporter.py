"""A Prometheus exporter for a whole tracker namespace: ``dramatiq-tracker exporter``.

One process serves ``/metrics`` for every worker of the namespace, read from the
tracker's Redis on each scrape (:meth:`Inspector.status <dramatiq_tracker.ops.inspection.Inspector.status>`,
which includes the counters): nothing is kept between scrapes, so any number of
exporters may run, and none needs Dramatiq's multiprocess directory.  When Redis
cannot be read, a scrape still answers, with ``dramatiq_tracker_up 0``.

It needs ``prometheus-client`` (the ``exporter`` extra), imported here only.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterable, Iterator
from socketserver import ThreadingMixIn
from typing import TYPE_CHECKING
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from dramatiq.logging import get_logger

from ..events import KINDS
from .views import ALIVE, DEAD, FENCED, RECOVERING, UNRESPONSIVE

try:
    from prometheus_client import CollectorRegistry, make_wsgi_app
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
    from prometheus_client.registry import Collector
except ImportError:  # pragma: no cover - exercised by a test without the extra, in a subprocess
    raise ImportError(
        "The exporter needs prometheus-client: pip install 'dramatiq-tracker[exporter]'", name="prometheus_client"
    ) from None

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

    from .inspection import Inspector

__all__ = ["DEFAULT_PORT", "METRICS", "TrackerCollector", "exporter_app", "make_exporter_server"]

#: The port ``dramatiq-tracker exporter`` listens on by default.
DEFAULT_PORT = 9191

#: Every metric the exporter serves, with its type and what it measures.
METRICS = {
    "dramatiq_tracker_up": ("gauge", "1 when this scrape read the tracker's Redis, 0 when it could not"),
    "dramatiq_tracker_scrape_duration_seconds": ("gauge", "How long reading the tracker's Redis took"),
    "dramatiq_tracker_workers": ("gauge", "Worker processes by state (dead and fenced: tombstones kept history_ttl)"),
    "dramatiq_tracker_inflight_messages": ("gauge", "Messages recorded in flight, by queue (orphans included)"),
    "dramatiq_tracker_orphaned_messages": ("gauge", "Messages recorded by workers that are not alive, by queue"),
    "dramatiq_tracker_oldest_inflight_age_seconds": ("gauge", "How long the oldest message in flight ran, by queue"),
    "dramatiq_tracker_actor_inflight_messages": ("gauge", "Messages recorded in flight, by actor"),
    "dramatiq_tracker_orphans_waiting": ("gauge", "Messages waiting for recovery: orphaned records and the outbox"),
    "dramatiq_tracker_outbox_messages": ("gauge", "Orphans parked in an outbox while they are enqueued again"),
    "dramatiq_tracker_uniqueness_locks": ("gauge", "Uniqueness locks held"),
    "dramatiq_tracker_events_total": ("counter", "Tracker events by kind, counted by every process"),
    "dramatiq_tracker_sweeps_total": ("counter", "Periodic sweeps that recovered something"),
    "dramatiq_tracker_sweep_seconds_total": ("counter", "Time spent in periodic sweeps that recovered something"),
    "dramatiq_tracker_last_sweep_seconds": ("gauge", "How long the last periodic sweep that recovered something took"),
    "dramatiq_tracker_unreadable_entries": ("gauge", "Corrupt or foreign entries skipped (left as they are)"),
}

_STATES = (ALIVE, UNRESPONSIVE, RECOVERING, DEAD, FENCED)


def _gauge(name: str, labels: Iterable[str] = ()) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, METRICS[name][1], labels=list(labels) or None)


class TrackerCollector(Collector):
    """Collect a namespace's metrics from Redis, on each scrape.

    Parameters:
      inspector(Inspector): The tracker's Redis and namespace.
    """

    def __init__(self, inspector: Inspector) -> None:
        self.logger = get_logger(__name__, type(self))
        self.inspector = inspector
        self._failing = False

    def describe(self) -> Iterable[Metric]:
        # Registering must not read Redis: no description.
        return []

    def collect(self) -> Iterator[Metric]:
        started = time.perf_counter()
        try:
            status = self.inspector.status()
        except Exception as e:
            if not self._failing:
                self._failing = True
                self.logger.warning(
                    "Cannot read the tracker's Redis (%s: %s); dramatiq_tracker_up is 0 until it is back.",
                    type(e).__name__,
                    e,
                )
            yield from self._up(0, started)
            return
        if self._failing:
            self._failing = False
            self.logger.info("The tracker's Redis can be read again.")
        yield from self._up(1, started)

        workers = _gauge("dramatiq_tracker_workers", ["state"])
        for state in _STATES:
            workers.add_metric([state], status.workers.get(state, 0))
        yield workers

        inflight = _gauge("dramatiq_tracker_inflight_messages", ["queue"])
        orphaned = _gauge("dramatiq_tracker_orphaned_messages", ["queue"])
        oldest = _gauge("dramatiq_tracker_oldest_inflight_age_seconds", ["queue"])
        for queue in status.queues:
            inflight.add_metric([queue.queue_name], queue.inflight)
            orphaned.add_metric([queue.queue_name], queue.orphans)
            oldest.add_metric([queue.queue_name], queue.oldest / 1000)
        yield from (inflight, orphaned, oldest)

        actors = _gauge("dramatiq_tracker_actor_inflight_messages", ["actor"])
        for actor, count in status.actors.items():
            actors.add_metric([actor], count)
        yield actors

        for name, value in (
            ("dramatiq_tracker_orphans_waiting", status.orphans),
            ("dramatiq_tracker_outbox_messages", status.outbox),
            ("dramatiq_tracker_uniqueness_locks", status.locks),
            ("dramatiq_tracker_unreadable_entries", len(status.problems)),
        ):
            yield GaugeMetricFamily(name, METRICS[name][1], value=value)

        counters = status.counters
        events = CounterMetricFamily(
            "dramatiq_tracker_events", METRICS["dramatiq_tracker_events_total"][1], labels=["kind"]
        )
        for kind in sorted(set(KINDS) | set(counters.events)):
            events.add_metric([kind], counters.of(kind))
        yield events
        yield CounterMetricFamily(
            "dramatiq_tracker_sweeps", METRICS["dramatiq_tracker_sweeps_total"][1], counters.sweeps
        )
        yield CounterMetricFamily(
            "dramatiq_tracker_sweep_seconds",
            METRICS["dramatiq_tracker_sweep_seconds_total"][1],
            counters.sweep_ms / 1000,
        )
        yield GaugeMetricFamily(
            "dramatiq_tracker_last_sweep_seconds",
            METRICS["dramatiq_tracker_last_sweep_seconds"][1],
            value=counters.last_sweep_ms / 1000,
        )

    def _up(self, up: int, started: float) -> Iterator[Metric]:
        yield GaugeMetricFamily("dramatiq_tracker_up", METRICS["dramatiq_tracker_up"][1], value=up)
        yield GaugeMetricFamily(
            "dramatiq_tracker_scrape_duration_seconds",
            METRICS["dramatiq_tracker_scrape_duration_seconds"][1],
            value=time.perf_counter() - started,
        )


_LANDING = b"""<html><head><title>dramatiq-tracker exporter</title></head>
<body><h1>dramatiq-tracker exporter</h1><p><a href="/metrics">Metrics</a></p></body></html>
"""


def exporter_app(inspector: Inspector) -> WSGIApplication:
    """The exporter as a WSGI application: ``/metrics``, a landing page at ``/``, 404 elsewhere."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(TrackerCollector(inspector))
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


def make_exporter_server(inspector: Inspector, host: str = "0.0.0.0", port: int = DEFAULT_PORT) -> WSGIServer:
    """An HTTP server of the exporter, bound and ready for ``serve_forever()``.

    Parameters:
      inspector(Inspector): The tracker's Redis and namespace.
      host(str): The address to listen on ("0.0.0.0": every IPv4 interface; "::" for IPv6).
      port(int): The port; 0 picks a free one (``server.server_port`` says which).

    Raises:
      OSError: When the address cannot be bound.
    """
    server_class = _Server6 if ":" in host else _Server
    return make_server(host, port, exporter_app(inspector), server_class=server_class, handler_class=_QuietHandler)
