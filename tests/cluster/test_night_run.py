"""
`skyblink night run` end to end on a real local Ray with a real redis-server: alerts published,
nothing lost, nothing twice; the driver killed and resumed; a corrupt exposure in the night;
exposures processed as they land (--watch). A worker actor killed mid-night is a fault of
tests/faults (the stream byte for byte the clean run's).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import redis

from skyblink.cluster.night import run_night
from skyblink.cluster.private_redis import private_password
from skyblink.config import SimConfig, SkyblinkConfig, load_config
from skyblink.sim import simulate_night
from skyblink.storage import Manifest
from skyblink.storage.alerts import decode_entry
from skyblink.storage.redis_server import find_redis_server

pytestmark = [pytest.mark.cluster, pytest.mark.redis]

if find_redis_server() is None:
    pytest.skip("redis-server is not installed (apt-get install redis-server)", allow_module_level=True)

SIM = SimConfig(fields=1, exposures_per_field=3, image_size=512, seed=11)


@pytest.fixture(scope="module")
def night_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("night")
    simulate_night(root / "night", SIM, max_workers=1)
    return root / "night"


def _config(root: Path, **overrides: object) -> SkyblinkConfig:
    values = {
        "store": str(root / "store.zarr"),
        "ingest.tile_size": 256,
        "night.redis_dir": str(root / "redis"),
        "night.units_per_call": 2,
        "alerts.spool_dir": str(root / "spool"),
        **overrides,
    }
    return load_config(overrides=values, environ={})


def _private_url(redis_dir: Path, port: int) -> str:
    """The kept private server's URL, with the password the run generated (and kept 0600)."""
    return f"redis://:{private_password(redis_dir)}@127.0.0.1:{port}/0"


def _stream_ids(redis_url: str, stream: str, models: set[str | None] | None = None) -> list[int]:
    """The stream's alert ids in order; ``models`` collects the networks the packets say scored them."""
    client = redis.Redis.from_url(redis_url)
    try:
        alerts = [decode_entry(fields)[0] for _, fields in client.xrange(stream)]
    finally:
        client.close()
    if models is not None:
        models.update(a.real_bogus_model for a in alerts)
    return [a.alert_id for a in alerts]


def _detections(store: Path) -> list[tuple[str, int]]:
    table = pq.read_table(store / "catalogs" / "detections.parquet")
    return sorted(zip(table.column("exposure_id").to_pylist(), table.column("candidate_id").to_pylist(), strict=True))


@pytest.fixture(scope="module")
def reference_run(night_dir: Path, tmp_path_factory: pytest.TempPathFactory, ray_local: None) -> tuple[Path, dict, list[int]]:
    """An uninterrupted run, keeping its redis-server so that the stream can be read."""
    root = tmp_path_factory.mktemp("reference")
    config = _config(root)
    report = run_night(night_dir, config, keep_redis=True)
    assert ":***@" in report.redis_url  # the private server's password, redacted in the report
    server = json.loads((root / "redis" / "server.json").read_text())
    models: set[str | None] = set()
    ids = _stream_ids(_private_url(root / "redis", server["port"]), report.stream, models)
    pid = server["pid"]
    os.kill(pid, signal.SIGTERM)
    assert models == {"classifier 1.0"}  # every packet says which network scored it
    return root, report.to_json(), ids


