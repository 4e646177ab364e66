"""Pure logic: settings validation, the key layout, records, host facts."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import redis
from dramatiq.brokers.stub import StubBroker

import dramatiq_tracker
from dramatiq_tracker import ConfigurationError, Keys, TrackerMiddleware, namespaced_key
from dramatiq_tracker.host import HostFacts
from dramatiq_tracker.keys import RedisBrokerKeys, identity_digest
from dramatiq_tracker.records import CorruptRecord, InflightRecord, WorkerInfo, decode_payload, encode_payload


@pytest.mark.parametrize(
    ("settings", "setting"),
    [
        ({"heartbeat_interval": 0}, "heartbeat_interval"),
        ({"heartbeat_interval": "5000"}, "heartbeat_interval"),
        ({"heartbeat_interval": 5000.0}, "heartbeat_interval"),
        ({"heartbeat_interval": True}, "heartbeat_interval"),
        ({"heartbeat_timeout": 6000}, "heartbeat_timeout"),
        ({"sweep_interval": -1}, "sweep_interval"),
        ({"max_recoveries": -1}, "max_recoveries"),
        ({"flush_interval": 0}, "flush_interval"),
        ({"flush_interval": 5000}, "flush_interval"),
        ({"history_ttl": 1000}, "history_ttl"),
        ({"namespace": ""}, "namespace"),
        ({"namespace": "a{b}"}, "namespace"),
        ({"namespace": "has space"}, "namespace"),
        ({"url": "http://example.com"}, "url"),
        ({"url": "redis://localhost", "client": redis.Redis()}, "url"),
        ({"client": "redis://localhost"}, "client"),
        ({"lock_cleaners": [42]}, "lock_cleaners"),
    ],
)
def test_invalid_settings_fail_at_construction_naming_the_setting(settings: dict[str, object], setting: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        TrackerMiddleware(**settings)  # type: ignore[arg-type]
    assert info.value.setting == setting
    assert str(info.value).startswith(setting + ":")
    assert isinstance(info.value, ValueError)


def test_defaults_recover_within_twenty_seconds() -> None:
    tracker = TrackerMiddleware()
    assert tracker.settings.recovery_bound <= 20_000
    assert tracker.settings.heartbeat_timeout >= 2 * tracker.settings.heartbeat_interval


def test_the_key_layout_is_fixed() -> None:
    keys = Keys("app")
    assert namespaced_key("app", "workers") == "{app}:v1:workers"
    assert keys.workers == "{app}:v1:workers"
    assert keys.identities == "{app}:v1:identities"
    assert keys.deadlines("b1") == "{app}:v1:deadlines:b1"
    assert keys.dead_workers == "{app}:v1:dead-workers"
    assert keys.running == "{app}:v1:running"
    assert keys.outbox("b1") == "{app}:v1:outbox:b1"
    assert keys.sweep_lease("b1") == "{app}:v1:sweep-lease:b1"
    assert keys.heartbeat("w1") == "{app}:v1:worker:w1:heartbeat"
    assert keys.inflight("w1") == "{app}:v1:worker:w1:inflight"
    assert keys.revoked("w1") == "{app}:v1:worker:w1:revoked"
    assert keys.counters == "{app}:v1:counters"
    assert keys.events == "{app}:v1:events"
    assert keys.locks == "{app}:v1:locks"
    assert keys.lock("d") == "{app}:v1:lock:d"
    assert identity_digest("redis:redis://localhost:6379/0#dramatiq") == "14e2f936343c"
    assert keys.host("h") == "{app}:v1:host:h"
    assert keys.broker("b") == "{app}:v1:broker:b"
    assert keys.message("m") == "{app}:v1:message:m"
    broker_keys = RedisBrokerKeys("dramatiq")
    assert broker_keys.acks("b", "default") == "dramatiq:__acks__.b.default"
    assert broker_keys.queue("default.DQ") == "dramatiq:default.DQ"
    assert broker_keys.messages("default") == "dramatiq:default.msgs"
    assert broker_keys.heartbeats == "dramatiq:__heartbeats__"
    assert broker_keys.tracked_processes("app") == "dramatiq:__tracker__.app"


def test_no_module_but_keys_formats_a_key() -> None:
    # The package that is imported: the checkout's, or the installed one when the sdist's tests run.
    package = os.path.dirname(dramatiq_tracker.__file__)
    for name in os.listdir(package):
        if name.endswith(".py") and name != "keys.py":
            with open(os.path.join(package, name)) as f:
                source = f.read()
            assert ":v1:" not in source and "__acks__." not in source, name


def test_binary_payloads_survive_a_record_round_trip() -> None:
    for data in (b'{"a": 1}', bytes(range(256))):
        assert decode_payload(*encode_payload(data)) == data


def test_corrupt_records_are_reported_not_crashed_on() -> None:
    for raw in (b"not json", b"[]", b'{"a": 1}', b'{"a": "x", "q": "q", "t": "1", "s": -1, "x": 3}', b"\xff\xfe"):
        with pytest.raises(CorruptRecord):
            InflightRecord.from_json(raw, message_id="m", worker_id="w")
        with pytest.raises(CorruptRecord):
            WorkerInfo.from_json(raw)
    record = InflightRecord("m", "w", "a", "q", "t", 0, payload="garbage", payload_encoding="utf-8")
    with pytest.raises(CorruptRecord):
        record.message()
    with pytest.raises(CorruptRecord):
        InflightRecord("m", "w", "a", "q", "t", 0).message()
    with pytest.raises(CorruptRecord):
        decode_payload("x", "rot13")


def test_a_process_that_exited_is_gone_and_a_live_one_is_not() -> None:
    here = HostFacts.current()
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert here.process_is_gone(HostFacts(here.hostname, child.pid, "1", here.boot_id, here.pid_namespace))
    assert not here.process_is_gone(here)
    # A reused pid: the same number, another start time
    assert here.process_is_gone(HostFacts(here.hostname, here.pid, "0", here.boot_id, here.pid_namespace))
    # Another host, boot or pid namespace cannot be judged from here
    assert not here.process_is_gone(HostFacts("elsewhere", child.pid, "1", here.boot_id, here.pid_namespace))
    assert not here.process_is_gone(HostFacts(here.hostname, child.pid, "1", "other-boot", here.pid_namespace))


def test_the_middleware_declares_its_actor_options() -> None:
    broker = StubBroker()
    broker.add_middleware(TrackerMiddleware())
    assert {"track", "max_recoveries"} <= broker.actor_options
    broker.close()


def test_settings_not_given_come_from_the_environment_the_command_line_reads(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given the variables a framework's settings (Django, Flask) or a deployment set
    monkeypatch.setenv("DRAMATIQ_TRACKER_NAMESPACE", "from-env")
    monkeypatch.setenv("DRAMATIQ_TRACKER_HEARTBEAT_INTERVAL", "2000")
    monkeypatch.setenv("DRAMATIQ_TRACKER_HEARTBEAT_TIMEOUT", "9000")
    monkeypatch.setenv("DRAMATIQ_TRACKER_SWEEP_INTERVAL", "3000")
    monkeypatch.setenv("DRAMATIQ_TRACKER_MAX_RECOVERIES", "0")
    monkeypatch.setenv("DRAMATIQ_TRACKER_PRESENCE", "off")
    monkeypatch.setenv("DRAMATIQ_TRACKER_PRESENCE_GRACE", "1500")

    # When the middleware is made without arguments, or with some
    settings = TrackerMiddleware().settings
    given = TrackerMiddleware(namespace="given", heartbeat_interval=1000, presence=True).settings

    # Then what is not given comes from the environment, and what is given wins
    assert (settings.namespace, settings.heartbeat_interval, settings.heartbeat_timeout) == ("from-env", 2000, 9000)
    assert (settings.sweep_interval, settings.max_recoveries) == (3000, 0)
    assert (settings.presence, settings.presence_grace) == (False, 1500)
    assert (given.namespace, given.heartbeat_interval, given.heartbeat_timeout, given.presence) == (
        "given",
        1000,
        9000,
        True,
    )


def test_without_arguments_nor_environment_the_defaults_hold(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("DRAMATIQ_TRACKER_"):
            monkeypatch.delenv(name)
    settings = TrackerMiddleware().settings
    assert (settings.namespace, settings.heartbeat_interval, settings.heartbeat_timeout) == (
        "dramatiq-tracker",
        5000,
        15000,
    )
    assert (settings.sweep_interval, settings.max_recoveries, settings.presence, settings.presence_grace) == (
        5000,
        3,
        True,
        1000,
    )


@pytest.mark.parametrize(
    ("variable", "value", "named"),
    [
        ("DRAMATIQ_TRACKER_HEARTBEAT_INTERVAL", "fast", "DRAMATIQ_TRACKER_HEARTBEAT_INTERVAL"),
        ("DRAMATIQ_TRACKER_PRESENCE", "maybe", "DRAMATIQ_TRACKER_PRESENCE"),
        ("DRAMATIQ_TRACKER_NAMESPACE", "a{b}", "DRAMATIQ_TRACKER_NAMESPACE"),
        ("DRAMATIQ_TRACKER_HEARTBEAT_TIMEOUT", "10", "DRAMATIQ_TRACKER_HEARTBEAT_TIMEOUT"),
    ],
)
def test_an_invalid_environment_variable_fails_at_construction_naming_it(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, named: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigurationError) as raised:
        TrackerMiddleware()
    assert raised.value.setting == named


@pytest.mark.parametrize(
    "url",
    [
        "redis+sentinel://user:hunter2secret@h:26379/",
        "redis+sentinel://user:hunter2secret@/service",
        "http://user:hunter2secret@localhost/0",
        "redis+sentinel://h:26379/svc/notadb?sentinel_password=hunter2secret",
    ],
)
def test_a_url_that_is_refused_is_named_without_its_secrets(url: str) -> None:
    with pytest.raises(ConfigurationError) as refused:
        TrackerMiddleware(url=url)
    assert refused.value.setting == "url"
    assert "hunter2secret" not in str(refused.value)
    assert "***" in str(refused.value)
