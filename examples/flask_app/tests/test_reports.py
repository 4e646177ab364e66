"""Reports: built in an application context, one at a time, again exactly once when their worker dies."""

from __future__ import annotations

import pytest
from flaskshop import create_app
from flaskshop.tasks import build_report, built

from dramatiq_tracker import find_tracker


def test_a_report_is_built_in_an_application_context(tracker_worker, tracker_assert):
    # The broker's AppContext middleware is on the test broker: current_app works in the actor
    message = build_report.send(1)
    tracker_assert.succeeded(message)
    assert "Weekly report 1" in built
    tracker_assert.no_locks()


def test_a_second_build_is_refused_while_the_first_is_queued(tracker_broker):
    client = create_app({"TESTING": True}).test_client()
    assert client.post("/reports/2").status_code == 202
    assert client.post("/reports/2").status_code == 409


def test_the_dashboard_is_mounted_under_tracker(tracker_broker, tracker_worker):
    client = create_app({"TESTING": True, "TRACKER_DASHBOARD_TOKEN": "s3cret"}).test_client()
    assert client.get("/tracker/").status_code == 401
    page = client.get("/tracker/workers", headers={"Authorization": "Bearer s3cret"})
    assert page.status_code == 200
    assert find_tracker(tracker_broker).worker_id in page.get_data(as_text=True)


@pytest.mark.parametrize("round", [1, 2])
def test_a_build_whose_worker_process_is_killed_is_done_again_exactly_once(
    tracker_redis_broker, tracker_crash, tracker_assert, round
):
    # Given a worker process (dramatiq flaskshop.tasks), slow to build
    slow = tracker_crash.spawn_worker(env={"FLASKSHOP_BUILD_SECONDS": "60"})
    message = build_report.send(round)
    assert tracker_assert.running(message) == slow.worker_id

    # When it is SIGKILLed, and a worker process starts again
    tracker_crash.kill(slow)
    tracker_crash.spawn_worker()

    # Then the build is delivered again exactly once, done, and its lock released
    tracker_assert.delivered_again(message, times=1)
    tracker_assert.succeeded(message)
    tracker_assert.ran(message, 2)
    tracker_assert.no_locks()
