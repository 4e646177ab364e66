"""Serve the dashboard alone (``dramatiq-tracker dashboard``) with the standard library's WSGI server,
a thread per request: no server to install."""

from __future__ import annotations

import argparse
import ipaddress
import os
import socket
import socketserver
import sys
import urllib.parse
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer
from wsgiref.simple_server import make_server as _make_server

import redis
from dramatiq.logging import get_logger

from ...errors import TrackerError
from ..actions import load_broker

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIApplication

#: Where the standalone dashboard listens by default: this host only.
DEFAULT_HOST = "127.0.0.1"
#: Its default port.
DEFAULT_PORT = 8711
#: The environment variable that holds the shared token, when ``--token`` is not given.
TOKEN_ENVIRONMENT_VARIABLE = "DRAMATIQ_TRACKER_DASHBOARD_TOKEN"

_logger = get_logger(__name__)


class ThreadingWSGIServer(socketserver.ThreadingMixIn, WSGIServer):
    """``wsgiref``'s server, a thread per request, so that a slow page does not hold up the others."""

    daemon_threads = True
    allow_reuse_address = True


class ThreadingWSGIServerV6(ThreadingWSGIServer):
    address_family = socket.AF_INET6


class _RequestHandler(WSGIRequestHandler):
    """Logs requests through ``logging``, without their query string (``?token=`` must not be logged)."""

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        path = self.path.partition("?")[0]
        _logger.info('%s "%s %s" %s', self.address_string(), self.command, path, code)

    def log_message(self, format: str, *args: Any) -> None:
        _logger.warning("%s %s", self.address_string(), (format % args).partition("?")[0])


def make_server(app: WSGIApplication, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT) -> ThreadingWSGIServer:
    """A threaded WSGI server of ``app`` bound to ``host:port`` (port 0: any free one); call its
    ``serve_forever()``, and ``shutdown()`` from another thread to stop it.

    Raises:
      OSError: When it cannot listen there.
    """
    server_class = ThreadingWSGIServerV6 if ":" in host else ThreadingWSGIServer
    server = _make_server(host, port, app, server_class=server_class, handler_class=_RequestHandler)
    return server


def is_loopback(host: str) -> bool:
    """Whether ``host`` is an address of this machine only (``127.0.0.1``, ``::1``, ``localhost``)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def run(arguments: argparse.Namespace) -> int:
    """Serve the dashboard as ``dramatiq-tracker dashboard`` was told, until interrupted.

    Returns:
      int: 1 when it could not start (the reason is printed), else it serves until Ctrl-C.
    """
    from .app import DashboardApp

    token = arguments.token or os.environ.get(TOKEN_ENVIRONMENT_VARIABLE) or None
    if arguments.allow_actions and not token and not is_loopback(arguments.host):
        return _fail("--allow-actions on %s (not a loopback address) needs a --token." % arguments.host)
    try:
        broker = load_broker(arguments.broker) if arguments.broker else None
        app = DashboardApp(
            url=arguments.url,
            namespace=arguments.namespace,
            prefix=arguments.prefix,
            broker=broker,
            allow_actions=arguments.allow_actions,
            token=token,
            refresh=arguments.refresh,
        )
    except TrackerError as e:
        return _fail(str(e))
    try:
        server = make_server(app, arguments.host, arguments.port)
    except OSError as e:
        app.close()
        return _fail("cannot listen on %s port %d: %s" % (arguments.host, arguments.port, e))
    try:
        app.inspector.server_time()
    except redis.RedisError as e:
        print("Warning: the tracker's Redis does not answer (%s); pages say so until it does." % e, file=sys.stderr)
    if not token and not is_loopback(arguments.host):
        print(
            "Warning: serving on %s without a token: whoever reaches this port sees message data." % arguments.host,
            file=sys.stderr,
        )
    host, port = str(server.server_address[0]), int(server.server_address[1])
    shown = "[%s]" % host if ":" in host else host
    print(
        "Dashboard of namespace %r%s on http://%s:%d%s/ (%s%s); Ctrl-C stops it."
        % (
            app.inspector.namespace,
            " at %s" % redacted(app.inspector.url) if app.inspector.url else "",
            shown,
            port,
            arguments.prefix,
            "actions enabled" if arguments.allow_actions else "read-only",
            ", token required" if token else "",
        ),
        flush=True,
    )
    try:
        server.serve_forever()
    finally:
        server.server_close()
        app.close()
    return 0  # pragma: no cover - serve_forever ends by an exception


def _fail(message: str) -> int:
    print("dramatiq-tracker dashboard: %s" % message, file=sys.stderr)
    return 1


def redacted(url: str) -> str:
    """A Redis URL without its password, to print."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rpartition("@")
    user = (parts.username or "") + ":***"
    return urllib.parse.urlunsplit(parts._replace(netloc=user + "@" + netloc[2]))
