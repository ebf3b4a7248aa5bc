"""The files of a simulated night: layout, determinism, FITS headers and WCS."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS
from sim_configs import MULTI, SMALL

from skyblink.sim import SIMULATOR_VERSION, NightSummary, rubin_visit_config

EXPOSURE_KEYWORDS = (
    "TELESCOP",
    "FIELD",
    "EXPID",
    "IMAGETYP",
    "DATE-OBS",
    "MJD-OBS",
    "EXPTIME",
    "FILTER",
    "GAIN",
    "RDNOISE",
    "SATURATE",
    "SEEING",
    "MAGZP",
    "SKYLEVEL",
    "NCCD",
    "BUNIT",
)


def _digests(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _image_hdus(path: Path) -> list[fits.ImageHDU | fits.PrimaryHDU]:
    with fits.open(path) as hdul:
        hdus = [hdul[0]] if hdul[0].data is not None else list(hdul[1:])
        for hdu in hdus:
            hdu.data  # noqa: B018 - load before the file closes
        return hdus


def test_layout_matches_the_contract(small_night: NightSummary) -> None:
    root = small_night.out_dir
    night = json.loads((root / "night.json").read_text())
    assert night["simulator_version"] == SIMULATOR_VERSION
    assert night["seed"] == SMALL.seed
    assert night["config"] == SMALL.model_dump(mode="json")
    ids = [e["exposure_id"] for e in night["exposures"]]
    assert ids == [f"F{f:02d}-{n:03d}" for f in range(2) for n in range(3)]
    for entry in night["exposures"]:
        assert (root / entry["path"]) == root / "exposures" / f"{entry['exposure_id']}.fits"
        assert (root / entry["path"]).is_file()
        assert (root / "truth" / f"{entry['exposure_id']}.parquet").is_file()
        assert (root / "truth" / f"{entry['exposure_id']}-mask.fits").is_file()
        assert fits.getheader(root / entry["path"])["MJD-OBS"] == pytest.approx(
            entry["mjd"], abs=1e-9
        )
    for f in ("F00", "F01"):
        assert (root / "references" / f"{f}.fits").is_file()
        assert (root / "truth" / f"{f}-ref.parquet").is_file()
    assert len(small_night.exposures) == 6
    assert len(small_night.references) == 2
    assert small_night.counts["star"] > 0
    assert small_night.counts["moving"] >= 10


def test_same_seed_gives_byte_identical_files(
    small_night: NightSummary, small_night_again: NightSummary
) -> None:
    first, second = _digests(small_night.out_dir), _digests(small_night_again.out_dir)
    assert len(first) == 6 * 3 + 2 * 3 + 1
    assert first == second


def test_other_seed_gives_other_files(
    small_night: NightSummary, other_seed_night: NightSummary
) -> None:
    first, other = _digests(small_night.out_dir), _digests(other_seed_night.out_dir)
    assert first.keys() == other.keys()
    # A reference mask holds only saturation and may be empty for both seeds.
    differing = [k for k in first if not k.endswith("-ref-mask.fits")]
    assert all(first[k] != other[k] for k in differing)


@pytest.mark.parametrize("night_name", ["small_night", "multi_ccd_night"])
def test_every_image_has_keywords_and_a_tan_cd_wcs(
    night_name: str, request: pytest.FixtureRequest
) -> None:
    night: NightSummary = request.getfixturevalue(night_name)
    for path in (*night.exposures, *night.references):
        primary = fits.getheader(path, 0)
        for key in EXPOSURE_KEYWORDS:
            assert key in primary, f"{path.name}: {key} missing"
        assert primary["TELESCOP"] == "skyblink-sim"
        assert primary["BUNIT"] == "adu"
        assert primary["IMAGETYP"] == ("reference" if "references" in path.parts else "science")
        assert "DATE" not in primary
        for hdu in _image_hdus(path):
            header = hdu.header
            assert {"CD1_1", "CD1_2", "CD2_1", "CD2_2", "CRVAL1", "CRPIX1"} <= set(header)
            assert not any(re.fullmatch(r"CDELT\d|PC\d_\d", k) for k in header)
            wcs = WCS(header)
            assert wcs.has_celestial
            assert list(wcs.wcs.ctype) == ["RA---TAN", "DEC--TAN"]
            assert header["SATURATE"] == primary["SATURATE"]
            assert abs(header["DEC"]) < 70


def test_exposures_of_a_field_are_offset_and_rotated(small_night: NightSummary) -> None:
    headers = [fits.getheader(p) for p in small_night.exposures if p.name.startswith("F00")]
    centres = np.array([WCS(h).all_pix2world([[128.0, 128.0]], 0)[0] for h in headers])
    angles = [np.degrees(np.arctan2(h["CD1_2"], -h["CD1_1"])) for h in headers]
    scale = SMALL.pixel_scale_arcsec / 3600
    for i in range(len(headers)):
        for j in range(i + 1, len(headers)):
            dra = (centres[i, 0] - centres[j, 0]) * np.cos(np.radians(centres[i, 1]))
            offset_px = np.hypot(dra, centres[i, 1] - centres[j, 1]) / scale
            assert 0.1 < offset_px < 25
            assert 1e-4 < abs(angles[i] - angles[j]) <= 0.4
    assert all(abs(a) <= 0.2 for a in angles)


def test_fields_are_far_apart(small_night: NightSummary) -> None:
    night = json.loads((small_night.out_dir / "night.json").read_text())
    (a, b) = night["fields"]
    assert abs(a["ra"] - b["ra"]) > 1 or abs(a["dec"] - b["dec"]) > 1


def test_multi_ccd_files_have_extensions_and_disjoint_footprints(
    multi_ccd_night: NightSummary,
) -> None:
    for path in multi_ccd_night.exposures:
        with fits.open(path) as hdul:
            assert hdul[0].data is None
            assert hdul[0].header["NCCD"] == 4
            assert [h.name for h in hdul[1:]] == ["CCD000", "CCD001", "CCD002", "CCD003"]
            assert [h.header["CCDNUM"] for h in hdul[1:]] == [0, 1, 2, 3]
            assert all(h.header["INHERIT"] is True for h in hdul[1:])
            assert all(
                h.data.dtype.kind == "f"
                and h.data.dtype.itemsize == 4
                and h.data.shape == (128, 128)
                for h in hdul[1:]
            )
            wcs = [WCS(h.header) for h in hdul[1:]]
        grid = np.stack(np.meshgrid(np.arange(0, 128, 8.0), np.arange(0, 128, 8.0)), -1).reshape(
            -1, 2
        )
        for i, wi in enumerate(wcs):
            sky = wi.all_pix2world(grid, 0)
            for j, wj in enumerate(wcs):
                if i == j:
                    continue
                xy = wj.all_world2pix(sky, 0)
                inside = (xy > -0.5).all(axis=1) & (xy < 127.5).all(axis=1)
                assert not inside.any(), f"{path.name}: CCD{i} overlaps CCD{j}"
    with fits.open(multi_ccd_night.masks[0]) as masks:
        assert [h.name for h in masks[1:]] == ["CCD000", "CCD001", "CCD002", "CCD003"]
        assert all(isinstance(h, fits.CompImageHDU) for h in masks[1:])
        assert all(h.data.dtype == np.uint8 and h.data.shape == (128, 128) for h in masks[1:])


def test_pixel_types(small_night: NightSummary, multi_ccd_night: NightSummary) -> None:
    with fits.open(small_night.exposures[0]) as hdul:
        assert hdul[0].header["BITPIX"] == 16
        assert hdul[0].header["BZERO"] == 32768
        assert hdul[0].data.dtype == np.uint16
    assert MULTI.pixel_dtype == "float32"
    with fits.open(multi_ccd_night.exposures[0]) as hdul:
        assert hdul[1].header["BITPIX"] == -32


def test_reference_ccds_cover_every_exposure_footprint() -> None:
    from skyblink.sim.wcs_layout import (
        FocalPlane,
        ccd_wcs,
        exposure_pointing,
        reference_margin,
        reference_pointing,
    )

    for config in (SMALL, MULTI, rubin_visit_config()):
        plane = FocalPlane.for_config(config.ccds, config.image_size)
        margin = reference_margin(plane)
        size = config.image_size
        corners = np.array([[0, 0], [size - 1, 0], [0, size - 1], [size - 1, size - 1]], float)
        for ccd in {0, config.ccds - 1, config.ccds // 2}:
            ref = ccd_wcs(
                reference_pointing(config.seed, 0),
                plane,
                ccd,
                config.pixel_scale_arcsec,
                margin=margin,
            )
            for exposure in range(8):
                pointing = exposure_pointing(config.seed, 0, exposure, config.pixel_scale_arcsec)
                exp = ccd_wcs(pointing, plane, ccd, config.pixel_scale_arcsec)
                xy = ref.all_world2pix(exp.all_pix2world(corners, 0), 0)
                assert (xy >= 0).all() and (xy <= size + 2 * margin - 1).all()
