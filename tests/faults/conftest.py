"""
The fault suite's night: one field of three 512x512 exposures, processed once per session by a
clean run whose stream (alert ids and entry contents) every fault case must end with.

Each case copies the clean run's store (its tile results included, so that only the tiles a case
breaks are processed again) and publishes to its own redis-server on a free port.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from skyblink.config import SimConfig, SkyblinkConfig, load_config
from skyblink.storage.alerts import decode_entry
from skyblink.storage.redis_server import RedisServer, find_redis_server

if find_redis_server() is None:
    pytest.skip("redis-server is not installed (apt-get install redis-server)", allow_module_level=True)

SIM = SimConfig(fields=1, exposures_per_field=3, image_size=512, seed=11)
NIGHT = "20261124"


def fault_config(root: Path, redis_url: str, **overrides: object) -> SkyblinkConfig:
    """The configuration of a case: its store and spool under ``root``, its Redis, quick retries."""
    values = {
        "store": str(root / "store.zarr"),
        "ingest.tile_size": 256,
        "night.units_per_call": 2,
        "night.workers": 1,
        "redis.url": redis_url,
        "alerts.spool_dir": str(root / "spool"),
        "alerts.retries": 1,
        "alerts.backoff_s": 0.05,
        "alerts.batch_size": 4,
        **overrides,
    }
    return load_config(overrides=values, environ={})


def fault_env(root: Path, redis_url: str) -> dict[str, str]:
    """The same configuration as environment variables, for the CLI."""
    return {
        "SKYBLINK_STORE": str(root / "store.zarr"),
        "SKYBLINK_INGEST__TILE_SIZE": "256",
        "SKYBLINK_NIGHT__UNITS_PER_CALL": "2",
        "SKYBLINK_NIGHT__DEVICE_BATCH": "2",
        "SKYBLINK_NIGHT__WORKERS": "1",
        "SKYBLINK_REDIS__URL": redis_url,
        "SKYBLINK_ALERTS__SPOOL_DIR": str(root / "spool"),
        "SKYBLINK_ALERTS__RETRIES": "1",
        "SKYBLINK_ALERTS__BACKOFF_S": "0.05",
        "SKYBLINK_ALERTS__BATCH_SIZE": "4",
    }


def stream_entries(url: str, stream: str) -> dict[int, dict[bytes, bytes]]:
    """Return alert id -> the entry's fields, checking that no id is there twice."""
    client = redis.Redis.from_url(url)
    try:
        entries = [fields for _, fields in client.xrange(stream)]
    finally:
        client.close()
    ids = [decode_entry(fields)[0].alert_id for fields in entries]
    assert len(ids) == len(set(ids)), "an alert is in the stream twice"
    return dict(zip(ids, entries, strict=True))


@dataclass
class CleanNight:
    night_dir: Path
    root: Path
    stream: str
    entries: dict[int, dict[bytes, bytes]]
    report: dict

    def copy_store(self, dst: Path) -> Path:
        """Copy the clean run's store (tiles done) to ``dst``/store.zarr and return it."""
        target = dst / "store.zarr"
        shutil.copytree(self.root / "store.zarr", target)
        return target


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this case, without persistence."""
    with RedisServer(data_dir=tmp_path / "redis-data") as server:
        yield server


@pytest.fixture
def persistent_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this case whose append-only file is fsynced on every write."""
    with RedisServer(data_dir=tmp_path / "redis-data", persistent=True) as server:
        yield server


@pytest.fixture(scope="session")
def clean_night(tmp_path_factory: pytest.TempPathFactory, ray_local: None) -> Iterator[CleanNight]:
    """The night processed without a fault: its store and its stream."""
    from skyblink.cluster.night import run_night
    from skyblink.sim import simulate_night

    base = tmp_path_factory.mktemp("faults")
    simulate_night(base / "night", SIM, max_workers=1)
    root = base / "clean"
    with RedisServer(data_dir=root / "redis-data") as server:
        report = run_night(base / "night", fault_config(root, server.url), night=NIGHT)
        entries = stream_entries(server.url, report.stream)
    assert report.ok and report.tiles == report.tiles_processed == 12, report.to_json()
    assert len(entries) == report.alerts_in_stream == sum(report.alerts.values()) > 0
    yield CleanNight(base / "night", root, report.stream, entries, report.to_json())
