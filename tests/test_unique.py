"""Uniqueness locks: modes, digests, conflicts and owner-checked release, against a real Redis."""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import dramatiq
import pytest
from dramatiq.middleware import CurrentMessage

from dramatiq_tracker import ConfigurationError, DuplicateMessage, TrackerMiddleware, UniqueKeyError
from dramatiq_tracker.unique import compute_digest, resolve_policy

from .conftest import Namespaces, StubApp
from .support import reads, wait_for


class App(StubApp):
    """A StubBroker with a tracker whose locks live in the test Redis, and an embedded Worker."""

    def __init__(self, redis_url: str, namespace: str, threads: int = 4, **tracker_options: Any) -> None:
        super().__init__(redis_url, namespace, threads=threads, worker_timeout=20, **tracker_options)
        self.started: list[str] = []
        self.running = 0
        self.most_running = 0
        self.lock = threading.Lock()

    def actor(self, fn: Callable[..., Any] | None = None, **options: Any) -> Any:
        def decorate(fn: Callable[..., Any]) -> Any:
            @functools.wraps(fn)
            def body(*args: Any, **kwargs: Any) -> Any:
                message = CurrentMessage.get_current_message()
                assert message is not None
                with self.lock:
                    self.started.append(message.message_id)
                    self.running += 1
                    self.most_running = max(self.most_running, self.running)
                try:
                    return fn(*args, **kwargs)
                finally:
                    with self.lock:
                        self.running -= 1

            return dramatiq.actor(body, broker=self.broker, **{"max_retries": 0, **options})

        return decorate(fn) if fn else decorate

    def drain(self) -> None:
        for queue in list(self.broker.queues):
            if not queue.endswith((".DQ", ".XQ")):
                self.broker.join(queue, fail_fast=False)
        self.worker.join()

    def locks(self) -> list[str]:
        return [lock.digest for lock in self.tracker.store.locks()]


@pytest.fixture
def app(redis_url: str, namespaces: Namespaces) -> Iterator[App]:
    app = App(redis_url, namespaces.tracker)
    yield app
    app.close()


# Policies and digests ----------------------------------------------------------------


