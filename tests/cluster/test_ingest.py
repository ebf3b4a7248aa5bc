"""Ingest of a night through real local Ray tasks: bad files quarantined, nothing else lost, reruns idempotent."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from typer.testing import CliRunner

from skyblink.cli import EXIT_QUARANTINED, app
from skyblink.cluster import IngestPlanError, ingest_night
from skyblink.config import load_config
from skyblink.storage import ExposureState, Manifest, NightStore

pytestmark = pytest.mark.cluster


@pytest.fixture
def night(tmp_path: Path, exposure_writer) -> Path:
    """A night directory: 4 good exposures (one MEF, one .fits.fz), 1 reference, 3 bad files."""
    root = tmp_path / "night"
    for i in range(3):
        exposure_writer(root / "exposures" / f"F00-{i:03d}.fits", seed=i)
    exposure_writer(root / "exposures" / "F01-000.fits.fz", ccds=2, compressed=True, seed=10)
    exposure_writer(root / "references" / "F00.fits", shape=(128, 160), dtype="float32", seed=20)
    (root / "exposures" / "F09-empty.fits").write_bytes(b"")
    exposure_writer(root / "exposures" / "F09-nowcs.fits", with_wcs=False)
    exposure_writer(root / "exposures" / "F09-nan.fits", dtype="float32")
    with fits.open(root / "exposures" / "F09-nan.fits", mode="update") as hdul:
        hdul[0].data[:] = np.nan
    return root


def config(tmp_path: Path):
    return load_config(overrides={"store": str(tmp_path / "store.zarr"), "ingest.tile_size": 64}, environ={})


def test_bad_files_are_quarantined_and_the_rest_ingested(tmp_path: Path, night: Path, ray_local: None) -> None:
    report = ingest_night(night, config(tmp_path))
    assert sorted(o.key for o in report.ingested) == [
        "exposures/F00-000", "exposures/F00-001", "exposures/F00-002", "exposures/F01-000", "references/F00",
    ]
    reasons = {e.key: e.reason for e in report.quarantined}
    assert set(reasons) == {"exposures/F09-empty", "exposures/F09-nowcs", "exposures/F09-nan"}
    assert "empty file" in reasons["exposures/F09-empty"]
    assert "no celestial WCS" in reasons["exposures/F09-nowcs"]
    assert "every pixel is NaN" in reasons["exposures/F09-nan"]
    assert not report.ok
    store = NightStore(str(tmp_path / "store.zarr"))
    assert len(store.exposure_keys()) == 4
    assert store.exposure_keys("reference") == ["references/F00"]
    assert store.ccd_names("exposures/F01-000") == ["ccd000", "ccd001"]
    with fits.open(night / "exposures" / "F01-000.fits.fz") as hdul:
        np.testing.assert_array_equal(store.image("exposures/F01-000", "ccd001")[...], hdul[2].data)
    manifest = Manifest.load(str(tmp_path / "store.zarr"))
    assert manifest.counts() == {"ingested": 5, "quarantined": 3, "failed": 0}
    assert all(e.sha256 and len(e.sha256) == 64 for e in manifest.with_state(ExposureState.INGESTED))


def test_rerun_skips_unchanged_and_reingests_a_changed_file(tmp_path: Path, night: Path, ray_local: None, exposure_writer) -> None:
    cfg = config(tmp_path)
    ingest_night(night, cfg)
    again = ingest_night(night, cfg)
    assert again.ingested == []
    assert len(again.unchanged) == 5
    assert len(again.quarantined) == 3  # still quarantined: the night is still not whole

    # touched but identical: checksum says unchanged, nothing rewritten
    touched = night / "exposures" / "F00-001.fits"
    os.utime(touched, ns=(touched.stat().st_atime_ns, touched.stat().st_mtime_ns + 10**9))
    # really changed: ingested again with the new pixels
    new_pixels = exposure_writer(night / "exposures" / "F00-002.fits", seed=99)
    # a quarantined file that got fixed
    exposure_writer(night / "exposures" / "F09-nowcs.fits", seed=5)
    third = ingest_night(night, cfg)
    assert sorted(o.key for o in third.ingested) == ["exposures/F00-002", "exposures/F09-nowcs"]
    assert "exposures/F00-001" in third.unchanged
    store = NightStore(str(tmp_path / "store.zarr"))
    np.testing.assert_array_equal(store.image("exposures/F00-002")[...], new_pixels[0])
    manifest = Manifest.load(str(tmp_path / "store.zarr"))
    assert manifest.entries["exposures/F00-001"].mtime_ns == touched.stat().st_mtime_ns
    assert manifest.counts()["quarantined"] == 2


def test_fsspec_url_is_passed_through(tmp_path: Path, night: Path, ray_local: None) -> None:
    url = (tmp_path / "url-store.zarr").as_uri()  # file:///...
    shutil.rmtree(night / "exposures")
    report = ingest_night(night, config(tmp_path), store_url=url)
    assert [o.key for o in report.ingested] == ["references/F00"]
    assert NightStore(url).exposure_keys("reference") == ["references/F00"]
    assert Manifest.load(url).counts()["ingested"] == 1


def test_two_files_with_one_key_are_refused_before_anything_is_written(tmp_path: Path, night: Path, exposure_writer) -> None:
    exposure_writer(night / "exposures" / "F00-000.fits.fz", compressed=True)
    with pytest.raises(IngestPlanError, match="would both be stored as 'exposures/F00-000'"):
        ingest_night(night, config(tmp_path))
    assert not (tmp_path / "store.zarr").exists()


def test_cli_exit_status_says_some_were_quarantined(tmp_path: Path, night: Path, ray_local: None) -> None:
    runner = CliRunner()
    args = ["ingest", str(night), "--store", str(tmp_path / "cli.zarr"), "--tile-size", "64"]
    result = runner.invoke(app, args)
    assert result.exit_code == EXIT_QUARANTINED, result.output
    assert "quarantined exposures/F09-nan.fits: HDU 0 (PRIMARY): every pixel is NaN or infinite" in result.output
    shutil.rmtree(night / "exposures")
    result = runner.invoke(app, ["ingest", str(night), "--store", str(tmp_path / "ok.zarr"), "--tile-size", "64"])
    assert result.exit_code == 0, result.output


def test_missing_night_directory_is_an_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["ingest", str(tmp_path / "nope"), "--store", str(tmp_path / "s.zarr")])
    assert result.exit_code == 1
    assert "does not exist" in result.output


def test_retry_failed_reingests_an_exposure_whose_stored_chunks_fail_to_read(tmp_path: Path, night: Path, ray_local: None) -> None:
    cfg = config(tmp_path)
    ingest_night(night, cfg)
    shards = sorted(p for p in (tmp_path / "store.zarr" / "exposures" / "F00-001").rglob("*")
                    if p.is_file() and "/c/" in str(p))
    assert shards, "no chunk files found"
    for shard in shards:  # a disk error, a bad copy: every stored chunk of one exposure is garbage now
        shard.write_bytes(b"\x00garbage" * 64)
    store = NightStore(str(tmp_path / "store.zarr"))
    with pytest.raises(Exception):  # noqa: B017 - whatever the codec says: the pixels are unreadable
        store.image("exposures/F00-001")[...]
    again = ingest_night(night, cfg)
    assert "exposures/F00-001" in again.unchanged  # the file did not change: a plain rerun cannot see it
    result = CliRunner().invoke(app, ["ingest", str(night), "--store", str(tmp_path / "store.zarr"), "--tile-size", "64",
                                      "--retry-failed"])
    assert result.exit_code == EXIT_QUARANTINED  # the 3 bad files are still quarantined
    with fits.open(night / "exposures" / "F00-001.fits") as hdul:
        np.testing.assert_array_equal(NightStore(str(tmp_path / "store.zarr")).image("exposures/F00-001")[...], hdul[0].data)
    assert Manifest.load(str(tmp_path / "store.zarr")).entries["exposures/F00-001"].state is ExposureState.INGESTED


def test_each_ccd_is_reported_as_it_lands_before_its_file_and_a_file_bad_midway_leaves_nothing(
    tmp_path: Path, exposure_writer, ray_local: None
) -> None:
    """Per-CCD streaming: the driver hears of each CCD once it is readable; a file found bad after some CCDs is gone."""
    from skyblink.cluster import CcdLanded

    root = tmp_path / "night"
    exposure_writer(root / "exposures" / "F00-000.fits", ccds=3, seed=1)
    exposure_writer(root / "exposures" / "F00-001.fits", ccds=8, dtype="float32", seed=2)
    with fits.open(root / "exposures" / "F00-001.fits", mode="update") as hdul:
        hdul[8].data[:] = np.nan  # the last CCD: found once the first have landed (ingest.write_threads = 4 ahead)
    store_url = str(tmp_path / "store.zarr")
    events: list[tuple[str, str, str]] = []  # (key, what, CCD or result), in the order the driver got them
    readable: dict[tuple[str, str], bool] = {}

    def on_ccd(landed: CcdLanded) -> None:
        events.append((landed.key, "ccd", landed.ccd))
        # The task streams on while the driver reads: a CCD of the bad file may already be gone
        # again (its file quarantined) when the driver opens it; a CCD of a good file never is.
        store = NightStore(store_url)
        try:
            readable[landed.key, landed.ccd] = store.image(landed.key, landed.ccd).shape == (96, 128)
        except KeyError:
            readable[landed.key, landed.ccd] = False

    report = ingest_night(root, config(tmp_path), on_ccd=on_ccd,
                          on_outcome=lambda outcome: events.append((outcome.key, "file", getattr(outcome, "result", "failed"))))
    good = [e for e in events if e[0] == "exposures/F00-000"]
    assert good == [("exposures/F00-000", "ccd", f"ccd00{i}") for i in range(3)] + [("exposures/F00-000", "file", "ingested")]
    bad = [e for e in events if e[0] == "exposures/F00-001"]
    assert bad[-1] == ("exposures/F00-001", "file", "quarantined")
    assert 1 <= len(bad) - 1 < 8 and bad[:-1] == [("exposures/F00-001", "ccd", f"ccd{i:03d}") for i in range(len(bad) - 1)]
    assert all(readable[key, ccd] for key, _, ccd in good[:-1])
    assert [e.key for e in report.quarantined] == ["exposures/F00-001"]
    store = NightStore(store_url)
    assert store.exposure_keys() == ["exposures/F00-000"] and store.landed_ccds("exposures/F00-001") == []


def test_the_night_run_estimates_its_tiles_from_the_first_readable_exposure(night: Path, exposure_writer) -> None:
    # What `night.compile_device_program = "auto"` decides on, before anything is ingested: the science
    # files (7 here, 3 of them bad) times the tiles of the first one whose headers validate.
    from skyblink.cluster.ingest import estimate_night_tiles

    assert estimate_night_tiles(night, 64) == 7 * (2 * 2)  # 96x128 pixels: 2 x 2 tiles of 64
    (night / "exposures" / "A00-empty.fits").write_bytes(b"")  # listed first, unreadable: the next is read
    exposure_writer(night / "exposures" / "A01-big.fits", shape=(256, 200))
    assert estimate_night_tiles(night, 64) == 9 * (4 * 4)
    assert estimate_night_tiles(night / "references", 64) == 1 * (2 * 3)  # a flat folder: every file is science
