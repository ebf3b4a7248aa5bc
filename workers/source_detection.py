"""
Point-source detection in one image with no reference: the classic matched-filter path.

The neural detector of the tile program needs a science/reference/difference triplet; a single
image (a first night of a field, a reference being built, a quick look) goes through the steps
below, made of the same per-tile operations:

1. Optional cosmic-ray cleaning (`skyblink.workers.cosmics.detect_cosmics`, L.A.Cosmic) when
   the read noise is given; the flagged pixels are cleaned and excluded from the background.
2. Background and per-pixel noise (`skyblink.workers.background.estimate_background`, SEP's
   mesh background) from the usable pixels (finite and not masked).
3. Noise normalisation: ``(image - background) / rms``, 0 on unusable pixels.
4. PSF matched filter (`skyblink.workers.matched_filter.matched_filter_snr`, a Gaussian of the
   image's FWHM): the S/N of a point source centred on each pixel, SEP's ``"matched"`` statistic
   with white noise of the background rms; near the edges it is renormalised for the weights
   that the filter's ``mode="nearest"`` folds onto the edge pixels. With ``noise="measured"``
   (the default) the map is then divided by its own robust rms (median minus 15.87th
   percentile), because real images have correlated noise (resampled mosaics, summed frames,
   JPEG): the white-noise map's rms is 1.24 on sep's NTT image, 1.8 on the HDF JPEG, 3.0 on the
   Spitzer mosaic and 6.6 on M13 (confusion included), against 1.00 on white noise and 1.07 on
   a synthetic field of 300 stars in 512x512 (sources raise the median a little). Unusable
   pixels cannot be peaks.
5. Local maxima of the S/N map at or above ``snr_threshold``
   (`skyblink.workers.peaks.find_peaks`, max-pool suppression over ``min_separation_px``),
   then deblending by prominence: a peak is its own source only if it rises at least
   ``min_prominence`` (default: the threshold) above the lowest S/N on the straight line to
   each brighter peak within 5 FWHM. Noise bumps and knots on a galaxy merge into it; two
   resolved stars (the map dips between them) stay two.
6. Centroid refinement: the Gaussian-windowed first moment of the background-subtracted pixels
   (SExtractor's ``XWIN``), iterated to its fixed point (the window's centre where the weighted
   first moment vanishes, unbiased for any symmetric profile).
7. Flux: the PSF-fit flux of a point source, from the peak S/N and the window offset.

When the FWHM is not given it is measured (`estimate_fwhm`): bright, isolated detections found
with a first guess, their Gaussian-weighted second moments deconvolved from the weight
(adaptive moments), the median over the sources, iterated three times from the new value.

Notes
-----
Pure numpy/scipy, thread-safe, no GPU. The positions are 0-based pixel coordinates: the centre
of the first pixel is (0, 0), so SExtractor's ``X_IMAGE`` is ``x + 1``.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
from astropy.table import Table
from scipy.ndimage import gaussian_filter1d, map_coordinates
from scipy.spatial import cKDTree

from skyblink.psf_units import FWHM_PER_SIGMA

from .background import estimate_background
from .cosmics import detect_cosmics
from .matched_filter import DEFAULT_SNR_THRESHOLD, matched_filter_snr, psf_norm
from .peaks import find_peaks

__all__ = ["NoiseModel", "detect_sources", "estimate_fwhm"]

#: Gaussian-window centroid iterations at most, and the shift (pixels) that ends them.
_CENTROID_ITERS = 16
_CENTROID_TOL = 1e-4
#: A refined centroid farther than this from its peak pixel falls back to the peak (pixels).
_MAX_CENTROID_SHIFT = 1.5
#: FWHM estimation: first guess (pixels), S/N of the sources it uses, passes.
_FWHM_GUESS = 3.0
_FWHM_MIN_SNR = 20.0
_FWHM_PASSES = 3
_FWHM_MIN_SOURCES = 3
_FWHM_RANGE = (0.8, 40.0)
#: Truncation of the Gaussian kernel, in sigma, as `skyblink.workers.matched_filter` uses it.
_TRUNCATE = 4.0
#: Deblending looks for a brighter peak within this many FWHM.
_DEBLEND_RADIUS_FWHM = 5.0
#: Percentile one Gaussian sigma below the median, and the pixels needed to measure the map's noise.
_ONE_SIGMA_BELOW = 100.0 * 0.5 * math.erfc(1.0 / math.sqrt(2.0))
_MIN_NOISE_PIXELS = 100
_NOISE_SAMPLE = 65536

#: How the S/N map's noise is known: ``"white"`` trusts the background rms of uncorrelated
#: pixels; ``"measured"`` measures the map's own rms (for correlated noise).
NoiseModel = Literal["white", "measured"]


def _usable_pixels(image: np.ndarray, mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Return the image as float32 and the bool map of finite, unmasked pixels."""
    if np.ndim(image) != 2:  # one image
        msg = f"image must be 2-D, got shape {np.shape(image)}"
        raise ValueError(msg)
    pixels = np.asarray(image, dtype=np.float32)
    usable = np.isfinite(pixels)
    if mask is not None:
        given = np.asarray(mask, dtype=bool)
        if given.shape != pixels.shape:
            msg = f"mask shape {given.shape} differs from image shape {pixels.shape}"
            raise ValueError(msg)
        usable &= ~given
    return pixels, usable


