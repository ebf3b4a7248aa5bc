"""The night run's private redis-server: started when no URL is configured, kept or stopped, used
again by the next run, and never shared by two running drivers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from skyblink.cluster.private_redis import embedded_redis
from skyblink.config import load_config
from skyblink.storage.redis_server import RedisServerError, find_redis_server

pytestmark = pytest.mark.redis

if find_redis_server() is None:
    pytest.skip("redis-server is not installed (apt-get install redis-server)", allow_module_level=True)


def _config(tmp_path: Path, **overrides: object):  # noqa: ANN202 - a SkyblinkConfig
    return load_config(overrides={"night.redis_dir": str(tmp_path / "redis"), **overrides}, environ={})


def test_configured_url_starts_nothing(tmp_path: Path) -> None:
    with embedded_redis(_config(tmp_path, **{"redis.url": "redis://127.0.0.1:1/0"})) as url:
        assert url == "redis://127.0.0.1:1/0"
    assert not (tmp_path / "redis").exists()


def test_kept_server_is_used_again_then_stopped(tmp_path: Path) -> None:
    config = _config(tmp_path)
    said: list[str] = []
    with embedded_redis(config, keep=True, say=said.append) as url:
        redis.Redis.from_url(url).set("night", "kept")
    info = json.loads((tmp_path / "redis" / "server.json").read_text())
    assert "driver_pid" not in info and "keeps running" in said[-1]
    with embedded_redis(config, say=said.append) as again:
        assert again == url and "earlier run" in said[-1]
        assert redis.Redis.from_url(again).get("night") == b"kept"
    assert not (tmp_path / "redis" / "server.json").exists()
    with pytest.raises(redis.exceptions.ConnectionError):
        redis.Redis.from_url(url, socket_connect_timeout=0.5).ping()


def test_a_running_driver_keeps_its_server_to_itself(tmp_path: Path) -> None:
    (tmp_path / "redis").mkdir()
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])  # noqa: S603 - a stand-in driver
    try:
        (tmp_path / "redis" / "server.json").write_text(json.dumps({"pid": other.pid, "port": 1, "driver_pid": other.pid}))
        with pytest.raises(RedisServerError, match=rf"another skyblink night run \(pid {other.pid}\)"):
            with embedded_redis(_config(tmp_path)):
                pass
    finally:
        other.kill()
        other.wait()
