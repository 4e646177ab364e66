"""The Prometheus exporter, scraped over HTTP while real workers run and die."""

from __future__ import annotations

import json
import re
import subprocess
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator

import pytest
import redis
from dramatiq.brokers.redis import RedisBroker

from dramatiq_tracker.events import KINDS, RECOVERED
from dramatiq_tracker.ops.reads import InspectionStore

from .conftest import Cluster, Namespaces
from .dashboard_seed import LATENCY_COUNTERS
from .support import BOUND, ROOT, kill, send, wait_for
from .test_cli import app_env, start

prometheus_client = pytest.importorskip("prometheus_client")
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from dramatiq_tracker.ops.exporter import BROKER_METRICS, DEFAULT_PORT, METRICS  # noqa: E402

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture
def exporter(redis_url: str, namespaces: Namespaces) -> Iterator[Callable[..., str]]:
    """Start ``dramatiq-tracker exporter`` on a free port; returns its base URL."""
    started: list[subprocess.Popen[str]] = []

    def run(url: str = redis_url, *, broker: str = "", env: dict[str, str] | None = None) -> str:
        source = ["--broker", broker] if broker else ["--url", url, "--namespace", namespaces.tracker]
        process = start("exporter", *source, "--host", "127.0.0.1", "--port", "0", env=env)
        started.append(process)
        assert process.stderr is not None
        while True:
            line = process.stderr.readline()
            assert line, "the exporter exited: %r" % process.communicate(timeout=10)[1]
            found = re.search(r"at (http://127\.0\.0\.1:\d+)/metrics", line)
            if found:
                return found[1]

    yield run
    for process in started:
        process.terminate()
        _, err = process.communicate(timeout=20)
        assert process.returncode == 0 and "Traceback" not in err  # SIGTERM: a clean exit


def scrape(base: str) -> Samples:
    with urllib.request.urlopen(base + "/metrics", timeout=30) as response:
        assert response.status == 200
        text = response.read().decode()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), float("nan"))


def served(samples: Samples) -> set[str]:
    """The metrics served, by the names of METRICS (a histogram's samples end in _bucket, _sum, _count)."""
    names = {name for name, _ in samples}
    return {
        metric
        for metric in {**METRICS, **BROKER_METRICS}
        if metric in names or any(name in names for name in (metric + "_bucket", metric + "_count"))
    }


def test_a_scrape_shows_the_cluster_and_a_killed_workers_recovery(
    exporter: Callable[..., str], cluster: Cluster, producer: RedisBroker
) -> None:
    # Given a worker running two slow messages, and the exporter
    victim, _ = cluster.busy_worker(producer, 2)
    base = exporter()
    queue = cluster.names.queue

    # Then a scrape shows it
    samples = scrape(base)
    assert value(samples, "dramatiq_tracker_up") == 1
    assert value(samples, "dramatiq_tracker_workers", state="alive") == 1
    assert value(samples, "dramatiq_tracker_workers", state="dead") == 0
    assert value(samples, "dramatiq_tracker_inflight_messages", queue_name=queue) == 2
    assert value(samples, "dramatiq_tracker_orphans_waiting", queue_name=queue) == 0
    assert value(samples, "dramatiq_tracker_actor_inflight_messages", actor_name="slow") == 2
    assert 0 <= value(samples, "dramatiq_tracker_oldest_inflight_age_seconds", queue_name=queue) < 60
    assert value(samples, "dramatiq_tracker_oldest_orphan_age_seconds") == 0
    assert value(samples, "dramatiq_tracker_uniqueness_locks") == 0
    assert value(samples, "dramatiq_tracker_events_total", kind=RECOVERED) == 0
    # Every kind is there from the start, so that rate() and increase() work from the first event
    assert {labels[0][1] for name, labels in samples if name == "dramatiq_tracker_events_total"} >= set(KINDS)
    # And every documented metric of the tracker's Redis is served
    assert served(samples) == set(METRICS)

    # When the worker is SIGKILLed, it is gone at once (this host sees it), its messages orphans waiting
    # that no live worker sweeps
    kill(victim.pid)
    samples = wait_for(
        lambda: (found := scrape(base)) and value(found, "dramatiq_tracker_workers", state="gone") == 1 and found,
        5,
        message="gone",
    )
    assert value(samples, "dramatiq_tracker_orphans_waiting", queue_name=queue) == 2
    assert value(samples, "dramatiq_tracker_unswept_orphans") == 2
    samples = wait_for(
        lambda: (found := scrape(base)) and value(found, "dramatiq_tracker_oldest_orphan_age_seconds") > 0 and found,
        BOUND,
        message="an orphan waiting",
    )

    # And when another worker starts, the recovery counter rises and the orphans gauge returns to 0
    cluster.spawn(threads=2, slow_seconds=60)
    cluster.wait_new_worker(victim)
    samples = wait_for(
        lambda: (
            (found := scrape(base))
            and value(found, "dramatiq_tracker_events_total", kind=RECOVERED) == 2
            and value(found, "dramatiq_tracker_workers", state="dead") == 1
            # (the recovered copies running on the new worker: the queue's gauges are there again)
            and value(found, "dramatiq_tracker_inflight_messages", queue_name=queue) == 2
            and found
        ),
        BOUND + 5,
        message="recovered",
    )
    assert value(samples, "dramatiq_tracker_orphans_waiting", queue_name=queue) == 0
    assert value(samples, "dramatiq_tracker_unswept_orphans") == 0
    assert value(samples, "dramatiq_tracker_events_total", kind="worker-dead") == 1
    assert value(samples, "dramatiq_tracker_sweeps_total") >= 0  # periodic sweeps only: a boot recovers at once
    assert value(samples, "dramatiq_tracker_sweep_seconds_total") >= 0
    assert value(samples, "dramatiq_tracker_last_sweep_duration_seconds") >= 0


