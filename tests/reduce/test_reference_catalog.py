"""A field's reference catalog: the per-source measurement it replaces, and its speed next to SEP's."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sep
from scipy import ndimage

from skyblink.config import SimConfig
from skyblink.psf_units import FWHM_PER_SIGMA
from skyblink.reduce.association import detect_static_sources, reference_sources
from skyblink.reduce.measurement import windowed_centroid
from skyblink.sim.ccd_image import render_ccd
from skyblink.sim.conditions import reference_conditions
from skyblink.storage import NightStore, StoreLayout, open_fits_exposure
from skyblink.workers.matched_filter import matched_filter_snr


def _one_source_at_a_time(image: np.ndarray, fwhm: float, threshold: float) -> tuple[np.ndarray, ...]:
    """
    The reference catalog as it was measured before (96c26a4), one source at a time on SEP's
    background: the peaks of ``maximum_filter``, `windowed_centroid` and the two apertures.
    """
    sub = np.array(image, np.float32)
    unusable = ~np.isfinite(sub)
    sub[unusable] = 0.0
    bkg = sep.Background(sub, mask=unusable)
    sub = np.where(unusable, 0.0, (sub - bkg.back()) / np.maximum(bkg.rms(), 1e-12)).astype(np.float32)
    snr = matched_filter_snr(sub, fwhm)
    ys, xs = np.nonzero((snr >= threshold) & (snr == ndimage.maximum_filter(snr, size=5, mode="constant", cval=0.0)))
    sigma = fwhm / FWHM_PER_SIGMA
    half = math.ceil(3.0 * sigma) + 1
    out = np.empty((4, len(xs)))
    for k, (x, y) in enumerate(zip(xs, ys, strict=True)):
        cx, cy, _ = windowed_centroid(sub, float(x), float(y), sigma, max_shift=1.5)
        y0, y1, x0, x1 = max(y - half, 0), min(y + half + 1, sub.shape[0]), max(x - half, 0), min(x + half + 1, sub.shape[1])
        gy, gx = np.mgrid[y0:y1, x0:x1]
        r = np.hypot(gx - cx, gy - cy)
        window = sub[y0:y1, x0:x1]
        outer = float(window[r <= 3.0 * sigma].sum())
        out[:, k] = cx, cy, snr[y, x], float(window[r <= sigma].sum()) / outer if outer > 0 else np.nan
    return tuple(out)


def _gaussian(shape: tuple[int, int], x: float, y: float, sigma: float, flux: float) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return flux / (2 * np.pi * sigma**2) * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma**2))


@pytest.mark.parametrize("fwhm", [1.5, 3.5])
def test_the_stacked_measurement_finds_the_sources_and_positions_of_the_per_source_one(fwhm: float) -> None:
    rng = np.random.default_rng(5)
    shape = (300, 340)
    image = rng.normal(500.0, 8.0, shape).astype(np.float32)
    sigma = fwhm / FWHM_PER_SIGMA
    # Stars everywhere (edges and corners included), close pairs, galaxies, and a masked patch.
    stars = [(0.2, 150.0), (339.4, 10.0), (0.0, 0.0), (170.0, 299.3), (100.0, 100.0), (102.5, 101.0), (60.0, 240.0)]
    stars += list(zip(rng.uniform(-1, shape[1], 250), rng.uniform(-1, shape[0], 250), strict=True))
    for x, y in stars:
        image += _gaussian(shape, x, y, sigma, rng.uniform(300.0, 30000.0)).astype(np.float32)
    for x, y in ((250.0, 200.0), (30.0, 30.0)):
        image += _gaussian(shape, x, y, 3.0 * sigma + 2.0, 40000.0).astype(np.float32)
    image[150:160, 60:75] = np.nan
    image[0, 200:210] = np.inf

    xs, ys, snr, concentration = detect_static_sources(image, fwhm)
    want = _one_source_at_a_time(image, fwhm, 5.0)
    assert len(xs) == len(want[0]) > 150
    np.testing.assert_allclose(xs, want[0], rtol=0, atol=1e-9)
    np.testing.assert_allclose(ys, want[1], rtol=0, atol=1e-9)
    np.testing.assert_allclose(snr, want[2], rtol=1e-6)
    np.testing.assert_allclose(concentration, want[3], rtol=0, atol=1e-5)  # float32 sums, in another order
    assert np.isfinite(xs).all() and np.isfinite(ys).all()


def test_no_sources_and_bad_input() -> None:
    rng = np.random.default_rng(6)
    xs, ys, snr, concentration = detect_static_sources(rng.normal(0.0, 1.0, (128, 128)).astype(np.float32), 2.0, snr_threshold=50.0)
    assert len(xs) == len(ys) == len(snr) == len(concentration) == 0
    with pytest.raises(ValueError, match="2-D"):
        detect_static_sources(np.zeros((2, 8, 8), np.float32), 2.0)
    with pytest.raises(ValueError, match="snr_threshold"):
        detect_static_sources(np.zeros((64, 64), np.float32), 2.0, snr_threshold=0.0)


def test_a_dense_reference_is_cataloged_within_three_times_seps_extraction() -> None:
    """The ratio to SEP on the same image in one run (best of five, interleaved), not a timed assertion."""
    config = SimConfig(fields=1, exposures_per_field=1, image_size=2048)  # field 0: the densest of the seed's first 8
    image = np.ascontiguousarray(render_ccd(config, 0, 0, exposure=None).pixels.astype(np.float32))
    fwhm = reference_conditions(config, 0).fwhm_arcsec / config.pixel_scale_arcsec

    def sep_extract() -> int:
        data = image.copy()
        bkg = sep.Background(data)
        bkg.subfrom(data)
        return len(sep.extract(data, 1.5, err=bkg.globalrms))

    ours = theirs = math.inf
    for _ in range(5):
        start = time.perf_counter()
        found = len(detect_static_sources(image, fwhm)[0])
        ours = min(ours, time.perf_counter() - start)
        start = time.perf_counter()
        extracted = sep_extract()
        theirs = min(theirs, time.perf_counter() - start)
    assert found > 2500 and extracted > 2000  # dense: 3,090 sources in 2176x2176 (SEP: 2,473)
    assert ours <= 3.0 * theirs, f"reference catalog {ours:.3f} s, {ours / theirs:.1f}x SEP's {theirs:.3f} s"


def test_a_stored_reference_gets_its_catalog_on_the_sky_and_cached(tmp_path: Path, exposure_writer: Any) -> None:
    path = tmp_path / "ref.fits"
    pixels = exposure_writer(path, shape=(200, 240), dtype="float32", header={"SEEING": 2.1})
    store = NightStore(str(tmp_path / "s.zarr"), mode="a", layout=StoreLayout(tile_size=64, shard_tiles=2))
    with open_fits_exposure(path) as reader:
        store.write_exposure("references/F07", reader.exposure, reader.images(), kind="reference", source={"path": str(path)})
    catalog = reference_sources(store, "F07")
    assert catalog.num_rows > 0
    assert sorted(set(catalog.column("ccd").to_pylist())) == store.ccd_names("references/F07")
    for number, ccd in enumerate(store.ccd_names("references/F07")):
        rows = catalog.filter(np.array(catalog.column("ccd").to_pylist()) == ccd)
        xs, ys, snr, _ = detect_static_sources(pixels[number], 2.1 / 0.6)  # SEEING over the 0.6"/px of the WCS
        np.testing.assert_allclose(rows.column("x").to_numpy(), xs, rtol=0, atol=1e-9)  # the WCS's scale: 0.6 to rounding
        np.testing.assert_allclose(rows.column("snr").to_numpy(), snr, rtol=1e-6)
        ra, dec = store.wcs("references/F07", ccd).all_pix2world(rows.column("x").to_numpy(), rows.column("y").to_numpy(), 0)
        np.testing.assert_allclose(rows.column("ra").to_numpy(), ra % 360.0, rtol=0, atol=1e-10)
        np.testing.assert_allclose(rows.column("dec").to_numpy(), dec, rtol=0, atol=1e-10)
    assert reference_sources(store, "F07").equals(catalog)  # read back from the cache
    assert reference_sources(store, "F99").num_rows == 0  # no reference of the field
