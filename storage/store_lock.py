"""
One writer per store: the lock file ``<store>/writer.lock``.

Concurrent writes to one Zarr v3 shard lose data (zarr-python issue #3682), and two nightly runs
on one store would both ingest every file and process every tile. The commands that write a store
(``skyblink night run``, ``skyblink ingest``) hold `StoreLock` while they run; the ones that only
read it (``night score``, ``alerts consume``) take nothing.

The lock file is created exclusively (``O_CREAT | O_EXCL`` on a local store, mode ``"xb"``
through fsspec elsewhere) and holds the holder's host, pid, process start time and command. A lock
whose holder ran on this host and is gone (no such pid, or a pid reused by a later process, seen
from its start time) is stale: the next writer removes it and takes the store. A holder on another
host cannot be checked from here, so the holder also touches the lock file every
``heartbeat_s`` seconds: a lock not touched for ``stale_after_s`` (a driver pod evicted with its
node, a host that went down) is stale from anywhere. Until then the refusal says which file to
remove by hand once that run is known to be over.

The lock is per process: taking it again in the process that holds it (the CLI around
`run_night`) succeeds and leaves the release to the outer holder.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import fsspec

from .errors import StorageError

__all__ = ["LOCK_NAME", "LockHolder", "StoreLock", "StoreLockedError"]

log = logging.getLogger(__name__)

#: The lock file's name inside the store.
LOCK_NAME = "writer.lock"


@dataclass(frozen=True, slots=True)
class LockHolder:
    """Who holds a store's lock. Stable."""

    host: str
    pid: int
    started_utc: str
    command: str
    process_start: str = ""  # the pid's start time in clock ticks since boot (Linux), to tell a reused pid

    def describe(self) -> str:
        """Return one line naming the holder."""
        return f"{self.command!r} (pid {self.pid} on {self.host}, since {self.started_utc})"

    @classmethod
    def this_process(cls, command: str) -> LockHolder:
        """Return the holder record of the calling process."""
        pid = os.getpid()
        return cls(socket.gethostname(), pid, datetime.now(UTC).isoformat(timespec="seconds"), command,
                   _process_start(pid))


class StoreLockedError(StorageError):
    """
    Another writer holds the store.

    Attributes
    ----------
    holder : LockHolder
    path : str
        The lock file.
    """

    def __init__(self, store: str, holder: LockHolder, path: str) -> None:
        super().__init__(f"store {store} is being written by {holder.describe()}; wait for it (--wait) or, if that "
                         f"run is known to be over, remove {path}")
        self.store, self.holder, self.path = store, holder, path

    def __reduce__(self) -> tuple[type, tuple[str, LockHolder, str]]:
        return (type(self), (self.store, self.holder, self.path))


