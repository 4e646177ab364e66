"""The broker: a RedisBroker on ``$REDIS_URL``, with an application context for every actor, and the
tracker, configured by the environment (``DRAMATIQ_TRACKER_NAMESPACE``, ``DRAMATIQ_TRACKER_REDIS_URL``,
the timings), as the ``dramatiq-tracker`` command is."""

from __future__ import annotations

import os
import threading
from typing import TYPE_CHECKING, Any

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import Middleware

from dramatiq_tracker import TrackerMiddleware

if TYPE_CHECKING:
    from flask import Flask
    from flask.ctx import AppContext as FlaskAppContext


class AppContext(Middleware):
    """Runs each actor inside an application context of the app ``create_app()`` makes (once per process),
    so that actors may use ``current_app`` and extensions, as views do."""

    def __init__(self) -> None:
        self._app: Flask | None = None
        self._lock = threading.Lock()
        self._contexts = threading.local()

    @property
    def app(self) -> Flask:
        with self._lock:
            if self._app is None:
                from . import create_app

                self._app = create_app()
            return self._app

    def before_process_message(self, broker: dramatiq.Broker, message: Any) -> None:
        context: FlaskAppContext = self.app.app_context()
        context.push()
        self._contexts.current = context

    def after_process_message(
        self, broker: dramatiq.Broker, message: Any, *, result: Any = None, exception: Any = None
    ) -> None:
        context = getattr(self._contexts, "current", None)
        if context is not None:
            self._contexts.current = None
            context.pop()

    after_skip_message = after_process_message


broker = RedisBroker(url=os.environ.get("REDIS_URL", "redis://localhost:6379/0"), namespace="flaskshop")
broker.add_middleware(AppContext())
# Before the actors are declared, so that they may use its options.
broker.add_middleware(TrackerMiddleware())
dramatiq.set_broker(broker)
