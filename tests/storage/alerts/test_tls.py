"""Alerts published and consumed over rediss:// (TLS) with a password, against a redis-server the
test starts with TLS on (its own throwaway CA and certificate, made with the openssl CLI)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from alert_factories import NIGHT, make_alerts

from skyblink.config import AlertsConfig, RedisConfig
from skyblink.storage.alerts import AlertConsumer, AlertProducer, RedisUnavailableError, connect
from skyblink.storage.redis_server import conf_quote, find_redis_server

pytestmark = pytest.mark.redis

PASSWORD = 'tls "pw" with\\odd chars'


@dataclass(frozen=True)
class TlsServer:
    port: int
    ca: Path
    other_ca: Path


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _make_certificates(d: Path) -> None:
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    _openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "1", "-subj", "/CN=skyblink test CA", cwd=d)
    _openssl("req", "-x509", *ec, "-keyout", "other.key", "-out", "other.crt", "-days", "1", "-subj", "/CN=other CA", cwd=d)
    _openssl("req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost", cwd=d)
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
             "-out", "server.crt", "-days", "1", "-extfile", "san.ext", cwd=d)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[TlsServer]:
    binary = find_redis_server()
    if binary is None or shutil.which("openssl") is None:
        pytest.skip("needs redis-server and the openssl CLI")
    d = tmp_path / "tls"
    d.mkdir()
    _make_certificates(d)
    port = _free_port()
    (d / "redis.conf").write_text("\n".join([
        "bind 127.0.0.1", "port 0", f"tls-port {port}", 'save ""', f"dir {conf_quote(str(d))}",
        "tls-cert-file server.crt", "tls-key-file server.key", "tls-ca-cert-file ca.crt",
        "tls-auth-clients no", f"requirepass {conf_quote(PASSWORD)}", 'logfile "redis.log"',
    ]) + "\n")
    process = subprocess.Popen([str(binary), str(d / "redis.conf")], cwd=d)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    log = (d / "redis.log").read_text() if (d / "redis.log").exists() else ""
                    pytest.fail(f"redis-server with TLS did not start: {log[-2000:]}")
                time.sleep(0.05)  # polling for the port, bounded by the deadline
        yield TlsServer(port, d / "ca.crt", d / "other.crt")
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_alerts_round_trip_over_rediss_with_a_password(tls_server: TlsServer, alerts_config: AlertsConfig) -> None:
    from pydantic import SecretStr

    config = RedisConfig(url=f"rediss://127.0.0.1:{tls_server.port}/0", password=SecretStr(PASSWORD), tls_ca_file=tls_server.ca)
    alerts = make_alerts(5)
    with AlertProducer(connect(config), NIGHT, config=alerts_config) as producer:
        assert producer.publish(alerts).published == 5
    got: list[int] = []
    with AlertConsumer(connect(config), "tls-brokers", night=NIGHT, config=alerts_config) as consumer:
        report = consumer.run(lambda r: got.append(r.alert.alert_id), max_alerts=5)
    assert report.handled == 5 and sorted(got) == sorted(a.alert_id for a in alerts)


def test_rediss_refuses_a_server_certificate_from_another_ca(tls_server: TlsServer) -> None:
    from pydantic import SecretStr

    wrong = RedisConfig(url=f"rediss://127.0.0.1:{tls_server.port}/0", password=SecretStr(PASSWORD),
                        tls_ca_file=tls_server.other_ca, connect_timeout_s=2)
    with pytest.raises(RedisUnavailableError, match="rediss://127.0.0.1"):
        connect(wrong)
    plain = RedisConfig(url=f"redis://127.0.0.1:{tls_server.port}/0", password=SecretStr(PASSWORD),
                        connect_timeout_s=1, socket_timeout_s=1)
    with pytest.raises(RedisUnavailableError):  # no plain-text talk on the TLS port
        connect(plain)