def test_night_end_to_end_publishes_every_alert_once(reference_run: tuple[Path, dict, list[int]]) -> None:
    root, report, ids = reference_run
    assert report["exposures"] == 3 and report["tiles"] == 12 and report["tiles_processed"] == 12
    assert not report["tiles_failed"] and not report["quarantined"]
    n_alerts = sum(report["alerts"].values())
    assert n_alerts > 0, "a night with injected transients and movers gave no alert"
    assert len(ids) == len(set(ids)) == n_alerts == report["alerts_published"]
    detections = pq.read_table(root / "store.zarr" / "catalogs" / "detections.parquet")
    alerted = {a for a, t in zip(detections.column("alert_id").to_pylist(), detections.column("alert_type").to_pylist(),
                                 strict=True) if t is not None}
    assert alerted == set(ids), "the catalog's alerted detections and the stream differ"
    objects = pq.read_table(root / "store.zarr" / "catalogs" / "objects.parquet")
    assert objects.num_rows == report["objects"] and sum(objects.column("n_detections").to_pylist()) == report["detections"]
    # Where the run's time went: its stages in the order they ran, summing to its wall time.
    path = report["critical_path"]
    assert path["exposure"] is None
    assert [s["stage"] for s in path["stages"]] == ["startup", "ingest", "plan", "workers_start", "dispatch",
                                                    "reference_catalogs", "reduce", "publish", "shutdown"]
    assert sum(s["seconds"] for s in path["stages"]) == pytest.approx(path["latency_s"], abs=0.01)
    assert path["latency_s"] == pytest.approx(report["wall_seconds"], abs=0.05)
    assert list(report["stage_seconds"])[0] == "startup"
    # What ran beside the path (the whole ingest among it), not summed into it.
    assert [s["stage"] for s in path["overlapped"]] == ["redis", "workers_warmup", "ingest", "plan_night"]
    ingest = path["overlapped"][2]
    assert ingest["start_s"] == pytest.approx(path["stages"][0]["end_s"], abs=0.05)  # from the run's startup on
    assert ingest["end_s"] >= path["stages"][1]["end_s"]  # the path waited for the first CCD, not the whole ingest


