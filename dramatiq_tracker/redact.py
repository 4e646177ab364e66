"""Secrets out of what is printed and logged: a Redis URL's password and secret query parameters.

A URL may carry a password in its user information (``redis://user:pw@host``) and in its query
string (``?password=...``, ``?sentinel_password=...``, which redis-py reads, and any parameter named
like a secret).  :func:`redact` replaces each of them with ``***``; the core's errors and the operator
tools (:mod:`dramatiq_tracker.ops.urls`) print URLs through it.
"""

from __future__ import annotations

import urllib.parse

#: What a masked secret shows as.
MASK = "***"

#: A query parameter whose name contains one of these holds a secret (``password``,
#: ``sentinel_password``, ``ssl_password``, ``auth_token``...).
SECRET_WORDS = ("pass", "pwd", "secret", "token", "credential", "auth")

#: What an URL that cannot be parsed shows as: a part of it might be a secret.
UNREADABLE = "(an unreadable URL)"


def is_secret(name: str) -> bool:
    """Whether a query parameter called ``name`` holds a secret."""
    lowered = name.lower()
    return any(word in lowered for word in SECRET_WORDS)


def redact(url: str) -> str:
    """``url`` fit to print: the password of its user information and the values of its secret query
    parameters masked; everything else (host, port, database, certificate paths) as it was.

    Parameters:
      url(str): Any URL the tracker takes (``redis://``, ``rediss://``, ``unix://``,
        ``redis+cluster://``, ``redis+sentinel://host:port,host:port/service``).
    """
    try:
        parts = urllib.parse.urlsplit(url)
        credentials, at, hosts = parts.netloc.rpartition("@")
        if at and ":" in credentials:
            user = credentials.partition(":")[0]
            parts = parts._replace(netloc="%s:%s@%s" % (user, MASK, hosts))
        if parts.query:
            pairs = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
            if any(is_secret(name) for name, _ in pairs):
                masked = [(name, MASK if is_secret(name) else value) for name, value in pairs]
                parts = parts._replace(query=urllib.parse.urlencode(masked, safe="/*:,"))
        return urllib.parse.urlunsplit(parts)
    except ValueError:
        return UNREADABLE


def hide(text: str, url: str) -> str:
    """``text`` with every occurrence of ``url`` (and of its secrets) replaced by its redacted form: for
    messages of other code that quote the URL whole."""
    shown = redact(url)
    if shown == url:
        return text
    text = text.replace(url, shown)
    try:
        parts = urllib.parse.urlsplit(url)
        secrets = [parts.password or ""]
        secrets += [value for name, value in urllib.parse.parse_qsl(parts.query) if is_secret(name)]
    except ValueError:
        return text.replace(url, UNREADABLE)
    for secret in secrets:
        if len(secret) >= 3:
            text = text.replace(secret, MASK)
    return text
