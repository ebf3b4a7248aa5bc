"""The foundation end to end: `skyblink sim night`, then `skyblink ingest`: a store zarr opens, a manifest, exact pixels."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import zarr
from typer.testing import CliRunner

from skyblink.cli import app
from skyblink.storage import ExposureState, Manifest, NightStore

pytestmark = pytest.mark.cluster


def test_simulated_night_ingests_into_a_store_zarr_opens(tmp_path: Path, ray_local: None, assert_round_trip) -> None:
    night, store_path = tmp_path / "night", tmp_path / "store.zarr"
    runner = CliRunner()
    sim = runner.invoke(app, ["sim", "night", str(night), "--fields", "2", "--exposures", "2", "--size", "256", "--ccds", "2", "--seed", "3"])
    assert sim.exit_code == 0, sim.output
    result = runner.invoke(app, ["ingest", str(night), "--store", str(store_path), "--tile-size", "128"])
    assert result.exit_code == 0, result.output

    root = zarr.open_group(str(store_path), mode="r")
    assert root.attrs["format_version"] == 1
    assert sorted(root["exposures"].group_keys()) == ["F00-000", "F00-001", "F01-000", "F01-001"]
    assert sorted(root["references"].group_keys()) == ["F00", "F01"]
    image = root["exposures/F00-000/ccd001/image"]
    assert image.chunks == (128, 128) and image.shards == (256, 256) and image.dtype == "uint16"

    manifest = Manifest.load(str(store_path))
    assert manifest.counts() == {"ingested": 6, "quarantined": 0, "failed": 0}
    on_disk = json.loads((store_path / "manifest.json").read_text())
    assert {e["path"] for e in on_disk["entries"]} == {f"exposures/F0{f}-00{e}.fits" for f in (0, 1) for e in (0, 1)} | {"references/F00.fits", "references/F01.fits"}

    store = NightStore(str(store_path))
    for entry in manifest.with_state(ExposureState.INGESTED):
        assert entry.n_ccds == 2
        assert_round_trip(store, entry.key, night / entry.path)
    meta = store.ccd_metadata("exposures/F01-001", "ccd000")
    assert meta["gain"] == pytest.approx(1.7) and meta["saturate_source"] == "SATURATE" and meta["filter"] == "r"
    assert store.exposure_attrs("references/F00")["metadata"]["imagetyp"] == "reference"