def test_a_night_whose_packets_are_built_in_tasks_publishes_the_same_stream(
    night_dir: Path, reference_run: tuple[Path, dict, list[int]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The packet tasks of a large visit (here forced on for a small night): the stream of the run that built its
    packets in its own threads, alert for alert in the same order, every alert confirmed."""
    import skyblink.cluster.night as night_run

    monkeypatch.setattr(night_run, "_TASK_PACKET_ALERTS", 1)
    monkeypatch.setattr(night_run, "_TASK_PACKET_CPUS", 0)
    monkeypatch.setattr(night_run, "_TASK_PACKET_PART_ALERTS", 3)
    said: list[str] = []
    report = run_night(night_dir, _config(tmp_path), keep_redis=True, say=said.append)
    server = json.loads((tmp_path / "redis" / "server.json").read_text())
    models: set[str | None] = set()
    try:
        ids = _stream_ids(_private_url(tmp_path / "redis", server["port"]), report.stream, models)
    finally:
        os.kill(server["pid"], signal.SIGTERM)
    assert any("alert packets in" in line and "Ray task(s)" in line for line in said), said
    assert models == {"classifier 1.0"}  # the tasks' packets say which network scored them too
    assert ids == reference_run[2]
    assert report.alerts_published == len(ids) == reference_run[1]["alerts_published"]
    assert report.alerts_in_stream == len(ids) and report.alerts_unconfirmed == 0


def test_reducing_exposure_by_exposure_gives_the_night_of_a_single_reduce(reference_run: tuple[Path, dict, list[int]]) -> None:
    """As in --watch: each cycle locates and matches its new exposure only; the night is the same."""
    import math

    from skyblink.cluster.night import _StaticDetections, plan_night
    from skyblink.cluster.results import UnitStore
    from skyblink.reduce.steps import night_detections, reduce_detections
    from skyblink.storage import NightStore

    root, _, _ = reference_run
    config = _config(root)
    store = NightStore(str(root / "store.zarr"))
    units, _, _ = plan_night(store, config)
    results = UnitStore(store.url)
    whole = reduce_detections(results.read(units), store, "20261124", config.night)
    static = _StaticDetections()
    for key in sorted({u.exposure for u in units}):  # one exposure lands per cycle
        landed = [u for u in units if u.exposure <= key]
        candidates, known = static.update(store, results, landed, "20261124", config, redo={key})
        assert set(candidates.column("exposure").to_pylist()) <= {key}  # only the new exposure was read
    by_cycles = night_detections(known, config.night)
    assert whole.num_rows == by_cycles.num_rows > 0
    for name in whole.column_names:
        if name == "row":  # points into the results read in one cycle
            continue
        for a, b in zip(whole.column(name).to_pylist(), by_cycles.column(name).to_pylist(), strict=True):
            assert a == b or (isinstance(a, float) and math.isnan(a) and math.isnan(b)), name


def test_the_per_exposure_reduce_in_ray_tasks_gives_the_driver_s_night(reference_run: tuple[Path, dict, list[int]]) -> None:
    """Each exposure's step in a Ray task of its own: the same candidates and static detections, rows re-indexed."""
    import math

    from skyblink.cluster.night import _StaticDetections, plan_night
    from skyblink.cluster.results import UnitStore
    from skyblink.storage import NightStore

    root, _, _ = reference_run
    config = _config(root)
    store = NightStore(str(root / "store.zarr"))
    units, _, _ = plan_night(store, config)
    results = UnitStore(store.url)
    assert len({u.exposure for u in units}) > 1
    driver = _StaticDetections(task_units=len(units) + 1).update(store, results, units, "20261124", config, redo=set())
    tasks = _StaticDetections(task_units=0).update(store, results, units, "20261124", config, redo=set())
    assert tasks[0].equals(driver[0])  # the exposures' results in the same order
    assert tasks[1].column_names == driver[1].column_names and tasks[1].num_rows == driver[1].num_rows > 0
    assert tasks[1].column("row").to_pylist() == driver[1].column("row").to_pylist()
    for name in driver[1].column_names:
        for a, b in zip(driver[1].column(name).to_pylist(), tasks[1].column(name).to_pylist(), strict=True):
            # Another process (Ray's workers run single-threaded BLAS): floats to the last bits.
            close = isinstance(a, float) and (math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-9) or math.isnan(a) and math.isnan(b))
            assert a == b or close, name


def test_a_large_exposure_is_reduced_in_tasks_of_whole_ccds(tmp_path: Path, ray_local: None) -> None:
    """One exposure (a --watch cycle of a Rubin-size visit) split into tasks by CCD: the driver's detections."""
    import math

    from skyblink.cluster import ingest_night
    from skyblink.cluster.night import _StaticDetections, plan_night
    from skyblink.cluster.results import UnitStore, store_unit_results
    from skyblink.reduce.steps import DETECTION_ORDER
    from skyblink.storage import NightStore
    from skyblink.workers.tile_unit import CandidateRecord

    simulate_night(tmp_path / "night", SimConfig(fields=1, exposures_per_field=1, ccds=3, image_size=256, seed=5),
                   max_workers=1)
    config = _config(tmp_path)
    ingest_night(tmp_path / "night", config)
    store = NightStore(config.store)
    visit, _, _ = plan_night(store, config)
    assert len({u.ccd for u in visit}) == 3
    rng = np.random.default_rng(3)
    for unit in visit:  # as the actors store them: candidates with stamps, some near each other
        oy, ox = unit.origin
        records = []
        for _ in range(12):
            x, y = ox + unit.margin + rng.uniform(0, unit.size), oy + unit.margin + rng.uniform(0, unit.size)
            stamp = rng.normal(0.0, 1.0, (3, 63, 63)).astype(np.float16)
            stamp[:, 29:34, 29:34] += 15.0
            records.append(CandidateRecord(unit.key, unit.exposure, unit.ccd, x, y, 0.9, float(rng.uniform(6, 40)),
                                           0.9, (0.02, 0.02, 0.9, 0.02, 0.02, 0.01, 0.01), stamp))
        store_unit_results(unit, records)
    results = UnitStore(store.url)
    split = _StaticDetections(task_units=0, part_units=1)
    parts = split._parts(visit)
    assert [len({u.ccd for u in part}) for part in parts] == [1, 1, 1]  # one task per CCD, in the units' order
    assert [u.key for part in parts for u in part] == [u.key for u in visit]
    driver = _StaticDetections(task_units=len(visit) + 1).update(store, results, visit, "20261124", config, redo=set())
    tasks = split.update(store, results, visit, "20261124", config, redo=set())
    assert tasks[0].equals(driver[0])  # the units' results in the same order
    assert driver[0].num_rows == 36 and split.candidates == {visit[0].exposure: 36}
    assert tasks[1].num_rows == driver[1].num_rows > 0
    ordered = [t.sort_by(DETECTION_ORDER) for t in (driver[1], tasks[1])]
    for name in ordered[0].column_names:
        for a, b in zip(ordered[0].column(name).to_pylist(), ordered[1].column(name).to_pylist(), strict=True):
            close = isinstance(a, float) and (math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-9) or math.isnan(a) and math.isnan(b))
            assert a == b or close, name


