"""The Prometheus exporter, scraped over HTTP while real workers run and die."""

from __future__ import annotations

import json
import re
import subprocess
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator

import pytest
from dramatiq.brokers.redis import RedisBroker

from dramatiq_tracker.events import KINDS, RECOVERED
from dramatiq_tracker.ops.reads import InspectionStore

from .conftest import Namespaces
from .support import BOUND, ROOT, WorkerProcess, kill, send, wait_for, wait_new_worker, wait_registered
from .test_cli import start

prometheus_client = pytest.importorskip("prometheus_client")
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from dramatiq_tracker.ops.exporter import METRICS  # noqa: E402

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture
def exporter(redis_url: str, namespaces: Namespaces) -> Iterator[Callable[..., str]]:
    """Start ``dramatiq-tracker exporter`` on a free port; returns its base URL."""
    started: list[subprocess.Popen[str]] = []

    def run(url: str = redis_url) -> str:
        process = start(
            "exporter", "--url", url, "--namespace", namespaces.tracker, "--host", "127.0.0.1", "--port", "0"
        )
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


def test_a_scrape_shows_the_cluster_and_a_killed_workers_recovery(
    exporter: Callable[..., str],
    namespaces: Namespaces,
    spawn_worker: Callable[..., WorkerProcess],
    producer: RedisBroker,
    store: InspectionStore,
) -> None:
    # Given a worker running two slow messages, and the exporter
    spawn_worker(threads=2, slow_seconds=60)
    (victim,) = wait_registered(store, 1)
    send(producer, namespaces.queue, "slow", 2)
    wait_for(lambda: len(store.inflight(victim.worker_id)) == 2, 20, message="recorded")
    base = exporter()
    queue = namespaces.queue

    # Then a scrape shows it
    samples = scrape(base)
    assert value(samples, "dramatiq_tracker_up") == 1
    assert value(samples, "dramatiq_tracker_workers", state="alive") == 1
    assert value(samples, "dramatiq_tracker_workers", state="dead") == 0
    assert value(samples, "dramatiq_tracker_inflight_messages", queue=queue) == 2
    assert value(samples, "dramatiq_tracker_orphaned_messages", queue=queue) == 0
    assert value(samples, "dramatiq_tracker_actor_inflight_messages", actor="slow") == 2
    assert 0 <= value(samples, "dramatiq_tracker_oldest_inflight_age_seconds", queue=queue) < 60
    assert value(samples, "dramatiq_tracker_orphans_waiting") == 0
    assert value(samples, "dramatiq_tracker_uniqueness_locks") == 0
    assert value(samples, "dramatiq_tracker_events_total", kind=RECOVERED) == 0
    # Every kind is there from the start, so that rate() and increase() work from the first event
    assert {labels[0][1] for name, labels in samples if name == "dramatiq_tracker_events_total"} >= set(KINDS)
    # And every documented metric is served
    assert {name for name, _ in samples} >= set(METRICS)

    # When the worker is SIGKILLed, its messages are orphans waiting once its heartbeat expired
    kill(victim.pid)
    samples = wait_for(
        lambda: (found := scrape(base)) and value(found, "dramatiq_tracker_orphans_waiting") == 2 and found,
        BOUND + 5,
        message="orphans waiting",
    )
    assert value(samples, "dramatiq_tracker_workers", state="unresponsive") == 1
    assert value(samples, "dramatiq_tracker_orphaned_messages", queue=queue) == 2

    # And when another worker starts, the recovery counter rises and the orphans gauge returns to 0
    spawn_worker(threads=2, slow_seconds=60)
    wait_new_worker(store, victim)
    samples = wait_for(
        lambda: (
            (found := scrape(base))
            and value(found, "dramatiq_tracker_events_total", kind=RECOVERED) == 2
            and value(found, "dramatiq_tracker_workers", state="dead") == 1
            and found
        ),
        BOUND + 5,
        message="recovered",
    )
    assert value(samples, "dramatiq_tracker_orphans_waiting") == 0
    assert value(samples, "dramatiq_tracker_events_total", kind="worker-dead") == 1
    assert value(samples, "dramatiq_tracker_sweeps_total") >= 0  # periodic sweeps only: a boot recovers at once
    assert value(samples, "dramatiq_tracker_sweep_seconds_total") >= 0
    assert value(samples, "dramatiq_tracker_last_sweep_seconds") >= 0


def test_an_unreachable_redis_is_up_0_not_an_error(exporter: Callable[..., str]) -> None:
    base = exporter("redis://127.0.0.1:1/0")

    samples = scrape(base)

    assert value(samples, "dramatiq_tracker_up") == 0
    assert value(samples, "dramatiq_tracker_scrape_duration_seconds") >= 0
    assert {name for name, _ in samples} == {"dramatiq_tracker_up", "dramatiq_tracker_scrape_duration_seconds"}
    # Other paths: a landing page, and 404
    with urllib.request.urlopen(base + "/", timeout=10) as response:
        assert b'href="/metrics"' in response.read()
    with pytest.raises(urllib.error.HTTPError) as raised:
        urllib.request.urlopen(base + "/nothing", timeout=10)
    raised.value.close()
    assert raised.value.code == 404


def exported_names(text: str) -> set[str]:
    names = set(re.findall(r"\bdramatiq_tracker_[a-z_]+", text))
    # Histogram-style suffixes are not used; a counter may be written with or without _total.
    return names


def test_the_alerting_rules_and_the_grafana_dashboard_use_only_exported_metrics() -> None:
    dashboard_text = (ROOT / "docs" / "grafana-dashboard.json").read_text(encoding="utf-8")
    dashboard = json.loads(dashboard_text)
    assert dashboard["title"] and dashboard["panels"]
    expressions = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    assert expressions and all("dramatiq_tracker_" in expr for expr in expressions)
    rules = (ROOT / "docs" / "prometheus-rules.yml").read_text(encoding="utf-8")
    for text in (dashboard_text, rules):
        unknown = exported_names(text) - set(METRICS)
        assert not unknown, unknown
    yaml = pytest.importorskip("yaml")
    groups = yaml.safe_load(rules)["groups"]
    alerts = {rule["alert"]: rule for group in groups for rule in group["rules"]}
    assert {"DramatiqTrackerDown", "DramatiqWorkerUnresponsive", "DramatiqOrphansWaiting"} <= set(alerts)
    assert all(rule["expr"] and rule["annotations"]["summary"] for rule in alerts.values())
