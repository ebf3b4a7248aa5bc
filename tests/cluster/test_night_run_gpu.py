"""
`run_night` with GPU worker actors (torch on CUDA): the threaded actor that prepares its next
call on the host while one runs on the device, and stores its units' results itself, processes
every tile once and the night's alerts are published once.
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("torch")

pytestmark = [pytest.mark.gpu, pytest.mark.cluster, pytest.mark.redis]


def test_gpu_actors_run_the_night_and_publish_each_alert_once(tmp_path: Path, ray_local: None) -> None:
    from skyblink.cluster.night import plan_night, run_night
    from skyblink.cluster.results import UnitStore
    from skyblink.config import SimConfig, load_config
    from skyblink.sim import simulate_night
    from skyblink.storage import NightStore
    from skyblink.storage.redis_server import find_redis_server

    if find_redis_server() is None:
        pytest.skip("redis-server is not installed")
    simulate_night(tmp_path / "night", SimConfig(fields=2, exposures_per_field=3, image_size=1024, seed=8), max_workers=4)
    config = load_config(overrides={
        "store": str(tmp_path / "store.zarr"), "ingest.tile_size": 256, "night.units_per_call": 4, "night.device_batch": 4,
        "night.redis_dir": str(tmp_path / "redis"), "alerts.spool_dir": str(tmp_path / "spool"),
        "engines.backend": "torch", "night.workers": 1,
    }, environ={})
    report = run_night(tmp_path / "night", config)
    assert report.workers["kind"] == "gpu" and report.workers["count"] == 1
    assert report.workers["compiled"] is False  # night.compile_device_program = "auto": 96 tiles do not repay a compile
    assert report.tiles == report.tiles_processed == 6 * 16 and not report.tiles_failed
    (actor,) = report.workers["actors"]
    assert actor["units_done"] == report.tiles
    seconds = actor["seconds"]
    assert all(seconds[name] > 0 for name in ("prepare", "launch", "finish", "gpu")), seconds
    (startup,) = report.workers["startup"].values()
    assert startup["device_program"] > 0 and startup["detector"] + startup["device_program"] <= startup["total"] + 0.05, startup
    # Every unit's file was written by the actor, and the reduce read them all.
    units, _, _ = plan_night(NightStore(report.store_url), config)
    results = UnitStore(report.store_url)
    assert results.done(units) == {u.key for u in units}
    assert results.read(units).num_rows == report.candidates > 0
    assert report.candidates > 0 and sum(report.alerts.values()) == report.alerts_published > 0
