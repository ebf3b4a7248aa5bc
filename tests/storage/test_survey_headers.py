"""Real survey FITS through the reader: DECam's TPV files read in place, scaled integers, mask/weight planes, [headers]."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.utils.exceptions import AstropyWarning
from astropy.wcs import WCS

from skyblink.config import ConfigError, load_config
from skyblink.headers import HeaderFactError, HeadersConfig, psf_fwhm_px
from skyblink.storage import read_fits_exposure
from skyblink.workers.source_detection import estimate_fwhm

DECAM = Path(__file__).resolve().parents[3] / "shared" / "data" / "sfft-decam"
SINGLE = DECAM / "input_data" / "DEC-OBS04a.mini.fits"
needs_decam = pytest.mark.skipif(not SINGLE.exists(), reason=f"DECam/SFFT data not found at {DECAM} (../shared absent)")


def _wcs(text: str | fits.Header) -> WCS:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AstropyWarning)
        return WCS(fits.Header.fromstring(text) if isinstance(text, str) else text)


@needs_decam
def test_decam_file_reads_as_it_is() -> None:
    exposure, (image,) = read_fits_exposure(SINGLE)
    meta = image.metadata
    assert image.data.dtype == np.float64 and image.data.shape == (256, 256)
    assert meta["gain"] == pytest.approx(3.984, abs=1e-3)
    assert meta["rdnoise"] == pytest.approx(11.837, abs=1e-3)
    assert meta["saturate"] == pytest.approx(46536.1, abs=0.1)
    assert meta["fwhm_px"] == pytest.approx(5.2316, abs=1e-4) and meta["seeing"] is None
    assert meta["band"] == "i" and meta["filter"].startswith("i DECam")
    assert exposure.metadata["mjd_obs"] == pytest.approx(58334.39133794)
    # The TPV distortion survives the stored WCS text: the same sky at every pixel, to 1e-6 arcsec.
    xy = np.array([[0.0, 0.0], [255.0, 0.0], [0.0, 255.0], [255.0, 255.0], [97.3, 181.6]])
    original = _wcs(fits.getheader(SINGLE)).all_pix2world(xy, 0)
    assert np.abs(_wcs(image.wcs_header).all_pix2world(xy, 0) - original).max() * 3600 < 1e-6
    # and the distortion is real: dropping the PV terms moves the corners by arcseconds.
    plain = fits.getheader(SINGLE).copy()
    for key in [k for k in plain if k.startswith("PV")]:
        del plain[key]
    plain["CTYPE1"], plain["CTYPE2"] = "RA---TAN", "DEC--TAN"
    assert np.abs(_wcs(plain).all_pix2world(xy, 0) - original).max() * 3600 > 1.0


@needs_decam
def test_tpv_warp_puts_stars_where_the_science_has_them() -> None:
    """A reference on another (shifted) pixel grid, warped by both TPV WCS: stars land within 0.05 px."""
    import sep
    from scipy.ndimage import shift

    from skyblink.workers.align import sampling_grid, warp

    header = fits.getheader(SINGLE)
    data = fits.getdata(SINGLE).astype(np.float64)
    dy, dx = 6.4, -9.7  # reference pixel = science pixel + (dy, dx)
    ref_header = header.copy()
    ref_header["CRPIX1"] += dx
    ref_header["CRPIX2"] += dy
    reference = shift(data, (dy, dx), order=3, mode="nearest")
    grid = sampling_grid(_wcs(header), _wcs(ref_header), data.shape)
    assert np.abs(grid[0] - (np.arange(256)[None, :] + dx)).max() < 1e-3  # the mapping itself, through TPV
    warped = warp(reference, grid, order=3)
    stars = sep.extract(np.ascontiguousarray(data - np.median(data), dtype=np.float32), 5.0, err=130.0, minarea=9)
    ok = (stars["x"] > 15) & (stars["x"] < 240) & (stars["y"] > 15) & (stars["y"] < 240)
    assert ok.sum() >= 3
    w = np.ascontiguousarray(np.nan_to_num(warped - np.median(data)), dtype=np.float32)
    x, y, _ = sep.winpos(w, stars["x"][ok], stars["y"][ok], 2.2)
    x0, y0, _ = sep.winpos(np.ascontiguousarray(data - np.median(data), dtype=np.float32), stars["x"][ok], stars["y"][ok], 2.2)
    assert np.hypot(x - x0, y - y0).max() < 0.05


@needs_decam
@pytest.mark.parametrize("dtype", ["int16", "uint16"])
def test_scaled_integers_read_in_physical_units(tmp_path: Path, dtype: str) -> None:
    header = fits.getheader(SINGLE)
    physical = fits.getdata(SINGLE).astype(np.float64)
    hdu = fits.PrimaryHDU(physical, header=header)
    if dtype == "int16":
        hdu.scale("int16", bzero=float(np.median(physical)), bscale=2.0)  # 2-ADU quanta around the median
    else:
        hdu.data = np.clip(physical + 1000.0, 0, 65535).astype(np.uint16)  # BZERO=32768 on disk
    hdu.writeto(tmp_path / "s.fits")
    with fits.open(tmp_path / "s.fits") as hdul:
        assert hdul[0].header["BITPIX"] == 16 and "BZERO" in hdul[0].header
    _, (image,) = read_fits_exposure(tmp_path / "s.fits")
    expected = np.clip(physical, -1000, 64535) + 1000.0 if dtype == "uint16" else physical
    tolerance = 2.01 if dtype == "int16" else 1.0  # one 2-ADU quantum (astropy truncates)
    assert np.abs(image.data.astype(np.float64) - expected).max() <= tolerance


@needs_decam
def test_mask_and_weight_planes_belong_to_their_ccd(tmp_path: Path) -> None:
    header = fits.getheader(SINGLE)
    data = fits.getdata(SINGLE)
    mask = np.zeros(data.shape, np.int16)
    mask[10:12, 20:30] = 4
    weight = np.ones(data.shape, np.float32)
    weight[100, 100] = 0.0
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(data, header=header, name="SCI"), fits.ImageHDU(mask, name="MASK"),
                  fits.ImageHDU(weight, name="WEIGHT")]).writeto(tmp_path / "mef.fits")
    exposure, images = read_fits_exposure(tmp_path / "mef.fits")
    assert [c.extname for c in exposure.ccds] == ["SCI"]  # the planes are not CCDs
    (image,) = images
    assert image.mask.sum() == 21 and image.mask[100, 100] and image.mask[11, 29]
    # Other names through [headers]: here the planes are not recognised, so they are read as CCDs (and fail: no WCS).
    with pytest.raises(Exception, match="no celestial WCS"):
        read_fits_exposure(tmp_path / "mef.fits", headers=HeadersConfig(mask_extensions=["BADPIX"], weight_extensions=[]))


@needs_decam
def test_missing_psf_size_names_file_keywords_and_config_key() -> None:
    header = fits.getheader(SINGLE).copy()
    del header["FWHM"]
    with pytest.raises(HeaderFactError) as info:
        psf_fwhm_px(header, 0.263, source=str(SINGLE), config=HeadersConfig(measure_fwhm=False))
    message = str(info.value)
    assert str(SINGLE) in message and "SEEING" in message and "FWHM" in message
    assert "headers.fwhm_px" in message and "headers.measure_fwhm" in message
    # Measured from the stars instead: close to what the header said (5.23 px).
    measured = psf_fwhm_px(header, 0.263, source=str(SINGLE),
                           measure=lambda: estimate_fwhm(np.asarray(fits.getdata(SINGLE), dtype=np.float32)))
    assert measured == pytest.approx(5.23, rel=0.2)
    # A survey's own keyword, through the configuration.
    header["PSFPIX"] = 4.4
    assert psf_fwhm_px(header, 0.263, source="x", config=HeadersConfig(fwhm_px=["PSFPIX"])) == 4.4
    header["SEEING"] = 1.1  # arcsec wins, converted by the pixel scale
    assert psf_fwhm_px(header, 0.263, source="x") == pytest.approx(1.1 / 0.263)


def test_headers_section_in_the_configuration(tmp_path: Path) -> None:
    path = tmp_path / "skyblink.toml"
    path.write_text('[headers]\ngain = ["EGAIN"]\nfilter_names = {"i DECam SDSS c0003 7835.0 1470.0" = "DECam-i"}\n')
    config = load_config(path, environ={})
    assert config.headers.gain == ["EGAIN"] and config.headers.seeing_arcsec == ["SEEING"]
    path.write_text('[headers]\ngian = ["EGAIN"]\n')
    with pytest.raises(ConfigError, match="headers.gian"):
        load_config(path, environ={})


def test_configured_aliases_are_read(tmp_path: Path) -> None:
    header = fits.Header({"CTYPE1": "RA---TAN", "CTYPE2": "DEC--TAN", "CRPIX1": 32, "CRPIX2": 32, "CRVAL1": 10.0,
                          "CRVAL2": 5.0, "CDELT1": -1e-4, "CDELT2": 1e-4, "EGAIN": 2.5, "SATLEV": 30000.0,
                          "DATE-OBS": "2024-01-02T03:04:05", "FILT": "r_SDSS"})
    fits.PrimaryHDU(np.ones((64, 64), np.float32), header=header).writeto(tmp_path / "a.fits")
    headers = HeadersConfig(gain=["EGAIN"], saturate=["SATLEV"], filter=["FILT"], filter_names={"r_SDSS": "r"})
    exposure, (image,) = read_fits_exposure(tmp_path / "a.fits", headers=headers)
    assert image.metadata["gain"] == 2.5 and image.metadata["saturate"] == 30000.0 and image.metadata["band"] == "r"
    assert exposure.metadata["mjd_obs"] == pytest.approx(60311.128, abs=1e-3)


def test_calibration_reads_the_configured_keywords() -> None:
    from skyblink.workers.calibration import CalibrationSpec

    header = {"EGAIN": 2.5, "SATLEV": 30000.0, "RON": 7.0, "GAIN": 9.0}
    spec = CalibrationSpec.from_header(header, HeadersConfig(gain=["EGAIN"], saturate=["SATLEV"], read_noise=["RON"]))
    assert (spec.gain, spec.saturate, spec.read_noise) == (2.5, 30000.0, 7.0)
    assert CalibrationSpec.from_header(header).gain == 9.0  # the historical names by default
    with pytest.raises(ValueError, match="EGAIN"):
        CalibrationSpec.from_header({"EGAIN": 0.0}, HeadersConfig(gain=["EGAIN"]))
