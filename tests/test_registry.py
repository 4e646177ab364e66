"""The in-memory registry's bookkeeping of recent completions (pure logic, no Redis)."""

from __future__ import annotations

from dramatiq import Message
from dramatiq.broker import MessageProxy

from dramatiq_tracker import registry
from dramatiq_tracker.policies import ActorPolicy
from dramatiq_tracker.records import WorkerInfo
from dramatiq_tracker.registry import InflightRegistry

POLICY = ActorPolicy("work", track=True, max_recoveries=3, on_exhausted="", unique=None)


def complete(worker: InflightRegistry, index: int, *, succeeded: bool = True) -> str:
    proxy = MessageProxy(Message("default", "work", (index,), {}, {}))
    delivery = worker.begin(proxy, POLICY, attempt=0, retries=0, now=0.0, written=False)
    delivery.succeeded = succeeded
    worker.end(delivery, "ack")
    return str(proxy.message_id)


def test_completions_a_write_proved_alive_are_forgotten_and_the_later_ones_kept() -> None:
    worker = InflightRegistry(WorkerInfo.unknown("w1"), 24, False, lambda actor: "")
    before = [complete(worker, i) for i in range(3)]
    complete(worker, 9, succeeded=False)
    mark = worker.completed_mark()
    after = [complete(worker, i) for i in range(3, 5)]

    worker.alive_at(mark)

    assert worker.take_completed() == [(mid, 0) for mid in after]
    assert not set(before) & {mid for mid, _ in worker.take_completed()}


def test_recent_completions_are_bounded_during_a_long_outage() -> None:
    worker = InflightRegistry(WorkerInfo.unknown("w1"), 24, False, lambda actor: "")
    limit = registry.RECENT_COMPLETIONS
    ids = [complete(worker, i) for i in range(limit + 10)]
    mark = worker.completed_mark()
    assert [mid for mid, _ in worker.take_completed()] == ids[10:]
    # A write after a fencing forgets nothing it should not.
    late = complete(worker, 0)
    worker.alive_at(mark)
    assert worker.take_completed() == [(late, 0)]
