"""
Checks of what a user typed, run by the commands before anything starts (Ray, Redis, a store).

Each check raises `InputError` with one line naming the flag or key and the value; the commands
print it and exit 1. None of them creates a file or folder.
"""

from __future__ import annotations

import re
import socket
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from .config import SkyblinkConfig
from .lazy_import import lazy_module
from .redaction import redact_url

if TYPE_CHECKING:
    import fsspec

    from skyblink.cluster import ingest
else:
    fsspec = lazy_module("fsspec")
    ingest = lazy_module("skyblink.cluster.ingest")  # imports Ray: only when a night is checked

__all__ = [
    "InputError",
    "check_night_dir",
    "check_output_dir",
    "check_output_file",
    "check_ray_address",
    "check_redis",
    "check_store",
]

_REDIS_SCHEMES = ("redis", "rediss", "unix")
_RAY_HOST_PORT = re.compile(r"^[A-Za-z0-9_.\-]+:\d{1,5}$")


class InputError(ValueError):
    """A value the user gave cannot work; the message names it."""


def _local_path(url: str) -> Path | None:
    """The local path of a store path or ``file://`` URL; None for another file system."""
    if "://" not in url:
        return Path(url).expanduser()
    parts = urlsplit(url)
    return Path(parts.path) if parts.scheme == "file" else None


def _first_existing(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_store(url: str, *, must_exist: bool = False, flag: str = "--store") -> None:
    """
    Check a store path or fsspec URL before a command opens it.

    Raises
    ------
    InputError
        A local path that is an existing file (or under one), that does not exist when
        ``must_exist``; a URL whose protocol fsspec does not know or cannot load.
    """
    local = _local_path(url)
    if local is None:
        protocol = urlsplit(url).scheme
        try:
            fsspec.get_filesystem_class(protocol)
        except ValueError:
            msg = f"{flag} {url}: unknown file system {protocol!r} (use a local path or an fsspec URL such as s3://)"
            raise InputError(msg) from None
        except ImportError as exc:
            msg = f"{flag} {url}: the {protocol!r} file system needs a package that is not installed ({exc})"
            raise InputError(msg) from None
        return
    if local.exists() and not local.is_dir():
        msg = f"{flag} {url} is a file, not a store directory; choose a new path or an existing store"
        raise InputError(msg)
    existing = _first_existing(local)
    if not existing.is_dir():
        msg = f"{flag} {url}: {existing} is a file, so the store cannot be created under it"
        raise InputError(msg)
    if must_exist and not local.exists():
        msg = f"{flag} {url}: no store there; run `skyblink night run` (or `skyblink ingest`) first"
        raise InputError(msg)


def check_night_dir(night_dir: Path, *, allow_empty: bool = False) -> int:
    """
    Check a night directory and return how many FITS files it holds.

    Raises
    ------
    InputError
        It does not exist, is not a directory, two files would share one store key, or it
        holds no FITS file and ``allow_empty`` is false.
    """
    if not night_dir.exists():
        msg = f"night directory {night_dir} does not exist"
        raise InputError(msg)
    if not night_dir.is_dir():
        msg = f"night directory {night_dir} is a file, not a directory"
        raise InputError(msg)
    try:
        files = ingest.discover_night(night_dir)
    except ingest.IngestPlanError as exc:
        raise InputError(str(exc)) from None
    if not files and not allow_empty:
        msg = (f"night directory {night_dir} holds no FITS files (*.fits, *.fits.fz, *.fits.gz, in exposures/ and "
               "references/ or at its top); nothing to do")
        raise InputError(msg)
    return len(files)


def check_redis(config: SkyblinkConfig, *, flag: str = "--redis-url") -> None:
    """
    Check the Redis settings: a URL's scheme, or, with no URL, the private server's folder.

    Raises
    ------
    InputError
        A URL with another scheme than redis://, rediss:// or unix:// (named without its
        password), or a ``night.redis_dir`` that is a file.
    """
    url = config.redis.url
    if url:
        if urlsplit(url).scheme not in _REDIS_SCHEMES:
            msg = f"{flag} {redact_url(url)}: must start with redis://, rediss:// (TLS) or unix://"
            raise InputError(msg)
        return
    redis_dir = Path(config.night.redis_dir).expanduser()
    if not _first_existing(redis_dir).is_dir():
        msg = f"night.redis_dir {redis_dir}: {_first_existing(redis_dir)} is a file; the private Redis needs a folder"
        raise InputError(msg)


def check_ray_address(address: str | None, *, connect_timeout_s: float = 3.0) -> None:
    """
    Check a Ray address: unset, ``local``, ``auto``, or ``ray://host:port`` / ``host:port`` where
    something accepts a connection (Ray would otherwise retry for minutes).

    Raises
    ------
    InputError
        Another form, or nothing listening at the host and port.
    """
    if address in (None, "local", "auto"):
        return
    assert address is not None
    parts = urlsplit(address if "://" in address else f"gcs://{address}")
    if not ((parts.scheme == "ray" and parts.hostname) or ("://" not in address and _RAY_HOST_PORT.match(address))):
        msg = f"--ray-address {address}: must be local, auto, ray://HOST:PORT or HOST:PORT"
        raise InputError(msg)
    port = parts.port or 10001  # ray:// without a port: Ray Client's default
    try:
        socket.create_connection((parts.hostname, port), timeout=connect_timeout_s).close()
    except OSError as exc:
        msg = (f"--ray-address {address}: nothing answers at {parts.hostname}:{port} ({exc.strerror or exc}); "
               "is a Ray head running there (`ray start --head`)?")
        raise InputError(msg) from None


def check_output_file(path: Path, flag: str) -> None:
    """
    Check that a file can be written at ``path`` (its folder may not exist yet).

    Raises
    ------
    InputError
        ``path`` is a directory, or a file stands where a parent folder should be.
    """
    if path.is_dir():
        msg = f"{flag} {path} is a directory; give a file name"
        raise InputError(msg)
    existing = _first_existing(path.parent)
    if not existing.is_dir():
        msg = f"{flag} {path}: {existing} is a file, not a folder"
        raise InputError(msg)


def check_output_dir(path: Path, flag: str) -> None:
    """
    Check that ``path`` is or can become a folder.

    Raises
    ------
    InputError
        ``path`` or one of its parents is a file.
    """
    existing = _first_existing(path)
    if not existing.is_dir():
        msg = f"{flag} {path}: {existing} is a file, not a folder"
        raise InputError(msg)
