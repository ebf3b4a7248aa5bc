"""
`skyblink alerts` as a new user meets it after the demo: the nights listed, an unknown night an
error naming the ones there, a consumer that does not create a stream that is not there, a tail
that fits 80 columns, and the private Redis a `night run --keep-redis` left found without a URL.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
from alert_factories import NIGHT, make_alerts
from typer.testing import CliRunner

from skyblink.cli import app
from skyblink.config import AlertsConfig, RedisConfig
from skyblink.storage.alerts import AlertProducer, connect
from skyblink.storage.redis_server import RedisServer

pytestmark = pytest.mark.redis


@pytest.fixture
def published(redis_server: RedisServer, alerts_config: AlertsConfig) -> list[int]:
    alerts = make_alerts(6)
    with AlertProducer(connect(RedisConfig(), url=redis_server.url), NIGHT, config=alerts_config) as producer:
        producer.publish(alerts)
    client = redis_server.client()
    client.xadd(f"skyblink:alerts:{NIGHT}:dead", {"error": "x"})  # a dead-letter stream is not a night
    return [a.alert_id for a in alerts]


def _run(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args), env=env)
    return result.exit_code, result.output


def test_nights_lists_the_streams_in_redis(redis_server: RedisServer, published: list[int]) -> None:
    code, output = _run("alerts", "nights", "--redis-url", redis_server.url)
    assert code == 0, output
    assert output.splitlines() == [f"{NIGHT}  6 alert(s)  (skyblink alerts tail --night {NIGHT})"]


def test_an_unknown_night_is_an_error_naming_the_nights_there(redis_server: RedisServer, published: list[int]) -> None:
    for command in (["tail"], ["consume", "--group", "g", "--idle-exit", "0.2"]):
        code, output = _run("alerts", *command, "--night", "20991231", "--redis-url", redis_server.url)
        assert code == 1, output
        assert f"no stream skyblink:alerts:20991231 in this Redis; nights there: {NIGHT}" in output
        assert "skyblink alerts nights" in output
    assert not redis_server.client().exists("skyblink:alerts:20991231")  # the consumer created nothing


def test_consume_waits_for_a_stream_when_asked(redis_server: RedisServer, alerts_config: AlertsConfig) -> None:
    def publish_later() -> None:
        with AlertProducer(connect(RedisConfig(), url=redis_server.url), NIGHT, config=alerts_config) as producer:
            producer.publish(make_alerts(2))

    timer = threading.Timer(1.5, publish_later)
    timer.start()
    try:
        code, output = _run("alerts", "consume", "--group", "w", "--night", NIGHT, "--redis-url", redis_server.url,
                            "--wait-for-stream", "--count", "2", "--block-ms", "100")
    finally:
        timer.join()
    assert code == 0, output
    assert "waiting for the stream skyblink:alerts:20261125" in output
    assert sum(line.startswith("{") for line in output.splitlines()) == 2


def test_tail_fits_80_columns(redis_server: RedisServer, published: list[int]) -> None:
    code, output = _run("alerts", "tail", "--night", NIGHT, "--redis-url", redis_server.url, env={"COLUMNS": "80"})
    assert code == 0, output
    assert "…" not in output, output
    assert all(len(line) <= 80 for line in output.splitlines())
    for alert_id in published:
        assert str(alert_id) in output


def test_alerts_read_the_private_redis_a_run_kept(alerts_config: AlertsConfig, tmp_path: Path) -> None:
    redis_dir = tmp_path / "kept"
    env = {"SKYBLINK_NIGHT__REDIS_DIR": str(redis_dir), "SKYBLINK_REDIS__URL": ""}
    code, output = _run("alerts", "nights", env=env)
    assert code == 1 and "no private redis-server is running in" in output and "--keep-redis" in output, output
    # What `night run --keep-redis` leaves: a password-protected server, its pid and port, its password.
    redis_dir.mkdir()
    password = "kept-run-password"
    (redis_dir / "password").write_text(password + "\n")
    server = RedisServer(password=password)
    server.start()
    try:
        url = f"redis://:{password}@127.0.0.1:{server.port}/0"
        with AlertProducer(connect(RedisConfig(), url=url), NIGHT, config=alerts_config) as producer:
            producer.publish(make_alerts(6))
        (redis_dir / "server.json").write_text(json.dumps({"pid": server.pid, "port": server.port}))
        code, output = _run("alerts", "tail", "--night", NIGHT, env=env)
        assert code == 0 and "last 6 of 6 entries" in output, output
        assert password not in output
    finally:
        server.stop()
