"""The control-point sampling grid and warp against an exact per-pixel astropy resampling."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.wcs import WCS
from scipy.ndimage import map_coordinates

from skyblink.config import SimConfig
from skyblink.sim.ccd_image import render_ccd
from skyblink.workers import sampling_grid, warp


def exact_resample(reference: np.ndarray, ref_wcs: WCS, sci_wcs: WCS, shape: tuple[int, int]) -> np.ndarray:
    """Every science pixel mapped through both WCS by astropy, sampled bilinearly."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    world = sci_wcs.all_pix2world(np.column_stack([xx.ravel(), yy.ravel()]), 0)
    ref_xy = ref_wcs.all_world2pix(world, 0)
    coords = np.stack([ref_xy[:, 1].reshape(shape), ref_xy[:, 0].reshape(shape)])
    return map_coordinates(reference, coords, order=1, mode="constant", cval=np.nan)


@pytest.mark.parametrize("exposure", [0, 2])
def test_warped_reference_matches_exact_resampling_on_stars(exposure: int) -> None:
    config = SimConfig(fields=1, exposures_per_field=3, image_size=512, seed=11)
    science = render_ccd(config, 0, 0, exposure=exposure)
    reference = render_ccd(config, 0, 0, exposure=None)
    sci_wcs, ref_wcs = WCS(science.wcs_header), WCS(reference.wcs_header)
    ref = reference.pixels.astype(np.float64)
    grid = sampling_grid(sci_wcs, ref_wcs, science.pixels.shape, step=32)
    ours = warp(ref, grid)
    exact = exact_resample(ref, ref_wcs, sci_wcs, science.pixels.shape)
    # The grid itself: interpolated positions within a hundredth of a pixel of the exact ones.
    yy, xx = np.mgrid[0:512:7, 0:512:7]
    world = sci_wcs.all_pix2world(np.column_stack([xx.ravel(), yy.ravel()]), 0)
    exact_xy = ref_wcs.all_world2pix(world, 0)
    assert np.abs(grid[0][yy, xx].ravel() - exact_xy[:, 0]).max() < 0.01
    assert np.abs(grid[1][yy, xx].ravel() - exact_xy[:, 1]).max() < 0.01
    # Stars: aperture sums (background subtracted) agree within 1 %.
    parts = [p for p in science.truth_parts if np.atleast_1d(p["type"])[0] == "star"]
    x = np.concatenate([np.atleast_1d(p["x"]) for p in parts])
    y = np.concatenate([np.atleast_1d(p["y"]) for p in parts])
    mag = np.concatenate([np.atleast_1d(p["mag"]) for p in parts])
    sky = np.nanmedian(exact)
    checked = 0
    for i in np.argsort(mag):
        px, py = int(round(x[i])), int(round(y[i]))
        if not (8 <= px < 504 and 8 <= py < 504):
            continue
        box = (slice(py - 5, py + 6), slice(px - 5, px + 6))
        a, b = np.nansum(ours[box] - sky), np.nansum(exact[box] - sky)
        if b < 5000 or exact[box].max() > 50000:  # faint or saturated: not a flux test
            continue
        assert abs(a / b - 1) < 0.01, (x[i], y[i], a, b)
        checked += 1
        if checked == 25:
            break
    assert checked >= 10
