"""Publishing against a real redis-server: batches, dedup on rerun, side store, MAXLEN, AUTH, restarts."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from alert_factories import NIGHT, make_alerts
from conftest import wait_for

from skyblink.config import AlertsConfig, RedisConfig
from skyblink.storage.alerts import (
    Alert,
    AlertProducer,
    AlertSpool,
    RedisAuthError,
    connect,
    cutout_key,
    decode_entry,
    dedup_key,
    read_cutout,
    stream_name,
)
from skyblink.storage.redis_server import RedisServer

pytestmark = pytest.mark.redis

STREAM = stream_name(AlertsConfig().stream, NIGHT)


def stream_alert_ids(server: RedisServer, stream: str = STREAM) -> list[int]:
    client = server.client()
    try:
        return [decode_entry(fields)[0].alert_id for _, fields in client.xrange(stream)]
    finally:
        client.close()


def test_publish_then_rerun_adds_no_duplicate(redis_server: RedisServer, alerts_config: AlertsConfig) -> None:
    alerts = make_alerts(120)
    client = connect(RedisConfig(), url=redis_server.url)
    with AlertProducer(client, NIGHT, config=alerts_config) as producer:
        first = producer.publish(alerts)
    with AlertProducer(client, NIGHT, config=alerts_config) as producer:  # a rerun of the night
        second = producer.publish(alerts)
    assert (first.published, first.duplicates) == (120, 0)
    assert (second.published, second.duplicates) == (0, 120)
    ids = stream_alert_ids(redis_server)
    assert sorted(ids) == sorted(a.alert_id for a in alerts)
    assert client.hlen(dedup_key(STREAM)) == 120
    assert 0 < client.ttl(dedup_key(STREAM)) <= alerts_config.dedup_ttl_s
    entry = client.xrange(STREAM, count=1)[0][1]
    assert entry[b"schema_version"] == b"1.1" and entry[b"schema_id"] == b"101"


def test_side_store_keeps_cutouts_out_of_the_stream(redis_server: RedisServer, alerts_config: AlertsConfig) -> None:
    config = alerts_config.model_copy(update={"cutouts": "side-store", "cutout_ttl_s": 600})
    alerts = make_alerts(5)
    client = connect(RedisConfig(), url=redis_server.url)
    with AlertProducer(client, NIGHT, config=config) as producer:
        producer.publish(alerts)
    _, fields = client.xrange(STREAM, count=1)[0]
    alert, _ = decode_entry(fields)
    assert alert.cutouts() == {} and alert.cutout_store_key == cutout_key(STREAM, alert.alert_id)
    stored = client.hgetall(alert.cutout_store_key)
    assert set(stored) == {b"science", b"template", b"difference"}
    original = next(a for a in alerts if a.alert_id == alert.alert_id)
    assert original.cutout_science is not None
    assert stored[b"science"] == original.cutout_science.stamp_data
    assert read_cutout(stored[b"difference"]).data.shape == (63, 63)
    assert 0 < client.ttl(alert.cutout_store_key) <= 600
    inline_bytes = len(original.cutout_science.stamp_data)
    assert len(fields[b"payload"]) < inline_bytes  # the hot stream carries no stamps


def test_maxlen_trims_approximately(redis_server: RedisServer, alerts_config: AlertsConfig) -> None:
    config = alerts_config.model_copy(update={"maxlen": 1000, "batch_size": 500})
    client = connect(RedisConfig(), url=redis_server.url)
    with AlertProducer(client, NIGHT, config=config) as producer:
        report = producer.publish(make_alerts(3000, with_cutouts=False))
    assert report.published == 3000
    assert 1000 <= client.xlen(STREAM) < 3000  # "~": whole macro nodes are trimmed


def test_edge_producer_publishes_only_confident_candidates(redis_server: RedisServer, alerts_config: AlertsConfig) -> None:
    config = alerts_config.model_copy(update={"edge_min_score": 0.5})
    alerts = make_alerts(4, score=0.1) + make_alerts(6, start=100, score=0.95)
    with AlertProducer(connect(RedisConfig(), url=redis_server.url), NIGHT, config=config) as producer:
        report = producer.publish(alerts)
    assert (report.published, report.filtered) == (6, 4)
    assert len(stream_alert_ids(redis_server)) == 6


def test_auth_works_and_a_wrong_password_is_clear_and_secret(
    tmp_path: Path, alerts_config: AlertsConfig, caplog: pytest.LogCaptureFixture
) -> None:
    secret = "correct-horse-battery"
    with RedisServer(data_dir=tmp_path / "auth", password=secret) as server:
        good = RedisConfig(password=secret)
        with AlertProducer(connect(good, url=server.url), NIGHT, config=alerts_config) as producer:
            assert producer.publish(make_alerts(3, with_cutouts=False)).published == 3
        caplog.set_level(logging.DEBUG)
        with pytest.raises(RedisAuthError, match="refused authentication") as info:
            connect(RedisConfig(password="wrong-" + secret), url=server.url)
        assert "SKYBLINK_REDIS__PASSWORD" in str(info.value)
        with pytest.raises(RedisAuthError, match="requires a password"):
            connect(RedisConfig(), url=server.url)
        with pytest.raises(RedisAuthError):  # a password in the URL is redacted in the message
            connect(RedisConfig(), url=f"redis://:wrong-{secret}@127.0.0.1:{server.port}/0")
        assert secret not in str(info.value) and secret not in caplog.text
        assert "***" in str(info.value) or "127.0.0.1" in str(info.value)


def test_redis_down_spools_and_next_start_replays_exactly_once(
    persistent_redis: RedisServer, alerts_config: AlertsConfig
) -> None:
    alerts = make_alerts(200, with_cutouts=False)
    client = connect(RedisConfig(), url=persistent_redis.url)
    with AlertProducer(client, NIGHT, config=alerts_config) as producer:
        assert producer.publish(alerts[:80]).published == 80
        persistent_redis.kill()
        down = producer.publish(alerts[80:])  # retries, then spools
    assert down.spooled == 120 and down.published == 0 and down.retries >= alerts_config.retries
    assert AlertSpool(alerts_config.spool_dir).count() == 120
    persistent_redis.start()
    with AlertProducer(client, NIGHT, config=alerts_config) as producer:  # the next run
        again = producer.publish(alerts)  # and the night is rerun as a whole
    assert AlertSpool(alerts_config.spool_dir).pending() == []
    ids = stream_alert_ids(persistent_redis)
    assert len(ids) == 200 and set(ids) == {a.alert_id for a in alerts}
    assert again.published == 0 and again.duplicates == 200


def test_redis_restarted_mid_publish_loses_and_duplicates_nothing(
    persistent_redis: RedisServer, alerts_config: AlertsConfig
) -> None:
    alerts = make_alerts(1500, with_cutouts=False)
    config = alerts_config.model_copy(update={"batch_size": 20, "retries": 8, "backoff_s": 0.02, "backoff_max_s": 0.2})
    watcher = persistent_redis.client()
    client = connect(RedisConfig(), url=persistent_redis.url)
    producer = AlertProducer(client, NIGHT, config=config)
    producer.open()
    result: dict[str, object] = {}
    publisher = threading.Thread(target=lambda: result.update(report=producer.publish(alerts)))
    publisher.start()
    wait_for(lambda: watcher.xlen(STREAM) >= 300, timeout=30, what="300 entries before the kill")
    persistent_redis.kill()  # SIGKILL mid-publish
    persistent_redis.start()  # same port, same AOF
    publisher.join(timeout=60)
    assert not publisher.is_alive()
    report = result["report"]
    assert report.retries + report.spooled > 0, "the kill did not hit the publish"  # type: ignore[attr-defined]
    with AlertProducer(client, NIGHT, config=config):  # replays whatever was spooled
        pass
    ids = stream_alert_ids(persistent_redis)
    assert len(ids) == len(set(ids)) == 1500, "duplicates or losses"
    assert set(ids) == {a.alert_id for a in alerts}
    assert AlertSpool(config.spool_dir).pending() == []


def test_confirm_finds_what_a_restarted_server_lost_and_a_resend_restores_it(
    redis_server: RedisServer, persistent_redis: RedisServer, alerts_config: AlertsConfig
) -> None:
    alerts = make_alerts(30, with_cutouts=False)
    for server, persistent in ((redis_server, False), (persistent_redis, True)):
        client = connect(RedisConfig(), url=server.url)
        sent: list[int] = []
        with AlertProducer(client, NIGHT, config=alerts_config) as producer:
            assert producer.publish(alerts, sent=sent).published == 30
            assert producer.confirm(sent) == []
            server.kill()
            server.start()  # the same port: the client reconnects
            missing = producer.confirm(sent)
            if persistent:
                assert missing == []
                continue
            assert missing == sent  # in the order given
            again = producer.publish(a for a in alerts if a.alert_id in set(missing))
            assert again.published == 30 and producer.confirm(sent) == []
        assert sorted(stream_alert_ids(server)) == sorted(sent)


def test_confirm_finds_entries_gone_behind_the_dedup_hash_without_reading_them_back(
    redis_server: RedisServer, alerts_config: AlertsConfig
) -> None:
    """Entries lost while the dedup hash kept their ids (an older append-only file): found, their ids freed, resent."""
    alerts = make_alerts(40)
    client = connect(RedisConfig(), url=redis_server.url)
    sent: list[int] = []
    with AlertProducer(client, NIGHT, config=alerts_config) as producer:
        producer.publish(alerts, sent=sent)
        lost = sent[5:8] + sent[30:31]
        entries = client.hmget(dedup_key(STREAM), [str(i) for i in lost])
        assert all(entries) and client.xdel(STREAM, *entries) == 4
        client.script_flush()  # as after a restart: the check is loaded again
        before = client.info("stats")["total_net_output_bytes"]
        assert producer.confirm(sent) == lost
        assert client.info("stats")["total_net_output_bytes"] - before < 20_000  # not the 40 entries with their cutouts
        assert client.hmget(dedup_key(STREAM), [str(i) for i in lost]) == [None] * 4
        again = producer.publish(a for a in alerts if a.alert_id in set(lost))
        assert again.published == 4 and producer.confirm(sent) == []
    assert sorted(stream_alert_ids(redis_server)) == sorted(sent)


def test_confirm_counts_trimmed_entries_as_delivered_and_spooled_ids_are_kept(
    redis_server: RedisServer, alerts_config: AlertsConfig
) -> None:
    config = alerts_config.model_copy(update={"maxlen": 100, "batch_size": 100})
    alerts = make_alerts(1000, with_cutouts=False)
    client = connect(RedisConfig(), url=redis_server.url)
    sent: list[int] = []
    with AlertProducer(client, NIGHT, config=config) as producer:
        producer.publish(alerts, sent=sent)
        assert client.xlen(STREAM) < 1000
        assert producer.confirm(sent) == []  # trimmed by MAXLEN after delivery: not lost
        redis_server.kill()
        producer.publish(make_alerts(3, start=5000, with_cutouts=False))
        assert len(producer.spooled_ids) == 3


def test_batches_before_a_failing_alert_reach_the_stream_in_order(
    redis_server: RedisServer, alerts_config: AlertsConfig
) -> None:
    """A batch is sent while the next is built: when building fails, what was built before is in the stream."""
    config = alerts_config.model_copy(update={"batch_size": 50})
    alerts = make_alerts(130)

    def built() -> Iterator[Alert]:
        yield from alerts[:100]
        raise ValueError("the 101st packet could not be built")

    client = connect(RedisConfig(), url=redis_server.url)
    with AlertProducer(client, NIGHT, config=config) as producer, pytest.raises(ValueError, match="101st"):
        producer.publish(built())
    assert stream_alert_ids(redis_server) == [a.alert_id for a in alerts[:100]]
    with AlertProducer(client, NIGHT, config=config) as producer:  # the night's rerun sends the rest, once
        again = producer.publish(alerts)
    assert (again.published, again.duplicates) == (30, 100)
    assert stream_alert_ids(redis_server) == [a.alert_id for a in alerts]