def test_packets_built_in_tasks_are_the_drivers_entries_in_its_order(tmp_path: Path, ray_local: None) -> None:
    """A large visit's packets built in Ray tasks of consecutive alerts: the same stream entries, in the same order,
    each packet with its object's whole history, also where that history lies in an earlier task's alerts."""
    import ray

    from skyblink.cluster import ingest_night
    from skyblink.cluster.night import _StaticDetections, plan_night
    from skyblink.cluster.results import UnitStore, store_unit_results
    from skyblink.reduce.packet_task import alert_parts, encode_alert_part
    from skyblink.reduce.steps import build_alerts, night_detections
    from skyblink.storage import NightStore
    from skyblink.storage.alerts import AlertBuilder, AlertEncoder
    from skyblink.workers.tile_unit import CandidateRecord

    simulate_night(tmp_path / "night", SimConfig(fields=1, exposures_per_field=3, ccds=1, image_size=256, seed=5),
                   max_workers=1)
    config = _config(tmp_path, **{"alerts.edge_min_score": 0.92})
    ingest_night(tmp_path / "night", config)
    store = NightStore(config.store)
    units, _, _ = plan_night(store, config)
    rng = np.random.default_rng(4)
    first = units[0]
    sky = store.wcs(first.exposure, first.ccd).all_pix2world(
        rng.uniform(first.margin + 4, first.margin + first.size - 4, (9, 2)), 0)  # the same 9 places in every exposure
    for unit in units:
        xy = store.wcs(unit.exposure, unit.ccd).all_world2pix(sky, 0)
        records = []
        for i, (x, y) in enumerate(xy):
            stamp = rng.normal(0.0, 1.0, (3, 63, 63)).astype(np.float16)
            stamp[:, 29:34, 29:34] += 15.0
            records.append(CandidateRecord(unit.key, unit.exposure, unit.ccd, float(x), float(y), 0.9, 20.0,
                                           0.9 + 0.01 * (i % 5), (0.02, 0.02, 0.9, 0.02, 0.02, 0.01, 0.01), stamp))
        store_unit_results(unit, records)
    candidates, static = _StaticDetections().update(store, UnitStore(store.url), units, "20261124", config, redo=set())
    detections = night_detections(static, config.night)
    driver_encoder = AlertEncoder("20261124", config=config.alerts)
    driver = list(driver_encoder.encode_kept(build_alerts(detections, candidates, store, AlertBuilder("20261124"),
                                                          threads=1)))
    assert len(driver) >= 12 and driver_encoder.filtered > 0  # the edge filter holds some back

    parts = alert_parts(detections, None, size=5)
    assert len(parts) >= 4
    seen: set[int] = set()
    later_objects = []
    for part, ids in parts[1:]:
        earlier = part.filter(pc.invert(pc.is_in(part.column("alert_id"), pa.array(ids))))
        later_objects.append(set(earlier.column("object_id").to_pylist()))
    assert any(later_objects), "no task needs the history of an earlier task's alerts: the test shows nothing"
    task = ray.remote(encode_alert_part)
    stamps = ray.put(candidates)
    results = ray.get([task.remote(part, ids, stamps, store.url, "20261124", "rle", config.alerts) for part, ids in parts])
    tasks = [entry for encoded, _, _ in results for entry in encoded]
    assert tasks == driver  # byte for byte, in the same order
    assert [i for _, sent, _ in results for i in sent] == [e.alert_id for e in driver]
    assert sum(held for _, _, held in results) == driver_encoder.filtered
    for _, ids in parts:
        assert not seen & set(ids)
        seen |= set(ids)

    last = detections.column("exposure_id")[detections.num_rows - 1].as_py()  # a --watch cycle: one exposure's alerts
    one = alert_parts(detections, {last}, size=5)
    wanted = detections.filter(pc.equal(detections.column("exposure_id"), last))
    assert sorted(i for _, ids in one for i in ids) == sorted(
        wanted.filter(pc.is_valid(wanted.column("alert_type"))).column("alert_id").to_pylist())


