"""The Redis ACL users of the Kubernetes manifests, for real: the StatefulSet's init script renders
k8s/redis/users.acl with the Secret's passwords, a redis-server loads it, and the producer and the
consumer run as skyblink-publisher and skyblink-consumer; neither can FLUSHALL or step outside
the alert keys."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import redis
from k8s_render import K8S, find, render
from redis.backoff import NoBackoff
from redis.retry import Retry

from skyblink.config import AlertsConfig, RedisConfig
from skyblink.storage.alerts import AlertConsumer, AlertProducer, connect, stream_name
from skyblink.storage.redis_server import RedisServer, conf_quote, find_redis_server

pytestmark = pytest.mark.redis

PASSWORDS = {"REDIS_PASSWORD": "admin pw", "PUBLISHER_PASSWORD": "pub'pw\"$x", "CONSUMER_PASSWORD": "cons/pw&|"}
NIGHT = "20261125"


@pytest.fixture(scope="module")
def acl_server(tmp_path_factory: pytest.TempPathFactory) -> Any:
    if find_redis_server() is None or shutil.which("sh") is None or shutil.which("sha256sum") is None:
        pytest.skip("needs redis-server, sh and sha256sum")
    objects = render(K8S / "overlays" / "dev")
    root = tmp_path_factory.mktemp("acl")
    etc, run = root / "etc", root / "run"
    etc.mkdir()
    run.mkdir()
    for name, text in find(objects, "ConfigMap", "skyblink-redis-conf")["data"].items():
        (etc / name).write_text(text)
    init = find(objects, "StatefulSet", "skyblink-redis")["spec"]["template"]["spec"]["initContainers"][0]
    assert init["command"][:2] == ["sh", "-c"]
    script = init["command"][2].replace("/etc/redis/", f"{etc}/").replace("/run/redis/", f"{run}/")
    keys = {e["name"]: e["valueFrom"]["secretKeyRef"]["key"] for e in init["env"]}
    assert keys == {"REDIS_PASSWORD": "password", "PUBLISHER_PASSWORD": "publisher-password",
                    "CONSUMER_PASSWORD": "consumer-password"}
    subprocess.run(["sh", "-c", script], env={"PATH": "/usr/bin:/bin", **PASSWORDS}, check=True)
    rendered = (run / "users.acl").read_text()
    assert "@" + "ADMIN_HASH@" not in rendered and not any(p in rendered for p in PASSWORDS.values())
    server = RedisServer(data_dir=root / "data", password=None)
    original = server._write_config

    def with_acl() -> Path:
        path = original()
        path.write_text(path.read_text() + f"aclfile {conf_quote(str(run / 'users.acl'))}\n")
        return path

    server._write_config = with_acl  # type: ignore[method-assign]
    server._password = PASSWORDS["REDIS_PASSWORD"]
    with server:
        yield server


def _as(server: RedisServer, user: str, password: str) -> redis.Redis:
    from pydantic import SecretStr

    return connect(RedisConfig(username=user, password=SecretStr(password)), url=f"redis://127.0.0.1:{server.port}/0")


def test_publisher_and_consumer_do_their_work_and_nothing_else(acl_server: RedisServer, tmp_path: Path) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "storage" / "alerts"))
    from alert_factories import make_alerts

    config = AlertsConfig(spool_dir=tmp_path / "spool", cutouts="side-store", retries=0, block_ms=50, consumer_idle_timeout_s=0.2)
    publisher = _as(acl_server, "skyblink-publisher", PASSWORDS["PUBLISHER_PASSWORD"])
    alerts = make_alerts(4)
    with AlertProducer(publisher, NIGHT, config=config) as producer:
        assert producer.publish(alerts).published == 4
        assert producer.publish(alerts).published == 0  # the dedup script ran (EVALSHA) as the publisher
    stream = stream_name(config.stream, NIGHT)
    admin = acl_server.client()
    admin.xadd(stream, {"payload": b"\xff"})  # one poison entry: the consumer must dead-letter it
    consumer = _as(acl_server, "skyblink-consumer", PASSWORDS["CONSUMER_PASSWORD"])
    got: list[int] = []
    with AlertConsumer(consumer, "brokers", night=NIGHT, config=config, resolve_cutouts=True) as reader:
        report = reader.run(lambda r: got.append(len(r.alert.cutouts())), idle_exit_s=0.3)
    assert report.handled == 4 and got == [3, 3, 3, 3] and report.dead_lettered == 1
    assert admin.xlen(f"{stream}:dead") == 1

    no = redis.exceptions.NoPermissionError
    admin.set("not-an-alert-key", "secret")
    for client in (publisher, consumer):
        for command in (("FLUSHALL",), ("FLUSHDB",), ("CONFIG", "GET", "*"), ("KEYS", "*"), ("GET", "not-an-alert-key"),
                        ("DEL", stream), ("ACL", "LIST"), ("SHUTDOWN",)):
            with pytest.raises(no):
                client.execute_command(*command)
    with pytest.raises(no):
        consumer.xadd(stream, {"forged": "alert"})  # a consumer writes dead letters only
    with pytest.raises(no):
        publisher.xreadgroup("brokers", "spy", {stream: ">"})
    assert admin.xlen(stream) == 5 and admin.get("not-an-alert-key") == b"secret"


def test_wrong_passwords_are_refused(acl_server: RedisServer) -> None:
    bad = redis.Redis(port=acl_server.port, username="skyblink-consumer", password=PASSWORDS["PUBLISHER_PASSWORD"],
                      retry=Retry(NoBackoff(), 0))
    with pytest.raises(redis.exceptions.AuthenticationError):
        bad.ping()
