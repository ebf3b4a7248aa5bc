"""The torch tile program reproduces the CPU (numpy) functions on the same simulated tiles."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.wcs import WCS

torch = pytest.importorskip("torch")

from skyblink.config import SimConfig  # noqa: E402
from skyblink.sim.ccd_image import render_ccd  # noqa: E402
from skyblink.workers import estimate_background, normalized_triplet, sampling_grid, warp  # noqa: E402
from skyblink.workers import tile_program as tp  # noqa: E402
from skyblink.workers.difference import matched_difference  # noqa: E402


@pytest.fixture(scope="module")
def tile():
    config = SimConfig(fields=1, exposures_per_field=2, image_size=320, seed=5)
    science = render_ccd(config, 0, 0, exposure=1)
    reference = render_ccd(config, 0, 0, exposure=None)
    grid = sampling_grid(WCS(science.wcs_header), WCS(reference.wcs_header), science.pixels.shape)
    return science, reference, grid


def test_background_matches_numpy(tile) -> None:
    science, _, _ = tile
    mask = science.mask > 0
    cpu = estimate_background(science.pixels.astype(np.float64), mask=mask, mesh=64)
    level, rms = tp.background(tp.as_tensor(science.pixels)[None].double(), mask=torch.from_numpy(mask)[None], mesh=64)
    scale = cpu.global_rms
    assert np.abs(level[0].numpy() - cpu.level).max() < 1e-3 * scale  # H, W = 320: not a multiple of 64
    assert np.abs(rms[0].numpy() - cpu.rms).max() < 1e-3 * scale


def test_blur_matches_scipy() -> None:
    from scipy.ndimage import gaussian_filter

    x = np.random.default_rng(2).normal(size=(2, 50, 70)).astype(np.float32)
    out = tp.gaussian_blur(torch.from_numpy(x), 1.7).numpy()
    for i in range(2):
        np.testing.assert_allclose(out[i], gaussian_filter(x[i], 1.7, mode="nearest"), atol=1e-5)


def test_warp_matches_numpy(tile) -> None:
    science, reference, grid = tile
    cpu = warp(reference.pixels.astype(np.float32), grid)
    dev = tp.warp_reference(tp.as_tensor(reference.pixels).float(), torch.from_numpy(grid)[None])[0].numpy()
    assert np.array_equal(np.isnan(cpu), np.isnan(dev))
    finite = np.isfinite(cpu)
    assert np.abs(dev[finite] - cpu[finite]).max() < 1e-3 * np.abs(cpu[finite]).max()


def test_triplet_matches_numpy(tile) -> None:
    science, reference, grid = tile
    ref_cpu = warp(reference.pixels.astype(np.float32), grid)
    cpu = normalized_triplet(science.pixels, ref_cpu, science_fwhm_px=3.1, reference_fwhm_px=2.2, scale=1.03,
                             science_mask=science.mask > 0)
    ref_dev = tp.warp_reference(tp.as_tensor(reference.pixels).float(), torch.from_numpy(grid)[None])
    dev = tp.normalized_triplet(tp.as_tensor(science.pixels)[None], ref_dev, science_fwhm_px=3.1, reference_fwhm_px=2.2,
                                scale=1.03, science_mask=torch.from_numpy(science.mask > 0)[None])[0].numpy()
    assert dev.shape == cpu.shape == (3, 320, 320)
    # sigma units; float32 rounding on star cores thousands of sigma bright adds a relative term
    assert (np.abs(dev - cpu) <= 2e-3 + 1e-5 * np.abs(cpu)).all()


@pytest.mark.parametrize(("science_fwhm", "reference_fwhm"), [(3.1, 2.2), (2.0, 3.0)])
def test_kernel_matched_triplet_matches_numpy(tile, science_fwhm: float, reference_fwhm: float) -> None:
    """
    The kernel grid solved in torch (the device program's: a kernel per 80-pixel cell, blended) gives the numpy
    path's triplet: measured max 0.025 sigma (a bright star's core, float32), 99.94 % of pixels within 1e-4 sigma.
    """
    science, reference, grid = tile
    ref_cpu = warp(reference.pixels.astype(np.float32), grid)
    options = {"science_fwhm_px": science_fwhm, "reference_fwhm_px": reference_fwhm, "scale": 1.03, "psf_match": "kernel"}
    cpu = matched_difference(science.pixels, ref_cpu, science_mask=science.mask > 0, **options).triplet
    ref_dev = tp.warp_reference(tp.as_tensor(reference.pixels).float(), torch.from_numpy(grid)[None])
    dev = tp.normalized_triplet(tp.as_tensor(science.pixels)[None], ref_dev, science_mask=torch.from_numpy(science.mask > 0)[None],
                                **options)[0].numpy()
    assert (np.abs(dev - cpu) <= 2e-3 + 1e-4 * np.abs(cpu)).mean() > 0.9999
    assert np.abs(dev - cpu).max() < 0.1
    # and it is not the Gaussian match
    gauss = matched_difference(science.pixels, ref_cpu, science_mask=science.mask > 0,
                               **{**options, "psf_match": "gaussian"}).triplet
    assert np.abs(gauss[2] - cpu[2]).max() > 0.1


def test_kernel_match_of_a_batch_is_each_windows_own(tile) -> None:
    """
    Windows matched in one batch (all their cells solved together) give each window's own triplet, and
    a window with no source to fit falls back to the Gaussian match alone, without touching the others.
    """
    science, reference, grid = tile
    ref_dev = tp.warp_reference(tp.as_tensor(reference.pixels).float(), torch.from_numpy(grid)[None])
    sci = tp.as_tensor(science.pixels)[None].float()
    mask = torch.from_numpy(science.mask > 0)[None]
    sky = torch.full_like(sci, float(np.median(science.pixels)))
    options = {"science_fwhm_px": 3.1, "reference_fwhm_px": 2.2, "scale": 1.03, "psf_match": "kernel"}
    alone = tp.normalized_triplet(sci, ref_dev, science_mask=mask, **options)
    blank = tp.normalized_triplet(sky, ref_dev * 0 + float(np.median(reference.pixels)), science_mask=mask, **options)
    batch = tp.normalized_triplet(torch.cat([sci, sky, torch.flip(sci, (2,))]),
                                  torch.cat([ref_dev, ref_dev * 0 + float(np.median(reference.pixels)), torch.flip(ref_dev, (2,))]),
                                  science_mask=torch.cat([mask, mask, torch.flip(mask, (2,))]), **options)
    flipped = tp.normalized_triplet(torch.flip(sci, (2,)), torch.flip(ref_dev, (2,)), science_mask=torch.flip(mask, (2,)),
                                    **options)
    gaussian = tp.normalized_triplet(sky, ref_dev * 0 + float(np.median(reference.pixels)), science_mask=mask,
                                     **{**options, "psf_match": "gaussian"})
    assert torch.allclose(batch[0], alone[0], atol=1e-4) and torch.allclose(batch[2], flipped[0], atol=1e-4)
    assert torch.equal(blank, gaussian) and torch.allclose(batch[1], blank[0], atol=1e-5)
    assert not torch.allclose(alone, tp.normalized_triplet(sci, ref_dev, science_mask=mask,
                                                           **{**options, "psf_match": "gaussian"}), atol=0.1)


def test_padded_taps_and_fixed_passes_give_the_public_triplet(tile) -> None:
    """The device program's form (taps padded to a fixed width, fixed histogram passes) changes no result."""
    science, reference, grid = tile
    ref_dev = tp.warp_reference(tp.as_tensor(reference.pixels).float(), torch.from_numpy(grid)[None])
    sci = tp.as_tensor(science.pixels)[None]
    mask = torch.from_numpy(science.mask > 0)[None]
    public = tp.normalized_triplet(sci, ref_dev, science_fwhm_px=3.1, reference_fwhm_px=2.2, scale=1.03, science_mask=mask)
    sci_taps, ref_taps, sci_factor, ref_factor = tp.psf_match_taps(3.1, 2.2, radius=8)
    assert sci_taps.shape == ref_taps.shape == (17,) and float(ref_taps.sum()) == pytest.approx(1.0)
    fixed = tp.gaussian_triplet(sci, ref_dev, scale=torch.tensor(1.03), science_mask=mask, taps=(sci_taps, ref_taps),
                                noise_factors=(torch.tensor(sci_factor), torch.tensor(ref_factor)), passes=24,
                                operators=tp.background_operators(320, 320, 64))
    assert (torch.abs(fixed - public) <= 1e-4 + 1e-6 * torch.abs(public)).all()


def test_zero_padded_taps_blur_as_the_gaussian_and_spread_no_nan() -> None:
    x = torch.from_numpy(np.random.default_rng(4).normal(size=(1, 40, 50)).astype(np.float32))
    x[0, 20, 25] = float("nan")
    own = tp.blur_taps(x, tp.gaussian_taps(1.2))  # radius 5
    padded = tp.blur_taps(x, tp.gaussian_taps(1.2, radius=16))
    assert torch.equal(torch.isnan(own), torch.isnan(padded)) and torch.isnan(own).sum() == 11 * 11
    finite = ~torch.isnan(own)
    assert torch.allclose(own[finite], padded[finite], atol=1e-6)
    with pytest.raises(ValueError, match="smaller than the Gaussian"):
        tp.gaussian_taps(3.0, radius=4)
