"""The private redis-server helper, and the `skyblink alerts` commands end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from alert_factories import NIGHT, make_alerts
from typer.testing import CliRunner

from skyblink.cli import app
from skyblink.config import AlertsConfig, RedisConfig
from skyblink.storage.alerts import AlertProducer, connect, open_redis
from skyblink.storage.redis_server import RedisServer

pytestmark = pytest.mark.redis


def test_private_server_keeps_acknowledged_writes_across_a_kill(persistent_redis: RedisServer) -> None:
    client = persistent_redis.client()
    client.set("k", "v")
    port, pid = persistent_redis.port, persistent_redis.pid
    persistent_redis.kill()
    assert not persistent_redis.is_running
    persistent_redis.start()
    assert persistent_redis.port == port and persistent_redis.pid != pid
    assert persistent_redis.client().get("k") == b"v"


def test_password_is_not_on_the_command_line(tmp_path: Path) -> None:
    with RedisServer(data_dir=tmp_path / "r", password="pw-not-in-ps") as server:
        cmdline = Path(f"/proc/{server.pid}/cmdline").read_bytes()
        assert b"pw-not-in-ps" not in cmdline
        assert oct((tmp_path / "r" / "redis.conf").stat().st_mode & 0o777) == "0o600"


def test_open_redis_starts_a_private_server_without_a_url() -> None:
    with open_redis(RedisConfig()) as client:
        assert client.ping()
        port = client.connection_pool.connection_kwargs["port"]
    with pytest.raises(Exception):  # noqa: B017 - any connection error: the server is gone
        connect(RedisConfig(connect_timeout_s=0.5), url=f"redis://127.0.0.1:{port}/0")


@pytest.fixture
def published(redis_server: RedisServer, alerts_config: AlertsConfig) -> list[int]:
    alerts = make_alerts(6)
    with AlertProducer(connect(RedisConfig(), url=redis_server.url), NIGHT, config=alerts_config) as producer:
        producer.publish(alerts)
    return [a.alert_id for a in alerts]


def test_cli_consume_writes_json_lines_and_cutouts(redis_server: RedisServer, published: list[int], tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = ["alerts", "consume", "--group", "cli", "--night", NIGHT, "--redis-url", redis_server.url,
            "--out", str(out), "--cutouts", "--count", "6", "--block-ms", "100"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    lines = (out / "alerts.jsonl").read_text().splitlines()
    assert sorted(json.loads(line)["alertId"] for line in lines) == sorted(published)
    assert len(list((out / "cutouts").rglob("*.fits.gz"))) == 18
    again = CliRunner().invoke(app, [*args[:-4], "--idle-exit", "0.3"])  # everything was acked
    assert again.exit_code == 0 and len((out / "alerts.jsonl").read_text().splitlines()) == 6


def test_cli_consume_to_stdout(redis_server: RedisServer, published: list[int]) -> None:
    result = CliRunner().invoke(
        app, ["alerts", "consume", "--group", "g2", "--night", NIGHT, "--redis-url", redis_server.url, "--idle-exit", "0.3"]
    )
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert sorted(r["alertId"] for r in records) == sorted(published)


def test_cli_tail_shows_the_last_entries(redis_server: RedisServer, published: list[int]) -> None:
    result = CliRunner().invoke(app, ["alerts", "tail", "--night", NIGHT, "--redis-url", redis_server.url, "-n", "3", "--wide"],
                                env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "last 3 of 6 entries" in result.output and "inline" in result.output


def test_cli_needs_a_url_and_hides_a_wrong_password(tmp_path: Path) -> None:
    # No URL and no private redis-server in the night's Redis folder (an empty one: a demo night run in
    # this checkout keeps its server under ./.skyblink/redis, which the CLI would rightly find).
    result = CliRunner().invoke(app, ["alerts", "tail", "--night", NIGHT],
                                env={"SKYBLINK_REDIS__URL": "", "SKYBLINK_NIGHT__REDIS_DIR": str(tmp_path / "no-redis")})
    assert result.exit_code == 1 and "no Redis to read from" in result.output
    with RedisServer(data_dir=tmp_path / "r", password="right-one") as server:
        url = f"redis://:wrong-pw-123@127.0.0.1:{server.port}/0"
        result = CliRunner().invoke(app, ["alerts", "tail", "--night", NIGHT, "--redis-url", url])
    assert result.exit_code == 1
    assert "refused authentication" in result.output and "wrong-pw-123" not in result.output


def test_cli_validate() -> None:
    result = CliRunner().invoke(app, ["alerts", "validate"])
    assert result.exit_code == 0 and "ok" in result.output
