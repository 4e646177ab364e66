"""The dashboard's WSGI application: routing, authentication, rendering."""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.resources
import os
import urllib.parse
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import jinja2
import redis
from dramatiq import Broker
from dramatiq.logging import get_logger

from ..._version import __version__
from ...connection import URL_ENVIRONMENT_VARIABLE
from ...errors import ConfigurationError, TrackerError
from ...middleware import find_tracker
from ...settings import DEFAULT_NAMESPACE
from .. import formatting
from ..actions import tracker_client
from ..failures import CLIENT_ERRORS, explain
from ..inspection import Inspector
from ..urls import redact
from . import actions
from .pages import Pages, Rendered
from .security import CSRF_FIELD, LOOPBACK_HOSTS, SESSION_COOKIE, TOKEN_COOKIE, Guard, cookie, secure
from .wsgi import HTML, BadRequest, Request, Response

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

#: How often pages update themselves by default, in milliseconds.
DEFAULT_REFRESH = 2000
#: The shortest update interval allowed, in milliseconds: every update reads the namespace.
MIN_REFRESH = 500

#: Path -> the page that answers it (GET only).
_PAGES: dict[str, Callable[[Pages, Request], Rendered]] = {
    "/": Pages.overview,
    "/workers": Pages.workers,
    "/worker": Pages.worker,
    "/inflight": Pages.inflight,
    "/message": Pages.message,
    "/locks": Pages.locks,
    "/events": Pages.events,
}
#: Path -> the action that answers it: GET asks to confirm, POST does it.
_ACTIONS: dict[str, Callable[[Pages, Request], Rendered]] = {
    "/locks/delete": actions.delete_lock,
    "/recover": actions.recover,
    "/message/abort": actions.abort,
}
#: The static files, with their content types.
_STATIC = {"dashboard.css": "text/css; charset=utf-8", "dashboard.js": "text/javascript; charset=utf-8"}


