"""
Measurements on the difference-image stamps of candidates: windowed centroids and trails.

A worker reports a candidate at the detector's peak (a pixel plus a regressed sub-pixel offset).
The reduce step refines it on the candidate's 63x63 difference stamp (in sigma units):

* point sources: SExtractor's windowed centroid (``XWIN``), a Gaussian window of the PSF's
  sigma iterated to convergence, which reaches the Cramer-Rao limit of a Gaussian PSF to within a
  few per cent;
* trails (a moving object's motion during the exposure): the second moments of the connected
  pixels above ``threshold`` around the peak give the trail's length and direction; a
  uniform segment of length L blurred by a Gaussian of sigma s has a variance of s^2 + L^2 / 12
  along it, so L = sqrt(12 (a^2 - b^2)) (moments of the PSF-smoothed stamp); a trail longer than
  ``LONG_TRAIL_FWHM`` is located by its first moment (the object's position at mid-exposure),
  shorter ones by the windowed centroid.

Notes
-----
Pure numpy/scipy, thread-safe. Experimental.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

__all__ = ["StampShapes", "measure_stamps", "windowed_centroid"]

_FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))
#: A detection is trailed when its trail is longer than this many PSF FWHM (the simulator's rule).
TRAIL_MIN_FWHM = 1.5
#: Trails longer than this many FWHM are located by their first moment, shorter ones (and
#: footprints that a neighbour or a host galaxy elongated) by the windowed centroid.
LONG_TRAIL_FWHM = 3.0


@dataclass(frozen=True, slots=True)
class StampShapes:
    """
    Per-stamp measurements (arrays of the number of stamps).

    Attributes
    ----------
    dx, dy : ndarray
        Refined position minus the stamp's centre pixel (pixels), to add to ``round(x)``.
    trailed : ndarray of bool
    trail_length_px : ndarray
        0 for point sources.
    trail_angle_deg : ndarray
        Counter-clockwise from +x in the CCD's pixels, in [0, 180); NaN for point sources.
    converged : ndarray of bool
        The centroid converged (otherwise ``dx, dy`` are the input offsets).
    """

    dx: np.ndarray
    dy: np.ndarray
    trailed: np.ndarray
    trail_length_px: np.ndarray
    trail_angle_deg: np.ndarray
    converged: np.ndarray


def windowed_centroid(image: np.ndarray, x0: float, y0: float, sigma: float, *, max_iter: int = 16,
                      tol: float = 1e-4, max_shift: float = 2.0) -> tuple[float, float, bool]:
    """
    Iterate SExtractor's windowed centroid on one image.

    Parameters
    ----------
    image : (ny, nx) ndarray
        Background-subtracted pixels.
    x0, y0 : float
        Starting position (0-based pixel coordinates of ``image``).
    sigma : float
        Window sigma in pixels (the PSF's: FWHM / 2.355).
    max_iter, tol : int, float
        Iterations and the shift (pixels) at which it stops.
    max_shift : float
        Farther than this from the start the result is discarded.

    Returns
    -------
    x, y : float
        The centroid, or the start when it did not converge.
    converged : bool
    """
    ny, nx = image.shape
    half = int(math.ceil(4.0 * sigma)) + 1
    x, y = x0, y0
    for _ in range(max_iter):
        cx, cy = int(round(x)), int(round(y))
        ys, xs = slice(max(cy - half, 0), min(cy + half + 1, ny)), slice(max(cx - half, 0), min(cx + half + 1, nx))
        gy, gx = np.mgrid[ys, xs]
        ddx, ddy = gx - x, gy - y
        w = np.exp(-(ddx * ddx + ddy * ddy) / (2.0 * sigma * sigma)) * image[ys, xs]
        total = float(w.sum())
        if not total > 0:
            return x0, y0, False
        sx, sy = 2.0 * float((w * ddx).sum()) / total, 2.0 * float((w * ddy).sum()) / total
        x, y = x + sx, y + sy
        if math.hypot(x - x0, y - y0) > max_shift:
            return x0, y0, False
        if math.hypot(sx, sy) < tol:
            return x, y, True
    return x, y, True


def measure_stamps(difference: np.ndarray, offsets: np.ndarray, fwhm_px: np.ndarray, *,
                   threshold: float = 3.0) -> StampShapes:
    """
    Refine positions and measure trails on difference stamps.

    Parameters
    ----------
    difference : (n, s, s) ndarray
        Difference stamps in sigma units, each centred on its candidate's rounded pixel.
    offsets : (n, 2) ndarray
        The candidates' (dx, dy) from their stamp's centre pixel (``x - round(x)``).
    fwhm_px : (n,) ndarray
        PSF FWHM of each difference image in pixels.
    threshold : float
        Pixels above this (sigma) belong to a trail's footprint.

    Returns
    -------
    StampShapes
    """
    n = difference.shape[0]
    half = difference.shape[-1] // 2
    dx, dy = offsets[:, 0].astype(np.float64).copy(), offsets[:, 1].astype(np.float64).copy()
    trailed = np.zeros(n, bool)
    length = np.zeros(n)
    angle = np.full(n, np.nan)
    converged = np.zeros(n, bool)
    for i in range(n):
        image = np.nan_to_num(difference[i].astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        sigma = float(fwhm_px[i]) / _FWHM_PER_SIGMA
        # Matched-filter the stamp (a Gaussian of the PSF's sigma, renormalised to unit noise)
        # so that a faint trail's pixels stand out of the noise and stay connected.
        smooth = ndimage.gaussian_filter(image, sigma, mode="constant") * (2.0 * math.sqrt(math.pi) * sigma)
        footprint = _footprint(smooth, half + dx[i], half + dy[i], threshold)
        if footprint is not None and footprint.sum() >= 5:  # noqa: PLR2004 - SExtractor's minimum area
            gy, gx = np.nonzero(footprint)
            wts = smooth[gy, gx]
            total = wts.sum()
            mx, my = (wts * gx).sum() / total, (wts * gy).sum() / total
            cxx = (wts * (gx - mx) ** 2).sum() / total
            cyy = (wts * (gy - my) ** 2).sum() / total
            cxy = (wts * (gx - mx) * (gy - my)).sum() / total
            evals, evecs = np.linalg.eigh(np.array([[cxx, cxy], [cxy, cyy]]))
            a2, b2 = float(evals[1]), float(evals[0])
            # The thresholded footprint truncates the PSF: compare with the minor axis, not sigma.
            trail = math.sqrt(max(12.0 * (a2 - max(b2, 0.0)), 0.0))
            touches_edge = gx.min() == 0 or gy.min() == 0 or gx.max() == image.shape[1] - 1 or gy.max() == image.shape[0] - 1
            # Elongated, not a round footprint that a noise bump lengthened: a trail of 1.5 FWHM
            # on a PSF-smoothed stamp has a2 / b2 of about 1.5.
            elongated = a2 > 1.4 * max(b2, 1e-12)
            if trail > TRAIL_MIN_FWHM * float(fwhm_px[i]) and elongated and not touches_edge:
                trailed[i] = True
                length[i] = trail
                angle[i] = math.degrees(math.atan2(evecs[1, 1], evecs[0, 1])) % 180.0
                if trail > LONG_TRAIL_FWHM * float(fwhm_px[i]):
                    # Longer than the centroid's window: the trail's middle is its first moment.
                    dx[i], dy[i] = mx - half, my - half
                    converged[i] = True
                    continue
        x, y, ok = windowed_centroid(image, half + dx[i], half + dy[i], sigma)
        if ok:
            dx[i], dy[i] = x - half, y - half
        converged[i] = ok
    return StampShapes(dx, dy, trailed, length, angle, converged)


def _footprint(image: np.ndarray, x: float, y: float, threshold: float) -> np.ndarray | None:
    """The connected pixels above ``threshold`` that hold the brightest pixel next to (x, y)."""
    labels, _ = ndimage.label(image > threshold)
    cy, cx = int(round(y)), int(round(x))
    window = labels[max(cy - 1, 0) : cy + 2, max(cx - 1, 0) : cx + 2]
    values = image[max(cy - 1, 0) : cy + 2, max(cx - 1, 0) : cx + 2]
    if window.size == 0 or not (window > 0).any():
        return None
    label = window.flat[int(np.argmax(np.where(window > 0, values, -np.inf)))]
    return labels == label
