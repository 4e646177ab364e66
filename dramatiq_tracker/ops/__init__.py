"""The operator tools: the inspection API, the ``dramatiq-tracker`` command, the Prometheus exporter,
the web dashboard and the demo.

They read the tracker's Redis (and change what an operator may change); the core, which runs in the
workers, never imports them.  The names an application mounts or calls are here, each imported on
first use, so that importing one tool (the command line, whose ``--help`` must stay fast and work
without the optional extras) loads no other::

    from dramatiq_tracker.ops import Inspector
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .._lazy import lazy_attribute

if TYPE_CHECKING:
    from .dashboard import DashboardApp, make_wsgi_middleware
    from .exporter import make_exporter_server
    from .inspection import Inspector

__all__ = ["DashboardApp", "Inspector", "make_exporter_server", "make_wsgi_middleware"]

#: The module that defines each name of ``__all__``.
_HOMES = {
    "DashboardApp": ".dashboard",
    "Inspector": ".inspection",
    "make_exporter_server": ".exporter",
    "make_wsgi_middleware": ".dashboard",
}


def __getattr__(name: str) -> Any:
    return lazy_attribute(__name__, _HOMES, name)
