"""Serve the dashboard alone (``dramatiq-tracker dashboard``) with the standard library's WSGI server,
a thread per request: no server to install."""

from __future__ import annotations

import argparse
import ipaddress
import os
import socket
import socketserver
import ssl
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer
from wsgiref.simple_server import make_server as _make_server

from dramatiq.logging import get_logger

from ...errors import ConfigurationError, TrackerError
from ..actions import load_broker
from ..failures import CLIENT_ERRORS, explain
from ..urls import hide, redact
from .security import LOOPBACK_HOSTS

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

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A request that failed outside the application (a TLS handshake, a client gone) is one log
        line, not a traceback on stderr."""
        error = sys.exc_info()[1]
        _logger.warning("%s: %s: %s", client_address[0] if client_address else "?", type(error).__name__, error)


class ThreadingWSGIServerV6(ThreadingWSGIServer):
    address_family = socket.AF_INET6


#: How long a client may take over its TLS handshake, in seconds.
HANDSHAKE_TIMEOUT = 10


class _RequestHandler(WSGIRequestHandler):
    """Logs requests through ``logging``, without their query string (``?token=`` must not be logged);
    over TLS, does the handshake in the request's thread, and tells the application it is HTTPS."""

    def setup(self) -> None:
        if isinstance(self.request, ssl.SSLSocket):
            self.request.settimeout(HANDSHAKE_TIMEOUT)
            self.request.do_handshake()
            self.request.settimeout(None)
        super().setup()

    def get_environ(self) -> dict[str, str]:
        environ = super().get_environ()
        if isinstance(self.request, ssl.SSLSocket):
            environ["HTTPS"] = "on"  # wsgiref then sets wsgi.url_scheme to https: cookies are Secure
        return environ

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        path = self.path.partition("?")[0]
        _logger.info('%s "%s %s" %s', self.address_string(), self.command, path, code)

    def log_message(self, format: str, *args: Any) -> None:
        _logger.warning("%s %s", self.address_string(), (format % args).partition("?")[0])


def tls_context(certfile: str, keyfile: str | None = None) -> ssl.SSLContext:
    """A server's TLS context with this certificate (chain) and its key (in ``certfile`` if None).

    Raises:
      OSError: When a file cannot be read.
      ssl.SSLError: When they are not a certificate and its key.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(certfile, keyfile or None)
    return context


def make_server(
    app: WSGIApplication,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    *,
    context: ssl.SSLContext | None = None,
) -> ThreadingWSGIServer:
    """A threaded WSGI server of ``app`` bound to ``host:port`` (port 0: any free one); call its
    ``serve_forever()``, and ``shutdown()`` from another thread to stop it.

    Parameters:
      context(ssl.SSLContext): Serve HTTPS with it (see :func:`tls_context`) instead of HTTP.

    Raises:
      OSError: When it cannot listen there.
    """
    server_class = ThreadingWSGIServerV6 if ":" in host else ThreadingWSGIServer
    server = _make_server(host, port, app, server_class=server_class, handler_class=_RequestHandler)
    if context is not None:
        # The handshake happens in each request's thread (see _RequestHandler.setup), not in accept().
        server.socket = context.wrap_socket(server.socket, server_side=True, do_handshake_on_connect=False)
    return server


def is_loopback(host: str) -> bool:
    """Whether ``host`` is an address of this machine only (``127.0.0.1``, ``::1``, ``localhost``)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def is_wildcard(host: str) -> bool:
    """Whether ``host`` binds every address (``0.0.0.0``, ``::``)."""
    try:
        return ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return host == ""


def allowed_hosts(host: str, extra: Sequence[str]) -> list[str]:
    """The hosts the standalone dashboard answers to: this machine's names, the address it is bound to
    (unless it binds every address), and those given (``--allowed-host``)."""
    bound = [] if is_wildcard(host) else ["[%s]" % host if ":" in host else host]
    return [*LOOPBACK_HOSTS, *bound, *extra]


def run(arguments: argparse.Namespace) -> int:
    """Serve the dashboard as ``dramatiq-tracker dashboard`` was told, until interrupted.

    Returns:
      int: 2 when the command line is wrong, 1 when it could not start (the reason is printed), else
      it serves until Ctrl-C.
    """
    from .app import DashboardApp

    token = arguments.token or os.environ.get(TOKEN_ENVIRONMENT_VARIABLE) or None
    if arguments.allow_actions and not token:
        return _fail("--allow-actions needs a --token (or $%s), on every address." % TOKEN_ENVIRONMENT_VARIABLE, 2)
    if arguments.keyfile and not arguments.certfile:
        return _fail("--keyfile needs a --certfile.", 2)
    context = None
    if arguments.certfile:
        try:
            context = tls_context(arguments.certfile, arguments.keyfile)
        except (OSError, ssl.SSLError) as e:
            given = " and --keyfile %s" % arguments.keyfile if arguments.keyfile else ""
            return _fail("cannot use --certfile %s%s: %s" % (arguments.certfile, given, e), 2)
    where = redact(arguments.url) if arguments.url else "the tracker's Redis"
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
            allowed_hosts=allowed_hosts(arguments.host, arguments.allowed_host),
        )
    except ConfigurationError as e:
        return _fail(hide(str(e), arguments.url) if arguments.url else str(e), 2)
    except TrackerError as e:
        return _fail(str(e))
    except CLIENT_ERRORS as e:
        return _fail(explain(e, where))
    try:
        server = make_server(app, arguments.host, arguments.port, context=context)
    except OSError as e:
        app.close()
        return _fail("cannot listen on %s port %d: %s" % (arguments.host, arguments.port, e))
    try:
        app.inspector.server_time()
    except CLIENT_ERRORS as e:
        print("Warning: %s; pages say so until it answers." % explain(e, where), file=sys.stderr)
    if not token and not is_loopback(arguments.host):
        print(
            "Warning: serving on %s without a token: whoever reaches this port sees message data." % arguments.host,
            file=sys.stderr,
        )
    if is_wildcard(arguments.host) and not arguments.allowed_host:
        print(
            "Note: only requests for localhost, 127.0.0.1 and [::1] are answered: add --allowed-host with the "
            "name (or address) users reach this dashboard by.",
            file=sys.stderr,
        )
    host, port = str(server.server_address[0]), int(server.server_address[1])
    shown = "[%s]" % host if ":" in host else host
    print(
        "Dashboard of namespace %r%s on %s://%s:%d%s/ (%s%s); Ctrl-C stops it."
        % (
            app.inspector.namespace,
            " at %s" % redact(app.inspector.url) if app.inspector.url else "",
            "https" if arguments.certfile else "http",
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


def _fail(message: str, code: int = 1) -> int:
    print("dramatiq-tracker dashboard: %s" % message, file=sys.stderr)
    return code