def test_options_resolve_from_the_message_then_the_actor_then_the_middleware() -> None:
    assert resolve_policy({}, {}, {"unique": False}) is None
    assert resolve_policy({}, {"unique": True}, {}).mode == "until_executed"  # type: ignore[union-attr]
    policy = resolve_policy({"unique": "while_executing"}, {"unique": True, "unique_ttl": 5000}, {"unique_ttl": 9})
    assert policy is not None and policy.mode == "while_executing" and policy.ttl == 5000
    assert policy.on_conflict == "delay"
    assert resolve_policy({}, {}, {"unique": "until_executing"}).on_conflict == "raise"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("options", "setting"),
    [
        ({"unique": "sometimes"}, "unique"),
        ({"unique": True, "unique_key": 42}, "unique_key"),
        ({"unique": True, "unique_ttl": 0}, "unique_ttl"),
        ({"unique": True, "unique_ttl": 1.5}, "unique_ttl"),
        ({"unique": "until_expired"}, "unique_ttl"),
        ({"unique": True, "unique_on_conflict": "skip"}, "unique_on_conflict"),
        ({"unique": "while_executing", "unique_on_conflict": "raise"}, "unique_on_conflict"),
        ({"unique": "while_executing", "unique_delay": -1}, "unique_delay"),
    ],
)
def test_invalid_actor_options_fail_when_the_actor_is_declared(app: App, options: dict[str, Any], setting: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        dramatiq.actor(lambda: None, broker=app.broker, actor_name="bad", **options)
    assert info.value.setting == setting


def test_invalid_middleware_defaults_fail_at_construction() -> None:
    with pytest.raises(ConfigurationError) as info:
        TrackerMiddleware(unique_on_conflict="sometimes")
    assert info.value.setting == "unique_on_conflict"
    with pytest.raises(ConfigurationError) as info:
        TrackerMiddleware(unique="until_expired")
    assert info.value.setting == "unique_ttl"


def test_invalid_message_options_fail_the_send(app: App) -> None:
    @app.actor
    def work(x: int) -> None:
        pass

    with pytest.raises(ConfigurationError) as info:
        work.send_with_options(args=(1,), unique="forever")
    assert info.value.setting == "unique"


def test_digests_are_stable_and_pick_what_identifies_a_duplicate() -> None:
    # The digest of a fixed input never changes: it is shared by processes and Python versions.
    assert compute_digest("charge", "default", (1, "a"), {"b": [1.5, None, True]}) == (
        "3a2b38b32f447e9b4c0ef35a47811cb2"
    )
    assert compute_digest("a", "q", (1,), {}) == compute_digest("a", "q.DQ", (1,), {})
    assert compute_digest("a", "q", (1,), {"x": 1, "y": 2}) == compute_digest("a", "q", (1,), {"y": 2, "x": 1})
    assert compute_digest("a", "q", (1,), {}) != compute_digest("b", "q", (1,), {})
    assert compute_digest("a", "q", (1,), {}) != compute_digest("a", "other", (1,), {})
    by_user = "{user_id}"
    assert compute_digest("a", "q", (), {"user_id": 7, "n": 1}, by_user) == compute_digest(
        "a", "q", (), {"user_id": 7, "n": 2}, by_user
    )
    first = lambda user, *_, **__: user  # noqa: E731
    assert compute_digest("a", "q", (7, 1), {}, first) == compute_digest("a", "q", (7, 2), {}, first)
    with pytest.raises(UniqueKeyError):
        compute_digest("a", "q", (object(),), {})
    with pytest.raises(UniqueKeyError):
        compute_digest("a", "q", (), {}, "{missing}")


def test_the_digest_travels_in_the_message_options(app: App) -> None:
    @app.actor(unique=True, unique_key="{0}")
    def work(x: int, y: int) -> None:
        pass

    message = work.send(1, 2)
    assert message.options["unique_digest"] == compute_digest("work", "default", (1, 2), {}, "{0}")
    assert message.options["unique_mode"] == "until_executed"
    # The call is bound to the actor's signature: a keyword call is the same call, so a duplicate
    with pytest.raises(DuplicateMessage) as refused:
        work.send_with_options(kwargs={"x": 1, "y": 3})
    assert refused.value.digest == message.options["unique_digest"]


def test_positional_and_keyword_calls_have_one_digest() -> None:
    def charge(account_id: int, amount: int, currency: str = "EUR") -> None:
        pass

    calls = [((1, 2), {}), ((1,), {"amount": 2}), ((), {"account_id": 1, "amount": 2}), ((1, 2, "EUR"), {})]
    for key in (None, "{account_id}", "{0}", lambda account_id, **_: account_id, lambda account, *_: account):
        digests = {compute_digest("charge", "q", args, kwargs, key, charge) for args, kwargs in calls}
        assert len(digests) == 1, key

    # The documented example: a key that takes the actor's first parameter by name
    def report(day: str, rows: list[int]) -> None:
        pass

    by_day = lambda day, **_: day  # noqa: E731
    assert compute_digest("report", "q", ("2024-01-01", [1]), {}, by_day, report) == compute_digest(
        "report", "q", (), {"day": "2024-01-01", "rows": [2]}, by_day, report
    )


# Modes -------------------------------------------------------------------------------


def test_until_executed_refuses_duplicates_until_the_message_is_done(app: App) -> None:
    gate = threading.Event()

    @app.actor(unique=True)
    def work(x: int) -> None:
        gate.wait(10)

    # Given a message sent and not yet done
    first = work.send(1)
    # Then a duplicate is refused, while other arguments are not
    with pytest.raises(DuplicateMessage) as info:
        work.send(1)
    assert info.value.owner == first.message_id
    work.send(2)
    # Still refused while it runs
    app.worker.start()
    wait_for(lambda: first.message_id in app.started, 5)
    with pytest.raises(DuplicateMessage):
        work.send(1)
    # And accepted once it is done, with no lock left
    gate.set()
    app.drain()
    assert app.locks() == []
    work.send(1)
    app.drain()
    assert app.locks() == []


def test_until_executed_keeps_its_lock_across_retries(app: App) -> None:
    attempts: list[int] = []
    gate = threading.Event()

    @app.actor(unique=True, max_retries=1, min_backoff=300, max_backoff=300)
    def flaky() -> None:
        attempts.append(1)
        if len(attempts) == 1:
            raise RuntimeError("first attempt fails")
        gate.wait(10)

    app.worker.start()
    flaky.send()
    # While the retry waits, and while it runs, the lock is held
    wait_for(lambda: len(attempts) == 1, 5)
    time.sleep(0.05)
    with pytest.raises(DuplicateMessage):
        flaky.send()
    wait_for(lambda: len(attempts) == 2, 5)
    with pytest.raises(DuplicateMessage):
        flaky.send()
    gate.set()
    app.drain()
    assert app.locks() == []


def test_until_executed_dropping_duplicates_never_runs_them(app: App, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO")

    @app.actor(unique=True, unique_on_conflict="drop")
    def work(x: int) -> None:
        pass

    first = work.send(1)
    duplicate = work.send(1)
    assert duplicate.options["unique_duplicate_of"] == first.message_id
    app.worker.start()
    app.drain()
    assert app.started == [first.message_id]
    assert any("Dropping message" in r.getMessage() for r in caplog.records)
    assert app.locks() == []


def test_until_executing_allows_a_duplicate_once_the_first_starts(redis_url: str, namespaces: Namespaces) -> None:
    # One worker thread: while the first runs, the second stays queued, holding the lock.
    app = App(redis_url, namespaces.tracker, threads=1)
    gate = threading.Event()

    @app.actor(unique="until_executing")
    def work(x: int) -> None:
        gate.wait(10)

    first = work.send(1)
    with pytest.raises(DuplicateMessage):
        work.send(1)
    app.worker.start()
    wait_for(lambda: first.message_id in app.started, 5)
    second = work.send(1)
    with pytest.raises(DuplicateMessage):
        work.send(1)
    gate.set()
    app.drain()
    assert app.started == [first.message_id, second.message_id]
    assert app.locks() == []
    app.close()


def test_until_expired_holds_until_its_ttl(app: App) -> None:
    @app.actor(unique="until_expired", unique_ttl=600)
    def daily(x: int) -> None:
        pass

    daily.send(1)
    app.worker.start()
    app.drain()
    # Done, but still locked until the TTL expires
    with pytest.raises(DuplicateMessage):
        daily.send(1)
    (lock,) = app.tracker.store.locks()
    assert lock.ttl is not None and 0 < lock.ttl <= 600
    time.sleep(0.65)
    daily.send(1)
    app.drain()
    assert len(app.started) == 2


@pytest.mark.parametrize("on_conflict", ["delay", "skip", "fail"])
def test_while_executing_never_runs_two_duplicates_at_once(app: App, on_conflict: str) -> None:
    @app.actor(unique="while_executing", unique_on_conflict=on_conflict, unique_delay=100)
    def work(x: int) -> None:
        time.sleep(0.3)

    # Given duplicates queued together: while_executing lets them all be sent
    messages = [work.send(1) for _ in range(3)]
    app.worker.start()
    app.drain()
    time.sleep(0.2)
    app.drain()
    # Then they never ran at the same time
    assert app.most_running == 1
    if on_conflict == "delay":
        assert sorted(app.started) == sorted(m.message_id for m in messages)
    else:
        assert len(app.started) == 1
    if on_conflict == "fail":
        assert len(app.broker.dead_letters) == 2
    assert app.locks() == []


@pytest.mark.parametrize("mode", ["until_executing", "until_executed", "until_expired"])
def test_concurrent_senders_racing_for_one_digest_exactly_one_wins(
    redis_url: str, namespaces: Namespaces, mode: str
) -> None:
    # Given eight producers, each with its own broker, tracker and Redis connections
    apps = [App(redis_url, namespaces.tracker) for _ in range(8)]
    actors = []
    for each in apps:

        @each.actor(unique=mode, unique_ttl=60_000)
        def work(x: int) -> None:
            pass

        actors.append(work)
    barrier = threading.Barrier(len(actors))
    outcomes: list[str] = []

    def send(actor: Any) -> None:
        barrier.wait()
        try:
            actor.send(1)
            outcomes.append("sent")
        except DuplicateMessage:
            outcomes.append("refused")

    threads = [threading.Thread(target=send, args=(actor,)) for actor in actors]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    # Then exactly one message holds the lock
    assert sorted(outcomes) == ["refused"] * 7 + ["sent"]
    assert len(apps[0].tracker.store.locks()) == 1
    for each in apps:
        each.close()


def test_a_unique_actor_next_to_plain_ones_on_the_same_worker(app: App) -> None:
    @app.actor(unique=True)
    def unique_work(x: int) -> None:
        pass

    @app.actor
    def plain_work(x: int) -> None:
        pass

    for _ in range(3):
        plain_work.send(1)
    unique_work.send(1)
    app.worker.start()
    app.drain()
    assert len(app.started) == 4
    assert app.locks() == []


def test_operators_list_locks_and_delete_one_by_digest(app: App) -> None:
    @app.actor(unique=True, unique_ttl=60_000)
    def work(x: int) -> None:
        pass

    first = work.send(1)
    second = work.send(2)
    locks = app.tracker.store.locks()
    assert {lock.message_id for lock in locks} == {first.message_id, second.message_id}
    (lock,) = [each for each in locks if each.message_id == first.message_id]
    assert lock.digest == first.options["unique_digest"]
    assert (lock.mode, lock.actor_name, lock.queue_name, lock.worker_id, lock.attempt) == (
        "until_executed", "work", "default", "", 0,
    )  # fmt: skip
    assert lock.ttl is not None and 59_000 < lock.ttl <= 60_000
    again = reads(app.tracker).lock(lock.digest)
    assert again is not None and again.message_id == lock.message_id and again.acquired_at == lock.acquired_at
    assert [each.digest for each in app.tracker.locks()] == [each.digest for each in locks]
    # When an operator deletes it, the duplicate can be sent
    assert app.tracker.delete_lock(lock.digest)
    assert not app.tracker.delete_lock(lock.digest)
    assert reads(app.tracker).lock(lock.digest) is None
    work.send(1)
