"""The night run's private redis-server: started when no URL is configured, kept or stopped, used
again by the next run, and never shared by two running drivers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from skyblink.cluster.private_redis import embedded_redis
from skyblink.config import load_config
from skyblink.storage.redis_server import RedisServerError, find_redis_server

pytestmark = pytest.mark.redis

if find_redis_server() is None:
    pytest.skip("redis-server is not installed (apt-get install redis-server)", allow_module_level=True)


def _config(tmp_path: Path, **overrides: object):  # a SkyblinkConfig
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
    holder = (  # a stand-in driver: holds the directory's lock, as embedded_redis does
        "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); "
        "fcntl.flock(fd, fcntl.LOCK_EX); print('locked', flush=True); time.sleep(30)"
    )
    other = subprocess.Popen([sys.executable, "-c", holder, str(tmp_path / "redis" / "lock")], stdout=subprocess.PIPE, text=True)
    try:
        assert other.stdout is not None and other.stdout.readline().strip() == "locked"
        (tmp_path / "redis" / "server.json").write_text(json.dumps({"pid": other.pid, "port": 1, "driver_pid": other.pid}))
        with pytest.raises(RedisServerError, match=rf"another skyblink night run \(pid {other.pid}\)"):
            with embedded_redis(_config(tmp_path)):
                pass
    finally:
        other.kill()
        other.wait()


def test_two_drivers_at_once_one_is_refused_and_the_first_keeps_working(tmp_path: Path) -> None:
    config = _config(tmp_path)
    with embedded_redis(config) as url:
        with pytest.raises(RedisServerError, match="another skyblink night run"), embedded_redis(config):
            pass
        assert redis.Redis.from_url(url).ping()  # the refused one neither stopped nor replaced it


def test_private_server_requires_its_generated_password(tmp_path: Path) -> None:
    from skyblink.cluster.private_redis import private_password

    with embedded_redis(_config(tmp_path)) as url:
        password = private_password(tmp_path / "redis")
        assert password and len(password) >= 32 and f":{password}@" in url
        assert oct((tmp_path / "redis" / "password").stat().st_mode & 0o777) == "0o600"
        port = json.loads((tmp_path / "redis" / "server.json").read_text())["port"]
        with pytest.raises(redis.exceptions.AuthenticationError):
            redis.Redis(port=port, retry=Retry(NoBackoff(), 0)).ping()
        assert redis.Redis(port=port, password=password).ping()


def test_a_stale_server_json_never_uses_or_stops_an_unrelated_server(tmp_path: Path) -> None:
    from skyblink.storage.redis_server import RedisServer

    with RedisServer(data_dir=tmp_path / "unrelated") as unrelated:
        (tmp_path / "redis").mkdir()
        # a pid that is a redis-server, and a port it does not listen on: what a stale file looks like
        (tmp_path / "redis" / "server.json").write_text(json.dumps({"pid": unrelated.pid, "port": unrelated.port + 1}))
        said: list[str] = []
        with embedded_redis(_config(tmp_path), say=said.append) as url:
            assert f":{unrelated.port}/" not in url
        assert any("ignoring" in line for line in said)
        assert unrelated.is_running and unrelated.client().ping()


def test_a_password_with_quotes_and_newlines_is_written_safely(tmp_path: Path) -> None:
    from skyblink.storage.redis_server import RedisServer

    nasty = 'p"w\\ \nrequirepass other\r\n# é'
    with RedisServer(data_dir=tmp_path / "r", password=nasty) as server:
        assert redis.Redis(port=server.port, password=nasty).ping()
        with pytest.raises(redis.exceptions.AuthenticationError):
            redis.Redis(port=server.port, password="other", retry=Retry(NoBackoff(), 0)).ping()
        conf = (tmp_path / "r" / "redis.conf").read_text()
        assert "requirepass other" not in conf and len(conf.splitlines()) == 9
