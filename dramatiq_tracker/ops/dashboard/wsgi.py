"""The little of HTTP the dashboard needs on top of WSGI: a parsed request and a response."""

from __future__ import annotations

import dataclasses
import http
import http.cookies
import json
import urllib.parse
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIEnvironment

#: The largest form body read, in bytes: the dashboard's forms hold a token and a few ids.
MAX_FORM_BYTES = 64 * 1024

HTML = "text/html; charset=utf-8"
JSON = "application/json"
TEXT = "text/plain; charset=utf-8"


class BadRequest(Exception):
    """Raised when a request cannot be read (a form too large, not UTF-8)."""


@dataclasses.dataclass
class Request:
    """A request to the dashboard.

    Parameters:
      environ(dict): The WSGI environment.
      root(str): The URL path the dashboard is served under ("" or "/prefix", after any SCRIPT_NAME).
      path(str): The path below ``root``, "/" at least.
    """

    environ: WSGIEnvironment
    root: str
    path: str
    _form: dict[str, str] | None = None

    @property
    def method(self) -> str:
        return str(self.environ.get("REQUEST_METHOD", "GET")).upper()

    @property
    def secure(self) -> bool:
        return self.environ.get("wsgi.url_scheme") == "https"

    @property
    def query(self) -> dict[str, str]:
        """The query string's parameters (the first value of each)."""
        pairs = urllib.parse.parse_qsl(str(self.environ.get("QUERY_STRING", "")), keep_blank_values=True)
        found: dict[str, str] = {}
        for name, value in pairs:
            found.setdefault(name, value)
        return found

    def arg(self, name: str, default: str = "") -> str:
        """A query parameter, stripped; ``default`` when it is missing or blank."""
        return self.query.get(name, "").strip() or default

    def header(self, name: str) -> str:
        return str(self.environ.get("HTTP_" + name.upper().replace("-", "_"), ""))

    @property
    def cookies(self) -> dict[str, str]:
        jar = http.cookies.SimpleCookie()
        try:
            jar.load(self.header("Cookie"))
        except http.cookies.CookieError:
            return {}
        return {name: morsel.value for name, morsel in jar.items()}

    @property
    def form(self) -> dict[str, str]:
        """The fields of a url-encoded POST body (the first value of each).

        Raises:
          BadRequest: When the body is too large or not UTF-8.
        """
        if self._form is None:
            self._form = {}
            if self.method == "POST":
                try:
                    length = int(self.environ.get("CONTENT_LENGTH") or 0)
                except ValueError:
                    raise BadRequest("bad Content-Length") from None
                if length > MAX_FORM_BYTES:
                    raise BadRequest("form too large")
                body = self.environ["wsgi.input"].read(length) if length > 0 else b""
                try:
                    pairs = urllib.parse.parse_qsl(body.decode("utf-8"), keep_blank_values=True)
                except UnicodeDecodeError:
                    raise BadRequest("form is not UTF-8") from None
                for name, value in pairs:
                    self._form.setdefault(name, value)
        return self._form

    def url(self, path: str, **params: object) -> str:
        """A link to a dashboard ``path``, with the non-empty ``params`` as its query string."""
        query = urllib.parse.urlencode({name: value for name, value in params.items() if value not in (None, "")})
        return self.root + path + ("?" + query if query else "")


@dataclasses.dataclass
class Response:
    """What the dashboard answers.

    Parameters:
      body(bytes)
      status(int)
      content_type(str)
      headers(list[tuple[str, str]]): More headers (cookies, Location, caching).
    """

    body: bytes = b""
    status: int = 200
    content_type: str = HTML
    headers: list[tuple[str, str]] = dataclasses.field(default_factory=list)

    @property
    def status_line(self) -> str:
        return "%d %s" % (self.status, http.HTTPStatus(self.status).phrase)

    @classmethod
    def text(cls, text: str, status: int = 200) -> Response:
        return cls(text.encode("utf-8"), status, TEXT)

    @classmethod
    def json(cls, data: Mapping[str, Any] | list[Any], status: int = 200) -> Response:
        return cls(json.dumps(data, separators=(",", ":")).encode("utf-8"), status, JSON)

    @classmethod
    def redirect(cls, location: str, status: int = 303) -> Response:
        return cls(b"", status, TEXT, [("Location", location)])