def _prepare(
    image: np.ndarray,
    mask: np.ndarray | None,
    *,
    mesh: int | tuple[int, int],
    filter_size: int | tuple[int, int],
    read_noise: float | None,
    gain: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Background-subtracted pixels (0 where unusable), the noise map and the usable map."""
    pixels, usable = _usable_pixels(image, mask)
    if read_noise is not None:
        cosmics = detect_cosmics(np.where(usable, pixels, np.nan), read_noise=read_noise, gain=gain, mask=~usable)
        pixels = np.asarray(cosmics.cleaned, dtype=np.float32)
        usable = usable & np.isfinite(pixels)
    background = estimate_background(pixels, mask=~usable, mesh=mesh, filter_size=filter_size)
    subtracted = np.where(usable, pixels - background.level, np.float32(0.0)).astype(np.float32)
    return subtracted, background.rms, usable


def _snr_map(
    subtracted: np.ndarray, rms: np.ndarray, usable: np.ndarray, fwhm_px: float, noise: NoiseModel
) -> tuple[np.ndarray, float]:
    """
    Matched-filter S/N (-inf on unusable pixels, so that no peak sits on one) and the factor
    by which the white-noise map was divided (1 for ``"white"``).
    """
    normalized = subtracted / rms
    snr = matched_filter_snr(normalized, fwhm_px) * _edge_correction(subtracted.shape, fwhm_px)
    factor = 1.0
    if noise == "measured":
        values = snr[usable]
        values = values[:: max(1, values.size // _NOISE_SAMPLE)]  # a regular subsample is enough
        if values.size >= _MIN_NOISE_PIXELS:
            median, low = np.percentile(values, [50.0, _ONE_SIGMA_BELOW])
            if median - low > 0:
                factor = float(median - low)
                snr = snr / np.float32(factor)
    return np.where(usable, snr, np.float32(-np.inf)), factor


def _edge_norm_1d(n: int, sigma: float) -> np.ndarray:
    """
    ``sqrt(sum_j w_ij^2)`` of the 1-D Gaussian filter at each of ``n`` positions, with its
    weights folded onto the edge pixel as ``mode="nearest"`` does.
    """
    radius = int(_TRUNCATE * sigma + 0.5)
    length = min(n, 4 * radius + 4)
    weights = gaussian_filter1d(np.eye(length), sigma, axis=0, mode="nearest", truncate=_TRUNCATE)
    edge = np.sqrt((weights * weights).sum(axis=1))
    interior = float(np.sqrt((weights[length // 2] ** 2).sum())) if length == n else float(edge[length // 2])
    norm = np.full(n, interior)
    band = min(radius + 1, n)
    norm[:band] = edge[:band]
    norm[n - band:] = edge[length - band:]
    return norm


def _edge_correction(shape: tuple[int, int], fwhm_px: float) -> np.ndarray:
    """
    Factor that turns the white-noise S/N map into the true one near the edges.

    `matched_filter_snr` divides by the interior ``sqrt(sum P^2)``; within ``4 sigma`` of an
    edge, ``mode="nearest"`` gives the edge pixel the weights of the kernel that falls off the
    image, so the filtered noise is larger. The true norm is separable: the product of the 1-D
    norms along y and x.
    """
    sigma = fwhm_px / FWHM_PER_SIGMA
    ny_norm = _edge_norm_1d(shape[0], sigma)
    nx_norm = _edge_norm_1d(shape[1], sigma)
    interior = psf_norm(fwhm_px)
    return (interior / (ny_norm[:, None] * nx_norm[None, :])).astype(np.float32)


def _peak_kernel(min_separation_px: float) -> int:
    """Odd max-pool edge: peaks at least ``min_separation_px`` apart (Chebyshev) both survive."""
    return max(3, 2 * math.ceil(min_separation_px) - 1) | 1


def _local_peaks(snr: np.ndarray, snr_threshold: float, kernel: int) -> tuple[np.ndarray, np.ndarray]:
    """(row, column) of the S/N map's local maxima at or above the threshold, brightest first."""
    finite = np.where(np.isfinite(snr), snr, np.float32(-1e30))
    peaks = find_peaks(finite[None], threshold=snr_threshold, kernel=kernel, top_k=finite.size)
    return peaks.y.astype(np.int64), peaks.x.astype(np.int64)


def _prominent(snr: np.ndarray, py: np.ndarray, px: np.ndarray, min_rise: float, radius: float) -> np.ndarray:
    """
    True for the peaks that rise at least ``min_rise`` above the lowest S/N on the straight line
    to every brighter peak within ``radius`` pixels (peaks sorted by decreasing S/N).

    The straight-line minimum stands for the saddle between the two peaks (it is at most the
    saddle, so a peak is merged only when the map truly does not dip enough between them).
    """
    keep = np.ones(len(py), dtype=bool)
    if len(py) < 2:  # a pair is needed
        return keep
    pairs = cKDTree(np.column_stack([px, py])).query_pairs(radius, output_type="ndarray")
    if len(pairs) == 0:
        return keep
    pairs = np.sort(pairs, axis=1)  # peaks are sorted brightest first: the lower index is the brighter
    bright, faint = pairs[:, 0], pairs[:, 1]
    steps = np.linspace(0.0, 1.0, math.ceil(radius) + 2)
    line_y = py[bright, None] + (py[faint] - py[bright])[:, None] * steps[None, :]
    line_x = px[bright, None] + (px[faint] - px[bright])[:, None] * steps[None, :]
    finite = np.where(np.isfinite(snr), snr, np.float32(-1e30))  # unusable pixels separate peaks
    values = map_coordinates(finite, [line_y.ravel(), line_x.ravel()], order=1, mode="nearest")
    saddle = values.reshape(line_y.shape).min(axis=1)
    rise = finite[py[faint], px[faint]] - saddle
    keep[faint[rise < min_rise]] = False
    return keep


def _window(
    subtracted: np.ndarray, usable: np.ndarray, py: np.ndarray, px: np.ndarray, radius: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Pixels of a (2r+1)^2 window around each peak: values, validity, and their x, y coordinates."""
    ny, nx = subtracted.shape
    offsets = np.arange(-radius, radius + 1)
    yy = py[:, None, None] + offsets[None, :, None] + np.zeros((1, 1, offsets.size), dtype=np.int64)
    xx = px[:, None, None] + offsets[None, None, :] + np.zeros((1, offsets.size, 1), dtype=np.int64)
    inside = (yy >= 0) & (yy < ny) & (xx >= 0) & (xx < nx)
    yc, xc = np.clip(yy, 0, ny - 1), np.clip(xx, 0, nx - 1)
    valid = inside & usable[yc, xc]
    values = np.where(valid, subtracted[yc, xc], np.float32(0.0)).astype(np.float64)
    return values, valid, xx.astype(np.float64), yy.astype(np.float64)


def _windowed_centroid(
    subtracted: np.ndarray, usable: np.ndarray, py: np.ndarray, px: np.ndarray, sigma: float
) -> tuple[np.ndarray, np.ndarray]:
    """
    Gaussian-windowed centroids (weight ``sigma``) iterated to the fixed point; (x, y).

    Each step moves the window centre by twice the weighted first moment (exact in one step for
    a Gaussian source of the window's width); a centroid that leaves the peak pixel by more than
    ``_MAX_CENTROID_SHIFT``, or whose weighted flux is not positive, keeps the peak pixel.
    """
    radius = max(2, math.ceil(3.0 * sigma))
    values, valid, xx, yy = _window(subtracted, usable, py, px, radius)
    cx, cy = px.astype(np.float64), py.astype(np.float64)
    active = np.ones(len(px), dtype=bool)
    for _ in range(_CENTROID_ITERS):  # a few passes, vectorized over sources
        dx = xx - cx[:, None, None]
        dy = yy - cy[:, None, None]
        weighted = values * np.exp(-0.5 * (dx * dx + dy * dy) / (sigma * sigma)) * valid
        total = weighted.sum(axis=(1, 2))
        good = active & (total > 0.0)
        with np.errstate(invalid="ignore", divide="ignore"):
            step_x = np.where(good, 2.0 * (weighted * dx).sum(axis=(1, 2)) / total, 0.0)
            step_y = np.where(good, 2.0 * (weighted * dy).sum(axis=(1, 2)) / total, 0.0)
        active &= total > 0.0
        cx, cy = cx + step_x, cy + step_y
        far = (np.abs(cx - px) > _MAX_CENTROID_SHIFT) | (np.abs(cy - py) > _MAX_CENTROID_SHIFT)
        far |= ~np.isfinite(cx) | ~np.isfinite(cy)
        cx, cy = np.where(far, px, cx), np.where(far, py, cy)
        active &= ~far
        if not (active & ((np.abs(step_x) > _CENTROID_TOL) | (np.abs(step_y) > _CENTROID_TOL))).any():
            break
    return cx, cy


def _adaptive_sigma(
    subtracted: np.ndarray, usable: np.ndarray, cx: np.ndarray, cy: np.ndarray, sigma_w: float
) -> np.ndarray:
    """
    Gaussian sigma of each source from its second moment under a Gaussian weight ``sigma_w``.

    For a Gaussian source of ``s`` the weighted variance per axis is ``m = s^2 w^2 / (s^2 + w^2)``,
    so ``s^2 = m w^2 / (w^2 - m)``; NaN where the moment is not usable (``m >= w^2`` or no flux).
    """
    py, px = np.rint(cy).astype(np.int64), np.rint(cx).astype(np.int64)
    radius = max(3, math.ceil(4.0 * sigma_w))
    values, valid, xx, yy = _window(subtracted, usable, py, px, radius)
    dx = xx - cx[:, None, None]
    dy = yy - cy[:, None, None]
    r2 = dx * dx + dy * dy
    weighted = values * np.exp(-0.5 * r2 / (sigma_w * sigma_w)) * valid
    total = weighted.sum(axis=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        m = 0.5 * (weighted * r2).sum(axis=(1, 2)) / total
        s2 = m * sigma_w**2 / (sigma_w**2 - m)
    ok = (total > 0.0) & (m > 0.0) & (m < 0.95 * sigma_w**2) & np.isfinite(s2)
    return np.where(ok, np.sqrt(np.where(ok, s2, 0.0)), np.nan)


def _isolated(cx: np.ndarray, cy: np.ndarray, others_x: np.ndarray, others_y: np.ndarray, radius: float) -> np.ndarray:
    """True for sources with no other detection within ``radius`` pixels."""
    if len(others_x) < 2:  # only the source itself
        return np.ones(len(cx), dtype=bool)
    tree = cKDTree(np.column_stack([others_x, others_y]))
    counts = np.array([len(n) for n in tree.query_ball_point(np.column_stack([cx, cy]), radius)])
    return counts <= 1


def _fwhm_from_prepared(subtracted: np.ndarray, rms: np.ndarray, usable: np.ndarray, guess_px: float) -> float:
    fwhm = float(guess_px)
    ny, nx = subtracted.shape
    for _ in range(_FWHM_PASSES):
        sigma = fwhm / FWHM_PER_SIGMA
        snr, _ = _snr_map(subtracted, rms, usable, fwhm, "measured")
        py, px = _local_peaks(snr, DEFAULT_SNR_THRESHOLD, _peak_kernel(fwhm))
        bright = snr[py, px] >= _FWHM_MIN_SNR
        cx, cy = _windowed_centroid(subtracted, usable, py[bright], px[bright], sigma)
        margin = 4.0 * sigma + 1.0
        keep = (cx >= margin) & (cx <= nx - 1 - margin) & (cy >= margin) & (cy <= ny - 1 - margin)
        keep &= _isolated(cx, cy, px.astype(np.float64), py.astype(np.float64), 4.0 * fwhm)
        if keep.sum() < _FWHM_MIN_SOURCES:
            keep = np.ones(len(cx), dtype=bool)  # crowded or sparse: use every bright source
        sigmas = _adaptive_sigma(subtracted, usable, cx[keep], cy[keep], sigma)
        sigmas = sigmas[np.isfinite(sigmas)]
        if sigmas.size < 1:
            break
        new = float(np.clip(FWHM_PER_SIGMA * np.median(sigmas), *_FWHM_RANGE))
        if abs(new - fwhm) < 0.01 * fwhm:
            return new
        fwhm = new
    return fwhm


def estimate_fwhm(
    image: np.ndarray,
    *,
    mask: np.ndarray | None = None,
    guess_px: float = _FWHM_GUESS,
    mesh: int | tuple[int, int] = 64,
    filter_size: int | tuple[int, int] = 3,
) -> float:
    """
    Measure the typical FWHM of the point sources of an image. Experimental.

    Parameters
    ----------
    image : (ny, nx) ndarray
        Pixels with their sky; non-finite pixels are ignored.
    mask : (ny, nx) bool ndarray, optional
        True on pixels to ignore.
    guess_px : float
        FWHM of the first detection pass, pixels.
    mesh, filter_size : int or (int, int)
        Background mesh and median filter (`skyblink.workers.estimate_background`).

    Returns
    -------
    float
        FWHM in pixels, within [0.8, 40]; ``guess_px`` when no source is bright enough.

    Notes
    -----
    Sources at S/N >= 20 in the matched filter of the current FWHM, at least ``4 sigma + 1``
    pixels from the edges and with no other detection within 4 FWHM (all bright ones where fewer
    than 3 are isolated), are centred by `detect_sources`' windowed centroid; the Gaussian
    sigma of each follows from its second moment under a Gaussian weight of the current sigma
    (``s^2 = m w^2 / (w^2 - m)``, exact for Gaussian sources), and the new FWHM is 2.3548 times
    the median. Three passes from ``guess_px`` (fewer when it changes by less than 1 %). The
    FWHM is that of the pixel-sampled profile (the one the matched filter sees). Galaxies and
    saturated stars broaden it where they are most of the bright sources.
    """
    subtracted, rms, usable = _prepare(image, mask, mesh=mesh, filter_size=filter_size, read_noise=None, gain=1.0)
    return _fwhm_from_prepared(subtracted, rms, usable, guess_px)


def detect_sources(
    image: np.ndarray,
    *,
    fwhm_px: float | None = None,
    snr_threshold: float = DEFAULT_SNR_THRESHOLD,
    mask: np.ndarray | None = None,
    min_separation_px: float | None = None,
    mesh: int | tuple[int, int] = 64,
    filter_size: int | tuple[int, int] = 3,
    read_noise: float | None = None,
    gain: float = 1.0,
    noise: NoiseModel = "measured",
    min_prominence: float | None = None,
) -> Table:
    """
    Detect point sources in one image by matched filtering. Experimental.

    Parameters
    ----------
    image : (ny, nx) ndarray
        Pixels with their sky (any units); non-finite pixels are ignored.
    fwhm_px : float, optional
        PSF FWHM in pixels; measured with `estimate_fwhm` when not given.
    snr_threshold : float
        Minimum matched-filter S/N of a source's peak pixel (a point source centred on the
        pixel): SEP's ``filter_type="matched"`` statistic with ``err = rms * noise_factor``.
    mask : (ny, nx) bool ndarray, optional
        True on pixels to ignore (saturated, bad columns); no source peaks on one.
    min_separation_px : float, optional
        Peaks at least this far apart (along x or y) are kept as two sources, closer ones are
        merged into the brighter (default: half the FWHM, at least 2 pixels).
    mesh, filter_size : int or (int, int)
        Background mesh (pixels) and median filter (meshes), as SEP's ``bw/bh`` and ``fw/fh``.
    read_noise : float, optional
        Read noise in electrons; when given, cosmic rays are flagged (L.A.Cosmic), cleaned and
        left out of the background first.
    gain : float
        Electrons per unit of ``image`` (for the cosmic-ray noise model only).
    noise : {"measured", "white"}
        ``"white"`` trusts the background rms as uncorrelated pixel noise (SEP's matched
        statistic); ``"measured"`` divides the S/N map by its robust rms, so that the threshold
        holds on images with correlated noise.
    min_prominence : float, optional
        S/N by which a peak must rise above the saddle towards a brighter peak to be deblended
        from it (default: ``snr_threshold``).

    Returns
    -------
    astropy.table.Table
        One row per source, by decreasing S/N, with columns ``x``, ``y`` (0-based pixels,
        float64), ``flux`` (point-source PSF flux in image units, float64) and ``snr``
        (float64); zero rows, same columns, when nothing is detected. ``meta`` holds
        ``fwhm_px``, ``snr_threshold``, ``min_separation_px`` and ``noise_factor`` (what the
        white-noise S/N map was divided by; 1 for ``noise="white"``).

    Raises
    ------
    ValueError
        If ``image`` is not 2-D, ``mask`` has another shape, or ``fwhm_px`` or
        ``snr_threshold`` is not positive.

    Notes
    -----
    The flux is ``snr * rms / sqrt(sum P^2)`` at the peak pixel (the least-squares amplitude of
    the unit-sum PSF ``P``), corrected by ``exp(d^2 / (4 sigma^2))`` for the offset ``d`` of the
    refined centroid from the pixel: exact for Gaussian point sources, low for extended ones.
    """
    if fwhm_px is not None and not fwhm_px > 0:
        msg = f"fwhm_px must be positive, got {fwhm_px!r}"
        raise ValueError(msg)
    if not snr_threshold > 0:
        msg = f"snr_threshold must be positive, got {snr_threshold!r}"
        raise ValueError(msg)
    subtracted, rms, usable = _prepare(image, mask, mesh=mesh, filter_size=filter_size, read_noise=read_noise,
                                       gain=gain)
    if fwhm_px is None:
        fwhm = _fwhm_from_prepared(subtracted, rms, usable, _FWHM_GUESS)
    else:
        fwhm = float(fwhm_px)
    separation = float(min_separation_px) if min_separation_px is not None else max(2.0, 0.5 * fwhm)
    sigma = fwhm / FWHM_PER_SIGMA
    snr, noise_factor = _snr_map(subtracted, rms, usable, fwhm, noise)
    py, px = _local_peaks(snr, snr_threshold, _peak_kernel(separation))
    rise = snr_threshold if min_prominence is None else float(min_prominence)
    keep = _prominent(snr, py, px, rise, _DEBLEND_RADIUS_FWHM * fwhm)
    py, px = py[keep], px[keep]
    cx, cy = _windowed_centroid(subtracted, usable, py, px, sigma)
    peak_snr = snr[py, px].astype(np.float64)
    offset2 = (cx - px) ** 2 + (cy - py) ** 2
    amplitude = peak_snr * noise_factor * rms[py, px].astype(np.float64) / psf_norm(fwhm)
    flux = amplitude * np.exp(offset2 / (4.0 * sigma * sigma))
    meta = {"fwhm_px": fwhm, "snr_threshold": float(snr_threshold), "min_separation_px": separation,
            "noise_factor": noise_factor}
    return Table({"x": cx, "y": cy, "flux": flux, "snr": peak_snr}, meta=meta)
