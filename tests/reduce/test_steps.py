"""
The reduce steps on Arrow tables the tests build, without Ray or Redis: what a night's
detections become (one detection per source, matched to the reference, linked, grouped into
objects, alerted for the right reason) and, on a small real store, one exposure's candidates
reduced end to end into alert packets; and the same per-exposure step as a Ray task (marked
``cluster``, the only test here that starts Ray).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from astropy.io import fits
from astropy.wcs import WCS

from skyblink.cluster.results import CANDIDATE_SCHEMA
from skyblink.config import NightConfig
from skyblink.model_io import CLASSIFIER_CLASSES
from skyblink.reduce.association import REFERENCE_SCHEMA, write_reference_catalog
from skyblink.reduce.exposure_task import reduce_exposure
from skyblink.reduce.steps import (
    associate,
    build_alerts,
    decide,
    link_moving,
    match_static,
    merge_tile_duplicates,
    night_detections,
)
from skyblink.storage import NightStore, StoreLayout, open_fits_exposure
from skyblink.storage.alerts import AlertBuilder

ARCSEC = 1.0 / 3600.0
RA0, DEC0 = 150.0, 2.0
COS_DEC = math.cos(math.radians(DEC0))


def _probs(top: str, p: float = 0.9) -> dict[str, float]:
    rest = (1.0 - p) / (len(CLASSIFIER_CLASSES) - 1)
    return {f"p_{c}": (p if c == top else rest) for c in CLASSIFIER_CLASSES}


def _detections(rows: list[dict[str, Any]]) -> pa.Table:
    """A detections table as `locate` gives it, with defaults for the columns a row leaves out."""
    base: dict[str, Any] = {
        "exposure_id": "F00-001", "ccd_num": 0, "field": "F00", "ra": RA0, "dec": DEC0, "ra_err": 0.05,
        "snr": 10.0, "real_bogus": 0.9, "mjd": 61004.10, "exptime": 30.0, "fwhm_arcsec": 1.0,
        "trail_length_arcsec": 0.0, "trail_pa": math.nan, "trailed": False, **_probs("transient"),
    }
    filled = [{**base, "candidate_id": 1000 + i, **row} for i, row in enumerate(rows)]
    names = list(dict.fromkeys(name for row in filled for name in row))  # a column any row has; null elsewhere
    return pa.table({name: [row.get(name) for row in filled] for name in names})


def _east(ra: float, arcsec: float) -> float:
    return ra + arcsec * ARCSEC / COS_DEC


def test_duplicates_of_one_source_in_one_exposure_become_its_brightest_detection() -> None:
    table = _detections([
        {"snr": 12.0},  # a source
        {"ra": _east(RA0, 0.3), "snr": 8.0},  # the same source seen by the overlapping tile
        {"exposure_id": "F00-002"},  # the same place in another exposure: a detection of its own
        {"ra": _east(RA0, 5.0)},  # another source of the exposure
        {"ra": _east(RA0, 20.0), "trail_length_arcsec": 6.0, "trailed": True, "snr": 15.0},  # a trail
        {"ra": _east(RA0, 22.5), "snr": 6.0},  # a peak along it, 2.5" from its centre (half the trail + 1")
    ])
    kept = merge_tile_duplicates(table, radius_arcsec=1.0)
    assert kept.column("candidate_id").to_pylist() == [1000, 1002, 1003, 1004]


def test_detections_on_a_reference_source_are_matched_and_galaxies_flagged(tmp_path: Path) -> None:
    store = NightStore(str(tmp_path / "s.zarr"), mode="a", layout=StoreLayout(tile_size=64, shard_tiles=2))
    star, galaxy = (RA0, DEC0), (_east(RA0, 30.0), DEC0)
    write_reference_catalog(store, "F00", [pa.table({
        "ra": [star[0], galaxy[0]], "dec": [star[1], galaxy[1]], "x": [10.0, 60.0], "y": [10.0, 10.0],
        "snr": [50.0, 30.0], "concentration": [0.4, 0.1], "extended": [False, True], "ccd": ["ccd000", "ccd000"],
    }, schema=REFERENCE_SCHEMA)])
    table = _detections([
        {"ra": _east(star[0], 0.2)},  # on the star
        {"ra": _east(galaxy[0], -0.5)},  # on the galaxy
        {"ra": _east(RA0, 10.0)},  # on nothing
        {"field": "F01"},  # a field without a reference: new
    ])
    matched = match_static(table, store, radius_arcsec=1.0)
    assert matched.column("reference_index").to_pylist() == [0, 1, -1, -1]
    assert matched.column("reference_extended").to_pylist() == [False, True, False, False]
    np.testing.assert_allclose(matched.column("reference_separation").to_numpy()[:2], [0.2, 0.5], atol=1e-3)


def test_a_mover_across_four_exposures_becomes_one_tracklet_with_its_motion_and_prediction() -> None:
    rate = 60.0  # arcsec/hour, due east
    step_h = 20.0 / 60.0
    rows = []
    for k in range(4):
        mjd = 61004.10 + k * step_h / 24.0
        exposure = f"F00-00{k + 1}"
        rows.append({"exposure_id": exposure, "mjd": mjd, "ra": _east(RA0, rate * step_h * k), "reference_index": -1})
        rows.append({"exposure_id": exposure, "mjd": mjd, "ra": _east(RA0, -40.0), "dec": DEC0 + 30 * ARCSEC,
                     "reference_index": -1})  # a new source that stays put: not moving
        rows.append({"exposure_id": exposure, "mjd": mjd, "ra": _east(RA0, 80.0 + rate * step_h * k), "dec": DEC0 - 30 * ARCSEC,
                     "reference_index": -1, "real_bogus": 0.1})  # bogus: never linked
    config = NightConfig()
    linked, tracklets = link_moving(_detections(rows), config)
    assert len(tracklets) == 1
    members = linked.filter(pa.compute.is_valid(linked.column("tracklet_id")))
    assert members.column("candidate_id").to_pylist() == [1000, 1003, 1006, 1009]
    assert set(members.column("tracklet_id").to_pylist()) == {1000}  # the earliest detection's id
    first = members.to_pylist()[0]
    assert first["tracklet_n"] == 4
    assert first["rate"] == pytest.approx(rate, rel=0.01)
    assert first["position_angle"] == pytest.approx(90.0, abs=1.0)  # east of north
    last_mjd = members.column("mjd").to_numpy().max()
    assert first["predicted_mjd"] == pytest.approx(last_mjd + config.predict_ahead_hours / 24.0)
    expected_ra = _east(RA0, rate * (3 * step_h + config.predict_ahead_hours))
    assert abs(first["predicted_ra"] - expected_ra) * 3600 * COS_DEC < 0.5
    assert abs(first["predicted_dec"] - DEC0) * 3600 < 0.5


def test_repeated_detections_are_one_object_named_by_its_earliest_and_a_tracklet_stays_whole() -> None:
    table = _detections([
        {"exposure_id": "F00-001", "mjd": 61004.10},  # a transient, seen three times
        {"exposure_id": "F00-001", "mjd": 61004.10, "ra": _east(RA0, 0.5), "tracklet_id": 1001},  # a mover passing by
        {"exposure_id": "F00-002", "mjd": 61004.11, "ra": _east(RA0, 0.2)},
        {"exposure_id": "F00-002", "mjd": 61004.11, "ra": _east(RA0, 20.0), "tracklet_id": 1001},
        {"exposure_id": "F00-003", "mjd": 61004.12, "dec": DEC0 + 0.3 * ARCSEC},
        {"exposure_id": "F00-003", "mjd": 61004.12, "ra": _east(RA0, 60.0)},  # elsewhere: its own object
    ])
    objects = associate(table, radius_arcsec=1.0).column("object_id").to_pylist()
    assert objects == [1000, 1001, 1000, 1001, 1000, 1005]


def test_each_detection_is_alerted_for_the_reason_an_astronomer_expects() -> None:
    config = NightConfig()
    flat = {f"p_{c}": 1.0 / len(CLASSIFIER_CLASSES) for c in CLASSIFIER_CLASSES}
    cases = [
        ({"real_bogus": 0.2}, None),  # bogus: catalogued, not alerted
        ({"tracklet_id": 7}, "moving"),  # linked
        ({**flat}, "anomaly"),  # no class is sure
        ({"reference_index": 3, "snr": 8.0, **_probs("variable")}, "variable"),  # brighter on a star
        ({"reference_index": 3, "reference_extended": True}, "transient"),  # on a galaxy: a supernova
        ({"reference_index": 3, "snr": 4.0}, "transient"),  # on a star, but too faint a change to call it variable
        ({"trailed": True}, "moving"),  # trailed, not linked
        ({}, "transient"),  # new
    ]
    table = _detections([{"reference_index": -1, "reference_extended": False, **row} for row, _ in cases])
    assert decide(table, config).column("alert_type").to_pylist() == [kind for _, kind in cases]


# --- one exposure of a real store, end to end -------------------------------------------------

SHAPE = (160, 200)
SCALE = 0.6  # arcsec/pixel
SEEING = 1.5  # arcsec: FWHM 2.5 px
STAR = (60.0, 50.0)  # x, y: a star of the reference, brighter in the science exposure
NEW = (150.0, 110.0)  # a new source


def _wcs() -> WCS:
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = [RA0, DEC0]
    wcs.wcs.crpix = [(SHAPE[1] + 1) / 2, (SHAPE[0] + 1) / 2]
    wcs.wcs.cd = SCALE / 3600.0 * np.array([[-1.0, 0.0], [0.0, 1.0]])
    return wcs


def _gaussian(shape: tuple[int, int], x: float, y: float, peak: float) -> np.ndarray:
    sigma = SEEING / SCALE / 2.3548
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return peak * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma**2))


def _write(path: Path, image: np.ndarray, mjd: float) -> Path:
    header = _wcs().to_header()
    header.update({"FIELD": "F07", "FILTER": "r", "MJD-OBS": mjd, "EXPTIME": 30.0, "GAIN": 1.0, "RDNOISE": 5.0,
                   "SATURATE": 60000.0, "SEEING": SEEING, "MAGZP": 30.0, "SKYLEVEL": 900.0})
    fits.PrimaryHDU(image.astype(np.float32), header=header).writeto(path)
    return path


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> NightStore:
    """A store with field F07's reference (one star) and one science exposure."""
    root = tmp_path_factory.mktemp("reduce")
    rng = np.random.default_rng(7)
    sky = lambda: rng.normal(1000.0, 30.0, SHAPE)  # noqa: E731
    reference = sky() + _gaussian(SHAPE, *STAR, 4000.0)
    science = sky() + _gaussian(SHAPE, *STAR, 4600.0) + _gaussian(SHAPE, *NEW, 600.0)
    nightstore = NightStore(str(root / "s.zarr"), mode="a", layout=StoreLayout(tile_size=64, shard_tiles=2))
    for key, kind, image, mjd in (("references/F07", "reference", reference, 61000.0),
                                  ("exposures/F07-001", "exposure", science, 61004.125)):
        path = _write(root / f"{kind}.fits", image, mjd)
        with open_fits_exposure(path) as reader:
            nightstore.write_exposure(key, reader.exposure, reader.images(), kind=kind, source={"path": str(path)})  # type: ignore[arg-type]
    return NightStore(nightstore.url)


