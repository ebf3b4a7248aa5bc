"""Validation of FITS input: every bad-input kind gets one clear reason; good inputs read exactly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from skyblink.storage import InvalidExposureError, open_fits_exposure, read_fits_exposure


@pytest.mark.parametrize("dtype", ["uint16", "int16", "float32", "float64"])
def test_single_hdu_pixels_and_metadata(tmp_path: Path, exposure_writer, dtype: str) -> None:
    pixels = exposure_writer(tmp_path / "e.fits", dtype=dtype)
    exposure, images = read_fits_exposure(tmp_path / "e.fits")
    assert len(images) == 1
    assert images[0].data.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(images[0].data, pixels[0])
    assert exposure.metadata["mjd_obs"] == pytest.approx(61004.125)
    assert images[0].metadata["gain"] == 1.5
    assert images[0].metadata["saturate"] == 60000.0
    assert images[0].metadata["saturate_source"] == "SATURATE"


def test_multi_extension_and_tile_compressed(tmp_path: Path, exposure_writer) -> None:
    mef = exposure_writer(tmp_path / "mef.fits", ccds=3)
    fz = exposure_writer(tmp_path / "c.fits.fz", ccds=2, compressed=True)
    exposure, images = read_fits_exposure(tmp_path / "mef.fits")
    assert [c.extname for c in exposure.ccds] == ["CCD000", "CCD001", "CCD002"]
    for image, expected in zip(images, mef, strict=True):
        np.testing.assert_array_equal(image.data, expected)
        # exposure-level keywords are inherited from the primary header
        assert image.metadata["exptime"] == 30.0
    _, images = read_fits_exposure(tmp_path / "c.fits.fz")
    for image, expected in zip(images, fz, strict=True):
        np.testing.assert_array_equal(image.data, expected)  # RICE is lossless for integers


def test_saturation_falls_back_to_the_dtype_range(tmp_path: Path, exposure_writer) -> None:
    path = tmp_path / "e.fits"
    exposure_writer(path)
    with fits.open(path, mode="update") as hdul:
        del hdul[0].header["SATURATE"]
    _, images = read_fits_exposure(path)
    assert images[0].metadata["saturate"] == 65535.0
    assert images[0].metadata["saturate_source"] == "dtype"


def _bad_files(tmp_path: Path, exposure_writer) -> dict[str, tuple[Path, str]]:
    """Each bad-input kind: (file, a phrase its reason must contain)."""
    cases: dict[str, tuple[Path, str]] = {}
    empty = tmp_path / "empty.fits"
    empty.write_bytes(b"")
    cases["empty"] = (empty, "empty file")
    junk = tmp_path / "junk.fits"
    junk.write_bytes(b"this is not a FITS file at all\n" * 200)
    cases["unreadable"] = (junk, "not a readable FITS file")
    good = tmp_path / "good.fits"
    exposure_writer(good, shape=(256, 256))
    truncated = tmp_path / "truncated.fits"
    truncated.write_bytes(good.read_bytes()[: 2880 * 4])
    cases["truncated"] = (truncated, "truncated")
    nowcs = tmp_path / "nowcs.fits"
    exposure_writer(nowcs, with_wcs=False)
    cases["missing WCS"] = (nowcs, "no celestial WCS")
    linear = tmp_path / "linear.fits"
    fits.PrimaryHDU(np.ones((32, 32), "float32"), header=fits.Header({"CTYPE1": "LINEAR", "CTYPE2": "LINEAR"})).writeto(linear)
    cases["non-celestial WCS"] = (linear, "CTYPE1='LINEAR'")
    cube = tmp_path / "cube.fits"
    fits.PrimaryHDU(np.ones((3, 32, 32), "float32")).writeto(cube)
    cases["3-D"] = (cube, "expected a 2-D image")
    nan = tmp_path / "nan.fits"
    exposure_writer(nan, dtype="float32")
    with fits.open(nan, mode="update") as hdul:
        hdul[0].data[:] = np.nan
    cases["all NaN"] = (nan, "every pixel is NaN")
    badsat = tmp_path / "badsat.fits"
    exposure_writer(badsat, header={"SATURATE": "lots"})
    cases["bad SATURATE"] = (badsat, "SATURATE='lots'")
    table = tmp_path / "table.fits"
    fits.HDUList([fits.PrimaryHDU(), fits.BinTableHDU.from_columns([fits.Column("a", "E", array=np.ones(3))])]).writeto(table)
    cases["no image"] = (table, "no image HDU")
    return cases


def test_every_bad_input_kind_is_refused_with_its_reason(tmp_path: Path, exposure_writer) -> None:
    for kind, (path, phrase) in _bad_files(tmp_path, exposure_writer).items():
        with pytest.raises(InvalidExposureError) as info:
            read_fits_exposure(path)
        assert info.value.path == path, kind
        assert phrase in info.value.reason, f"{kind}: {info.value.reason!r}"
        assert str(path) in str(info.value)


def test_mostly_nan_frame_is_refused_above_the_configured_fraction(tmp_path: Path, exposure_writer) -> None:
    path = tmp_path / "holes.fits"
    exposure_writer(path, dtype="float32")
    with fits.open(path, mode="update") as hdul:
        hdul[0].data[:60] = np.nan  # 60 of 96 rows
    _, images = read_fits_exposure(path, max_nonfinite_fraction=0.7)
    assert images[0].metadata["n_nonfinite"] == 60 * 128
    with pytest.raises(InvalidExposureError, match="max_nonfinite_fraction=0.5"):
        read_fits_exposure(path, max_nonfinite_fraction=0.5)


@pytest.mark.parametrize(("name", "compressed"), [("mef.fits", False), ("c.fits.fz", True), ("mef.fits.gz", False)])
def test_ccds_read_in_threads_are_those_read_one_by_one(tmp_path: Path, exposure_writer, name: str, compressed: bool) -> None:
    """Threads (one file handle each; a gzip file falls back to one) give the same CCDs in file order."""
    expected = exposure_writer(tmp_path / name, ccds=7, compressed=compressed, dtype="float32" if "gz" in name else "uint16")
    for threads in (1, 3):
        with open_fits_exposure(tmp_path / name) as reader:
            images = list(reader.images(threads=threads))
        assert [i.extname for i in images] == [f"CCD{k:03d}" for k in range(7)]
        for image, pixels in zip(images, expected, strict=True):
            np.testing.assert_array_equal(image.data, pixels)
            assert image.data.dtype == pixels.dtype and image.metadata["shape"] == list(pixels.shape)


def test_a_bad_ccd_read_in_a_thread_names_its_hdu(tmp_path: Path, exposure_writer) -> None:
    path = tmp_path / "mef.fits"
    exposure_writer(path, ccds=6, dtype="float32")
    with fits.open(path, mode="update") as hdul:
        hdul[4].data[:] = np.nan  # CCD003
    with open_fits_exposure(path) as reader, pytest.raises(InvalidExposureError, match=r"HDU 4 \(CCD003\): every pixel is NaN"):
        list(reader.images(threads=3))
