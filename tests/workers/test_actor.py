"""The worker actor on a real local Ray: candidates from a simulated night, each source once."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import ray

from skyblink.cluster import ingest_night
from skyblink.cluster.planning import plan_tiles
from skyblink.config import SimConfig, load_config
from skyblink.engines.backends import OnnxRuntimeRunner, start_runner
from skyblink.engines.catalog import onnx_path
from skyblink.sim import read_truth, simulate_night
from skyblink.storage import NightStore
from skyblink.workers.actor import TileWorker
from skyblink.workers.program_config import WorkerConfig
from skyblink.workers.tile_unit import process_tile

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def night_store(tmp_path_factory: pytest.TempPathFactory, ray_local: None) -> tuple[Path, NightStore]:
    root = tmp_path_factory.mktemp("actor")
    simulate_night(root / "night", SimConfig(fields=1, exposures_per_field=2, image_size=512, seed=4), max_workers=1)
    config = load_config(overrides={"store": str(root / "store.zarr"), "ingest.tile_size": 256}, environ={})
    assert ingest_night(root / "night", config).ok
    return root / "night", NightStore(str(root / "store.zarr"))


def _cpu_workers() -> WorkerConfig:
    """The actors' contract of a night with 256-pixel tiles on ONNX Runtime, built from the configuration."""
    return WorkerConfig.from_config(load_config(overrides={"ingest.tile_size": 256, "engines.backend": "onnxruntime"},
                                                environ={}))


def test_the_pool_shares_the_cores_among_its_cpu_actors(ray_local: None) -> None:
    """Two CPU actors on 2 cores run their sessions on one thread each, not on every core apiece."""
    from skyblink.cluster.dispatch import WorkerPool

    with WorkerPool(_cpu_workers()) as pool:
        assert (pool.spec.kind, pool.spec.count, pool.spec.cpu_threads) == ("cpu", 2, 1)
        health = pool.wait_ready()
    assert len(health) == 2
    for answer in health:
        for model in ("detector", "classifier"):
            assert answer["engines"][model]["reason"].endswith("ONNX Runtime on the CPU, 1 thread(s)")


def test_actor_returns_each_candidate_once_with_stamps(night_store: tuple[Path, NightStore]) -> None:
    night, store = night_store
    units = plan_tiles(store, "exposures/F00-001", size=256, margin=32)
    assert len(units) == 4
    worker = TileWorker.options(num_cpus=1).remote(_cpu_workers(), start_runner)
    health = ray.get(worker.check_health.remote())
    assert {k: health[k] for k in ("backends", "active", "units_done")} == {
        "backends": {"detector": "onnxruntime", "classifier": "onnxruntime"}, "active": True, "units_done": 0}
    assert health["engines"]["detector"]["backend"] == "onnxruntime" and health["engines"]["detector"]["engine_file"] is None
    startup = health["startup"]
    assert startup["detector_s"] > 0 and startup["classifier_s"] > 0 and "device_program_s" not in startup  # no GPU pipeline
    assert startup["ready_at"] - startup["began_at"] >= startup["detector_s"] + startup["classifier_s"]
    outcomes = ray.get(worker.process.remote(units))
    assert [o.unit for o in outcomes] == units and all(o.error is None for o in outcomes)
    candidates = [c for o in outcomes for c in o.candidates]
    assert ray.get(worker.check_health.remote())["units_done"] == 4
    assert candidates, "no candidates on a night with transients and movers"
    for c in candidates:
        assert c.stamp.shape == (3, 63, 63) and 0.0 <= c.real_bogus <= 1.0 and len(c.class_probs) == 7
    xy = np.array([(c.x, c.y) for c in candidates])
    separations = np.hypot(*(xy[:, None, :] - xy[None, :, :]).transpose(2, 0, 1)) + np.eye(len(xy)) * 1e9
    assert separations.min() > 2.0, "a source was reported twice (tile overlaps)"
    # The actor gives what the plain function gives: Ray adds nothing and loses nothing.
    with OnnxRuntimeRunner(onnx_path("detector")) as det, OnnxRuntimeRunner(onnx_path("classifier")) as cls:
        direct = [c for u in units for c in process_tile(u, store, det, cls)]
    assert [(c.unit, round(c.x, 3), round(c.y, 3)) for c in candidates] == [(c.unit, round(c.x, 3), round(c.y, 3)) for c in direct]
    # Bright events are found: every transient or mover 1 mag above the 5-sigma limit, within
    # 3 px of its position (or anywhere along its trail for a trailed mover).
    truth = read_truth(night / "truth" / "F00-001.parquet")
    kinds = np.array(truth["type"]).astype(str)
    bright = np.isin(kinds, ("transient", "moving")) & (np.array(truth["mag"]) < truth.meta["limiting_mag_5sigma"] - 1.0)
    assert bright.sum() >= 3
    trail = np.nan_to_num(np.array(truth["trail_length_px"], dtype=float), nan=0.0)
    for x, y, half in zip(np.array(truth["x"])[bright], np.array(truth["y"])[bright], trail[bright] / 2, strict=True):
        assert np.hypot(xy[:, 0] - x, xy[:, 1] - y).min() < 3.0 + half, (x, y)
    ray.get(worker.shutdown.remote())
    ray.kill(worker)


