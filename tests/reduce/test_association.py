"""
Association on the sky and stamp measurements: duplicates merged to the brightest, reference
matches within the radius only, objects grouped transitively, static sources found on an image
with known stars, windowed centroids and trails measured on synthetic difference stamps.
"""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
from astropy import units as u
from astropy.coordinates import SkyCoord

from skyblink.reduce.association import (
    detect_static_sources,
    group_objects,
    match_reference,
    merge_duplicates,
)
from skyblink.reduce.measurement import measure_stamps

CENTRE = SkyCoord(150.0 * u.deg, 2.0 * u.deg)


def _offsets(arcsec: list[float], pa_deg: float = 90.0) -> tuple[np.ndarray, np.ndarray]:
    points = CENTRE.directional_offset_by(pa_deg * u.deg, np.array(arcsec) * u.arcsec)
    return points.ra.deg, points.dec.deg


def test_merge_keeps_the_highest_snr_of_each_exposure_only() -> None:
    ra, dec = _offsets([0.0, 0.4, 0.8, 5.0, 0.2])
    group = np.array(["e1", "e1", "e1", "e1", "e2"])
    snr = np.array([6.0, 9.0, 7.0, 8.0, 5.0])
    keep = merge_duplicates(group, ra, dec, snr, 0.5)
    # 0-0.4-0.8 chain in e1 -> the S/N 9 one; the far one stays; e2 never merges with e1.
    assert keep.tolist() == [False, True, False, True, True]


def test_match_reference_within_radius_only() -> None:
    ra, dec = _offsets([0.0, 10.0, 30.0])
    ref_ra, ref_dec = _offsets([0.3, 11.5])
    index, separation = match_reference(ra, dec, pa.table({"ra": ref_ra, "dec": ref_dec}), 1.0)
    assert index.tolist() == [0, -1, -1]
    assert math.isclose(separation[0], 0.3, abs_tol=1e-6) and math.isclose(separation[1], 1.5, abs_tol=1e-6)
    empty_index, empty_sep = match_reference(ra, dec, pa.table({"ra": np.zeros(0), "dec": np.zeros(0)}), 1.0)
    assert (empty_index == -1).all() and np.isinf(empty_sep).all()


def test_group_objects_is_transitive_and_ordered() -> None:
    ra, dec = _offsets([0.0, 20.0, 0.7, 1.4, 20.5])
    assert group_objects(ra, dec, 1.0).tolist() == [0, 1, 0, 0, 1]
    assert group_objects(np.zeros(0), np.zeros(0), 1.0).size == 0


def _gaussian(shape: tuple[int, int], x: float, y: float, sigma: float, flux: float) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return flux / (2 * np.pi * sigma**2) * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma**2))


def test_static_sources_found_at_their_positions_and_galaxies_are_extended() -> None:
    rng = np.random.default_rng(1)
    image = rng.normal(1000.0, 10.0, (256, 256)).astype(np.float32)
    stars = [(40.3, 50.7), (120.6, 200.2), (210.1, 90.9)]
    fwhm = 3.0
    for x, y in stars:
        image += _gaussian(image.shape, x, y, fwhm / 2.3548, 20000.0).astype(np.float32)
    galaxy = _gaussian(image.shape, 200.0, 200.0, 4.0, 60000.0).astype(np.float32)  # extended
    image += galaxy
    xs, ys, snr, concentration = detect_static_sources(image, fwhm)
    assert len(xs) == 4 and (snr > 50).all()
    star_like = np.hypot(xs - 200.0, ys - 200.0) > 2
    # A point source: 39 % of its flux within 1 sigma of 3 sigma's 99 %; the galaxy far less.
    assert (concentration[star_like] > 0.3).all()  # pixel sampling spreads it around 0.40
    assert concentration[~star_like][0] < 0.2
    for x, y in stars:
        assert np.min(np.hypot(xs - x, ys - y)) < 0.05  # S/N ~ 200: centroids within 0.05 px


