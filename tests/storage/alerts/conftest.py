"""Fixtures of the alert tests: real redis-server processes on free ports, and a polling wait."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from skyblink.config import AlertsConfig
from skyblink.storage.redis_server import RedisServer, find_redis_server


def wait_for(condition: Callable[[], bool], *, timeout: float = 10.0, what: str = "condition") -> None:
    """Poll ``condition`` until true; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    delay = 0.005
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(delay)  # polling interval, bounded by the deadline
        delay = min(delay * 2, 0.05)


def _require_redis_server() -> None:
    if find_redis_server() is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server); the alert stream tests need a real one")


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A private redis-server on a free loopback port, no persistence."""
    _require_redis_server()
    with RedisServer(data_dir=tmp_path / "redis") as server:
        yield server


@pytest.fixture
def persistent_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server with appendonly yes + appendfsync always: a kill loses no acknowledged write."""
    _require_redis_server()
    with RedisServer(data_dir=tmp_path / "redis-aof", persistent=True) as server:
        yield server


@pytest.fixture
def alerts_config(tmp_path: Path) -> AlertsConfig:
    """Fast retries, a private spool, a short idle timeout and short blocking reads."""
    return AlertsConfig(
        spool_dir=tmp_path / "spool",
        retries=2,
        backoff_s=0.02,
        backoff_max_s=0.1,
        consumer_idle_timeout_s=0.3,
        block_ms=50,
        batch_size=50,
        read_count=20,
        maxlen=100_000,
    )
