"""No single stream entry stops a consumer group: hostile entries and failing handlers are
dead-lettered with their reason, against a real redis-server."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from alert_factories import NIGHT, make_alerts
from conftest import wait_for
from typer.testing import CliRunner

from skyblink.cli import app
from skyblink.config import AlertsConfig, RedisConfig
from skyblink.storage.alerts import (
    AlertConsumer,
    AlertProducer,
    DeadLetter,
    ReceivedAlert,
    connect,
    cutout_key,
    encode_alert,
    stream_name,
)
from skyblink.storage.redis_server import RedisServer

pytestmark = pytest.mark.redis

STREAM = stream_name(AlertsConfig().stream, NIGHT)


def _xadd_encoded(server: RedisServer, alert_index: int, cutout_store_key: str) -> str:
    """A valid packet whose cutoutStoreKey names ``cutout_store_key`` (what a hostile writer may XADD)."""
    [alert] = make_alerts(1, start=alert_index, with_cutouts=False)
    encoded = encode_alert(alert.without_cutouts(cutout_store_key), STREAM)
    return server.client().xadd(STREAM, dict(encoded.fields)).decode()


def _poison(server: RedisServer) -> dict[str, bytes]:
    """Four entries that each used to kill every consumer of a group (or would): id -> what it is."""
    raw = server.client()
    raw.set(cutout_key(STREAM, 4242), b"a string, not a hash")
    return {
        raw.xadd(STREAM, {b"\xff\xfe": b"x", b"payload": b"\x00"}).decode(): b"non-utf8 field name",
        raw.xadd(STREAM, {"schema_version": b"\xff\xfe", "schema_id": b"\x80", "alert_id": "1", "payload": b"\xc3"}).decode(): b"non-utf8 values",
        _xadd_encoded(server, 900, STREAM): b"cutoutStoreKey = the stream (WRONGTYPE)",
        _xadd_encoded(server, 901, cutout_key(STREAM, 4242)): b"cutoutStoreKey = a string in the side store (WRONGTYPE)",
    }


def _publish(server: RedisServer, config: AlertsConfig, n: int, start: int) -> list[int]:
    alerts = make_alerts(n, start=start)
    with AlertProducer(connect(RedisConfig(), url=server.url), NIGHT, config=config) as producer:
        assert producer.publish(alerts).published == n
    return [a.alert_id for a in alerts]


def test_cli_consume_survives_poison_pills_and_dead_letters_each_with_its_reason(
    redis_server: RedisServer, alerts_config: AlertsConfig, tmp_path: Path
) -> None:
    config = alerts_config.model_copy(update={"cutouts": "side-store"})
    ids = _publish(redis_server, config, 3, start=0)
    poison = _poison(redis_server)
    ids += _publish(redis_server, config, 3, start=10)
    out = tmp_path / "out"
    args = ["alerts", "consume", "--group", "brokers", "--night", NIGHT, "--redis-url", redis_server.url,
            "--out", str(out), "--cutouts", "--idle-exit", "0.5", "--block-ms", "100"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 3, result.output  # 3: something was dead-lettered, nothing crashed
    assert "6 alert(s) handled" in result.output and "4 dead-lettered" in result.output
    lines = [json.loads(line) for line in (out / "alerts.jsonl").read_text().splitlines()]
    assert sorted(line["alertId"] for line in lines) == sorted(ids)
    raw = redis_server.client()
    assert raw.xpending(STREAM, "brokers")["pending"] == 0
    letters = {fields[b"source_entry_id"].decode(): fields for _, fields in raw.xrange(f"{STREAM}:dead")}
    assert set(letters) == set(poison)
    by_kind = {poison[entry_id]: fields for entry_id, fields in letters.items()}
    assert by_kind[b"non-utf8 field name"][b"field:\xff\xfe"] == b"x"  # the entry's own bytes, kept
    assert b"schema_version" in by_kind[b"non-utf8 values"][b"error"]
    assert b"not in this stream's side store" in by_kind[b"cutoutStoreKey = the stream (WRONGTYPE)"][b"error"]
    assert b"WRONGTYPE" in by_kind[b"cutoutStoreKey = a string in the side store (WRONGTYPE)"][b"error"]
    again = CliRunner().invoke(app, args)  # a restarted consumer finds nothing left to choke on
    assert again.exit_code == 0, again.output
    assert "0 alert(s) handled" in again.output


def test_a_raising_handler_dead_letters_its_entry_with_the_error_and_the_rest_is_handled(
    redis_server: RedisServer, alerts_config: AlertsConfig
) -> None:
    config = alerts_config.model_copy(update={"max_deliveries": 2, "consumer_idle_timeout_s": 0.1})
    ids = _publish(redis_server, config, 5, start=0)
    doomed = ids[2]
    handled: list[int] = []
    letters: list[DeadLetter] = []

    def handler(received: ReceivedAlert) -> None:
        if received.alert.alert_id == doomed:
            msg = f"broker database refused alert {doomed}"
            raise ValueError(msg)
        handled.append(received.alert.alert_id)

    raw = redis_server.client()
    client = connect(RedisConfig(), url=redis_server.url)
    with AlertConsumer(client, "g", night=NIGHT, config=config, on_dead_letter=letters.append) as consumer:

        def consume_then_check() -> bool:
            consumer.run(handler, idle_exit_s=0.2)
            return bool(letters)

        wait_for(consume_then_check, timeout=15, what="the failing entry in the dead-letter stream")
    assert sorted(handled) == sorted(i for i in ids if i != doomed)
    assert raw.xpending(STREAM, "g")["pending"] == 0
    [(_, dead)] = raw.xrange(f"{STREAM}:dead")
    assert f"ValueError: broker database refused alert {doomed}".encode() in dead[b"error"]
    assert b"handler failed on 2 deliveries" in dead[b"error"]