def test_windowed_centroid_beats_the_peak_and_trails_are_measured() -> None:
    rng = np.random.default_rng(2)
    fwhm = 2.5
    sigma = fwhm / 2.3548
    n = 200
    stamps = np.empty((n, 63, 63), np.float32)
    truth = rng.uniform(-0.5, 0.5, (n, 2))
    flux = 30.0 * 2 * math.sqrt(math.pi) * sigma  # S/N 30 for a Gaussian PSF in unit noise
    for i in range(n):
        stamps[i] = _gaussian((63, 63), 31 + truth[i, 0], 31 + truth[i, 1], sigma, flux) + rng.normal(0, 1, (63, 63))
    shapes = measure_stamps(stamps, np.zeros((n, 2)), np.full(n, fwhm))
    err = np.hypot(shapes.dx - truth[:, 0], shapes.dy - truth[:, 1])
    # Cramer-Rao for S/N 30: sqrt(2) sigma / 30 per axis ~ 0.05 px; radial RMS ~ 0.07 px.
    assert np.sqrt(np.mean(err**2)) < 0.1
    assert shapes.trailed.mean() <= 0.01  # round sources are rarely taken for trails
    # A trail of 20 px at 30 degrees: length and angle recovered.
    trail = np.zeros((63, 63))
    for s in np.linspace(-10, 10, 81):
        trail += _gaussian((63, 63), 31 + s * math.cos(math.radians(30)), 31 + s * math.sin(math.radians(30)), sigma, 40.0)
    trail += rng.normal(0, 1, (63, 63))
    one = measure_stamps(trail[None], np.zeros((1, 2)), np.array([fwhm]))
    assert one.trailed[0]
    assert abs(one.trail_length_px[0] - 20.0) < 3.0 and abs(one.trail_angle_deg[0] - 30.0) < 3.0
    assert abs(one.dx[0]) < 0.5 and abs(one.dy[0]) < 0.5  # the trail's middle


def test_stamps_measured_together_as_one_by_one() -> None:
    """Stamps of several PSFs, trails, empty stamps and sources by the edge: the stack's answer is each stamp's own."""
    rng = np.random.default_rng(7)
    fwhms = rng.choice([2.2, 2.5, 3.1], 40)
    stamps = rng.normal(0, 1, (40, 63, 63))
    for i, fwhm in enumerate(fwhms):
        sigma = fwhm / 2.3548
        if i % 4 == 1:  # a trail
            angle, length = rng.uniform(0, math.pi), rng.uniform(4, 25)
            for s in np.linspace(-length / 2, length / 2, 60):
                stamps[i] += _gaussian((63, 63), 31 + s * math.cos(angle), 31 + s * math.sin(angle), sigma, 25.0)
        elif i % 4 != 3:  # a point source (every fourth stamp is noise only)
            stamps[i] += _gaussian((63, 63), 31 + rng.uniform(-0.5, 0.5), 31 + rng.uniform(-0.5, 0.5), sigma, 200.0)
    stamps[5, :, :30] = np.nan  # half a stamp beyond its CCD
    offsets = rng.uniform(-0.5, 0.5, (40, 2))
    offsets[6] = (30.4, -30.6)  # a start by the stamp's corner
    together = measure_stamps(stamps, offsets, fwhms)
    for i in range(40):
        one = measure_stamps(stamps[i : i + 1], offsets[i : i + 1], fwhms[i : i + 1])
        for name in ("dx", "dy", "trail_length_px", "trail_angle_deg"):
            np.testing.assert_allclose(getattr(together, name)[i], getattr(one, name)[0], rtol=0, atol=1e-9, err_msg=f"{name} {i}")
        assert together.trailed[i] == one.trailed[0] and together.converged[i] == one.converged[0], i
    assert together.trailed.sum() >= 5 and together.converged.sum() >= 20
