"""A night starts while its Redis is still coming up: connect retries as alerts.retries says."""

from __future__ import annotations

import socket
import threading
from pathlib import Path

import pytest

from skyblink.config import RedisConfig
from skyblink.storage.alerts import RedisUnavailableError, connect
from skyblink.storage.redis_server import RedisServer, find_redis_server

pytestmark = pytest.mark.redis


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_connect_waits_for_a_redis_that_starts_late(tmp_path: Path) -> None:
    if find_redis_server() is None:
        pytest.skip("redis-server is not installed")
    port = _free_port()
    server = RedisServer(port=port, data_dir=tmp_path / "late")
    starter = threading.Timer(0.4, server.start)
    starter.start()
    try:
        client = connect(RedisConfig(connect_timeout_s=0.2), url=f"redis://127.0.0.1:{port}/0", retries=8,
                         backoff_s=0.05, backoff_max_s=0.2)
        assert client.ping()
    finally:
        starter.join()
        server.stop()


def test_connect_gives_up_after_the_configured_attempts_and_says_how_many(caplog: pytest.LogCaptureFixture) -> None:
    url = f"redis://127.0.0.1:{_free_port()}/0"
    with pytest.raises(RedisUnavailableError, match=r"unreachable after 3 attempt\(s\)") as err:
        connect(RedisConfig(connect_timeout_s=0.2), url=url, retries=2, backoff_s=0.05, backoff_max_s=0.1)
    assert err.value.attempts == 3
    assert [r.getMessage().split(";")[0].rsplit("(", 1)[1] for r in caplog.records if "does not answer" in r.getMessage()] == [
        "attempt 1 of 3)", "attempt 2 of 3)"]