def _candidates(rows: list[tuple[float, float, float, float, str]]) -> pa.Table:
    """Unit results of exposure F07-001: (x, y, snr, real_bogus, class) each, a point source at the stamp's centre."""
    stamp = np.zeros((3, 63, 63), np.float16)
    stamp[2] = _gaussian((63, 63), 31.0, 31.0, 20.0)
    records = []
    for i, (x, y, snr, rb, kind) in enumerate(rows):
        probs = [0.9 if c == kind else 0.1 / (len(CLASSIFIER_CLASSES) - 1) for c in CLASSIFIER_CLASSES]
        records.append({"unit": f"exposures/F07-001/ccd000/{i}", "exposure": "exposures/F07-001", "ccd": "ccd000",
                        "x": x, "y": y, "score": 0.9, "snr": snr, "real_bogus": rb, "class_probs": probs,
                        "stamp": stamp.tobytes()})
    return pa.Table.from_pylist(records, schema=CANDIDATE_SCHEMA)


def test_one_exposure_reduced_alone_gives_its_detections_on_the_sky_and_their_alerts(store: NightStore) -> None:
    candidates = _candidates([
        (*STAR, 9.0, 0.9, "variable"),
        (*NEW, 12.0, 0.95, "transient"),
        (NEW[0] + 0.8, NEW[1] + 0.4, 7.0, 0.9, "transient"),  # the new source again, from the overlapping tile
    ])
    config = NightConfig()
    detections = reduce_exposure(candidates, store.url, "20261125", config)
    assert detections.column("row").to_pylist() == [0, 1]  # the duplicate merged into the brighter
    ra, dec = _wcs().all_pix2world([STAR[0], NEW[0]], [STAR[1], NEW[1]], 0)
    np.testing.assert_allclose(detections.column("ra").to_numpy(), ra, atol=0.05 * ARCSEC)
    np.testing.assert_allclose(detections.column("dec").to_numpy(), dec, atol=0.05 * ARCSEC)
    assert detections.column("reference_index").to_numpy()[0] >= 0  # the star is in the reference
    assert detections.column("reference_index").to_numpy()[1] == -1
    decided = night_detections(detections, config)
    assert decided.column("alert_type").to_pylist() == ["variable", "transient"]
    alerts = list(build_alerts(decided, candidates, store, AlertBuilder("20261125"), threads=1))
    assert [a.detection.alert_type.value for a in alerts] == ["variable", "transient"]
    assert [a.detection.candidate_id for a in alerts] == detections.column("candidate_id").to_pylist()
    assert all(a.cutout_difference is not None for a in alerts)
    assert alerts[1].detection.ra == pytest.approx(float(ra[1]), abs=0.05 * ARCSEC)


