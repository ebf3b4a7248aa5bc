"""Consumer groups against a real redis-server: exactly-once split, reclaim of a dead consumer, dead letters."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from alert_factories import NIGHT, make_alerts
from conftest import wait_for

from skyblink.config import AlertsConfig, RedisConfig
from skyblink.storage.alerts import (
    AlertConsumer,
    AlertProducer,
    DeadLetter,
    JsonLinesSink,
    ReceivedAlert,
    connect,
    read_cutout,
    stream_name,
)
from skyblink.storage.redis_server import RedisServer

pytestmark = pytest.mark.redis

STREAM = stream_name(AlertsConfig().stream, NIGHT)


def publish(server: RedisServer, config: AlertsConfig, n: int, **kwargs: object) -> list[int]:
    alerts = make_alerts(n, **kwargs)  # type: ignore[arg-type]
    with AlertProducer(connect(RedisConfig(), url=server.url), NIGHT, config=config) as producer:
        assert producer.publish(alerts).published == n
    return [a.alert_id for a in alerts]


def test_n_published_exactly_n_consumed_across_two_consumers(redis_server: RedisServer, alerts_config: AlertsConfig) -> None:
    ids = publish(redis_server, alerts_config, 150, with_cutouts=False)
    a = AlertConsumer(connect(RedisConfig(), url=redis_server.url), "brokers", night=NIGHT, consumer="a", config=alerts_config)
    b = AlertConsumer(connect(RedisConfig(), url=redis_server.url), "brokers", night=NIGHT, consumer="b", config=alerts_config)
    seen: dict[str, list[int]] = {"a": [], "b": []}
    with a, b:
        while True:  # alternate reads: both consumers get a share
            got_a, got_b = a.poll(count=7, block_ms=0), b.poll(count=7, block_ms=0)
            if not got_a and not got_b:
                break
            seen["a"] += [r.alert.alert_id for r in got_a]
            seen["b"] += [r.alert.alert_id for r in got_b]
            a.ack(got_a)
            b.ack(got_b)
    assert seen["a"] and seen["b"]
    assert sorted(seen["a"] + seen["b"]) == sorted(ids)  # exactly N, no overlap
    assert redis_server.client().xpending(STREAM, "brokers")["pending"] == 0


def test_two_consumer_threads_split_the_stream_exactly(redis_server: RedisServer, alerts_config: AlertsConfig) -> None:
    ids = publish(redis_server, alerts_config, 200, with_cutouts=False)
    got: list[int] = []
    lock = threading.Lock()

    def handle(received: ReceivedAlert) -> None:
        with lock:
            got.append(received.alert.alert_id)

    def work(name: str) -> None:
        client = connect(RedisConfig(), url=redis_server.url)
        with AlertConsumer(client, "g", night=NIGHT, consumer=name, config=alerts_config) as consumer:
            consumer.run(handle, idle_exit_s=0.5)

    threads = [threading.Thread(target=work, args=(name,)) for name in ("t1", "t2")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert sorted(got) == sorted(ids)


def test_a_killed_consumers_messages_go_to_the_other(redis_server: RedisServer, alerts_config: AlertsConfig) -> None:
    ids = publish(redis_server, alerts_config, 60, with_cutouts=False)
    group = "brokers"
    victim = subprocess.Popen(  # our own script
        [sys.executable, str(Path(__file__).with_name("consumer_victim.py")), redis_server.url, STREAM, group, "25"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert victim.stdout is not None
        assert victim.stdout.readline().strip() == "25"  # it holds 25 entries, unacked
    finally:
        victim.kill()
        victim.wait()
    monitor = redis_server.client()
    assert monitor.xpending(STREAM, group)["pending"] == 25
    got: list[ReceivedAlert] = []
    with AlertConsumer(connect(RedisConfig(), url=redis_server.url), group, night=NIGHT, consumer="live", config=alerts_config) as live:
        report = live.run(got.append, max_alerts=60)
    assert sorted(r.alert.alert_id for r in got) == sorted(ids)
    assert report.reclaimed == 25 and sum(r.reclaimed for r in got) == 25
    assert monitor.xpending(STREAM, group)["pending"] == 0


def test_malformed_message_is_dead_lettered_and_the_consumer_goes_on(
    redis_server: RedisServer, alerts_config: AlertsConfig
) -> None:
    ids = publish(redis_server, alerts_config, 5, with_cutouts=False)
    raw = redis_server.client()
    bad_id = raw.xadd(STREAM, {"schema_version": "1.0", "schema_id": "100", "alert_id": "1", "payload": b"\x00\x00\x00\x00\x64junk"}).decode()
    ids += publish(redis_server, alerts_config, 5, start=50, with_cutouts=False)
    letters: list[DeadLetter] = []
    got: list[int] = []
    client = connect(RedisConfig(), url=redis_server.url)
    with AlertConsumer(client, "g", night=NIGHT, config=alerts_config, on_dead_letter=letters.append) as consumer:
        report = consumer.run(lambda r: got.append(r.alert.alert_id), idle_exit_s=0.3)
    assert sorted(got) == sorted(ids) and report.dead_lettered == 1
    assert [letter.entry_id for letter in letters] == [bad_id]
    [(_, dead)] = raw.xrange(f"{STREAM}:dead")
    assert dead[b"source_entry_id"] == bad_id.encode() and b"not a valid schema 1.0 datum" in dead[b"error"]
    assert dead[b"field:payload"].endswith(b"junk")
    assert raw.xpending(STREAM, "g")["pending"] == 0


def test_a_handler_that_keeps_failing_ends_in_the_dead_letter_stream(
    redis_server: RedisServer, alerts_config: AlertsConfig
) -> None:
    config = alerts_config.model_copy(update={"max_deliveries": 2, "consumer_idle_timeout_s": 0.1})
    ids = publish(redis_server, config, 4, with_cutouts=False)
    poison = ids[1]

    def handler(received: ReceivedAlert) -> None:
        if received.alert.alert_id == poison:
            msg = "cannot handle this one"
            raise RuntimeError(msg)

    raw = redis_server.client()
    with AlertConsumer(connect(RedisConfig(), url=redis_server.url), "g", night=NIGHT, config=config) as consumer:

        def consume_once_then_check() -> bool:
            consumer.run(handler, idle_exit_s=0.2)  # failures stay pending, are reclaimed, retried
            return raw.xlen(f"{STREAM}:dead") == 1

        wait_for(consume_once_then_check, timeout=15, what="the poison entry in the dead-letter stream")
    assert raw.xpending(STREAM, "g")["pending"] == 0
    [(_, dead)] = raw.xrange(f"{STREAM}:dead")
    assert b"handler failed" in dead[b"error"]


def test_side_store_cutouts_are_resolved_and_written(redis_server: RedisServer, alerts_config: AlertsConfig, tmp_path: Path) -> None:
    config = alerts_config.model_copy(update={"cutouts": "side-store"})
    ids = publish(redis_server, config, 3)
    out = tmp_path / "out"
    client = connect(RedisConfig(), url=redis_server.url)
    with JsonLinesSink(out, cutouts=True) as sink, AlertConsumer(
        client, "g", night=NIGHT, config=config, resolve_cutouts=True
    ) as consumer:
        report = consumer.run(sink.handle, max_alerts=3, before_ack=sink.flush)
    assert report.handled == 3
    lines = [json.loads(line) for line in (out / "alerts.jsonl").read_text().splitlines()]
    assert sorted(line["alertId"] for line in lines) == sorted(ids)
    assert lines[0]["cutoutScience"]["bytes"] > 0 and "stampData" not in lines[0]["cutoutScience"]
    files = sorted((out / "cutouts").rglob("*.fits.gz"))
    assert len(files) == 9
    assert read_cutout(files[0].read_bytes()).data.shape == (63, 63)
