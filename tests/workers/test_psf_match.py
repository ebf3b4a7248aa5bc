"""The solved PSF-matching kernel (`skyblink.workers.psf_match`) and the noise pedestal of sky-subtracted frames."""

from __future__ import annotations

import numpy as np
from scipy.ndimage import correlate, gaussian_filter, shift

from skyblink.workers.difference import matched_difference
from skyblink.workers.psf_match import (
    KernelGrid,
    kernel_half_width,
    solve_kernel,
    solve_kernel_grid,
    source_pixels,
)
from skyblink.workers.tile_unit import noise_pedestal

FWHM_PER_SIGMA = 2.3548


def _stars(rng: np.random.Generator, size: int, n: int) -> np.ndarray:
    image = np.zeros((size, size))
    ys, xs = rng.integers(12, size - 12, (2, n))
    image[ys, xs] = 10 ** rng.uniform(3.0, 5.0, n)
    return image


def test_kernel_recovers_psf_shape_shift_and_flux_ratio() -> None:
    """Sharp reference, broader science 1.07x brighter and shifted by 0.3 px: the difference of the stars vanishes."""
    rng = np.random.default_rng(1)
    truth = _stars(rng, 192, 60)
    reference = gaussian_filter(truth, 3.0 / FWHM_PER_SIGMA)
    # A non-Gaussian science PSF: a core and a wing, shifted.
    science = 1.07 * shift(0.8 * gaussian_filter(truth, 4.5 / FWHM_PER_SIGMA) + 0.2 * gaussian_filter(truth, 9.0 / FWHM_PER_SIGMA),
                           (0.3, -0.2), order=3)
    noise = 5.0
    sci = science + rng.normal(0, noise, science.shape)
    ref = reference + rng.normal(0, noise, reference.shape)
    usable = np.ones(sci.shape, bool)
    half = kernel_half_width(4.5, 3.0)
    solved = solve_kernel(ref, sci, source_pixels(ref, np.full_like(ref, noise), sci, np.full_like(sci, noise), usable, half),
                          half, image_rms=noise, target_rms=noise)
    assert solved is not None
    assert abs(solved.flux_ratio - 1.07) < 0.02
    residual = (sci - correlate(ref, solved.kernel, mode="nearest") - solved.background)[16:-16, 16:-16]
    expected = noise * np.hypot(1.0, solved.noise_factor)
    assert np.std(residual) < 1.15 * expected
    # The Gaussian match of the FWHMs leaves the stars' wings and the flux ratio behind.
    gauss = matched_difference(sci.astype(np.float32), ref.astype(np.float32), science_fwhm_px=4.5, reference_fwhm_px=3.0, mesh=64)
    kern = matched_difference(sci.astype(np.float32), ref.astype(np.float32), science_fwhm_px=4.5, reference_fwhm_px=3.0, mesh=64,
                              psf_match="kernel")
    inner = (slice(16, -16), slice(16, -16))
    assert np.std(kern.triplet[2][inner]) < 1.2 < np.std(gauss.triplet[2][inner])
    # The noise map is the difference's noise: unit scatter in sigma units on empty sky.
    empty = (gaussian_filter(truth, 6.0) < 1e-3)[inner]
    assert 0.85 < np.std(kern.triplet[2][inner][empty]) < 1.15


def test_kernel_matches_the_science_onto_a_broader_reference() -> None:
    rng = np.random.default_rng(2)
    truth = _stars(rng, 160, 50)
    ys, xs = np.nonzero(truth)
    # The transient goes where no star is within 20 px (a star's dipole would pull its centroid).
    ty, tx = max(((y, x) for y in range(30, 131, 5) for x in range(30, 131, 5)), key=lambda p: np.hypot(ys - p[0], xs - p[1]).min())
    assert np.hypot(ys - ty, xs - tx).min() > 20
    science = gaussian_filter(truth, 2.5 / FWHM_PER_SIGMA) + rng.normal(0, 3.0, truth.shape)
    # The reference is 0.4 px off: the kernel that convolves the science may not follow it (the
    # science's sources keep their positions; unconstrained, the transient moved 0.4 px).
    reference = 0.9 * shift(gaussian_filter(truth, 4.0 / FWHM_PER_SIGMA), (0.4, 0.0), order=3) + rng.normal(0, 3.0, truth.shape)
    transient = np.zeros_like(truth)
    transient[ty, tx] = 3000.0
    science += gaussian_filter(transient, 2.5 / FWHM_PER_SIGMA)
    out = matched_difference(science.astype(np.float32), reference.astype(np.float32), science_fwhm_px=2.5,
                             reference_fwhm_px=4.0, psf_match="kernel")
    z = out.triplet[2]
    assert z[ty - 2:ty + 3, tx - 2:tx + 3].max() > 20  # the transient stands out ...
    cut = out.difference[ty - 3:ty + 4, tx - 3:tx + 4].astype(float)
    yy, xx = np.mgrid[ty - 3:ty + 4, tx - 3:tx + 4]
    assert abs((cut * yy).sum() / cut.sum() - ty) < 0.1 and abs((cut * xx).sum() / cut.sum() - tx) < 0.1  # ... where it is
    # In the science's flux units: the transient's flux survives the matching.
    assert abs(out.difference[ty - 10:ty + 11, tx - 10:tx + 11].sum() / 3000.0 - 1.0) < 0.1
    # The stars leave the dipoles of the 0.4 px shift, but no more than the Gaussian match leaves.
    gauss = matched_difference(science.astype(np.float32), reference.astype(np.float32), science_fwhm_px=2.5,
                               reference_fwhm_px=4.0).triplet[2]
    inner = (slice(12, -12), slice(12, -12))
    assert np.sqrt(np.mean(z[inner] ** 2)) < np.sqrt(np.mean(gauss[inner] ** 2))


