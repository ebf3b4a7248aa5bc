"""
The one place secrets are taken out of what skyblink shows: configuration, reports, summaries,
log records and error messages.

A secret is a password in a URL's user-info (``redis://user:pw@host``, ``rediss://:pw@host``),
a secret-named query parameter (``?password=pw``, which redis-py accepts as well), or a value
registered with `register_secret` (a password from ``redis.password``, or the one generated for
the private redis-server). `redact_text` finds every URL in a text and redacts it, then masks
the registered values; `RedactingFilter` applies it to every log record.

Examples
--------
>>> redact_url("rediss://broker:S3cret@redis.example:6380/0?password=S3cret&db=0")
'rediss://broker:***@redis.example:6380/0?password=***&db=0'
"""

from __future__ import annotations

import logging
import re
import threading
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

__all__ = ["MASK", "RedactingFilter", "redact_text", "redact_url", "register_secret", "register_url_secrets"]

#: What a secret is replaced by.
MASK = "***"

#: Query parameters whose value is a secret (lower case).
_SECRET_PARAMS = frozenset({"password", "pass", "passwd", "pwd", "requirepass", "auth", "token", "secret", "access_token"})
#: A URL inside free text: scheme://, then anything up to white space or a quote/bracket.
_URL_IN_TEXT = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s'\"<>()\[\]{}]+")
#: Registered secrets shorter than this are not masked in free text (they would mask ordinary words).
_MIN_REGISTERED = 4

_registered: set[str] = set()
_lock = threading.Lock()


def register_secret(value: str | None) -> None:
    """
    Mask ``value`` wherever `redact_text` meets it from now on (this process).

    Parameters
    ----------
    value : str or None
        A password or token; None, empty and very short values are ignored.
    """
    if value and len(value) >= _MIN_REGISTERED:
        with _lock:
            _registered.add(value)


def register_url_secrets(url: str | None) -> None:
    """Register the password and the secret query parameters of ``url`` (`register_secret`)."""
    if not url:
        return
    try:
        parts = urlsplit(url)
        register_secret(parts.password)
    except ValueError:
        return
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name.lower() in _SECRET_PARAMS:
            register_secret(value)


def redact_url(url: str) -> str:
    """
    Return ``url`` with its password and secret query parameters replaced by ``***``.

    Parameters
    ----------
    url : str
        Any URL (redis://, rediss://, unix://, http://, ...); the user name, host, port, path
        and other parameters are kept.

    Returns
    -------
    str
        ``"<unparseable URL>"`` when it cannot be parsed (it may hold a secret anywhere).
    """
    try:
        parts = urlsplit(url)
        password = parts.password
        _ = parts.port  # raises on a malformed port
    except ValueError:
        return "<unparseable URL>"
    netloc = parts.netloc
    if password is not None:
        user, host = parts.username or "", netloc.rsplit("@", 1)[1]
        netloc = f"{user}:{MASK}@{host}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        if any(name.lower() in _SECRET_PARAMS for name, _ in pairs):
            query = urlencode([(n, MASK if n.lower() in _SECRET_PARAMS else v) for n, v in pairs], safe="*")
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def redact_text(text: str) -> str:
    """
    Return ``text`` with every URL in it redacted (`redact_url`) and every registered secret masked.

    Parameters
    ----------
    text : str
        A message, a log line, a rendered configuration or report.

    Returns
    -------
    str
    """
    if "://" in text:
        text = _URL_IN_TEXT.sub(lambda m: redact_url(m.group(0)), text)
    with _lock:
        secrets = sorted(_registered, key=len, reverse=True)
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, MASK)
    return text


class RedactingFilter(logging.Filter):
    """A logging filter that redacts each record's message (`redact_text`) before any handler formats it."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Replace the record's message by its redacted rendering; always keep the record."""
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a malformed record is logged as is
            return True
        redacted = redact_text(message)
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            shown = redact_text(str(exc))
            if shown != str(exc):
                # The traceback would print the secret: keep the type and the redacted message only.
                redacted = f"{redacted}\n{type(exc).__name__}: {shown}"
                record.exc_info = None
                record.exc_text = None
        if redacted != message or record.args:
            record.msg, record.args = redacted, None
        return True
