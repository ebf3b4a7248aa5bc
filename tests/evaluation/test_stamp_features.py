"""
Physical triplet features on stamps built here: a Gaussian point source gives its own size, S/N
and sharpness back; a dipole is seen as one; a fading source is oriented like a brightening one.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from skyblink.evaluation.stamp_features import FEATURE_NAMES, adaptive_moments, triplet_features

SIZE = 63
C = SIZE // 2
COL = {name: i for i, name in enumerate(FEATURE_NAMES)}


def gaussian(sigma: float, flux: float, dy: float = 0.0, dx: float = 0.0) -> np.ndarray:
    yy, xx = np.indices((SIZE, SIZE), dtype=np.float64)
    g = np.exp(-((yy - C - dy) ** 2 + (xx - C - dx) ** 2) / (2 * sigma**2))
    return flux * g / g.sum()


def triplet(sci: np.ndarray, ref: np.ndarray, diff: np.ndarray, seed: int, noise: float = 1.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.stack([c + noise * rng.standard_normal((SIZE, SIZE)) for c in (sci, ref, diff)]).astype(np.float32)


def point_source_flux(snr: float, sigma: float) -> float:
    """Total flux of a Gaussian whose matched-filter S/N in unit white noise is ``snr``."""
    return snr * 2 * math.sqrt(math.pi) * sigma


def test_adaptive_moments_measure_a_gaussian() -> None:
    for sigma in (0.9, 1.5, 2.5):
        size, ell, y, x = adaptive_moments(gaussian(sigma, 1000.0, dy=0.3), (C, C))
        assert size == pytest.approx(sigma, rel=0.03)
        assert ell < 0.02 and y == pytest.approx(C + 0.3, abs=0.02) and x == pytest.approx(C, abs=0.02)


def test_point_source_features() -> None:
    sigma = 1.5
    star = gaussian(sigma, point_source_flux(50.0, sigma))
    stamps = np.stack([triplet(star, np.zeros((SIZE, SIZE)), star, seed) for seed in range(8)])
    f = triplet_features(stamps, psf_sigma=sigma)
    assert f.shape == (8, len(FEATURE_NAMES))
    assert np.median(f[:, COL["snr"]]) == pytest.approx(50.0, rel=0.1)
    fwhm = 2 * math.sqrt(2 * math.log(2)) * sigma * np.exp(np.median(f[:, COL["diff_size"]]))
    assert fwhm == pytest.approx(2 * math.sqrt(2 * math.log(2)) * sigma, rel=0.1)
    # DAOFIND sharpness of a noiseless Gaussian: 1 - mean of the profile over the footprint's other pixels
    yy, xx = np.indices((9, 9)) - 4.0
    r = np.hypot(yy, xx)
    foot = (r <= max(1.5, 2 * sigma)) & (r > 0)
    expected = 1 - np.exp(-(r[foot] ** 2) / (2 * sigma**2)).mean()
    assert np.median(f[:, COL["sharpness"]]) == pytest.approx(expected, abs=0.08)
    assert np.all(f[:, COL["neg_fraction"]] < 0.02) and np.all(f[:, COL["negative"]] == 0)
    assert np.all(f[:, COL["peak_offset"]] < 1.0) and np.median(f[:, COL["ellipticity"]]) < 0.15
    assert np.median(f[:, COL["psf_chi2"]]) < math.log10(2.0)  # the PSF fits to the noise
    assert np.median(f[:, COL["flux_ratio"]]) == pytest.approx(1.0, abs=0.15)  # no host: all of it is new
    assert np.median(np.abs(f[:, COL["ref_snr"]])) < 3.0
    assert np.median(f[:, COL["median_resid"]]) < 0.3


def test_psf_measured_on_the_science_when_not_given() -> None:
    sigma = 1.2
    star = gaussian(sigma, point_source_flux(200.0, sigma))
    f = triplet_features(triplet(star, np.zeros((SIZE, SIZE)), star, 3))
    assert f[0, COL["snr"]] == pytest.approx(200.0, rel=0.1)
    assert abs(f[0, COL["diff_size"]]) < 0.1


def test_dipole_has_a_large_negative_fraction() -> None:
    sigma = 1.5
    flux = point_source_flux(60.0, sigma)
    star = gaussian(sigma, flux)
    dipole = gaussian(sigma, flux, dx=1.2) - gaussian(sigma, flux, dx=-1.2)
    f = triplet_features(triplet(star, star, dipole, 1), psf_sigma=sigma)[0]
    point = triplet_features(triplet(star, np.zeros((SIZE, SIZE)), star, 1), psf_sigma=sigma)[0]
    assert f[COL["neg_fraction"]] > 0.1 and point[COL["neg_fraction"]] < 0.02
    assert f[COL["neg_depth"]] > 0.7 and point[COL["neg_depth"]] < 0.2
    assert f[COL["asymmetry"]] > 1.5 > 0.5 > point[COL["asymmetry"]]
    assert f[COL["ref_snr"]] > 30  # a static star underneath


def test_fading_source_is_oriented_and_cosmic_ray_is_sharp() -> None:
    sigma = 1.5
    star = gaussian(sigma, point_source_flux(40.0, sigma))
    fading = triplet_features(triplet(np.zeros((SIZE, SIZE)), star, -star, 2), psf_sigma=sigma)[0]
    assert fading[COL["negative"]] == 1 and fading[COL["snr"]] == pytest.approx(40.0, rel=0.15)
    assert fading[COL["flux_ratio"]] == pytest.approx(1.0, abs=0.2)  # against the reference when fading
    hot = np.zeros((SIZE, SIZE))
    hot[C, C] = 80.0
    ray = triplet_features(triplet(hot, np.zeros((SIZE, SIZE)), hot, 2), psf_sigma=sigma)[0]
    assert ray[COL["median_resid"]] > 0.8 and ray[COL["sharpness"]] > 2.0
    assert ray[COL["diff_size"]] < math.log(0.6)


def test_shapes_and_arguments() -> None:
    star = gaussian(1.5, 500.0)
    one = triplet(star, star, star, 0)
    assert triplet_features(one).shape == (1, len(FEATURE_NAMES))
    assert triplet_features(np.zeros((0, 3, SIZE, SIZE))).shape == (0, len(FEATURE_NAMES))
    f = triplet_features(np.stack([one, one]), bad_fraction=np.array([0.0, 0.25]))
    assert f[1, COL["bad_fraction"]] == 0.25
    with pytest.raises(ValueError, match="want"):
        triplet_features(np.zeros((2, 3, 9, 9)))
    with pytest.raises(ValueError, match="bad_fraction"):
        triplet_features(np.stack([one, one]), bad_fraction=np.zeros(3))
