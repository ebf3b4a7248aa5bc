"""
Errors raised by `skyblink.storage.alerts`.

One root, `AlertError` (itself a `~skyblink.storage.StorageError`); each subclass carries the
values it names as attributes, and says whether retrying can help. No message ever holds a
password: URLs are redacted before they reach an error.
"""

from __future__ import annotations

from ..errors import StorageError

__all__ = [
    "AlertDecodeError",
    "AlertEncodeError",
    "AlertError",
    "RedisAuthError",
    "RedisUnavailableError",
    "SchemaNotFoundError",
    "SpoolError",
]


class AlertError(StorageError):
    """Root of the errors of the alert stream. Stable."""

    #: Whether the same call may succeed when retried later without a change.
    retryable: bool = False


class SchemaNotFoundError(AlertError):
    """
    No shipped schema has the version or id asked for.

    Attributes
    ----------
    wanted : str
        The version (``"1.0"``) or schema id asked for.
    known : tuple of str
        The shipped versions.
    """

    def __init__(self, wanted: str, known: tuple[str, ...]) -> None:
        super().__init__(
            f"no alert schema {wanted}; shipped versions: {', '.join(known) or 'none'}. "
            "Upgrade skyblink to read packets of a newer schema."
        )
        self.wanted, self.known = wanted, known


class AlertEncodeError(AlertError):
    """
    An alert does not fit the schema; nothing was published.

    Attributes
    ----------
    alert_id : int or None
        The alert's id when known.
    reason : str
        What is wrong, naming the field.
    """

    def __init__(self, alert_id: int | None, reason: str) -> None:
        super().__init__(f"alert {alert_id}: does not fit the alert schema: {reason}")
        self.alert_id, self.reason = alert_id, reason


class AlertDecodeError(AlertError):
    """
    A stream entry or payload is not a valid alert packet (a consumer dead-letters it).

    Attributes
    ----------
    entry_id : str or None
        The stream entry id when the payload came from a stream.
    field : str
        The stream field or packet field at fault.
    reason : str
        What is wrong.
    """

    def __init__(self, reason: str, *, field: str, entry_id: str | None = None) -> None:
        where = f"entry {entry_id} " if entry_id else ""
        super().__init__(f"{where}field {field!r}: {reason}")
        self.entry_id, self.field, self.reason = entry_id, field, reason


class RedisUnavailableError(AlertError):
    """
    Redis did not answer within the configured retries. Retryable.

    Attributes
    ----------
    url : str
        The redacted URL.
    attempts : int
        Attempts made.
    """

    retryable = True

    def __init__(self, url: str, attempts: int, cause: str) -> None:
        super().__init__(
            f"Redis at {url} unreachable after {attempts} attempt(s): {cause}. Check that it runs "
            "and the URL (redis.url / SKYBLINK_REDIS__URL); raise alerts.retries to wait longer."
        )
        self.url, self.attempts, self.cause = url, attempts, cause


class RedisAuthError(AlertError):
    """
    Redis refused the credentials, or wants some and got none. Not retryable.

    Attributes
    ----------
    url : str
        The redacted URL.
    """

    def __init__(self, url: str, cause: str) -> None:
        super().__init__(
            f"Redis at {url} refused authentication ({cause}). Set the password in redis.password "
            "or SKYBLINK_REDIS__PASSWORD (and redis.username for an ACL user)."
        )
        self.url = url


class SpoolError(AlertError):
    """
    The local spool cannot be written or read.

    Attributes
    ----------
    path : str
        The spool file or directory.
    """

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"alert spool {path}: {reason}")
        self.path = path
