"""Who may see the dashboard, who may change something through it, and the headers that keep its
pages from being framed, sniffed or made to run foreign scripts.

- A shared token (optional): every request carries it, as ``Authorization: Bearer <token>`` or as
  the cookie that the login form (or ``?token=`` once) sets.  The cookie holds an HMAC of the token,
  not the token.
- Actions (optional, off by default) are POST requests that carry a CSRF token: the HMAC of a
  per-process secret and a random session cookie (``SameSite=Strict``, ``HttpOnly``).  A request whose
  ``Sec-Fetch-Site`` says it comes from another site is refused as well.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

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
    ("Referrer-Policy", "no-referrer"),
    ("Cross-Origin-Opener-Policy", "same-origin"),
    ("Cross-Origin-Resource-Policy", "same-origin"),
)

_TOKEN_PROOF = b"dramatiq-tracker dashboard token"


class Guard:
    """Checks tokens and CSRF tokens.

    Parameters:
      token(str|None): The shared token every request must carry; None lets every request in.
      secret(bytes|None): The key CSRF tokens are signed with; random per process by default.
    """

    def __init__(self, *, token: str | None = None, secret: bytes | None = None) -> None:
        self.token = token or None
        self.secret = secret or secrets.token_bytes(32)

    # The shared token -----------------------------------------------------------------

    @property
    def token_proof(self) -> str:
        """What the login cookie holds: an HMAC of the token, so that the cookie does not carry it."""
        if self.token is None:
            return ""
        return hmac.new(self.token.encode("utf-8"), _TOKEN_PROOF, hashlib.sha256).hexdigest()

    def token_matches(self, given: str) -> bool:
        return self.token is not None and hmac.compare_digest(given.encode("utf-8"), self.token.encode("utf-8"))

    def authenticated(self, request: Request) -> bool:
        """Whether the request carries the token (always, without one)."""
        if self.token is None:
            return True
        scheme, _, credentials = request.header("Authorization").partition(" ")
        if scheme.lower() == "bearer" and self.token_matches(credentials.strip()):
            return True
        proof = request.cookies.get(TOKEN_COOKIE, "")
        return bool(proof) and hmac.compare_digest(proof.encode("ascii", "replace"), self.token_proof.encode())

    # CSRF -----------------------------------------------------------------------------

    @staticmethod
    def new_session() -> str:
        return secrets.token_urlsafe(32)

    def csrf_token(self, session: str) -> str:
        """The CSRF token of a session."""
        return hmac.new(self.secret, session.encode("utf-8"), hashlib.sha256).hexdigest()

    def may_act(self, request: Request) -> bool:
        """Whether a POST comes from a page of this dashboard: same site, and the CSRF token of its session."""
        # Browsers say where a request comes from; a reverse proxy does not change it (unlike Host).
        if request.header("Sec-Fetch-Site") not in ("", "same-origin", "none"):
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