def test_each_alert_carries_its_own_candidate_stamps_when_the_results_come_in_several_chunks(store: NightStore) -> None:
    """Unit results read in parts (a large visit's reduce tasks) are a table of several chunks: each packet's three
    cutouts are its own candidate's planes, read in place."""
    from skyblink.storage.alerts import read_cutout

    rows = [(*STAR, 9.0, 0.9, "variable"), (*NEW, 12.0, 0.95, "transient"), (30.0, 130.0, 8.0, 0.9, "transient")]
    one = _candidates(rows)
    stamps = []
    for i in range(len(rows)):  # a different stamp per candidate
        stamp = np.random.default_rng(i).normal(0.0, 1.0, (3, 63, 63)).astype(np.float16)
        stamp[2, 31, 31] = 100.0 + i
        stamps.append(stamp)
    one = one.set_column(one.schema.get_field_index("stamp"), "stamp", pa.array([s.tobytes() for s in stamps], pa.binary()))
    chunked = pa.concat_tables([one.slice(0, 1), one.slice(1, 0), one.slice(1, 2)])
    assert chunked.column("stamp").num_chunks == 3
    detections = night_detections(reduce_exposure(one, store.url, "20261125", NightConfig()), NightConfig())
    alerts = list(build_alerts(detections, chunked, store, AlertBuilder("20261125"), threads=1))
    assert len(alerts) == 3
    for alert, row in zip(alerts, detections.column("row").to_pylist(), strict=True):
        for cutout, plane in ((alert.cutout_science, 0), (alert.cutout_template, 1), (alert.cutout_difference, 2)):
            assert cutout is not None
            np.testing.assert_array_equal(read_cutout(cutout.stamp_data).data, stamps[row][plane].astype(np.float32))


def test_reduce_exposure_refuses_the_candidates_of_two_exposures(store: NightStore) -> None:
    candidates = _candidates([(*STAR, 9.0, 0.9, "variable")])
    other = candidates.set_column(1, "exposure", pa.array(["exposures/F07-002"]))
    with pytest.raises(ValueError, match="one exposure, got 2"):
        reduce_exposure(pa.concat_tables([candidates, other]), store.url, "20261125", NightConfig())
