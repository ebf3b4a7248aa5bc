"""Edge pre-filtering, the traffic estimate, and the alerts/redis configuration (secrets stay secret)."""

from __future__ import annotations

import pytest
from alert_factories import make_alerts
from typer.testing import CliRunner

from skyblink.cli import app
from skyblink.config import ConfigError, load_config
from skyblink.storage.alerts import EdgeFilter, estimate_night_traffic, redact_url


def test_edge_filter_keeps_scores_at_or_above_threshold() -> None:
    alerts = make_alerts(2, score=0.2, with_cutouts=False) + make_alerts(3, start=10, score=0.8, with_cutouts=False)
    assert len(EdgeFilter(0.8).select(alerts)) == 3
    assert len(EdgeFilter(None).select(alerts)) == 5
    assert EdgeFilter(0.99).select(alerts) == []
    with pytest.raises(ValueError, match="min_score must be in"):
        EdgeFilter(1.5)


def test_traffic_estimate_is_plain_arithmetic() -> None:
    traffic = estimate_night_traffic(
        exposures=10, ccds_per_exposure=2, tiles_per_ccd=4, tile_bytes=1000.0, candidates_per_ccd=5.0,
        packet_bytes=[100, 300], scores=[0.1, 0.9, 0.95, 0.2], min_score=0.5,
    )
    assert traffic.tile_bytes == 10 * 2 * 4 * 1000
    assert traffic.candidates == 100 and traffic.alerts_sent == 50
    assert traffic.alert_bytes_all == 100 * 200 and traffic.alert_bytes_filtered == 50 * 200
    assert traffic.reduction == pytest.approx(8.0)


def test_password_from_environment_is_secret_everywhere() -> None:
    config = load_config(environ={"SKYBLINK_REDIS__PASSWORD": "hunter2-s3cret", "SKYBLINK_ALERTS__MAXLEN": "5000"})
    assert config.redis.password is not None
    assert config.redis.password.get_secret_value() == "hunter2-s3cret"
    assert "hunter2" not in repr(config) and "hunter2" not in str(config.model_dump())
    assert config.alerts.maxlen == 5000
    result = CliRunner().invoke(app, ["config", "show"], env={"SKYBLINK_REDIS__PASSWORD": "hunter2-s3cret"})
    assert result.exit_code == 0 and "hunter2" not in result.output


def test_stream_template_needs_the_night_placeholder() -> None:
    with pytest.raises(ConfigError, match=r"alerts\.stream .*\{night\}"):
        load_config(environ={"SKYBLINK_ALERTS__STREAM": "alerts:{date}"})
    with pytest.raises(ConfigError, match=r"alerts\.cutouts"):
        load_config(environ={"SKYBLINK_ALERTS__CUTOUTS": "s3"})


def test_redact_url_hides_only_the_password() -> None:
    assert redact_url("rediss://user:pw@host:6380/0") == "rediss://user:***@host:6380/0"
    assert redact_url("redis://:pw@host/1") == "redis://:***@host/1"
    assert redact_url("redis://host:6379/0") == "redis://host:6379/0"
