"""Orders: packed at least once, and packed again, exactly once, when their worker dies mid-order."""

from __future__ import annotations

from shop.tasks import pack_order


def test_an_order_is_packed_once(tracker_worker, tracker_assert):
    message = pack_order.send(1)
    tracker_assert.succeeded(message)
    tracker_assert.ran(message, 1)
    tracker_assert.nothing_in_flight()


def test_an_order_whose_worker_is_killed_mid_order_is_packed_again_exactly_once(
    tracker_redis_broker, tracker_crash, tracker_assert
):
    # Given a real worker process of the shop, slow to pack
    slow = tracker_crash.spawn_worker(env={"SHOP_PACKING_SECONDS": "60"})
    message = pack_order.send(42)
    assert tracker_assert.running(message) == slow.worker_id

    # When the OOM killer takes it (SIGKILL), and a worker process starts on the same host
    tracker_crash.kill(slow)
    fast = tracker_crash.spawn_worker()

    # Then the new worker finds the dead one's order at once, and packs it: delivered again exactly once
    tracker_assert.delivered_again(message, times=1)
    tracker_assert.succeeded(message)
    tracker_assert.ran(message, 2)
    started = [run.pid for run in tracker_assert.runs(message) if run.event == "started"]
    assert started == [slow.pid, fast.pid]
    tracker_assert.nothing_in_flight()