def test_too_few_source_pixels_fall_back_to_the_gaussian() -> None:
    rng = np.random.default_rng(3)
    sci = rng.normal(0, 1.0, (96, 96)).astype(np.float32)
    ref = rng.normal(0, 1.0, (96, 96)).astype(np.float32)
    assert solve_kernel(ref, sci, np.zeros(sci.shape, bool), 5) is None
    a = matched_difference(sci, ref, science_fwhm_px=3.0, reference_fwhm_px=2.0, psf_match="kernel")
    b = matched_difference(sci, ref, science_fwhm_px=3.0, reference_fwhm_px=2.0)
    np.testing.assert_array_equal(a.difference, b.difference)


def test_noise_pedestal_is_the_subtracted_sky() -> None:
    rng = np.random.default_rng(4)
    raw = rng.poisson(2000.0, (200, 200)).astype(np.float32) + rng.normal(0, 10.0, (200, 200)).astype(np.float32)
    assert noise_pedestal(raw, 10.0) == 0.0  # a raw frame's noise is its counts'
    pedestal = noise_pedestal(raw - 2000.0, 10.0)  # sky-subtracted: the sky comes back
    assert abs(pedestal - 2000.0) < 150.0


def test_an_implausible_flux_ratio_is_a_failed_fit() -> None:
    """A kernel whose sum is outside 0.1-10 (confused or too few sources) is not used: the Gaussian is."""
    rng = np.random.default_rng(5)
    truth = _stars(rng, 128, 30)
    ref = gaussian_filter(truth, 1.0) + rng.normal(0, 2.0, truth.shape)
    sci = -0.5 * gaussian_filter(truth, 1.5) + rng.normal(0, 2.0, truth.shape)  # an anti-correlated "science"
    fit = source_pixels(ref, np.full_like(ref, 2.0), sci, np.full_like(sci, 2.0), np.ones(sci.shape, bool), 4)
    assert solve_kernel(ref, sci, fit, 4, image_rms=2.0, target_rms=2.0) is None


def test_kernel_grid_follows_a_shift_that_changes_across_the_image() -> None:
    """
    A science registered 0.6 px off the reference on its left half and 0.6 px the other way on its
    right (a distortion one kernel cannot take): the kernel grid's star residuals are a tenth of
    the dipoles the window's one kernel leaves (cells whose fit reaches across the seam keep some).
    """
    rng = np.random.default_rng(2)
    truth = _stars(rng, 320, 240)
    reference = gaussian_filter(truth, 3.0 / FWHM_PER_SIGMA)
    broad = gaussian_filter(truth, 4.5 / FWHM_PER_SIGMA)
    science = np.where(np.arange(320)[None, :] < 160, shift(broad, (0.0, 0.6), order=3), shift(broad, (0.0, -0.6), order=3))
    noise = 5.0
    sci = science + rng.normal(0, noise, science.shape)
    ref = reference + rng.normal(0, noise, reference.shape)
    half = kernel_half_width(4.5, 3.0)
    fit = source_pixels(ref, np.full_like(ref, noise), sci, np.full_like(sci, noise), np.ones(sci.shape, bool), half)
    one = solve_kernel(ref, sci, fit, half, image_rms=noise, target_rms=noise)
    grid = solve_kernel_grid(ref, sci, fit, half, image_rms=noise, target_rms=noise)
    assert one is not None and isinstance(grid, KernelGrid)
    assert len(grid.kernels) == len(grid.kernels[0]) == 4  # 320 px in cells of 80
    stars = (truth > 0) & (np.abs(np.arange(320)[None, :] - 160) > 40)  # where no cell across the seam blends in
    stars[:16] = stars[-16:] = stars[:, :16] = stars[:, -16:] = False
    near = np.zeros_like(stars)
    for dy in range(-3, 4):
        for dx in range(-3, 4):
            near |= np.roll(stars, (dy, dx), axis=(0, 1))

    def rms(model: np.ndarray) -> float:
        return float(np.sqrt(np.mean(((sci - model) / noise)[near] ** 2)))

    with_one = rms(correlate(ref, one.kernel, mode="nearest") + one.background)
    with_grid = rms(grid.apply(ref) + grid.background)
    assert with_grid < 0.1 * with_one, (with_grid, with_one)  # measured: 2.0 against 28.9 sigma
    assert np.allclose(grid.flux_ratio[40:-40, 40:-40], 1.0, atol=0.03)
