"""
The nightly run's private ``redis-server``, for when no Redis URL is configured.

The server keeps its append-only file in ``night.redis_dir``, so a run killed and started again
continues the same stream. ``server.json`` there records the server's pid and port and the pid of
the driver using it: a server left running (``--keep-redis``, or by a killed run) is used again
by the next run, and a second driver started while one is running is refused, since two servers
must never share one append-only file.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from skyblink.config import SkyblinkConfig
from skyblink.storage.redis_server import RedisServer, RedisServerError

__all__ = ["embedded_redis", "running_private_redis"]

log = logging.getLogger(__name__)


@contextlib.contextmanager
def embedded_redis(config: SkyblinkConfig, *, keep: bool = False, say: Callable[[str], None] = log.info) -> Iterator[str]:
    """
    Yield the Redis URL to publish to, starting a private server when none is configured.

    Parameters
    ----------
    config : SkyblinkConfig
        ``redis.url`` set: yield it, start nothing. Unset: a private ``redis-server`` on a free
        loopback port with its data (append-only file) in ``night.redis_dir``; one that an
        earlier run left there (``--keep-redis``, or a run that was killed) is used again.
    keep : bool
        Leave the private server running at the end (its URL is said).
    say : callable
        Where to announce the private server.

    Raises
    ------
    RedisServerError
        redis-server is not installed or did not start, or another running ``skyblink night
        run`` uses the same data directory.
    """
    if config.redis.url:
        yield config.redis.url
        return
    data_dir = Path(config.night.redis_dir).expanduser().resolve()
    info_path = data_dir / "server.json"
    info = _server_info(info_path)
    driver = info.get("driver_pid")
    if isinstance(driver, int) and driver != os.getpid() and _alive(driver):
        msg = (f"another skyblink night run (pid {driver}) uses the private Redis in {data_dir}; wait for it, "
               "pass --redis-url, or set night.redis_dir (SKYBLINK_NIGHT__REDIS_DIR)")
        raise RedisServerError(msg)
    password = config.redis.password.get_secret_value() if config.redis.password else None
    pid, port = info.get("pid"), info.get("port")
    server: RedisServer | None = None
    if isinstance(pid, int) and isinstance(port, int) and _is_redis_server(pid):
        url = f"redis://127.0.0.1:{port}/0"
        say(f"using the private redis-server an earlier run left at {url} (pid {pid}, data in {data_dir})")
    else:
        server = RedisServer(data_dir=data_dir, password=password, persistent=True)
        server.start()
        pid, port, url = server.pid, server.port, server.url
        say(f"started a private redis-server at {url} (data in {data_dir})")
    info_path.write_text(json.dumps({"pid": pid, "port": port, "driver_pid": os.getpid()}))
    try:
        yield url
    finally:
        if keep:
            info_path.write_text(json.dumps({"pid": pid, "port": port}))
            say(f"the private redis-server keeps running at {url} (pid {pid}); stop it with: kill {pid}")
        else:
            if server is not None:
                server.stop()
            else:
                _terminate(int(pid))
            info_path.unlink(missing_ok=True)
            say(f"stopped the private redis-server (its data stays in {data_dir}; --keep-redis keeps it running)")


def running_private_redis(config: SkyblinkConfig) -> str | None:
    """
    Return the URL of the private redis-server a run left running in ``night.redis_dir``.

    What ``skyblink alerts`` reads when no ``redis.url`` is configured (after ``night run
    --keep-redis``, as the demo runs it). None when no server is running there.
    """
    info = _server_info(Path(config.night.redis_dir).expanduser().resolve() / "server.json")
    pid, port = info.get("pid"), info.get("port")
    if isinstance(pid, int) and isinstance(port, int) and _is_redis_server(pid):
        return f"redis://127.0.0.1:{port}/0"
    return None


def _server_info(path: Path) -> dict[str, Any]:
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _is_redis_server(pid: int) -> bool:
    try:
        return b"redis-server" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def _terminate(pid: int) -> None:
    """Stop a redis-server by pid (SIGTERM: it finishes its append-only file) and wait for it."""
    if not _is_redis_server(pid):
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    while _is_redis_server(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
