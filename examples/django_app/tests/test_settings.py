"""The tracker comes from DRAMATIQ_BROKER's middleware string, its options from the AppConfig and the
environment."""

import dramatiq
from django_dramatiq.apps import DjangoDramatiqConfig
from django_dramatiq.utils import load_middleware
from djangoshop.alerts import on_tracker_event
from djangoshop.apps import DramatiqConfig

from dramatiq_tracker import find_tracker

TRACKER = "dramatiq_tracker.TrackerMiddleware"


def test_the_broker_of_the_site_has_the_tracker_with_the_options_of_the_appconfig():
    broker = dramatiq.get_broker()
    tracker = find_tracker(broker)
    # Where the string puts it, after django_dramatiq's DbConnectionsMiddleware
    names = [type(m).__name__ for m in broker.middleware]
    assert names.index("TrackerMiddleware") == names.index("DbConnectionsMiddleware") + 1
    # With the callback of DramatiqConfig.middleware_trackermiddleware_kwargs
    assert on_tracker_event in tracker.callbacks.callbacks
    assert DramatiqConfig.get_middleware_kwargs(TRACKER) == {"on_event": on_tracker_event}
    assert DjangoDramatiqConfig.get_middleware_kwargs(TRACKER) == {}


def test_the_environment_configures_the_tracker_as_it_does_the_command(monkeypatch):
    # Given the environment of a deployment (the dramatiq-tracker command reads the same variables)
    monkeypatch.setenv("DRAMATIQ_TRACKER_NAMESPACE", "djangoshop-production")
    monkeypatch.setenv("DRAMATIQ_TRACKER_HEARTBEAT_TIMEOUT", "30000")
    # When django_dramatiq builds the middleware of DRAMATIQ_BROKER
    tracker = load_middleware(TRACKER, **DramatiqConfig.get_middleware_kwargs(TRACKER))
    # Then it has them, and the AppConfig's options
    assert (tracker.settings.namespace, tracker.settings.heartbeat_timeout) == ("djangoshop-production", 30000)
    assert on_tracker_event in tracker.callbacks.callbacks
