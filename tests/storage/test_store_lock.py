"""One writer per store: the lock names its holder, recovers from a dead one, and waits when asked."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from dataclasses import asdict
from pathlib import Path

import pytest

from skyblink.storage import LockHolder, NightStore, StoreLayout, StoreLock, StoreLockedError
from skyblink.storage.store_lock import LOCK_NAME


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


_HOLDER = """
import sys, time
from skyblink.storage import StoreLock
lock = StoreLock(sys.argv[1], "skyblink night run").acquire()
print("held", flush=True)
sys.stdin.readline()  # until the test says so
lock.release()
"""


def _holder(url: str) -> subprocess.Popen[str]:
    """Another process holding the store's lock until a line is written to its stdin."""
    child = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, url], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None and child.stdout.readline().strip() == "held"
    return child


def test_a_second_writer_is_refused_with_the_holder_named_and_readers_are_not_blocked(tmp_path: Path) -> None:
    url = str(tmp_path / "s.zarr")
    NightStore(url, mode="a", layout=StoreLayout(tile_size=64))
    holder = _holder(url)
    try:
        with pytest.raises(StoreLockedError) as caught:
            StoreLock(url, "skyblink ingest").acquire()
        message = str(caught.value)
        assert f"'skyblink night run' (pid {holder.pid} on {socket.gethostname()}" in message
        assert NightStore(url).exposure_keys() == []  # reading is not blocked
    finally:
        holder.communicate("done\n", timeout=30)
    StoreLock(url, "skyblink ingest").acquire().release()  # released by its holder


def test_a_lock_whose_holder_died_on_this_host_is_taken_over(tmp_path: Path) -> None:
    url = str(tmp_path / "s.zarr")
    Path(url).mkdir()
    dead = LockHolder(socket.gethostname(), _dead_pid(), "2026-12-04T00:00:00+00:00", "skyblink night run")
    (Path(url) / LOCK_NAME).write_text(json.dumps(asdict(dead)))
    with StoreLock(url, "skyblink night run").acquire() as lock:
        assert lock.holder() == lock.held and lock.held.pid != dead.pid


def test_a_holder_on_another_host_is_not_guessed_dead(tmp_path: Path) -> None:
    url = str(tmp_path / "s.zarr")
    Path(url).mkdir()
    other = {"host": "gpu-node-7", "pid": _dead_pid(), "started_utc": "2026-12-04T00:00:00+00:00",
             "command": "skyblink ingest"}
    (Path(url) / LOCK_NAME).write_text(json.dumps(other))
    with pytest.raises(StoreLockedError, match=r"gpu-node-7.*remove .*writer\.lock"):
        StoreLock(url, "skyblink night run").acquire()


def test_wait_takes_the_store_when_the_holder_is_done(tmp_path: Path) -> None:
    url = str(tmp_path / "s.zarr")
    holder = _holder(url)
    said: list[str] = []
    taken = threading.Event()

    def second() -> None:
        with StoreLock(url, "skyblink ingest").acquire(wait=True, poll_s=0.05, say=said.append):
            taken.set()

    thread = threading.Thread(target=second)
    thread.start()
    time.sleep(0.3)
    assert not taken.is_set() and said and "waiting for 'skyblink night run'" in said[0]
    holder.communicate("done\n", timeout=30)
    thread.join(timeout=10)
    assert taken.is_set()


def test_the_holding_process_may_take_it_again_and_the_outer_holder_releases_it(tmp_path: Path) -> None:
    url = str(tmp_path / "s.zarr")
    with StoreLock(url, "skyblink night run").acquire() as outer:
        with StoreLock(url, "skyblink night run").acquire():  # run_night inside the CLI's lock
            pass
        assert outer.holder() == outer.held  # still held
    assert not (Path(url) / LOCK_NAME).exists()


def test_a_lock_untouched_for_too_long_is_stale_from_any_host_and_a_holder_keeps_its_own_fresh(tmp_path: Path) -> None:
    import os

    url = str(tmp_path / "s.zarr")
    Path(url).mkdir()
    path = Path(url) / LOCK_NAME
    other = {"host": "evicted-driver-pod", "pid": 1, "started_utc": "2026-12-04T00:00:00+00:00",
             "command": "skyblink night run"}
    path.write_text(json.dumps(other))
    old = time.time() - 700
    os.utime(path, (old, old))
    with StoreLock(url, "skyblink night run", heartbeat_s=0.05, stale_after_s=600).acquire() as lock:
        assert lock.held is not None and lock.held.host == socket.gethostname()
        os.utime(path, (old, old))
        time.sleep(0.3)  # the heartbeat touches it again
        assert time.time() - path.stat().st_mtime < 5  # another host would not take it as stale
