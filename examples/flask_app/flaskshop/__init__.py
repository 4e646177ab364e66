"""A Flask application made by a factory, with Dramatiq and dramatiq-tracker (see README.md).

The broker is built once per process, at import, by :mod:`flaskshop.broker` (the ``dramatiq`` command
imports it before any application exists); the factory makes the Flask app around it and mounts the
tracker's dashboard.
"""

from __future__ import annotations

from typing import Any

import dramatiq
from flask import Flask

from dramatiq_tracker.ops import make_wsgi_middleware

from . import broker as _sets_the_global_broker  # noqa: F401


def create_app(config: dict[str, Any] | None = None) -> Flask:
    """The Flask application: settings from ``FLASKSHOP_*`` environment variables, then ``config``.

    ``/tracker/`` is the tracker's dashboard, read-only, behind ``TRACKER_DASHBOARD_TOKEN`` when it is
    set (``FLASKSHOP_TRACKER_DASHBOARD_TOKEN``); put your own authentication in front of it too.
    """
    app = Flask(__name__)
    app.config.update(
        REPORT_TITLE="Weekly report",
        TRACKER_DASHBOARD_TOKEN=None,
        # The host names the app is served as: the dashboard answers no other (a JSON list in
        # FLASKSHOP_TRACKER_DASHBOARD_HOSTS, e.g. '["shop.example.com"]').
        TRACKER_DASHBOARD_HOSTS=["localhost", "127.0.0.1", "[::1]"],
    )
    app.config.from_prefixed_env("FLASKSHOP")
    app.config.update(config or {})

    from .views import reports

    app.register_blueprint(reports)
    # The global broker's tracker: flaskshop's, or in tests the test broker's.
    dashboard = make_wsgi_middleware(
        "/tracker",
        broker=dramatiq.get_broker(),
        token=app.config["TRACKER_DASHBOARD_TOKEN"],
        allowed_hosts=app.config["TRACKER_DASHBOARD_HOSTS"],
    )
    app.wsgi_app = dashboard(app.wsgi_app)
    return app
