"""The dashboard mounted in the site's WSGI application, behind its token."""

import importlib
import io
import json
import sys
from wsgiref.util import setup_testing_defaults

from dramatiq_tracker import find_tracker


def call(application, path, **environ):
    """One request to a WSGI application: (status, body)."""
    request = {"PATH_INFO": path, "wsgi.input": io.BytesIO(), **environ}
    setup_testing_defaults(request)
    statuses = []
    body = b"".join(application(request, lambda status, headers, exc_info=None: statuses.append(status)))
    return int(statuses[0].split()[0]), body.decode()


def test_the_dashboard_is_mounted_under_tracker_and_the_site_around_it(tracker_broker, tracker_worker, monkeypatch):
    # Given the site's WSGI application, built in a test (its broker is the test's, as in a worker the
    # broker of DRAMATIQ_BROKER), with a dashboard token in the environment
    monkeypatch.setenv("DRAMATIQ_TRACKER_DASHBOARD_TOKEN", "s3cret")
    monkeypatch.delitem(sys.modules, "djangoshop.wsgi", raising=False)
    application = importlib.import_module("djangoshop.wsgi").application
    try:
        # Then /tracker/ is the dashboard: refused without the token, the workers with it
        assert call(application, "/tracker/")[0] == 401
        status, page = call(application, "/tracker/workers", HTTP_AUTHORIZATION="Bearer s3cret")
        assert status == 200
        assert find_tracker(tracker_broker).worker_id in page
        # And every other path is Django's
        status, body = call(application, "/invoices/3/render")
        assert status == 202 and "message_id" in json.loads(body)
    finally:
        application.close()