def _cli(*args: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(  # our own CLI
        [sys.executable, "-m", "skyblink.cli", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: killing it kills its Ray and redis-server too
    )


def _env(root: Path, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "SKYBLINK_STORE": str(root / "store.zarr"),
        "SKYBLINK_INGEST__TILE_SIZE": "256",
        "SKYBLINK_NIGHT__REDIS_DIR": str(root / "redis"),
        "SKYBLINK_NIGHT__TILES_PER_TASK": "1",
        "SKYBLINK_ALERTS__SPOOL_DIR": str(root / "spool"),
        "SKYBLINK_RAY__NUM_CPUS": "2",
        **extra,
    }


@pytest.mark.slow
def test_driver_killed_then_rerun_resumes_with_the_same_alerts(
    night_dir: Path, reference_run: tuple[Path, dict, list[int]], tmp_path: Path
) -> None:
    reference_root, _, reference_ids = reference_run
    env = _env(tmp_path)
    units = tmp_path / "store.zarr" / "results" / "units"
    first = _cli("night", "run", str(night_dir), env=env)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and first.poll() is None:
        if units.exists() and len(list(units.rglob("*.parquet"))) >= 3:
            break
        time.sleep(0.2)
    assert first.poll() is None, f"the run ended before it could be killed: {first.communicate()[0].decode()[-2000:]}"
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    done_before = len(list(units.rglob("*.parquet")))
    assert 3 <= done_before < 12

    second = _cli("night", "run", str(night_dir), "--keep-redis", "--report", str(tmp_path / "report.json"), env=env)
    output = second.communicate(timeout=300)[0].decode()
    assert second.returncode == 0, output[-3000:]
    report = json.loads((tmp_path / "report.json").read_text())
    # The actors write results themselves: those orphaned by the killed driver may finish the
    # units they held before they exit, so at least the units seen at the kill are done.
    assert report["tiles_done_before"] >= done_before
    assert report["tiles_done_before"] + report["tiles_processed"] == 12
    assert _detections(tmp_path / "store.zarr") == _detections(reference_root / "store.zarr")
    server = json.loads((tmp_path / "redis" / "server.json").read_text())
    try:
        ids = _stream_ids(_private_url(tmp_path / "redis", server["port"]), report["stream"])
    finally:
        os.kill(server["pid"], signal.SIGTERM)
    assert len(ids) == len(set(ids)), "the resumed night published an alert twice"
    assert sorted(ids) == sorted(reference_ids), "the resumed night's alerts differ from an uninterrupted run's"


def test_watch_does_not_end_the_night_while_a_reference_catalog_is_under_way(
    night_dir: Path, tmp_path: Path, ray_local: None
) -> None:
    """A watch idle for less time than a reference's catalog takes still writes that catalog."""
    from skyblink.reduce.association import reference_catalog_path
    from skyblink.storage import NightStore

    live = tmp_path / "live"
    (live / "exposures").mkdir(parents=True)
    shutil.copytree(night_dir / "references", live / "references")
    config = _config(tmp_path, **{"night.watch_poll_s": 0.05, "night.watch_idle_s": 0.05})
    said: list[str] = []
    report = run_night(live, config, watch=True, say=said.append)
    assert report.exposures == 0
    fs, path = reference_catalog_path(NightStore(report.store_url), "F00", config.night.reference_snr_threshold)
    assert fs.exists(path), said
    over = said.index(next(s for s in said if "the night is over" in s))
    assert said.index(next(s for s in said if s.startswith("reference catalog of F00 ready"))) < over
    # The actors warm up beside the reference's ingest; the watch does not end before they are
    # ready, and says so with their engines (no exposure made it wait for them).
    assert said.index(next(s for s in said if s.endswith("worker actor(s) ready"))) < over
    assert report.workers["engines"] and "workers_start" in report.stage_seconds


@pytest.mark.slow
def test_corrupt_exposure_is_quarantined_and_watch_processes_exposures_as_they_land(
    night_dir: Path, tmp_path: Path
) -> None:
    live = tmp_path / "live"
    (live / "exposures").mkdir(parents=True)
    shutil.copytree(night_dir / "references", live / "references")
    env = _env(tmp_path, SKYBLINK_NIGHT__WATCH_POLL_S="0.5", SKYBLINK_NIGHT__WATCH_IDLE_S="20",
               COLUMNS="300")  # the summary's critical path on one line
    run = _cli("night", "run", str(live), "--watch", "--report", str(tmp_path / "report.json"), env=env)
    output: list[bytes] = []
    reader = threading.Thread(target=lambda: output.append(run.stdout.read()), daemon=True)  # type: ignore[union-attr]
    reader.start()

    def land(name: str, data: bytes) -> None:
        # The observatory writes a file, then renames it into the night directory.
        tmp = live / "exposures" / f".{name}.part"
        tmp.write_bytes(data)
        tmp.rename(live / "exposures" / name)

    for path in sorted((night_dir / "exposures").glob("*.fits")):
        land(path.name, path.read_bytes())
        time.sleep(4.0)
    good = (night_dir / "exposures" / "F00-000.fits").read_bytes()
    land("F00-999.fits", good[: len(good) // 3])  # truncated mid-write by a crashing writer
    run.wait(timeout=300)
    reader.join(timeout=10)
    text = b"".join(output).decode()
    assert run.returncode == 3, text[-3000:]  # finished, with a quarantined file
    assert "F00-999.fits" in text and "truncated" in text
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["exposures"] == 3 and report["tiles_processed"] == 12 and not report["tiles_failed"]
    assert list(report["quarantined"]) == ["exposures/F00-999.fits"]
    assert sorted(report["latency_s"]) == ["F00-000", "F00-001", "F00-002"]
    assert all(0 < v < 120 for v in report["latency_s"].values())
    assert report["latency_percentiles_s"]["p95"] >= report["latency_percentiles_s"]["p50"] > 0
    # The slowest exposure's path, from its file appearing to its alerts in Redis, in order.
    path = report["critical_path"]
    assert path["exposure"] == max(report["latency_s"], key=report["latency_s"].get)
    assert path["latency_s"] == report["latency_s"][path["exposure"]]
    stages = [s["stage"] for s in path["stages"]]
    assert stages[:3] == ["wait", "ingest", "plan"] and stages[-3:] == ["reference_catalogs", "reduce", "publish"]
    assert "dispatch" in stages
    assert sum(s["seconds"] for s in path["stages"]) == pytest.approx(path["latency_s"], abs=0.01)
    assert list(report["latency_stages_s"][path["exposure"]]) == stages
    assert "critical path" in text and f"slowest exposure {path['exposure']}" in text
    manifest = Manifest.load(str(tmp_path / "store.zarr"))
    assert manifest.counts().get("quarantined") == 1


def test_a_file_bad_after_some_ccds_ran_is_quarantined_and_what_they_made_is_dropped(
    tmp_path: Path, ray_local: None
) -> None:
    """
    Per-CCD streaming: an exposure's first CCDs go to the actors as they land; when its last CCD
    then turns out bad, the file is quarantined by name, its tiles are neither processed nor
    failed, their result files are gone (a later good file of that name is processed afresh) and
    the other exposures go out as usual. ``--watch``, so that the actors are warm and the driver
    takes each CCD as it lands while the files are ingested.
    """
    from astropy.io import fits

    ccds = 16
    night = tmp_path / "night"
    simulate_night(night, SimConfig(fields=1, exposures_per_field=2, image_size=256, ccds=ccds, seed=5), max_workers=1)
    bad = night / "exposures" / "F00-001.fits"
    with fits.open(bad) as hdul:
        hdus = [hdul[0].copy()]
        for i, hdu in enumerate(hdul[1:], start=1):
            header = hdu.header.copy()
            for keyword in ("BZERO", "BSCALE"):
                header.remove(keyword, ignore_missing=True)
            data = hdu.data.astype(np.float32)
            if i == len(hdul) - 1:
                data[:] = np.nan  # found when the last CCD is read: the first have landed and run by then
            hdus.append(fits.ImageHDU(data, header))
    fits.HDUList(hdus).writeto(bad, overwrite=True)
    config = _config(tmp_path, **{"night.watch_poll_s": 0.2, "night.watch_idle_s": 0.5, "night.units_per_call": 1})
    said: list[str] = []
    report = run_night(night, config, watch=True, say=said.append)
    assert list(report.quarantined) == ["exposures/F00-001.fits"]
    assert "every pixel is NaN" in report.quarantined["exposures/F00-001.fits"]
    assert report.exposures == 1 and report.tiles == ccds and report.tiles_processed == ccds
    assert not report.tiles_failed and not report.alerts_held_back
    assert not (tmp_path / "store.zarr" / "results" / "units" / "F00-001").exists()
    assert len(list((tmp_path / "store.zarr" / "results" / "units" / "F00-000").rglob("*.parquet"))) == ccds
    dropped = [line for line in said if "F00-001" in line and "dropped" in line]
    if not dropped:
        # Which CCDs reach the actors before the last one is read depends on the machine's load;
        # the outcomes above hold either way, the withdrawal of run CCDs was not exercised this time.
        pytest.skip("no CCD of the bad file reached the actors before its last one was read on this machine")
