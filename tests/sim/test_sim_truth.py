"""The truth catalogues agree with the pixels and the WCS; events behave as documented."""

from __future__ import annotations

import itertools
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from astropy import units as u
from astropy.coordinates import SkyCoord
from astropy.io import fits
from astropy.table import Table, vstack
from astropy.wcs import WCS

from skyblink.sim import TRUTH_COLUMNS, MaskBit, NightSummary, read_truth

SOURCE_TYPES = ("star", "galaxy", "variable", "transient", "moving")


def _ccd(path: Path, ccd: int = 0) -> tuple[np.ndarray, fits.Header]:
    with fits.open(path) as hdul:
        hdu = hdul[0] if hdul[0].data is not None else hdul[f"CCD{ccd:03d}"]
        return hdu.data.astype(np.float64), hdu.header


def _mask(path: Path, ccd: int = 0) -> np.ndarray:
    with fits.open(path) as hdul:
        return np.asarray(hdul[f"CCD{ccd:03d}"].data)


def _truth(night: NightSummary, image_id: str) -> Table:
    return read_truth(night.out_dir / "truth" / f"{image_id}.parquet")


def _aperture_excess(image: np.ndarray, x: float, y: float) -> float:
    yy, xx = np.mgrid[: image.shape[0], : image.shape[1]]
    r = np.hypot(xx - x, yy - y)
    background = np.median(image[(r > 8) & (r < 12)])
    return float((image[r < 4] - background).sum())


def _robust_noise(image: np.ndarray) -> float:
    diff = np.diff(image, axis=1).ravel()
    return float(1.4826 * np.median(np.abs(diff - np.median(diff))) / np.sqrt(2))


def test_truth_schema_and_meta(small_night: NightSummary) -> None:
    truth = _truth(small_night, "F00-001")
    assert list(truth.colnames) == list(TRUTH_COLUMNS)
    for key in (
        "exposure_id",
        "field",
        "mjd",
        "seeing_fwhm_arcsec",
        "sky_level_adu",
        "zeropoint",
        "gain",
        "limiting_mag_5sigma",
        "image_size",
        "ccds",
    ):
        assert key in truth.meta
    assert truth.meta["exposure_id"] == "F00-001"
    assert 20 < truth.meta["limiting_mag_5sigma"] < 27
    assert set(truth["type"]) >= {"star", "moving", "hot_pixel", "bad_column"}


@pytest.mark.parametrize("night_name", ["small_night", "multi_ccd_night"])
def test_truth_positions_agree_with_the_wcs(
    night_name: str, request: pytest.FixtureRequest
) -> None:
    night: NightSummary = request.getfixturevalue(night_name)
    for path in (*night.exposures, *night.references):
        image_id = path.stem if "exposures" in path.parts else f"{path.stem}-ref"
        truth = _truth(night, image_id)
        sources = truth[np.isin(truth["type"], SOURCE_TYPES)]
        assert len(sources) > 0
        for ccd in np.unique(sources["ccd"]):
            rows = sources[sources["ccd"] == ccd]
            wcs = WCS(_ccd(path, int(ccd))[1])
            x, y = wcs.all_world2pix(rows["ra"], rows["dec"], 0)
            np.testing.assert_allclose(x, rows["x"], atol=1e-6)
            np.testing.assert_allclose(y, rows["y"], atol=1e-6)


def test_bright_isolated_stars_sit_on_local_maxima(small_night: NightSummary) -> None:
    checked = 0
    for path in small_night.exposures:
        truth = _truth(small_night, path.stem)
        image, header = _ccd(path)
        mask = _mask(small_night.out_dir / "truth" / f"{path.stem}-mask.fits")
        limit = truth.meta["limiting_mag_5sigma"]
        stars = truth[(truth["type"] == "star") & (truth["mag"] < limit - 2.5)]
        for star in stars:
            others = truth[truth["id"] != star["id"]]
            if (np.hypot(others["x"] - star["x"], others["y"] - star["y"]) < 8).any():
                continue
            ix, iy = round(star["x"]), round(star["y"])
            if not (3 <= ix < image.shape[1] - 3 and 3 <= iy < image.shape[0] - 3):
                continue
            window = image[iy - 3 : iy + 4, ix - 3 : ix + 4]
            if mask[iy - 3 : iy + 4, ix - 3 : ix + 4].any() or window.max() >= header["SATURATE"]:
                continue
            py, px = np.unravel_index(np.argmax(window), window.shape)
            assert abs(px - 3 + ix - star["x"]) <= 1.0
            assert abs(py - 3 + iy - star["y"]) <= 1.0
            assert window.max() > header["SKYLEVEL"] + 10 * np.sqrt(
                header["SKYLEVEL"] / header["GAIN"]
            )
            checked += 1
    assert checked >= 3


