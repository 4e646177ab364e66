"""A web dashboard of a tracker namespace: which worker process runs which message now, what became of
the messages of the workers that died, which uniqueness locks are held, and the events, updated live.

It reads through :class:`~dramatiq_tracker.ops.inspection.Inspector`, the same read path as the
``dramatiq-tracker`` command, and changes nothing unless its actions are enabled.  Mount it in an
application, behind the application's own authentication::

    from dramatiq_tracker.ops.dashboard import DashboardApp

    application = DashboardApp(url="redis://localhost:6379/0", prefix="/tracker", app=application)

or serve it alone: ``dramatiq-tracker dashboard``.  It needs Jinja2, from the ``dashboard`` extra:
``pip install 'dramatiq-tracker[dashboard]'``.
"""

from __future__ import annotations

try:
    import jinja2  # noqa: F401
except ImportError:  # pragma: no cover - tested in a subprocess without Jinja2
    raise ImportError(
        "The dramatiq-tracker dashboard needs Jinja2, from the `dashboard` extra: "
        "pip install 'dramatiq-tracker[dashboard]'",
        name="jinja2",
    ) from None

from .app import DEFAULT_REFRESH, DashboardApp, make_wsgi_middleware
from .server import DEFAULT_HOST, DEFAULT_PORT, make_server

__all__ = ["DEFAULT_HOST", "DEFAULT_PORT", "DEFAULT_REFRESH", "DashboardApp", "make_server", "make_wsgi_middleware"]