def test_actor_stores_results_itself_with_a_result_sink(night_store: tuple[Path, NightStore]) -> None:
    from skyblink.cluster.results import UnitStore, store_unit_results

    _, store = night_store
    units = plan_tiles(store, "exposures/F00-000", size=256, margin=32)
    returning = TileWorker.options(num_cpus=1).remote(_cpu_workers(), start_runner)
    storing = TileWorker.options(num_cpus=1).remote(_cpu_workers(), start_runner, result_sink=store_unit_results)
    returned = ray.get(returning.process.remote(units))
    stored = ray.get(storing.process.remote(units))
    # The outcomes carry counts, not candidates; the store holds exactly what the actor found.
    assert all(o.error is None and o.candidates == () for o in stored)
    assert [o.n_candidates for o in stored] == [len(o.candidates) for o in returned]
    results = UnitStore(store.url)
    assert results.done(units) == {u.key for u in units}
    table = results.read(units)
    assert table.num_rows == sum(o.n_candidates for o in stored) > 0
    expected = sorted((c.unit, round(c.x, 3), round(c.y, 3)) for o in returned for c in o.candidates)
    assert sorted(zip(table.column("unit").to_pylist(), np.round(table.column("x").to_numpy(), 3),
                      np.round(table.column("y").to_numpy(), 3), strict=True)) == expected
    for worker in (returning, storing):
        ray.kill(worker)


def test_a_night_that_chooses_the_survey_classifier_scores_its_candidates_with_it(
        night_store: tuple[Path, NightStore]) -> None:
    """``night.classifier = "survey_classifier"``: the same candidates, scored by that network; the actor says which."""
    _, store = night_store
    units = plan_tiles(store, "exposures/F00-001", size=256, margin=32)
    config = WorkerConfig.from_config(load_config(overrides={"ingest.tile_size": 256, "engines.backend": "onnxruntime",
                                                             "night.classifier": "survey_classifier"}, environ={}))
    assert config.program.classifier == "survey_classifier"
    survey, default = (TileWorker.options(num_cpus=1).remote(c, start_runner) for c in (config, _cpu_workers()))
    health = ray.get(survey.check_health.remote())
    assert health["engines"]["classifier"]["network"] == "survey_classifier"
    assert health["engines"]["detector"]["network"] == "detector"
    ours, theirs = ([c for o in ray.get(w.process.remote(units)) for c in o.candidates] for w in (survey, default))
    assert [(c.unit, c.x, c.y) for c in ours] == [(c.unit, c.x, c.y) for c in theirs] and ours
    with OnnxRuntimeRunner(onnx_path("survey_classifier")) as runner:
        expected = runner.infer({"stamps": np.stack([c.stamp for c in ours]).astype(np.float32)})["real_bogus"][:, 0]
    np.testing.assert_allclose([c.real_bogus for c in ours], expected, atol=2e-3)  # the kept stamps are rounded
    assert not np.allclose([c.real_bogus for c in ours], [c.real_bogus for c in theirs], atol=1e-3)
    for worker in (survey, default):
        ray.kill(worker)
