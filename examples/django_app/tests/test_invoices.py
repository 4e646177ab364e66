"""Invoices: rendered at least once, again exactly once when their worker dies; emails at most once."""

import pytest
from django.test import Client
from djangoshop import alerts
from invoices.tasks import email_invoice, render_invoice, rendered


def test_an_invoice_is_rendered_and_knows_its_attempt(tracker_worker, tracker_assert):
    message = render_invoice.send(1)
    tracker_assert.succeeded(message)
    # The site's CurrentMessage middleware is on the test broker: the actor read its attempt
    assert (1, 0) in rendered
    tracker_assert.no_locks()


def test_the_view_refuses_a_second_rendering_while_one_is_queued(tracker_broker):
    client = Client()
    assert client.get("/invoices/5/render").status_code == 202
    assert client.get("/invoices/5/render").status_code == 409


def test_a_rendering_whose_worker_process_is_killed_is_done_again_exactly_once(
    tracker_redis_broker, tracker_crash, tracker_assert
):
    # Given a worker process of the site (what rundramatiq runs), slow to render
    slow = tracker_crash.spawn_worker(env={"DJANGOSHOP_RENDER_SECONDS": "60"})
    message = render_invoice.send(42)
    assert tracker_assert.running(message) == slow.worker_id

    # When it is SIGKILLed (an OOM kill), and the worker process starts again
    tracker_crash.kill(slow)
    tracker_crash.spawn_worker()

    # Then the rendering is delivered again exactly once, done, and its lock released
    tracker_assert.delivered_again(message, times=1)
    tracker_assert.succeeded(message)
    tracker_assert.ran(message, 2)
    tracker_assert.no_locks()


def test_a_rendering_delivered_again_reads_its_new_attempt(
    tracker_redis_broker, tracker_worker, tracker_crash, tracker_assert, monkeypatch
):
    monkeypatch.setenv("DJANGOSHOP_RENDER_SECONDS", "3")
    message = render_invoice.send(7)
    tracker_assert.running(message)
    tracker_crash.crash(tracker_worker)
    monkeypatch.setenv("DJANGOSHOP_RENDER_SECONDS", "0")
    tracker_crash.start_worker()
    tracker_assert.succeeded(message)
    assert (7, 1) in rendered


@pytest.mark.parametrize("tracker_broker", ["stub", "redis"], indirect=True)
def test_an_email_whose_worker_dies_is_never_sent_again_and_pages_someone(
    tracker_broker, tracker_worker, tracker_crash, tracker_assert, monkeypatch
):
    monkeypatch.setenv("DJANGOSHOP_EMAIL_SECONDS", "3")
    message = email_invoice.send(9)
    tracker_assert.running(message)
    tracker_crash.crash(tracker_worker)
    tracker_crash.start_worker()
    tracker_assert.quarantined(message)
    tracker_assert.ran(message, 1)
    # The AppConfig's callback is kept by the test tracker
    assert any(event.kind == "quarantined" and event.message_id == message.message_id for event in alerts.paged)