def test_an_unreachable_redis_is_up_0_not_an_error(exporter: Callable[..., str]) -> None:
    base = exporter("redis://127.0.0.1:1/0")

    samples = scrape(base)

    assert value(samples, "dramatiq_tracker_up") == 0
    assert value(samples, "dramatiq_tracker_scrape_duration_seconds") >= 0
    assert {name for name, _ in samples} == {
        "dramatiq_tracker_up",
        "dramatiq_tracker_scrape_duration_seconds",
        "dramatiq_tracker_build_info",
    }
    # Other paths: a landing page, and 404
    with urllib.request.urlopen(base + "/", timeout=10) as response:
        assert b'href="/metrics"' in response.read()
    with pytest.raises(urllib.error.HTTPError) as raised:
        urllib.request.urlopen(base + "/nothing", timeout=10)
    raised.value.close()
    assert raised.value.code == 404


def exported_names(text: str) -> set[str]:
    """The metric names a text uses, a histogram's samples by the histogram's name."""
    names = set(re.findall(r"\bdramatiq_tracker_[a-z_]+", text))
    return {
        re.sub(r"_(bucket|sum|count)$", "", name) if name.endswith(("_bucket", "_sum", "_count")) else name
        for name in names
    }


def test_the_alerting_rules_and_the_grafana_dashboard_use_only_exported_metrics() -> None:
    dashboard_text = (ROOT / "docs" / "grafana-dashboard.json").read_text(encoding="utf-8")
    dashboard = json.loads(dashboard_text)
    assert dashboard["title"] and dashboard["panels"]
    expressions = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    assert expressions and all("dramatiq_tracker_" in expr for expr in expressions)
    rules = (ROOT / "docs" / "prometheus-rules.yml").read_text(encoding="utf-8")
    for text in (dashboard_text, rules):
        unknown = exported_names(text) - set(METRICS) - set(BROKER_METRICS)
        assert not unknown, unknown
    yaml = pytest.importorskip("yaml")
    groups = yaml.safe_load(rules)["groups"]
    alerts = {rule["alert"]: rule for group in groups for rule in group["rules"]}
    assert {"DramatiqTrackerDown", "DramatiqWorkerUnresponsive", "DramatiqOrphansWaiting"} <= set(alerts)
    assert {"DramatiqOrphansUnswept", "DramatiqRecoverySlow"} <= set(alerts)
    # Dramatiq's own label names: its metrics and these join on them
    for text in (dashboard_text, rules):
        assert not re.search(r"[{,(]\s*(queue|actor)\s*[=!~,)}]", text), "a label of the old names"
    assert all(rule["expr"] and rule["annotations"]["summary"] for rule in alerts.values())


def test_the_recovery_latency_the_workers_count_is_a_histogram_of_seconds(
    exporter: Callable[..., str], redis_client: redis.Redis, store: InspectionStore
) -> None:
    # Given what the workers counted: 2 orphans started again within 0.5 s, 5 within 3 s, 1 later
    redis_client.hset(store.keys.counters, mapping=LATENCY_COUNTERS)
    samples = scrape(exporter())
    name = "dramatiq_tracker_recovery_latency_seconds"
    assert value(samples, name + "_bucket", le="0.25") == 0 and value(samples, name + "_bucket", le="0.5") == 2
    assert value(samples, name + "_bucket", le="2.0") == 2 and value(samples, name + "_bucket", le="3.0") == 7
    assert value(samples, name + "_bucket", le="120.0") == 7 and value(samples, name + "_bucket", le="+Inf") == 8
    assert (value(samples, name + "_count"), value(samples, name + "_sum")) == (8, 20)
    # And nothing of it is taken for an event kind
    assert not [
        labels for metric, labels in samples if metric == "dramatiq_tracker_events_total" and "latency" in str(labels)
    ]
    build = [labels for metric, labels in samples if metric == "dramatiq_tracker_build_info"]
    assert len(build) == 1 and dict(build[0])["version"] and dict(build[0])["dramatiq_version"]


def test_with_the_applications_broker_it_serves_what_each_queue_holds(
    exporter: Callable[..., str], redis_url: str, namespaces: Namespaces, producer: RedisBroker
) -> None:
    # Given messages waiting on the application's queue, and no worker
    producer.declare_queue(namespaces.queue)
    send(producer, namespaces.queue, "slow", 3)
    env = app_env(redis_url, namespaces)
    samples = wait_for(
        lambda: (
            (found := scrape(exporter(broker="tests.apps.worker_app:broker", env=env)))
            and value(found, "dramatiq_tracker_broker_oldest_message_age_seconds", queue_name=namespaces.queue) >= 0
            and found
        ),
        30,
        message="the broker's metrics",
    )
    queue = namespaces.queue
    assert value(samples, "dramatiq_tracker_broker_up") == 1
    assert value(samples, "dramatiq_tracker_broker_messages", queue_name=queue, state="ready") == 3
    assert value(samples, "dramatiq_tracker_broker_messages", queue_name=queue, state="unacked") == 0
    assert value(samples, "dramatiq_tracker_broker_messages", queue_name=queue, state="delayed") == 0
    assert value(samples, "dramatiq_tracker_broker_messages", queue_name=queue, state="dead_letter") == 0
    assert served(samples) >= set(BROKER_METRICS)


def test_its_default_port_is_not_dramatiqs() -> None:
    from dramatiq_tracker.ops.cli import build_parser

    assert DEFAULT_PORT == build_parser().parse_args(["exporter"]).port == 9711 != 9191