def _process_start(pid: int) -> str:
    """Return field 22 of /proc/<pid>/stat (start time in ticks since boot), or "" where unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rsplit(")", 1)[-1].split()[19]


def _alive(holder: LockHolder) -> bool:
    """Whether the holder (on this host) still runs: its pid exists with the same start time."""
    try:
        os.kill(holder.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    started = _process_start(holder.pid)
    return not (holder.process_start and started and started != holder.process_start)


class StoreLock:
    """
    The exclusive writer lock of one store. Stable.

    Parameters
    ----------
    store_url : str
        Local path or fsspec URL of the store (created if absent: the lock is taken before ingest
        creates the store).
    command : str
        What the holder runs, for the refusal message (``"night run"``, ``"ingest"``).
    heartbeat_s : float
        How often the holder touches the lock file.
    stale_after_s : float
        A lock file untouched for this long is stale, whatever host holds it.

    Examples
    --------
    >>> with StoreLock("night.zarr", "ingest").acquire():  # doctest: +SKIP
    ...     ...
    """

    def __init__(self, store_url: str, command: str, *, heartbeat_s: float = 30.0,
                 stale_after_s: float = 600.0) -> None:
        self.store = str(store_url)
        self.command = command
        self.heartbeat_s, self.stale_after_s = heartbeat_s, stale_after_s
        self._beating: threading.Event | None = None
        self.fs, root = fsspec.core.url_to_fs(self.store)
        self.root = root.rstrip("/")
        self.path = f"{self.root}/{LOCK_NAME}"
        self._local = "file" in (self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,))
        self.held: LockHolder | None = None
        self._nested = False

    def holder(self) -> LockHolder | None:
        """Return the current holder, or None when the store is not locked (or the file is unreadable)."""
        try:
            with self.fs.open(self.path, "rb") as fh:
                data: dict[str, Any] = json.loads(fh.read())
            return LockHolder(**data)
        except FileNotFoundError:
            return None
        except (OSError, ValueError, TypeError):
            return LockHolder("?", -1, "?", "an unreadable lock file")

    def try_acquire(self) -> LockHolder | None:
        """
        Take the lock if it is free or stale.

        Returns
        -------
        LockHolder or None
            None when taken; otherwise the live holder.
        """
        me = LockHolder.this_process(self.command)
        for _ in range(3):
            if self._create(json.dumps(asdict(me)).encode()):
                self.held = me
                self._start_heartbeat()
                return None
            holder = self.holder()
            if holder is None:
                continue  # released meanwhile
            if (holder.host, holder.pid, holder.process_start) == (me.host, me.pid, me.process_start):
                self.held, self._nested = holder, True  # this process holds it already (e.g. the CLI)
                return None
            if holder.host == me.host and holder.pid > 0 and not _alive(holder):
                log.warning("removing the stale lock of %s on store %s (that process is gone)", holder.describe(),
                            self.store)
                self._remove_stale()
                continue
            idle = self._idle_s()
            if idle is not None and idle > self.stale_after_s:
                log.warning("removing the stale lock of %s on store %s (not touched for %.0f s)", holder.describe(),
                            self.store, idle)
                self._remove_stale()
                continue
            return holder
        return self.holder() or me

    def acquire(self, *, wait: bool = False, poll_s: float = 2.0,
                say: Callable[[str], None] = log.info) -> Self:
        """
        Take the lock, or wait for it.

        Parameters
        ----------
        wait : bool
            Poll every ``poll_s`` seconds until the holder is done (saying once who it is).
        say : callable
            Where the waiting is announced.

        Returns
        -------
        StoreLock
            ``self``, a context manager that releases the lock.

        Raises
        ------
        StoreLockedError
            Another live writer holds the store and ``wait`` is False.
        """
        announced = False
        while True:
            holder = self.try_acquire()
            if holder is None:
                return self
            if not wait:
                raise StoreLockedError(self.store, holder, self.path)
            if not announced:
                say(f"waiting for {holder.describe()} to finish writing store {self.store}")
                announced = True
            time.sleep(poll_s)

    def release(self) -> None:
        """Remove the lock file if this process holds it (a lock taken over meanwhile is left alone)."""
        if self.held is None:
            return
        if self._nested:  # the outer holder releases it
            self.held, self._nested = None, False
            return
        if self._beating is not None:
            self._beating.set()
            self._beating = None
        if self.holder() == self.held:
            with contextlib.suppress(FileNotFoundError):
                self.fs.rm_file(self.path)
        self.held = None

    def _idle_s(self) -> float | None:
        """Seconds since the lock file was last touched (None where the file system cannot say)."""
        try:
            modified = self.fs.modified(self.path)
        except (FileNotFoundError, NotImplementedError, OSError):
            return None
        if modified.tzinfo is None:
            modified = modified.replace(tzinfo=UTC) if not self._local else modified.astimezone(UTC)
        return (datetime.now(UTC) - modified).total_seconds()

    def _start_heartbeat(self) -> None:
        stop = threading.Event()
        self._beating = stop

        def beat() -> None:
            while not stop.wait(self.heartbeat_s):
                try:
                    if self._local:
                        os.utime(self.path)
                    else:
                        self.fs.touch(self.path, truncate=False)
                except (OSError, NotImplementedError, ValueError) as exc:
                    log.warning("cannot touch the lock %s (%s): it may be taken as stale", self.path, exc)

        threading.Thread(target=beat, name="store-lock-heartbeat", daemon=True).start()

    def __enter__(self) -> Self:
        if self.held is None:
            self.acquire()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()

    def _create(self, payload: bytes) -> bool:
        self.fs.makedirs(self.root, exist_ok=True)
        if self._local:
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return False
            try:
                os.write(fd, payload)
                os.fsync(fd)
            finally:
                os.close(fd)
            return True
        try:
            with self.fs.open(self.path, "xb") as fh:
                fh.write(payload)
        except FileExistsError:
            return False
        return True

    def _remove_stale(self) -> None:
        # Renamed aside first: of two writers recovering at once, one wins the rename.
        stale = self.holder()
        aside = f"{self.path}.stale-{uuid.uuid4().hex}"
        try:
            self.fs.mv(self.path, aside)
        except FileNotFoundError:
            return
        try:
            with self.fs.open(aside, "rb") as fh:
                moved = LockHolder(**json.loads(fh.read()))
        except (OSError, ValueError, TypeError):
            moved = None
        if moved is not None and moved != stale and not self.fs.exists(self.path):
            self.fs.mv(aside, self.path)  # another writer took the store meanwhile: its lock goes back
            return
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm_file(aside)
