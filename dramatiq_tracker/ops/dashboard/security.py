"""Who may see the dashboard, who may change something through it, and the headers that keep its
pages from being framed, sniffed or made to run foreign scripts.

- The ``Host`` a request names must be one the dashboard is served as (an allow-list): a page of
  another site whose name was made to resolve to this machine (DNS rebinding) names its own host,
  and is refused before anything is read.
- A shared token (optional): every request carries it, as ``Authorization: Bearer <token>`` or as
  the login cookie that the login form (or ``?token=`` once) sets: a random session id signed with
  the secret and bound to the token, never the token itself, and never the same for two logins.
- Actions (optional, off by default) need the token or the application's own authentication
  (``REMOTE_USER``), and are POST requests that carry a CSRF token: the HMAC of the secret and a
  random session cookie (``SameSite=Strict``, ``HttpOnly``).  A state-changing request whose
  ``Origin`` is not the dashboard's own (or is ``null``), or whose ``Sec-Fetch-Site`` says it comes
  from another site, is refused as well.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
import time
import urllib.parse
from collections.abc import Iterable

from .wsgi import Request, Response

#: The cookie holding the random session id that CSRF tokens are bound to.
SESSION_COOKIE = "dramatiq_tracker_session"
#: The cookie holding proof of the shared token.
TOKEN_COOKIE = "dramatiq_tracker_token"
#: The form field of the CSRF token.
CSRF_FIELD = "csrf_token"

#: No inline script or style, nothing from elsewhere, never framed.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)

SECURITY_HEADERS = (
    ("Content-Security-Policy", CONTENT_SECURITY_POLICY),
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
    # Not "no-referrer": under it, a browser sends "Origin: null" with the dashboard's own forms, which
    # the Origin check must refuse.  "same-origin" still tells other sites nothing (URLs hold message ids).
    ("Referrer-Policy", "same-origin"),
    ("Cross-Origin-Opener-Policy", "same-origin"),
    ("Cross-Origin-Resource-Policy", "same-origin"),
)

_TOKEN_PROOF = b"dramatiq-tracker dashboard token"

#: The host names every dashboard answers to: this machine's own.
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "[::1]")
#: How long a login lasts, in seconds: a stolen cookie is not good for ever.
LOGIN_LIFETIME = 12 * 3600


def host_name(value: str) -> str:
    """The host part of a ``Host`` header or an allowed host, normalised: lower case, without its port or
    a trailing dot; an IPv6 address in brackets.  "" when it is not a host name."""
    value = value.strip().lower()
    if value.startswith("["):
        address, bracket, _ = value[1:].partition("]")
        try:
            return "[%s]" % ipaddress.IPv6Address(address) if bracket else ""
        except ValueError:
            return ""
    name = value.rpartition(":")[0] if value.count(":") == 1 else value
    if ":" in name:  # an IPv6 address without brackets is not a Host header
        return ""
    name = name.rstrip(".")
    if not name or any(not (c.isalnum() or c in "-._") for c in name) or not name.isascii():
        return ""
    return name


def _port(host: str) -> str:
    """The port a ``Host`` header names, or ""."""
    after = host.rpartition("]")[2] if host.startswith("[") else host
    return after.rpartition(":")[2] if after.count(":") == 1 else ""


def normalise_hosts(hosts: Iterable[str]) -> frozenset[str]:
    """Allowed hosts as :func:`host_name` makes them; ``*`` (any) kept as it is.

    Raises:
      ValueError: When one is not a host name.
    """
    found = set()
    for host in hosts:
        if host.strip() == "*":
            found.add("*")
            continue
        name = host_name(host if not _is_bare_ipv6(host) else "[%s]" % host)
        if not name:
            raise ValueError("%r is not a host name or address" % host)
        found.add(name)
    return frozenset(found)


def _is_bare_ipv6(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).version == 6
    except ValueError:
        return False


class Guard:
    """Checks the Host, tokens, origins and CSRF tokens.

    Parameters:
      token(str|None): The shared token every request must carry; None lets every request in.
      secret(bytes|None): The key login cookies and CSRF tokens are signed with; random per process
        by default (a restart then logs everybody out).
      allowed_hosts(list[str]): The host names (or addresses) requests may name in their ``Host``
        header; ``*`` for any (only behind a proxy that checks it).
    """

    def __init__(
        self, *, token: str | None = None, secret: bytes | None = None, allowed_hosts: Iterable[str] = LOOPBACK_HOSTS
    ) -> None:
        self.token = token or None
        self.secret = secret or secrets.token_bytes(32)
        self.allowed_hosts = normalise_hosts(allowed_hosts)

    # The Host -------------------------------------------------------------------------

    def host_allowed(self, request: Request) -> bool:
        """Whether the request's ``Host`` is one the dashboard is served as."""
        if "*" in self.allowed_hosts:
            return True
        name = host_name(request.header("Host"))
        return bool(name) and name in self.allowed_hosts

    # The shared token -----------------------------------------------------------------

    @property
    def _token_key(self) -> bytes:
        # Bound to the token as well as to the secret: a new token logs everybody out.
        token = (self.token or "").encode("utf-8")
        return hmac.new(self.secret, _TOKEN_PROOF + b"\0" + token, hashlib.sha256).digest()

    def new_login(self) -> str:
        """A login cookie's value: when it was made, a random session id, and their signature."""
        issued, session = int(time.time()), secrets.token_urlsafe(24)
        return "%d.%s.%s" % (issued, session, self._sign_login(issued, session))

    def _sign_login(self, issued: int, session: str) -> str:
        return hmac.new(self._token_key, ("%d.%s" % (issued, session)).encode(), hashlib.sha256).hexdigest()

    def login_valid(self, value: str) -> bool:
        """Whether a login cookie was made by :meth:`new_login` for this token and secret, and is recent."""
        issued, _, rest = value.partition(".")
        session, _, signature = rest.partition(".")
        if not (issued.isascii() and issued.isdigit() and session and signature):
            return False
        if not 0 <= time.time() - int(issued) <= LOGIN_LIFETIME:
            return False
        expected = self._sign_login(int(issued), session)
        return hmac.compare_digest(signature.encode("ascii", "replace"), expected.encode())

    def token_matches(self, given: str) -> bool:
        return self.token is not None and hmac.compare_digest(given.encode("utf-8"), self.token.encode("utf-8"))

    def authenticated(self, request: Request) -> bool:
        """Whether the request carries the token (always, without one)."""
        if self.token is None:
            return True
        return self.carries_token(request)

    def carries_token(self, request: Request) -> bool:
        """Whether the request carries the token: a bearer header, or a valid login cookie."""
        if self.token is None:
            return False
        scheme, _, credentials = request.header("Authorization").partition(" ")
        if scheme.lower() == "bearer" and self.token_matches(credentials.strip()):
            return True
        return self.login_valid(request.cookies.get(TOKEN_COOKIE, ""))

    # Origins ----------------------------------------------------------------------------

    def same_origin(self, request: Request) -> bool:
        """Whether a state-changing request comes from a page of this dashboard, as far as the browser
        says: its ``Origin`` (when sent) names this very host (``null`` never does), and its
        ``Sec-Fetch-Site`` (when sent) is same-origin or none (typed by the user)."""
        if request.header("Sec-Fetch-Site") not in ("", "same-origin", "none"):
            return False
        origin = request.header("Origin")
        if not origin:
            return True  # not a browser, or an old one: the CSRF token decides
        try:
            parts = urllib.parse.urlsplit(origin.strip())
            origin_port = parts.port if ":" in parts.netloc.rpartition("]")[2] else None
        except ValueError:
            return False
        if parts.scheme not in ("http", "https") or not parts.hostname:
            return False  # "null" (a sandboxed frame, a file, a redirect across sites), or junk
        host = request.header("Host").strip().lower()
        name = host_name(host)
        origin_name = host_name(parts.netloc.rpartition("@")[2])
        if not name or name != origin_name:
            return False
        # Ports as both name them: a browser leaves its scheme's default port out of the Origin, and the
        # Host carries the port the browser used.  Schemes are not compared: behind a TLS proxy the
        # dashboard sees HTTP where the browser speaks HTTPS.
        return str(origin_port or "") == _port(host)

    # CSRF -----------------------------------------------------------------------------

    @staticmethod
    def new_session() -> str:
        return secrets.token_urlsafe(32)

    def csrf_token(self, session: str) -> str:
        """The CSRF token of a session."""
        return hmac.new(self.secret, session.encode("utf-8"), hashlib.sha256).hexdigest()

    def may_act(self, request: Request) -> bool:
        """Whether a POST comes from a page of this dashboard: its origin, and the CSRF token of its session."""
        if not self.same_origin(request):
            return False
        session = request.cookies.get(SESSION_COOKIE, "")
        given = request.form.get(CSRF_FIELD, "").encode("ascii", "replace")
        return bool(session and given) and hmac.compare_digest(given, self.csrf_token(session).encode())


def cookie(name: str, value: str, request: Request, *, max_age: int | None = None) -> tuple[str, str]:
    """A ``Set-Cookie`` header for the dashboard's path: HttpOnly, SameSite=Strict, Secure over HTTPS."""
    parts = ["%s=%s" % (name, value), "Path=%s" % (request.root or "/"), "HttpOnly", "SameSite=Strict"]
    if max_age is not None:
        parts.append("Max-Age=%d" % max_age)
    if request.secure:
        parts.append("Secure")
    return ("Set-Cookie", "; ".join(parts))


def secure(response: Response) -> Response:
    """Add the security headers, and keep pages out of caches."""
    names = {name.lower() for name, _ in response.headers}
    response.headers += [(name, value) for name, value in SECURITY_HEADERS if name.lower() not in names]
    if "cache-control" not in names:
        response.headers.append(("Cache-Control", "no-store"))
    return response
