"""
Connections to Redis from the typed configuration: URL, AUTH, TLS, and a connectivity probe.

The password comes from ``redis.password`` (env ``SKYBLINK_REDIS__PASSWORD``, a K8s Secret) or
from the URL; it is never logged and never part of an error: every URL shown goes through
`skyblink.redaction.redact_url`, and every password met here is registered with
`skyblink.redaction.register_secret` so that logs and messages mask it too. redis-py's own
retries are off: the producer and consumer own the retry policy
(``alerts.retries``, ``alerts.backoff_s``), so retries never multiply.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from urllib.parse import urlsplit

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from ...config import RedisConfig
from ...redaction import redact_url, register_secret, register_url_secrets
from ..redis_server import RedisServer
from .errors import RedisAuthError, RedisUnavailableError

__all__ = ["client_url", "connect", "open_redis", "ping", "redact_url"]

log = logging.getLogger(__name__)

_SCHEMES = ("redis", "rediss", "unix")


def connect(
    config: RedisConfig,
    *,
    url: str | None = None,
    probe: bool = True,
    retries: int = 0,
    backoff_s: float = 0.2,
    backoff_max_s: float = 5.0,
) -> redis.Redis:
    """
    Return a client of the configured Redis, checked with PING.

    Parameters
    ----------
    config : RedisConfig
        URL, user, password (wins over one in the URL), TLS files and timeouts.
    url : str, optional
        Overrides ``config.url`` (e.g. a private server's URL).
    probe : bool, optional
        PING now (default), so a wrong URL or password fails at start, not mid-night.
    retries : int, optional
        PINGs again this many times while the server does not answer (``alerts.retries``: a
        Redis still starting, or restarting, at the start of a night), waiting ``backoff_s``
        doubling up to ``backoff_max_s`` in between. Wrong credentials are never retried.
    backoff_s, backoff_max_s : float, optional

    Returns
    -------
    redis.Redis
        With redis-py's own retries off.

    Raises
    ------
    ValueError
        No URL, or a URL with another scheme than redis://, rediss:// or unix://.
    RedisAuthError
        The server refused the credentials, or wants a password and none was given.
    RedisUnavailableError
        The server did not answer.
    """
    url = url or config.url
    if not url:
        msg = "no Redis URL: set redis.url (env SKYBLINK_REDIS__URL) or pass --redis-url"
        raise ValueError(msg)
    shown = redact_url(url)
    scheme = urlsplit(url).scheme
    register_url_secrets(url)
    if scheme not in _SCHEMES:
        msg = f"redis.url must start with redis://, rediss:// (TLS) or unix://, got {shown}"
        raise ValueError(msg)
    kwargs: dict[str, object] = {
        "socket_timeout": config.socket_timeout_s,
        "socket_connect_timeout": config.connect_timeout_s,
        "retry": Retry(NoBackoff(), 0),
        "health_check_interval": 30,
    }
    if config.username is not None:
        kwargs["username"] = config.username
    if config.password is not None:
        kwargs["password"] = config.password.get_secret_value()
        register_secret(kwargs["password"])  # type: ignore[arg-type]
    if scheme == "rediss":
        kwargs["ssl_cert_reqs"] = "required" if config.tls_verify else "none"
        kwargs["ssl_check_hostname"] = config.tls_verify
        if config.tls_ca_file is not None:
            kwargs["ssl_ca_certs"] = str(config.tls_ca_file)
        if config.tls_cert_file is not None:
            kwargs["ssl_certfile"] = str(config.tls_cert_file)
        if config.tls_key_file is not None:
            kwargs["ssl_keyfile"] = str(config.tls_key_file)
    client = redis.Redis.from_url(url, **kwargs)
    if probe:
        for attempt in range(retries + 1):
            try:
                ping(client, shown)
                break
            except RedisUnavailableError as exc:
                if attempt == retries:
                    client.close()
                    raise RedisUnavailableError(shown, retries + 1, exc.cause) from None
                delay = min(backoff_max_s, backoff_s * 2**attempt)
                log.warning("Redis at %s does not answer (attempt %d of %d); retry in %.2f s", shown, attempt + 1, retries + 1, delay)
                time.sleep(delay)  # backoff between two connection attempts
    return client


def ping(client: redis.Redis, shown_url: str) -> None:
    """
    PING once, turning redis-py errors into ours (without any secret).

    Parameters
    ----------
    client : redis.Redis
    shown_url : str
        The redacted URL, for messages.

    Raises
    ------
    RedisAuthError
        Wrong or missing credentials.
    RedisUnavailableError
        No answer.
    """
    try:
        client.ping()
    except redis.exceptions.AuthenticationError as exc:
        raise RedisAuthError(shown_url, _auth_reason(exc)) from None
    except redis.exceptions.ResponseError as exc:
        if "NOAUTH" in str(exc) or "WRONGPASS" in str(exc):
            raise RedisAuthError(shown_url, _auth_reason(exc)) from None
        raise
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
        raise RedisUnavailableError(shown_url, 1, type(exc).__name__ + ": " + str(exc)) from None


def _auth_reason(exc: Exception) -> str:
    text = str(exc).lower()
    if "required" in text or "noauth" in text:
        return "the server requires a password and none was given"
    return "invalid user name or password"


@contextlib.contextmanager
def open_redis(config: RedisConfig, *, url: str | None = None) -> Iterator[redis.Redis]:
    """
    Connect to the configured Redis, or start a private redis-server when no URL is configured.

    Parameters
    ----------
    config : RedisConfig
    url : str, optional
        Overrides ``config.url``.

    Yields
    ------
    redis.Redis
        Closed on exit; the private server, if one was started, is stopped (its data is lost).

    Raises
    ------
    RedisAuthError, RedisUnavailableError
        As `connect`.
    skyblink.storage.redis_server.RedisServerError
        No URL and redis-server is not installed.
    """
    url = url or config.url
    if url:
        client = connect(config, url=url)
        log.info("alerts go to Redis at %s", redact_url(url))
        try:
            yield client
        finally:
            client.close()
        return
    with RedisServer() as server:
        client = connect(config.model_copy(update={"password": None, "username": None}), url=server.url)
        try:
            yield client
        finally:
            client.close()


def client_url(client: redis.Redis) -> str:
    """
    Return the URL a client talks to, for messages: it never holds the password.

    Parameters
    ----------
    client : redis.Redis

    Returns
    -------
    str
    """
    kwargs = client.connection_pool.connection_kwargs
    if "path" in kwargs:
        return f"unix://{kwargs['path']}"
    scheme = "rediss" if client.connection_pool.connection_class.__name__.startswith("SSL") else "redis"
    return f"{scheme}://{kwargs.get('host', '?')}:{kwargs.get('port', '?')}/{kwargs.get('db', 0)}"