class DashboardApp:
    """A web dashboard of a tracker namespace, as a WSGI application: which worker runs which
    message now, what became of a dead worker's messages, which locks are held, and the events.

    Mount it behind your application's authentication, under a prefix, as a WSGI middleware
    (requests outside the prefix go to ``app``), or serve it alone (``dramatiq-tracker dashboard``).
    It only reads, unless ``allow_actions`` is True.

    Parameters:
      broker(Broker): The application's broker, with its TrackerMiddleware (and dramatiq-abort's
        Abortable to cancel or abort): the dashboard reads its tracker's Redis and namespace, and
        needs it for the "recover now" and abort actions.  Positional, as in dramatiq_dashboard's
        ``DashboardApp(broker, prefix=...)``.
      url(str): The tracker's Redis URL; default: ``$DRAMATIQ_TRACKER_REDIS_URL``, else the Redis
        client of ``broker``'s tracker, else ``redis://localhost:6379/0``.
      client(redis.Redis): Or a client of it.
      namespace(str): The tracker's namespace; default: that of ``broker``'s tracker, else
        ``"dramatiq-tracker"``.
      prefix(str): The path it is served under, such as ``"/tracker"``; "" for the root.
      app(callable): The WSGI application it wraps: it gets every request outside ``prefix``
        (without one, they get 404).
      allow_actions(bool): Let users delete locks, recover and abort, each confirmed and checked
        against CSRF; default False: read-only, and the action endpoints answer 403.
      token(str): A shared token every request must carry (``Authorization: Bearer``, or the
        cookie set by the login form or by ``?token=`` once); default: none.  Actions need it, or
        the application's own authentication (a ``REMOTE_USER`` it sets).
      secret(bytes): The key login cookies and CSRF tokens are signed with; default: random per
        process.  Give the same one to every process that serves the dashboard behind one address.
      allowed_hosts(list[str]): The host names (or addresses) it is served as: a request whose
        ``Host`` names another is refused (400), so that no page of another site can read it by
        making its own name resolve to this machine (DNS rebinding).  Default: ``localhost``,
        ``127.0.0.1`` and ``[::1]``; add the name users reach it by; ``["*"]`` only behind a proxy
        that checks the Host itself.
      refresh(int): How often pages update themselves, in milliseconds; 0 for never.
      inspector(Inspector): Read through this one instead of ``url``, ``client`` and ``namespace``.

    Raises:
      ConfigurationError: When a setting is invalid.
    """

    def __init__(
        self,
        broker: Broker | None = None,
        *,
        url: str | None = None,
        client: redis.Redis | None = None,
        namespace: str | None = None,
        prefix: str = "",
        app: WSGIApplication | None = None,
        allow_actions: bool = False,
        token: str | None = None,
        secret: bytes | None = None,
        allowed_hosts: Iterable[str] = LOOPBACK_HOSTS,
        refresh: int = DEFAULT_REFRESH,
        inspector: Inspector | None = None,
    ) -> None:
        self.logger = get_logger(__name__, type(self))
        if prefix and (not prefix.startswith("/") or prefix.endswith("/") or "//" in prefix):
            raise ConfigurationError("prefix", "must be '' or a path like '/tracker', got %r" % (prefix,))
        if isinstance(refresh, bool) or not isinstance(refresh, int) or (refresh and refresh < MIN_REFRESH):
            raise ConfigurationError("refresh", "must be 0 or at least %d ms, got %r" % (MIN_REFRESH, refresh))
        if token is not None and (not isinstance(token, str) or not token.strip()):
            raise ConfigurationError("token", "must be a non-empty string")
        if isinstance(allowed_hosts, str):
            raise ConfigurationError("allowed_hosts", "must be a list of host names, not a string")
        try:
            self.guard = Guard(token=token, secret=secret, allowed_hosts=allowed_hosts)
        except ValueError as e:
            raise ConfigurationError("allowed_hosts", str(e)) from None
        if inspector is None:
            inspector = _inspector(url, client, namespace, broker)
        self.inspector = inspector
        self.prefix = prefix
        self.app = app
        self.allow_actions = bool(allow_actions)
        self.refresh = refresh
        self.pages = Pages(inspector, broker)
        self.templates = jinja2.Environment(
            loader=jinja2.PackageLoader("dramatiq_tracker.ops.dashboard", "templates"),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.templates.filters.update(duration=formatting.duration, timestamp=formatting.timestamp)
        self.templates.globals.update(ago=formatting.ago, version=__version__)
        files = importlib.resources.files("dramatiq_tracker.ops.dashboard") / "static"
        self.static = {name: (files / name).read_bytes() for name in _STATIC}
        self.static_version = hashlib.sha1(b"".join(self.static.values())).hexdigest()[:12]

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        path = str(environ.get("PATH_INFO") or "/")
        head = environ.get("REQUEST_METHOD") == "HEAD"
        if self.prefix and path != self.prefix and not path.startswith(self.prefix + "/"):
            if self.app is not None:
                return self.app(environ, start_response)
            response = secure(Response.text("Not found.", 404))
        else:
            root = str(environ.get("SCRIPT_NAME", "")).rstrip("/") + self.prefix
            request = Request(environ, root, path[len(self.prefix) :] or "/")
            if self.guard.host_allowed(request):
                response = self.handle(request)
            else:
                # Before anything is read: a page of another site may have made its name resolve here.
                response = secure(Response.text(_host_refused(request.header("Host")), 400))
        headers = [("Content-Type", response.content_type), ("Content-Length", str(len(response.body)))]
        start_response(response.status_line, headers + response.headers)
        return [b"" if head else response.body]

    def close(self) -> None:
        """Close the inspector's connections, if it made its client."""
        self.inspector.close()

    # Requests ------------------------------------------------------------------------------

    def handle(self, request: Request) -> Response:
        """Answer a request to the dashboard (its path below the prefix), with the security headers."""
        try:
            response = self._answer(request)
        except BadRequest as e:
            response = Response.text("Bad request: %s." % e, 400)
        except ConfigurationError as e:  # a bad cursor or event id in the URL
            response = self._page(request, Rendered("refused.html", {"reason": str(e)}, 400, False), "")
        except CLIENT_ERRORS as e:
            reason = explain(e, redact(self.inspector.url) if self.inspector.url else "its client")
            self.logger.warning("%s", reason)
            retry = request.method == "GET"
            sentence = reason[0].upper() + reason[1:] + ("" if reason.endswith(".") else ".")
            context = {"reason": sentence, "retry": self._retry if retry else 0}
            response = self._page(request, Rendered("refused.html", context, 503, False), "")
        except Exception:
            self.logger.exception("Dashboard page %r failed.", request.path)
            response = Response.text("Internal error: the dashboard's log says why.", 500)
        return secure(response)

    def _answer(self, request: Request) -> Response:
        path, method = request.path, request.method
        if method == "HEAD":
            request.environ["REQUEST_METHOD"] = method = "GET"
        if path.startswith("/static/"):
            return self._static(path[len("/static/") :])
        if self.guard.token is not None and "token" in request.query:
            return self._token_in_query(request)
        if method not in ("GET", "HEAD") and not self.guard.same_origin(request):
            reason = "This request came from another site (its Origin or Sec-Fetch-Site says so): refused."
            return self._page(request, Rendered("refused.html", {"reason": reason}, 403, False), "")
        if path == "/login":
            return self._login(request)
        if not self.guard.authenticated(request):
            return self._unauthorized(request)
        if path == "/api/status":
            if method != "GET":
                return _not_allowed("GET")
            return Response.json(_plain(self.inspector.status()))
        acting = self.may_act(request)
        session = request.cookies.get(SESSION_COOKIE, "")
        headers = []
        if acting and not session:
            session = self.guard.new_session()
            headers.append(cookie(SESSION_COOKIE, session, request))
        csrf = self.guard.csrf_token(session) if acting else ""
        if path in _ACTIONS:
            if not self.allow_actions:
                reason = "Actions are disabled: this dashboard only reads (see allow_actions / --allow-actions)."
                return self._page(request, Rendered("refused.html", {"reason": reason}, 403, False), csrf)
            if not acting:
                return self._page(request, Rendered("refused.html", {"reason": _NEEDS_TOKEN}, 403, False), csrf)
            if method not in ("GET", "POST"):
                return _not_allowed("GET, POST")
            if method == "POST" and not self.guard.may_act(request):
                reason = "This form is stale or came from elsewhere (bad CSRF token): go back, reload and try again."
                return self._page(request, Rendered("refused.html", {"reason": reason}, 403, False), csrf)
            try:
                rendered = _ACTIONS[path](self.pages, request)
            except TrackerError as e:
                rendered = Rendered("refused.html", {"reason": str(e)}, 409, False)
        elif path in _PAGES:
            if method != "GET":
                return _not_allowed("GET")
            rendered = _PAGES[path](self.pages, request)
        else:
            rendered = Rendered("missing.html", {"what": "page", "name": path}, 404, False)
        response = self._page(request, rendered, csrf)
        response.headers += headers
        return response

    def may_act(self, request: Request) -> bool:
        """Whether actions are offered to this request: enabled, and the request carries the token or
        comes through the application's own authentication (``REMOTE_USER``)."""
        return self.allow_actions and (self.guard.carries_token(request) or bool(request.environ.get("REMOTE_USER")))

    @property
    def _retry(self) -> int:
        """How often a page that could not read Redis loads itself again, in seconds."""
        return max(2, self.refresh // 1000) if self.refresh else 5

    def _page(self, request: Request, rendered: Rendered, csrf: str) -> Response:
        template = self.templates.get_template(rendered.template)
        live = rendered.live and self.refresh > 0
        context = {
            "request": request,
            "url": request.url,
            "static": self._static_url(request),
            "namespace": self.inspector.namespace,
            "allow_actions": bool(csrf),
            "actions_enabled": self.allow_actions,
            "can_recover": self.pages.can_recover,
            "can_abort": self.pages.can_abort,
            "csrf_field": CSRF_FIELD,
            "csrf_token": csrf,
            "live": live,
            # For the page's script, in a JSON block that |tojson keeps from closing its <script>.
            "settings": {"refresh": self.refresh if live else 0, "namespace": self.inspector.namespace},
            "logged_in": self.guard.token is not None,
            "status": rendered.status,
            "retry": 0,
            **rendered.context,
        }
        if request.query.get("_live") and live and "live" in template.blocks:
            body = "".join(template.blocks["live"](template.new_context(context)))
        else:
            body = template.render(context)
        return Response(body.encode("utf-8"), rendered.status, HTML)

    # Static files and the token ------------------------------------------------------------

    def _static(self, name: str) -> Response:
        if name not in _STATIC:
            return Response.text("Not found.", 404)
        return Response(self.static[name], 200, _STATIC[name], [("Cache-Control", "public, max-age=86400")])

    def _token_in_query(self, request: Request) -> Response:
        """``?token=...``: set the login cookie and go to the same page without the token in its URL."""
        if not self.guard.token_matches(request.query["token"]):
            return self._unauthorized(request, error="Wrong token.")
        query = {name: value for name, value in request.query.items() if name != "token"}
        path = urllib.parse.quote(request.root + request.path, safe="/")
        location = path + ("?" + urllib.parse.urlencode(query) if query else "")
        # The path is the request's: "//evil.example" would send the browser to another site.
        response = Response.redirect(_local(request, location))
        response.headers.append(cookie(TOKEN_COOKIE, self.guard.new_login(), request))
        return response

    def _login(self, request: Request) -> Response:
        if self.guard.token is None:
            return Response.redirect(request.url("/"))
        if request.method == "GET":
            return self._unauthorized(request, status=200, next_url=request.arg("next"))
        if request.method != "POST":
            return _not_allowed("GET, POST")
        next_url = _local(request, request.form.get("next", ""))
        if not self.guard.token_matches(request.form.get("token", "")):
            return self._unauthorized(request, error="Wrong token.", next_url=next_url)
        response = Response.redirect(next_url)
        response.headers.append(cookie(TOKEN_COOKIE, self.guard.new_login(), request))
        return response

    def _unauthorized(self, request: Request, *, error: str = "", status: int = 401, next_url: str = "") -> Response:
        if request.query.get("_live") or request.path.startswith("/api/"):
            response = Response.text("Log in again: the dashboard needs its token.", status)
        else:
            here = urllib.parse.quote(request.root + request.path, safe="/")
            query = {name: value for name, value in request.query.items() if name != "token"}
            here += "?" + urllib.parse.urlencode(query) if query else ""
            context = {"error": error, "next": _local(request, next_url or here), "live": False}
            body = self.templates.get_template("login.html").render(
                {"request": request, "url": request.url, "static": self._static_url(request), **context}
            )
            response = Response(body.encode("utf-8"), status, HTML)
        response.headers.append(("WWW-Authenticate", 'Bearer realm="dramatiq-tracker dashboard"'))
        return response

    def _static_url(self, request: Request) -> Callable[[str], str]:
        return lambda name: "%s/static/%s?v=%s" % (request.root, name, self.static_version)


def make_wsgi_middleware(prefix: str = "/tracker", **options: Any) -> Callable[[WSGIApplication], DashboardApp]:
    """Make a WSGI middleware that serves the dashboard under ``prefix`` and passes every other
    request to the application it wraps::

        app.wsgi_app = make_wsgi_middleware("/tracker", url="redis://...")(app.wsgi_app)

    Parameters:
      prefix(str): The path the dashboard is served under.
      **options: The other :class:`DashboardApp` parameters.
    """

    def wrap(app: WSGIApplication) -> DashboardApp:
        return DashboardApp(prefix=prefix, app=app, **options)

    return wrap


def _inspector(url: str | None, client: redis.Redis | None, namespace: str | None, broker: Broker | None) -> Inspector:
    if broker is None:
        return Inspector(url=url, client=client, namespace=namespace or DEFAULT_NAMESPACE)
    tracker = find_tracker(broker)
    if url is None and client is None and not os.environ.get(URL_ENVIRONMENT_VARIABLE):
        # Bound to this broker (as declaring an actor would), whether or not it is the global one.
        client = tracker_client(tracker, broker)
    return Inspector(url=url, client=client, namespace=namespace or tracker.settings.namespace)


def _local(request: Request, location: str) -> str:
    """``location`` if it is a path of this dashboard, else the dashboard's overview (no open redirect):
    never one a browser reads as another host (``//host``, ``/\\host``), nor one with a control character."""
    root = request.root + "/"
    after = location[len(request.root) :]
    if (
        location.startswith(root)
        and not location.startswith("//")
        and not after.startswith("//")
        and "\\" not in location
        and all(" " < character != "\x7f" for character in location)
    ):
        return location
    return root


#: Why an action is refused to a request without the token, when actions are enabled.
_NEEDS_TOKEN = (
    "Actions need the dashboard's token (--token, or DashboardApp(token=...)), or your application's "
    "own authentication around it (a REMOTE_USER it sets): this request has neither."
)


def _host_refused(host: str) -> str:
    shown = host if len(host) <= 100 and host.isprintable() else repr(host[:100])
    return (
        "Bad request: this dashboard is not served as host %r. Add the name it is reached by to its "
        "allowed hosts (--allowed-host, or DashboardApp(allowed_hosts=...)).\n" % shown
    )


def _not_allowed(allowed: str) -> Response:
    response = Response.text("Method not allowed.", 405)
    response.headers.append(("Allow", allowed))
    return response


def _plain(value: Any) -> Any:
    """A view as JSON-ready data (dataclasses to dicts)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {field.name: _plain(getattr(value, field.name)) for field in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return value
