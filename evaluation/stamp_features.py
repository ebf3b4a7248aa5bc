"""
Physical real/bogus features of a sigma-unit triplet, the classic hand-made ones of Bloom et al.
(2012), Brink et al. (2013) and Goldstein et al. (2015), measured the same way on any survey's
stamps.

Input is the classifier's own input (`skyblink.engines.stamps.external_stamps`, or the tile
program's stamps): (N, 3, 63, 63) science, reference and difference, each in its own sky-noise
units, the candidate at the centre pixel. Every feature is measured within a few pixels of the
centre (`WINDOW_RADIUS`: a Rubin cutout block-averaged to 0.6"/px has 9 x 9 real pixels, the rest
is noise fill) and, where it depends on scale, in units of the PSF's Gaussian sigma, so that it
means the same on ZTF's 1"/px and Rubin's (or the simulator's) 0.6"/px stamps.

The difference is first *oriented*: multiplied by the sign of its strongest matched-filter
response within 2 px of the centre, so that a fading source (science minus reference negative)
is measured like a brightening one; ``negative`` records the sign. The PSF is a circular
Gaussian; its sigma is given per stamp or, by default, the adaptive second-moment size of the
science stamp at the centre (a host galaxy under the source inflates it: that is then what
``diff_size`` compares against).

Features (`FEATURE_NAMES`, columns of `triplet_features`):

=================== ====================================================================
``snr``             PSF-weighted (matched-filter) S/N of the oriented difference at its peak
``negative``        1 when the centre of the difference is negative (a fading source)
``peak_offset``     distance of that peak from the centre, in PSF sigmas
``diff_size``       log of the difference's adaptive-moment sigma over the PSF sigma
``ellipticity``     of the difference's adaptive moments, |(a^2 - b^2) / (a^2 + b^2)| (distortion), 0 .. 1
``sharpness``       DAOFIND sharpness: (peak - mean of the footprint's other pixels) / PSF amplitude
``asymmetry``       sum |D - D turned 180 deg| / sum |D|, r <= 3 px about the centroid of |D| (dipole ~ 2)
``neg_fraction``    fraction of pixels within `WINDOW_RADIUS` below -3 sigma in the oriented difference
``neg_depth``       deepest negative pixel there over the peak pixel (dipole depth)
``flux_ratio``      matched flux of the difference over that of the science (reference when fading)
``sci_snr``         matched-filter S/N of the science at the peak
``ref_snr``         matched-filter S/N of the reference at the peak (host, variable star)
``psf_chi2``        log10 of the reduced chi2 of a PSF (amplitude only) fit to the difference, r <= 3 px
``second_peak``     second local maximum of the filtered difference within the window over the first
``median_resid``    peak minus its 3 x 3 median, over the peak (a single hot pixel or cosmic ray ~ 1)
``bad_fraction``    fraction of masked / non-finite / zero pixels of the raw cutouts (given, else 0)
=================== ====================================================================

Notes
-----
numpy and scipy only, deterministic; about 1.3 ms a stamp on one core. Experimental. The S/N
maps (``snr``, ``sci_snr``, ``ref_snr``, ``second_peak``) are the pipeline's own matched filter,
`skyblink.psf_filter.matched_filter_snr`, at the PSF's FWHM.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from skyblink.psf_filter import matched_filter_snr
from skyblink.psf_units import FWHM_PER_SIGMA

__all__ = ["FEATURE_NAMES", "WINDOW_RADIUS", "adaptive_moments", "triplet_features"]

#: Radius (stamp pixels) within which every feature is measured.
WINDOW_RADIUS = 4
#: Names of the columns of `triplet_features`, in order.
FEATURE_NAMES: tuple[str, ...] = (
    "snr", "negative", "peak_offset", "diff_size", "ellipticity", "sharpness", "asymmetry", "neg_fraction",
    "neg_depth", "flux_ratio", "sci_snr", "ref_snr", "psf_chi2", "second_peak", "median_resid", "bad_fraction",
)

_HALF = 15  # half-size of the crop every feature is measured on (31 x 31 about the centre)
_SIGMA_RANGE = (0.6, 3.5)  # PSF sigmas (px) outside this are clipped


def adaptive_moments(image: np.ndarray, centre: tuple[float, float], *, sigma0: float = 1.5,
                     iterations: int = 6) -> tuple[float, float, float, float]:
    """
    Gaussian-weighted (adaptive) second moments of a source, the weight matched to the source.

    Parameters
    ----------
    image : (ny, nx) ndarray
        Background-subtracted; negative pixels are ignored (noise).
    centre : (y, x)
        Starting position.
    sigma0 : float
        Starting weight sigma (px).
    iterations : int
        Refinements of the centroid and the weight.

    Returns
    -------
    (sigma, ellipticity, y, x)
        ``sigma``: the source's Gaussian sigma (px), ``sqrt((Ixx + Iyy) / 2)`` of the unweighted
        equivalent, clipped to 0.3 .. 6; ``ellipticity``: ``sqrt(e1**2 + e2**2)`` with
        ``e1 = (Ixx - Iyy) / (Ixx + Iyy)``, ``e2 = 2 Ixy / (Ixx + Iyy)``; the final centroid. When
        the weighted flux is not positive, ``sigma0``, 0 and the starting centre.
    """
    data = np.clip(np.asarray(image, dtype=np.float64), 0.0, None)
    yy, xx = np.indices(data.shape, dtype=np.float64)
    cy, cx = float(centre[0]), float(centre[1])
    sigma, ell = sigma0, 0.0
    for _ in range(iterations):
        weight = data * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma**2))
        total = weight.sum()
        if not total > 0:
            return sigma0, 0.0, float(centre[0]), float(centre[1])
        ny_, nx_ = (weight * yy).sum() / total, (weight * xx).sum() / total
        if math.hypot(ny_ - centre[0], nx_ - centre[1]) <= 3.0:  # stay on the candidate
            cy, cx = ny_, nx_
        iyy = (weight * (yy - cy) ** 2).sum() / total
        ixx = (weight * (xx - cx) ** 2).sum() / total
        ixy = (weight * (yy - cy) * (xx - cx)).sum() / total
        trace = ixx + iyy
        if not trace > 0:
            break
        # For a Gaussian source of sigma s under a Gaussian weight of sigma w, the weighted second
        # moment is (s^-2 + w^-2)^-1 per axis; solve for s.
        m = trace / 2
        inv = 1.0 / m - 1.0 / sigma**2
        s = 1.0 / math.sqrt(inv) if inv > 1.0 / 36.0 else 6.0
        sigma = float(np.clip(s, 0.3, 6.0))
        ell = math.hypot((ixx - iyy) / trace, 2 * ixy / trace)
    return sigma, float(min(ell, 1.0)), cy, cx


def _gaussian(shape: tuple[int, int], sigma: float, cy: float, cx: float) -> np.ndarray:
    yy, xx = np.indices(shape, dtype=np.float64)
    return np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma**2))


def _one(sci: np.ndarray, ref: np.ndarray, diff: np.ndarray, sigma: float | None) -> list[float]:
    """Features of one triplet cropped to (2 _HALF + 1)^2 about the centre; ``bad_fraction`` left out."""
    c = _HALF
    if sigma is None or not np.isfinite(sigma):
        sigma = adaptive_moments(sci, (c, c))[0]
    sigma = float(np.clip(sigma, *_SIGMA_RANGE))
    grid = np.indices(diff.shape, dtype=np.float64)
    yy, xx = grid[0], grid[1]
    r_centre = np.hypot(yy - c, xx - c)
    window = r_centre <= WINDOW_RADIUS
    fwhm = sigma * FWHM_PER_SIGMA
    filtered = matched_filter_snr(diff, fwhm).astype(np.float64)  # the pipeline's own S/N map
    near = r_centre <= 2.0
    sign = 1.0 if filtered[near][np.argmax(np.abs(filtered[near]))] >= 0 else -1.0
    d = sign * diff.astype(np.float64)
    f = sign * filtered
    masked = np.where(window, f, -np.inf)
    py, px = (int(v) for v in np.unravel_index(int(np.argmax(masked)), f.shape))
    snr = float(f[py, px])
    offset = math.hypot(py - c, px - c) / sigma
    # PSF amplitude at the peak (least squares, the Gaussian's peak 1) and its chi2, r <= 3 px
    kernel = _gaussian(d.shape, sigma, py, px)
    fit = np.hypot(yy - py, xx - px) <= 3.0
    amp = float((d[fit] * kernel[fit]).sum() / (kernel[fit] ** 2).sum())
    chi2 = float(((d[fit] - amp * kernel[fit]) ** 2).sum() / max(int(fit.sum()) - 1, 1))
    # DAOFIND sharpness over the footprint r <= max(1.5, 2 sigma) px, the peak pixel left out
    foot = (np.hypot(yy - py, xx - px) <= max(1.5, 2.0 * sigma)) & ~((yy == py) & (xx == px))
    sharp = float((d[py, px] - d[foot].mean()) / amp) if amp > 0 else 0.0
    # point asymmetry about the centroid of |D| (> 2 sigma, within the window), pixels within 3 px:
    # the mirror of pixel i is round(2 c) - i, so the centre may fall on a pixel or between two
    lobes = (np.abs(d) > 2.0) & window
    wsum = float(np.abs(d[lobes]).sum())
    ay = float((np.abs(d) * yy)[lobes].sum() / wsum) if wsum > 0 else float(py)
    ax = float((np.abs(d) * xx)[lobes].sum() / wsum) if wsum > 0 else float(px)
    my, mx = round(2 * ay), round(2 * ax)
    disk = np.hypot(yy - my / 2, xx - mx / 2) <= 3.0
    iy, ix = yy[disk].astype(int), xx[disk].astype(int)
    mirror = d[np.clip(my - iy, 0, d.shape[0] - 1), np.clip(mx - ix, 0, d.shape[1] - 1)]
    asym = float(np.abs(d[iy, ix] - mirror).sum() / max(float(np.abs(d[iy, ix]).sum()), 1e-9))
    size, ell, _, _ = adaptive_moments(d, (py, px), sigma0=sigma)
    peak = max(float(d[py, px]), 1.0)
    neg_fraction = float((d[window] < -3.0).mean())
    neg_depth = float(max(0.0, -float(d[window].min())) / peak)
    sci_snr = float(matched_filter_snr(sci, fwhm)[py, px])
    ref_snr = float(matched_filter_snr(ref, fwhm)[py, px])
    # both in S/N units of the same filter, so their ratio is the ratio of matched fluxes
    flux_ratio = float(np.clip(f[py, px] / max(sci_snr if sign > 0 else ref_snr, 1.0), -3.0, 3.0))
    # second local maximum of the filtered difference in the window, at least max(2, 2 sigma) px away
    local = (f == ndimage.maximum_filter(f, size=3, mode="nearest")) & window
    local &= np.hypot(yy - py, xx - px) >= max(2.0, 2.0 * sigma)
    second = float(f[local].max() / f[py, px]) if local.any() and f[py, px] > 0 else 0.0
    resid = d - ndimage.median_filter(d, size=3, mode="nearest")
    median_resid = float(resid[py, px] / peak)
    return [snr, 1.0 if sign < 0 else 0.0, offset, math.log(size / sigma), ell, sharp, asym, neg_fraction,
            neg_depth, flux_ratio, sci_snr, ref_snr, math.log10(max(chi2, 1e-3)), max(second, -1.0), median_resid]


def triplet_features(stamps: np.ndarray, *, psf_sigma: np.ndarray | float | None = None,
                     bad_fraction: np.ndarray | None = None) -> np.ndarray:
    """
    Return the physical real/bogus features of sigma-unit triplets (module notes). Experimental.

    Parameters
    ----------
    stamps : (N, 3, ny, nx) or (3, ny, nx) ndarray
        Science, reference, difference in sigma units, the candidate at pixel (ny // 2, nx // 2);
        ny, nx >= 31.
    psf_sigma : float or (N,) ndarray, optional
        PSF Gaussian sigma in stamp pixels; NaN or None: measured on the science stamp.
    bad_fraction : (N,) ndarray, optional
        Fraction of bad pixels of each raw cutout (the sigma-unit stamps have them filled); 0 when
        not given.

    Returns
    -------
    (N, len(FEATURE_NAMES)) ndarray of float64
        Columns in `FEATURE_NAMES` order; (0, len(FEATURE_NAMES)) for no stamps.

    Raises
    ------
    ValueError
        The stamps are not triplets of at least 31 x 31 pixels, or an argument's length differs.
    """
    x = np.asarray(stamps)
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4 or x.shape[1] != 3 or min(x.shape[2:]) < 2 * _HALF + 1:
        msg = f"stamps of shape {np.shape(stamps)}: want (N, 3, ny, nx) with ny, nx >= {2 * _HALF + 1}"
        raise ValueError(msg)
    n = len(x)
    sigmas = np.full(n, np.nan) if psf_sigma is None else np.broadcast_to(np.asarray(psf_sigma, np.float64), (n,))
    bad = np.zeros(n) if bad_fraction is None else np.asarray(bad_fraction, np.float64)
    if len(bad) != n:
        msg = f"bad_fraction has {len(bad)} values for {n} stamps"
        raise ValueError(msg)
    cy, cx = x.shape[2] // 2, x.shape[3] // 2
    crop = x[:, :, cy - _HALF : cy + _HALF + 1, cx - _HALF : cx + _HALF + 1].astype(np.float64)
    out = np.empty((n, len(FEATURE_NAMES)))
    for i in range(n):
        s = float(sigmas[i])
        out[i, :-1] = _one(crop[i, 0], crop[i, 1], crop[i, 2], s if np.isfinite(s) else None)
    out[:, -1] = bad
    return out
