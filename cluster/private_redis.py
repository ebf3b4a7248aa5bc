"""
The nightly run's private ``redis-server``, for when no Redis URL is configured.

The server keeps its append-only file in ``night.redis_dir``, so a run killed and started again
continues the same stream. A driver holds an exclusive lock (``fcntl.flock`` on ``lock`` there)
for as long as it uses the directory, so two drivers starting at the same moment never both
start a server on one append-only file: the second is refused, naming the first.
``server.json`` records the server's pid and port and the pid of the driver using it; a server
left running (``--keep-redis``, or by a killed run) is used again by the next run, but only when
that pid really listens on that port (a stale file never makes a run use or stop an unrelated
process).

The server requires a password: ``redis.password`` when configured, else one generated for the
run (kept in ``password``, mode 0600, beside the append-only file, so that a kept server is
found again and its consumers can read it). The URL yielded carries it (every URL shown is
redacted by `skyblink.redaction`).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import secrets
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import redis

from skyblink.config import SkyblinkConfig
from skyblink.redaction import register_secret
from skyblink.storage.redis_server import RedisServer, RedisServerError, pid_listens_on

__all__ = ["embedded_redis", "private_password", "running_private_redis"]

log = logging.getLogger(__name__)


def private_password(data_dir: Path) -> str | None:
    """
    Return the password of the private redis-server kept in ``data_dir``, or None.

    Parameters
    ----------
    data_dir : Path
        ``night.redis_dir``.

    Returns
    -------
    str or None
        None when no run generated one there (``redis.password`` was configured, or no run yet).
    """
    try:
        return (Path(data_dir).expanduser() / "password").read_text().strip() or None
    except OSError:
        return None


@contextlib.contextmanager
def embedded_redis(config: SkyblinkConfig, *, keep: bool = False, say: Callable[[str], None] = log.info) -> Iterator[str]:
    """
    Yield the Redis URL to publish to, starting a private server when none is configured.

    Parameters
    ----------
    config : SkyblinkConfig
        ``redis.url`` set: yield it, start nothing. Unset: a private ``redis-server`` on a free
        loopback port with its data (append-only file) in ``night.redis_dir``, with
        ``redis.password`` or a generated one; a server that an earlier run left there
        (``--keep-redis``, or a run that was killed) is used again when its pid listens on its
        port and it accepts the password.
    keep : bool
        Leave the private server running at the end (its URL is said, without the password).
    say : callable
        Where to announce the private server.

    Yields
    ------
    str
        ``redis://:<password>@127.0.0.1:<port>/0`` for the private server.

    Raises
    ------
    RedisServerError
        redis-server is not installed or did not start, or another running ``skyblink night
        run`` holds the same data directory.
    """
    if config.redis.url:
        yield config.redis.url
        return
    data_dir = Path(config.night.redis_dir).expanduser().resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    info_path = data_dir / "server.json"
    with _directory_lock(data_dir, info_path):
        password = _password(config, data_dir)
        register_secret(password)
        info = _server_info(info_path)
        pid, port = info.get("pid"), info.get("port")
        server: RedisServer | None = None
        if isinstance(pid, int) and isinstance(port, int) and _answers(pid, port, password):
            say(f"using the private redis-server an earlier run left at redis://127.0.0.1:{port}/0 "
                f"(pid {pid}, data in {data_dir})")
        else:
            if isinstance(pid, int) and isinstance(port, int):
                say(f"ignoring {info_path}: pid {pid} is not a redis-server of ours listening on port {port}")
            server = RedisServer(data_dir=data_dir, password=password, persistent=True)
            server.start()
            pid, port = server.pid, server.port
            say(f"started a private redis-server at {server.url} (data in {data_dir}; password in {data_dir / 'password'})")
        url = f"redis://:{quote(password, safe='')}@127.0.0.1:{port}/0"
        _write_private(info_path, json.dumps({"pid": pid, "port": port, "driver_pid": os.getpid()}))
        try:
            yield url
        finally:
            if keep:
                _write_private(info_path, json.dumps({"pid": pid, "port": port}))
                say(f"the private redis-server keeps running at redis://127.0.0.1:{port}/0 (pid {pid}; password in "
                    f"{data_dir / 'password'}); stop it with: kill {pid}")
            else:
                if server is not None:
                    server.stop()
                else:
                    _terminate(int(pid), int(port))  # type: ignore[arg-type]
                info_path.unlink(missing_ok=True)
                say(f"stopped the private redis-server (its data stays in {data_dir}; --keep-redis keeps it running)")


@contextlib.contextmanager
def _directory_lock(data_dir: Path, info_path: Path) -> Iterator[None]:
    """Hold ``data_dir/lock`` exclusively (released by the kernel if the driver dies)."""
    fd = os.open(data_dir / "lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            driver = _server_info(info_path).get("driver_pid", "unknown")
            msg = (f"another skyblink night run (pid {driver}) uses the private Redis in {data_dir}; wait for it, "
                   "pass --redis-url, or set night.redis_dir (SKYBLINK_NIGHT__REDIS_DIR)")
            raise RedisServerError(msg) from None
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def _password(config: SkyblinkConfig, data_dir: Path) -> str:
    """``redis.password``, else the one an earlier run generated here, else a new one (kept 0600)."""
    if config.redis.password is not None:
        return config.redis.password.get_secret_value()
    kept = private_password(data_dir)
    if kept:
        return kept
    generated = secrets.token_urlsafe(32)
    _write_private(data_dir / "password", generated + "\n")
    return generated


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` readable by the owner only, replacing the file atomically."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


def running_private_redis(config: SkyblinkConfig) -> str | None:
    """
    Return the URL of the private redis-server a run left running in ``night.redis_dir``.

    What ``skyblink alerts`` reads when no ``redis.url`` is configured (after ``night run
    --keep-redis``, as the demo runs it). None when no server is running there.
    """
    data_dir = Path(config.night.redis_dir).expanduser().resolve()
    info = _server_info(data_dir / "server.json")
    pid, port = info.get("pid"), info.get("port")
    if config.redis.password is not None:
        password: str | None = config.redis.password.get_secret_value()
    else:
        password = private_password(data_dir)
    if isinstance(pid, int) and isinstance(port, int) and password and _answers(pid, port, password):
        register_secret(password)
        return f"redis://:{quote(password, safe='')}@127.0.0.1:{port}/0"
    return None


def _server_info(path: Path) -> dict[str, Any]:
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


def _answers(pid: int, port: int, password: str) -> bool:
    """The pid listens on the port and the server there accepts our password."""
    if not pid_listens_on(pid, port):
        return False
    client = redis.Redis(host="127.0.0.1", port=port, password=password, socket_connect_timeout=1, socket_timeout=2)
    try:
        return bool(client.ping())
    except (redis.exceptions.RedisError, OSError):
        return False
    finally:
        client.close()


def _terminate(pid: int, port: int) -> None:
    """Stop our redis-server by pid (SIGTERM: it finishes its append-only file) and wait for it."""
    if not pid_listens_on(pid, port):
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    while _is_running(pid) and time.monotonic() < deadline:
        time.sleep(0.05)  # bounded wait for the server to finish its append-only file and exit


def _is_running(pid: int) -> bool:
    try:
        return bool(Path(f"/proc/{pid}/cmdline").read_bytes())  # empty for a zombie
    except OSError:
        return False
