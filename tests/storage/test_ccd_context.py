"""A CCD's facts as the store answers them: values from the header the test writes, errors naming file and keyword."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.time import Time

from skyblink.headers import HeaderFactError, HeadersConfig
from skyblink.storage import NightStore, StoreLayout, open_fits_exposure
from skyblink.storage.alerts import Band

SCALE_ARCSEC = 0.25


def _write(path: Path, *, field: str = "F01", drop: tuple[str, ...] = (), **cards: object) -> Path:
    header = fits.Header()
    values: dict[str, object] = {
        "FIELD": field, "FILTER": "r SDSS", "MJD-OBS": 61000.5, "EXPTIME": 30.0, "SEEING": 1.0, "GAIN": 1.7,
        "RDNOISE": 6.0, "SATURATE": 60000.0, "MAGZP": 28.0, "SKYLEVEL": 400.0,
        "CTYPE1": "RA---TAN", "CTYPE2": "DEC--TAN", "CRVAL1": 150.0, "CRVAL2": 2.0, "CRPIX1": 32.0, "CRPIX2": 32.0,
        "CD1_1": -SCALE_ARCSEC / 3600.0, "CD1_2": 0.0, "CD2_1": 0.0, "CD2_2": SCALE_ARCSEC / 3600.0, **cards,
    }
    for name, value in values.items():
        if name not in drop:
            header[name] = value
    data = np.random.default_rng(1).poisson(400.0, (64, 64)).astype(np.uint16)
    fits.PrimaryHDU(data, header).writeto(path)
    return path


def _ingest(store: NightStore, path: Path, key: str, kind: str = "exposure") -> None:
    with open_fits_exposure(path) as reader:
        store.write_exposure(key, reader.exposure, reader.images(), kind=kind,  # type: ignore[arg-type]
                             source={"path": str(path)})


@pytest.fixture
def store(tmp_path: Path) -> NightStore:
    return NightStore(str(tmp_path / "s.zarr"), mode="a", layout=StoreLayout(tile_size=64))


def test_context_reads_every_fact_from_the_header(tmp_path: Path, store: NightStore) -> None:
    _ingest(store, _write(tmp_path / "sci.fits"), "exposures/E1")
    _ingest(store, _write(tmp_path / "ref.fits", SEEING=1.5, MAGZP=29.0), "references/F01", "reference")
    ctx = store.ccd_context("exposures/E1", "ccd000")
    assert ctx.exposure_id == "E1" and ctx.field == "F01" and ctx.ccd_name == "ccd000"
    assert ctx.pixel_scale_arcsec == pytest.approx(SCALE_ARCSEC)
    assert ctx.fwhm_px == pytest.approx(1.0 / SCALE_ARCSEC)
    assert ctx.reference_key == ctx.reference() == "references/F01"
    assert ctx.reference_fwhm_px == pytest.approx(1.5 / SCALE_ARCSEC)  # in science pixels
    assert ctx.difference_fwhm_px == pytest.approx(6.0)
    assert (ctx.gain, ctx.read_noise, ctx.saturate) == (1.7, 6.0, 60000.0)
    assert ctx.flux_scale == pytest.approx(10 ** (0.4 * (28.0 - 29.0)))
    assert ctx.band is Band.R
    expected_tai = Time(61000.5 + 15.0 / 86400.0, format="mjd", scale="utc").tai.mjd
    assert ctx.mjd_tai == pytest.approx(expected_tai, abs=1e-9)
    assert ctx.njy_per_adu == pytest.approx(10 ** (-0.4 * (28.0 - 31.4)) / 30.0)
    assert store.sky_noise_adu("exposures/E1") == pytest.approx(math.sqrt(400.0 * 1.7 + 36.0) / 1.7)
    assert ctx.source.startswith(str(tmp_path / "sci.fits"))
    assert store.ccd_context("exposures/E1", "ccd000") is ctx  # read once per store
    # The reference's own context: its PSF, and itself as its reference.
    ref = store.ccd_context("references/F01")
    assert ref.fwhm_px == pytest.approx(6.0) and ref.flux_scale == 1.0


def test_header_keywords_follow_the_headers_section(tmp_path: Path, store: NightStore) -> None:
    path = _write(tmp_path / "sci.fits", drop=("SEEING", "GAIN"), FWHM_PIX=3.2, EGAIN=2.5)
    _ingest(store, path, "exposures/E1")
    ctx = store.ccd_context("exposures/E1", headers=HeadersConfig(fwhm_px=["FWHM_PIX"], gain=["EGAIN"]))
    assert ctx.fwhm_px == pytest.approx(3.2) and ctx.gain == 2.5
    assert ctx.reference_key is None and ctx.reference_fwhm_px == ctx.fwhm_px and ctx.flux_scale == 1.0
    with pytest.raises(KeyError, match=r"sci\.fits.*no reference image of field 'F01'"):
        ctx.reference()


def test_missing_psf_size_names_the_file_and_keywords(tmp_path: Path, store: NightStore) -> None:
    path = _write(tmp_path / "nopsf.fits", drop=("SEEING",))
    _ingest(store, path, "exposures/E1")
    with pytest.raises(HeaderFactError, match=r"nopsf\.fits.*SEEING \(arcsec\).*FWHM \(px\)"):
        store.ccd_context("exposures/E1")
    measured = store.ccd_context("exposures/E1", measure_fwhm=lambda image: float(image.shape[0]) / 16.0)
    assert measured.fwhm_px == pytest.approx(4.0)  # measured on the whole CCD where no keyword gives it


def test_missing_time_or_band_and_a_bad_gain_name_the_file_and_keyword(tmp_path: Path, store: NightStore) -> None:
    _ingest(store, _write(tmp_path / "notime.fits", drop=("MJD-OBS",), FILTER="Halpha"), "exposures/E1")
    ctx = store.ccd_context("exposures/E1")  # tiles are processed without them
    with pytest.raises(ValueError, match=r"notime\.fits.*no MJD-OBS or DATE-OBS"):
        _ = ctx.mjd_tai
    with pytest.raises(ValueError, match=r"notime\.fits.*FILTER 'Halpha'"):
        _ = ctx.band
    with pytest.raises(KeyError, match="exposures/absent"):
        store.ccd_context("exposures/absent")
    from skyblink.storage.ccd_context import calibration_facts

    with pytest.raises(ValueError, match=r"bad\.fits: header EGAIN must be a positive"):
        calibration_facts({"EGAIN": 0.0}, HeadersConfig(gain=["EGAIN"]), source="bad.fits")


def test_a_reference_landing_later_or_a_file_ingested_anew_is_seen(tmp_path: Path, store: NightStore) -> None:
    _ingest(store, _write(tmp_path / "sci.fits"), "exposures/E1")
    assert store.ccd_context("exposures/E1").reference_key is None
    # Written by another store object (the ingest's), as in a night run with --watch.
    writer = NightStore(store.url, mode="a")
    _ingest(writer, _write(tmp_path / "ref.fits", SEEING=2.0), "references/F01", "reference")
    ctx = store.ccd_context("exposures/E1")
    assert ctx.reference_key == "references/F01" and ctx.reference_fwhm_px == pytest.approx(8.0)
    assert store.ccd_context("exposures/E1") is ctx
    _ingest(writer, _write(tmp_path / "ref2.fits", SEEING=1.25), "references/F01", "reference")  # replaced
    assert store.ccd_context("exposures/E1").reference_fwhm_px == pytest.approx(5.0)
    _ingest(writer, _write(tmp_path / "sci2.fits", GAIN=2.0), "exposures/E1")
    assert store.ccd_context("exposures/E1").gain == 2.0
    assert store.sky_noise_adu("exposures/E1") == pytest.approx(math.sqrt(400.0 * 2.0 + 36.0) / 2.0)


def test_no_module_but_the_store_reads_a_ccd_fact_from_a_header() -> None:
    """Pixel scale, PSF size, gain and zero point are read in storage/ccd_context.py only."""
    import re

    root = Path(__file__).resolve().parents[2]
    owner = root / "storage" / "ccd_context.py"
    by_hand = re.compile(r"""proj_plane_pixel_scales|\.get\(["'](SEEING|MAGZP|GAIN|SATURATE|RDNOISE)["']""")
    found = [f"{p.relative_to(root)}:{i}" for top in ("cluster", "workers", "storage", "engines", "sim", "skyblink")
             for p in (root / top).rglob("*.py") if p != owner
             for i, line in enumerate(p.read_text().splitlines(), 1) if by_hand.search(line)]
    assert not found, "ask the store (NightStore.ccd_context): " + ", ".join(found)
