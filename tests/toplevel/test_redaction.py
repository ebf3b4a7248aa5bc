"""Secrets are never printed: one redaction for the configuration, reports, logs and errors."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from typer.testing import CliRunner

from skyblink.cli import app
from skyblink.config import ConfigError, load_config
from skyblink.redaction import RedactingFilter, redact_text, redact_url, register_secret

SECRET = "S3cretPW-unique-7f3a"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (f"redis://:{SECRET}@host:6379/0", "redis://:***@host:6379/0"),
        (f"rediss://broker:{SECRET}@redis.example:6380/1", "rediss://broker:***@redis.example:6380/1"),
        (f"redis://host:6379/0?password={SECRET}", "redis://host:6379/0?password=***"),
        (f"rediss://host/0?db=2&PassWord={SECRET}&ssl_cert_reqs=required",
         "rediss://host/0?db=2&PassWord=***&ssl_cert_reqs=required"),
        (f"unix://:{SECRET}@/run/redis.sock?db=1", "unix://:***@/run/redis.sock?db=1"),
        (f"redis://:{SECRET}@with@at@host:1/0", "redis://:***@host:1/0"),
        ("redis://user@host:6379/0", "redis://user@host:6379/0"),  # a user name is not a secret
        ("redis://host:99999999/0", "<unparseable URL>"),
    ],
)
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_redact_text_finds_urls_and_registered_secrets_anywhere() -> None:
    register_secret("generated-private-pw-91c2")
    text = (f"cannot reach redis://:{SECRET}@h:1/0 (nor 'rediss://h/0?password={SECRET}'); "
            "AUTH generated-private-pw-91c2 refused")
    shown = redact_text(text)
    assert SECRET not in shown and "generated-private-pw-91c2" not in shown
    assert "redis://:***@h:1/0" in shown and "rediss://h/0?password=***" in shown


@pytest.mark.parametrize("fmt", ["toml", "json"])
@pytest.mark.parametrize("url", [f"redis://:{SECRET}@127.0.0.1:6379/0", f"rediss://127.0.0.1:6380/0?password={SECRET}"])
def test_config_show_never_prints_the_password(fmt: str, url: str) -> None:
    env = {"SKYBLINK_REDIS__URL": url, "SKYBLINK_REDIS__PASSWORD": SECRET + "-env"}
    result = CliRunner().invoke(app, ["config", "show", "--format", fmt], env=env)
    assert result.exit_code == 0, result.output
    assert SECRET not in result.output
    assert "***" in result.output and "127.0.0.1" in result.output  # the rest is still shown
    if fmt == "json":
        assert json.loads(result.output)["redis"]["url"].count("***") == 1


def test_an_invalid_password_is_named_but_never_echoed(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("[redis]\npassword = 987654321987\n")
    with pytest.raises(ConfigError, match=r"redis\.password") as err:
        load_config(path, environ={})
    assert "987654321987" not in str(err.value)


def test_cli_errors_never_print_the_password() -> None:
    url = f"redis://:{SECRET}@127.0.0.1:1/0?password={SECRET}"
    result = CliRunner().invoke(app, ["alerts", "tail", "--night", "20261125", "--redis-url", url])
    assert result.exit_code == 1
    assert "127.0.0.1:1" in result.output and SECRET not in result.output


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


def test_log_records_and_their_tracebacks_are_redacted() -> None:
    register_secret(SECRET)
    handler = _Collect()
    handler.addFilter(RedactingFilter())
    log = logging.getLogger("skyblink.test_redaction")
    log.addHandler(handler)
    try:
        log.warning("alerts go to %s", f"redis://h:1/0?password={SECRET}")
        try:
            raise ConnectionError(f"AUTH {SECRET} failed")
        except ConnectionError:
            log.exception("publish failed")
    finally:
        log.removeHandler(handler)
    joined = "\n".join(handler.lines)
    assert SECRET not in joined
    assert "redis://h:1/0?password=***" in joined and "ConnectionError: AUTH *** failed" in joined
