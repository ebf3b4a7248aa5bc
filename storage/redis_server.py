r"""
A private ``redis-server`` on a free loopback port, for a laptop run and for the tests.

When no Redis URL is configured, the pipeline starts one with `RedisServer` and stops it at the
end. Tests use it with persistence on (``appendonly yes``, ``appendfsync always``) to kill and
restart a server on the same port without losing acknowledged writes.

The password, when set, goes into a configuration file readable only by the owner, never on the
command line (where ``ps`` would show it). Every value written there is quoted with each byte
outside a small safe set escaped (``\xHH``), so a ``"``, a backslash or a newline in a password
or a path can never end the value or add a directive.

Notes
-----
Not thread-safe: one owner starts and stops a server.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Self

import redis

from .errors import StorageError

__all__ = ["RedisServer", "RedisServerError", "conf_quote", "find_redis_server", "pid_listens_on"]

log = logging.getLogger(__name__)

_KNOWN_PATHS = (Path("/usr/bin/redis-server"), Path("/usr/local/bin/redis-server"))


class RedisServerError(StorageError):
    """The private redis-server could not be started or stopped; the message says what to do."""


def find_redis_server() -> Path | None:
    """
    Return the ``redis-server`` executable, or None when it is not installed.

    Returns
    -------
    Path or None
        From ``$PATH`` first, then the usual install locations.
    """
    found = shutil.which("redis-server")
    if found:
        return Path(found)
    return next((path for path in _KNOWN_PATHS if os.access(path, os.X_OK)), None)


_CONF_SAFE = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_./:@+=,~%")


def conf_quote(value: str) -> str:
    r"""
    Return ``value`` as one double-quoted redis.conf argument that reads back byte for byte.

    Parameters
    ----------
    value : str
        Any text (UTF-8 encoded); quotes, backslashes, spaces and newlines included.

    Returns
    -------
    str
        ``"..."`` with every byte outside a safe set written as ``\xHH`` (redis-server's
        configuration parser reads these escapes inside double quotes).
    """
    out = []
    for byte in value.encode():
        char = chr(byte)
        out.append(char if char in _CONF_SAFE else f"\\x{byte:02x}")
    return '"' + "".join(out) + '"'


def pid_listens_on(pid: int, port: int) -> bool:
    """
    Return whether process ``pid`` holds a TCP socket listening on ``port`` (Linux ``/proc``).

    A pid and a port recorded in a file go stale: the pid may now be another program, and the port
    another server. Only a listening socket owned by the pid ties the two together.

    Parameters
    ----------
    pid : int
    port : int

    Returns
    -------
    bool
        False when the process is gone, not ours to inspect, or listens elsewhere.
    """
    try:
        inodes = set()
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
    except OSError:
        return False
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            # local_address is HEXIP:HEXPORT, st 0A is LISTEN, the inode is the tenth column
            if len(cols) > 9 and cols[3] == "0A" and int(cols[1].rsplit(":", 1)[1], 16) == port and cols[9] in inodes:
                return True
    return False


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """
    Start, stop, kill and restart one private redis-server on 127.0.0.1. Stable.

    Parameters
    ----------
    port : int, optional
        Port to listen on (default: a free one, kept across restarts).
    data_dir : Path, optional
        Working directory (AOF files, the configuration file, the log); default a new temporary
        directory removed by `stop`.
    password : str, optional
        ``requirepass``.
    persistent : bool, optional
        ``appendonly yes`` with ``appendfsync always``: every acknowledged write survives a kill.
    executable : Path, optional
        The redis-server binary (default: `find_redis_server`).
    startup_timeout_s : float, optional
        How long to wait for PING to answer.

    Raises
    ------
    RedisServerError
        redis-server is not installed (names how to install it).
    """

    def __init__(
        self,
        *,
        port: int | None = None,
        data_dir: Path | None = None,
        password: str | None = None,
        persistent: bool = False,
        executable: Path | None = None,
        startup_timeout_s: float = 10.0,
    ) -> None:
        binary = executable or find_redis_server()
        if binary is None:
            msg = (
                "redis-server is not installed; install it (apt-get install redis-server, "
                "brew install redis) or configure redis.url / SKYBLINK_REDIS__URL"
            )
            raise RedisServerError(msg)
        self.executable = binary
        self._fixed_port = port
        self.port = port or 0
        self._own_dir = data_dir is None
        self.data_dir = Path(data_dir) if data_dir else Path(tempfile.mkdtemp(prefix="skyblink-redis-"))
        self._password = password
        self.persistent = persistent
        self.startup_timeout_s = startup_timeout_s
        self._process: subprocess.Popen[bytes] | None = None

    # ------------------------------------------------------------------------------ properties
    @property
    def url(self) -> str:
        """``redis://127.0.0.1:<port>/0`` (without the password)."""
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int | None:
        """Process id of the running server, or None."""
        return self._process.pid if self.is_running else None  # type: ignore[union-attr]

    @property
    def is_running(self) -> bool:
        """Whether the server process is alive."""
        return self._process is not None and self._process.poll() is None

    def client(self, **kwargs: object) -> redis.Redis:
        """Return a new client of this server (with its password)."""
        return redis.Redis(host="127.0.0.1", port=self.port, password=self._password, **kwargs)  # type: ignore[arg-type]

    # ------------------------------------------------------------------------------- lifecycle
    def _write_config(self) -> Path:
        lines = [
            "bind 127.0.0.1",
            f"port {self.port}",
            f"dir {conf_quote(str(self.data_dir))}",
            'logfile "redis.log"',
            'save ""',
            "protected-mode yes",
            f"appendonly {'yes' if self.persistent else 'no'}",
            "appendfsync always",
        ]
        if self._password is not None:
            lines.append(f"requirepass {conf_quote(self._password)}")
        path = self.data_dir / "redis.conf"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write("\n".join(lines) + "\n")
        return path

    def start(self) -> None:
        """
        Start the server and wait until it answers PING.

        Raises
        ------
        RedisServerError
            Already running, or it exited or did not answer in time (the message quotes its log).
        """
        if self.is_running:
            msg = f"redis-server already runs on port {self.port} (pid {self.pid})"
            raise RedisServerError(msg)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        attempts = 1 if self._fixed_port or self.port else 3
        for attempt in range(attempts):
            if not self.port:
                self.port = _free_port()
            config = self._write_config()
            self._process = subprocess.Popen(  # fixed executable, our own arguments
                [str(self.executable), str(config)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                cwd=self.data_dir,
            )
            if self._wait_ready():
                log.debug("private redis-server listening on %s (pid %d, dir %s)", self.url, self._process.pid, self.data_dir)
                return
            if self._process.poll() is None:
                self._process.kill()
            self._process.wait()
            if attempt + 1 < attempts:
                self.port = 0  # another process took the free port: pick again
        log_tail = self._log_tail()
        msg = f"redis-server on port {self.port} did not answer PING within {self.startup_timeout_s} s; its log: {log_tail}"
        raise RedisServerError(msg)

    def _wait_ready(self) -> bool:
        deadline = time.monotonic() + self.startup_timeout_s
        client = redis.Redis(
            host="127.0.0.1", port=self.port, password=self._password, socket_connect_timeout=0.5, socket_timeout=0.5
        )
        delay = 0.005
        try:
            while time.monotonic() < deadline:
                if self._process is None or self._process.poll() is not None:
                    return False
                try:
                    if client.ping():
                        return True
                except redis.exceptions.BusyLoadingError:
                    pass  # loading the AOF after a restart
                except redis.exceptions.ConnectionError:
                    pass
                # Poll the socket with a growing interval, bounded by the deadline.
                time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
                delay = min(delay * 2, 0.1)
            return False
        finally:
            client.close()

    def _log_tail(self) -> str:
        path = self.data_dir / "redis.log"
        try:
            return " | ".join(path.read_text(errors="replace").strip().splitlines()[-5:])
        except OSError:
            return "(no log)"

    def kill(self) -> None:
        """Kill the server at once (SIGKILL), as a crash would; the data directory stays."""
        if self._process is not None and self._process.poll() is None:
            self._process.send_signal(signal.SIGKILL)
            self._process.wait()
            log.info("killed redis-server on port %d", self.port)

    def restart(self) -> None:
        """Start the server again on the same port and data directory (after `kill` or `stop`)."""
        self.kill()
        self.start()

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after 10 s) and remove its own temporary directory."""
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
            log.debug("stopped redis-server on port %d", self.port)
        self._process = None
        if self._own_dir:
            with contextlib.suppress(OSError):
                shutil.rmtree(self.data_dir)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