def test_transients_are_absent_from_the_reference(small_night: NightSummary) -> None:
    checked = 0
    for field in ("F00", "F01"):
        ref_truth = _truth(small_night, f"{field}-ref")
        assert not set(ref_truth["type"]) & {
            "transient",
            "moving",
            "cosmic_ray",
            "hot_pixel",
            "bad_column",
            "satellite",
        }
        assert ref_truth["in_reference"].all()
        reference, ref_header = _ccd(small_night.out_dir / "references" / f"{field}.fits")
        ref_wcs = WCS(ref_header)
        for path in small_night.exposures:
            if not path.stem.startswith(field):
                continue
            truth = _truth(small_night, path.stem)
            image, header = _ccd(path)
            transients = truth[
                (truth["type"] == "transient")
                & (truth["mag"] < truth.meta["limiting_mag_5sigma"] - 1.0)
            ]
            assert not np.isin(transients["id"], ref_truth["id"]).any()
            for row in transients:
                if not (
                    12 < row["x"] < image.shape[1] - 12 and 12 < row["y"] < image.shape[0] - 12
                ):
                    continue
                expected_adu = row["flux"] / header["GAIN"]
                rx, ry = ref_wcs.all_world2pix([[row["ra"], row["dec"]]], 0)[0]
                science = _aperture_excess(image, row["x"], row["y"])
                template = _aperture_excess(reference, rx, ry)
                assert science - template > 0.4 * expected_adu
                checked += 1
    assert checked >= 1


def test_movers_follow_their_rates(small_night: NightSummary) -> None:
    tracks: dict[str, list] = defaultdict(list)
    for path in small_night.exposures:
        truth = _truth(small_night, path.stem)
        for row in truth[truth["type"] == "moving"]:
            tracks[str(row["id"])].append((truth.meta["mjd_mid"], row))
    assert len(tracks) >= 10
    long_tracks = [t for t in tracks.values() if len(t) >= 3]
    assert len(long_tracks) >= 0.5 * len(tracks)
    for track in tracks.values():
        for (t0, a), (t1, b) in itertools.pairwise(track):
            start = SkyCoord(a["ra"] * u.deg, a["dec"] * u.deg)
            end = SkyCoord(b["ra"] * u.deg, b["dec"] * u.deg)
            rate = np.hypot(a["ra_rate"], a["dec_rate"])  # arcsec/hour
            hours = (t1 - t0) * 24
            assert start.separation(end).arcsec == pytest.approx(rate * hours, rel=1e-3, abs=1e-3)
            moved_east = (end.ra - start.ra).wrap_at(180 * u.deg).arcsec * np.cos(
                np.radians(a["dec"])
            )
            assert np.sign(moved_east) == np.sign(a["ra_rate"]) or abs(a["ra_rate"]) < 1e-6


def test_trailed_movers_follow_the_seeing(small_night: NightSummary) -> None:
    for path in small_night.exposures:
        truth = _truth(small_night, path.stem)
        header = fits.getheader(path)
        fwhm_px = header["SEEING"] / 0.6
        movers = truth[truth["type"] == "moving"]
        np.testing.assert_array_equal(movers["trailed"], movers["trail_length_px"] > 1.5 * fwhm_px)


def test_stable_ids_across_the_night(small_night: NightSummary) -> None:
    tables = [
        _truth(small_night, p.stem) for p in small_night.exposures if p.stem.startswith("F00")
    ]
    stars = [set(t["id"][t["type"] == "star"]) for t in tables]
    common = set.intersection(*stars)
    assert len(common) > 0.8 * min(len(s) for s in stars)
    merged = vstack(
        [t[np.isin(t["id"], list(common))] for t in tables], metadata_conflicts="silent"
    )
    for ident in list(common)[:20]:
        rows = merged[merged["id"] == ident]
        assert np.ptp(rows["ra"]) == 0 and np.ptp(rows["dec"]) == 0
        assert np.ptp(rows["mag"]) == 0


def test_saturated_pixels_equal_saturate(small_night: NightSummary) -> None:
    for path in (*small_night.exposures, *small_night.references):
        image_id = path.stem if "exposures" in path.parts else f"{path.stem}-ref"
        image, header = _ccd(path)
        mask = _mask(small_night.out_dir / "truth" / f"{image_id}-mask.fits")
        saturated = (mask & MaskBit.SATURATED) > 0
        assert image.max() <= header["SATURATE"]
        np.testing.assert_array_equal(image[saturated], header["SATURATE"])
        if "exposures" in path.parts:
            assert saturated.sum() >= 2  # every CCD has a saturated hot pixel, which bleeds


def test_reference_is_less_noisy_than_an_exposure(small_night: NightSummary) -> None:
    for field in ("F00", "F01"):
        reference, ref_header = _ccd(small_night.out_dir / "references" / f"{field}.fits")
        science, header = _ccd(small_night.exposures[0 if field == "F00" else 3])
        ref_noise, sci_noise = _robust_noise(reference), _robust_noise(science)
        assert ref_noise < 0.6 * sci_noise
        expected = (
            np.sqrt(header["SKYLEVEL"] * header["GAIN"] + header["RDNOISE"] ** 2) / header["GAIN"]
        )
        assert sci_noise == pytest.approx(expected, rel=0.15)
        assert ref_header["NCOMBINE"] == 6
