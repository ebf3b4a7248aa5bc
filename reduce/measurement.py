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
Pure numpy/scipy, thread-safe, vectorized over stamps. Experimental.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from skyblink.psf_units import FWHM_PER_SIGMA

__all__ = ["StampShapes", "measure_ccd_fwhm", "measure_stamps", "windowed_centroid", "windowed_centroids"]

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
    Iterate SExtractor's windowed centroid on one image (`windowed_centroids` of one).

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
    x, y, ok = windowed_centroids(np.asarray(image, np.float64)[None], np.array([x0]), np.array([y0]), sigma,
                                  max_iter=max_iter, tol=tol, max_shift=max_shift)
    return float(x[0]), float(y[0]), bool(ok[0])


def windowed_centroids(images: np.ndarray, x0: np.ndarray, y0: np.ndarray, sigma: float | np.ndarray, *,
                       max_iter: int = 16, tol: float = 1e-4,
                       max_shift: float = 2.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """
    SExtractor's windowed centroid on a stack of images at once, one source each.

    Each step moves the position by twice the first moment of the pixels under a Gaussian window
    of ``sigma`` centred on it (read within ``ceil(4 sigma) + 1`` pixels of its rounded
    position; zero beyond the image), until a step is shorter than ``tol``.

    Parameters
    ----------
    images : (n, ny, nx) ndarray
        Background-subtracted pixels (finite).
    x0, y0 : (n,) ndarray
        Starting positions (0-based pixel coordinates).
    sigma : float or (n,) ndarray
        Window sigma of all the images, or of each.
    max_iter, tol, max_shift
        As `windowed_centroid`.

    Returns
    -------
    x, y : (n,) ndarray
        The centroids; the start where one did not converge (a non-positive windowed flux, or a
        centroid farther than ``max_shift`` from the start).
    converged : (n,) ndarray of bool
    """
    n, ny, nx = images.shape
    sigma = np.broadcast_to(np.asarray(sigma, np.float64), (n,))
    halves = np.ceil(4.0 * sigma).astype(np.int64) + 1  # each image's own window
    half = int(halves.max(initial=1))
    steps = np.arange(-half, half + 1)
    # Beyond an image's own window the weights are zero (one array shape for windows of all sizes).
    reach = (np.abs(steps)[None, :, None] <= halves[:, None, None]) & (np.abs(steps)[None, None, :] <= halves[:, None, None])
    x0, y0 = np.asarray(x0, np.float64), np.asarray(y0, np.float64)
    x, y = x0.copy(), y0.copy()
    out_x, out_y = x0.copy(), y0.copy()
    converged = np.zeros(n, bool)
    active = np.arange(n)
    for _ in range(max_iter):
        if not len(active):
            break
        rows = np.round(y[active]).astype(np.int64)[:, None] + steps  # image coordinates of the window
        cols = np.round(x[active]).astype(np.int64)[:, None] + steps
        window = images[active[:, None, None], np.clip(rows, 0, ny - 1)[:, :, None], np.clip(cols, 0, nx - 1)[:, None, :]]
        inside = reach[active] & ((rows >= 0) & (rows < ny))[:, :, None] & ((cols >= 0) & (cols < nx))[:, None, :]
        ddx = cols[:, None, :] - x[active, None, None]
        ddy = rows[:, :, None] - y[active, None, None]
        s2 = sigma[active, None, None]
        w = np.exp(-(ddx * ddx + ddy * ddy) / (2.0 * s2 * s2)) * np.where(inside, window, 0.0)
        total = w.sum(axis=(1, 2))
        with np.errstate(invalid="ignore", divide="ignore"):
            sx, sy = 2.0 * (w * ddx).sum(axis=(1, 2)) / total, 2.0 * (w * ddy).sum(axis=(1, 2)) / total
        nx_, ny_ = x[active] + sx, y[active] + sy
        failed = ~(total > 0) | (np.hypot(nx_ - x0[active], ny_ - y0[active]) > max_shift)
        done = ~failed & (np.hypot(sx, sy) < tol)
        x[active], y[active] = nx_, ny_
        finished = active[done]
        out_x[finished], out_y[finished], converged[finished] = x[finished], y[finished], True
        active = active[~(failed | done)]
    out_x[active], out_y[active], converged[active] = x[active], y[active], True  # max_iter reached
    return out_x, out_y, converged


#: Stamps measured at once (bounds the temporaries: a few 63x63 float64 arrays a stamp).
_CHUNK = 512
#: Connectivity of a footprint within each stamp of a stack (4-connected, as SExtractor's), none across.
_PLANAR = np.zeros((3, 3, 3), bool)
_PLANAR[1] = ndimage.generate_binary_structure(2, 1)


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

    Notes
    -----
    Vectorized over stacks of stamps: the footprints' labels and moments and the centroid
    iterations run once for a stack; the smoothing once for each PSF in it.
    """
    n = difference.shape[0]
    half = difference.shape[-1] // 2
    dx, dy = offsets[:, 0].astype(np.float64).copy(), offsets[:, 1].astype(np.float64).copy()
    shapes = StampShapes(dx, dy, np.zeros(n, bool), np.zeros(n, np.float64), np.full(n, np.nan), np.zeros(n, bool))
    fwhm = np.asarray(fwhm_px, np.float64)
    for start in range(0, n, _CHUNK):
        chunk = np.arange(start, min(start + _CHUNK, n))
        images = np.nan_to_num(difference[chunk].astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        long = _measure_trails(images, chunk, fwhm[chunk], half, threshold, shapes)
        todo = chunk[~long]
        x, y, ok = windowed_centroids(images[~long], half + dx[todo], half + dy[todo], fwhm[todo] / FWHM_PER_SIGMA)
        dx[todo] = np.where(ok, x - half, dx[todo])
        dy[todo] = np.where(ok, y - half, dy[todo])
        shapes.converged[todo] = ok
    return shapes


def _measure_trails(images: np.ndarray, index: np.ndarray, fwhm: np.ndarray, half: int, threshold: float,
                    shapes: StampShapes) -> np.ndarray:
    """
    Find the trailed stamps of a stack and record them in ``shapes`` (at ``index``).

    Returns which of the stack are long trails, located here by their first moment.
    """
    s = images.shape[-1]
    # Matched-filter the stamps (a Gaussian of the PSF's sigma, renormalised to unit noise) so
    # that a faint trail's pixels stand out of the noise and stay connected; one filter per PSF.
    smooth = np.empty_like(images)
    for value in np.unique(fwhm):
        same = fwhm == value
        sigma = float(value) / FWHM_PER_SIGMA
        smooth[same] = ndimage.gaussian_filter(images[same], (0.0, sigma, sigma), mode="constant") * (
            2.0 * math.sqrt(math.pi) * sigma)
    labels, count = ndimage.label(smooth > threshold, structure=_PLANAR)
    label = _footprint_labels(labels, smooth, half + shapes.dx[index], half + shapes.dy[index])
    # Moments over the chosen footprints' pixels only, each summed by its footprint's label.
    chosen = np.zeros(count + 1, bool)
    chosen[label[label > 0]] = True
    where = np.flatnonzero(chosen[labels.ravel()])
    lab = labels.ravel()[where]
    gy, gx = np.divmod(where % (s * s), s)
    wts = smooth.ravel()[where]

    def per_label(weights: np.ndarray | None) -> np.ndarray:
        return np.bincount(lab, weights=weights, minlength=count + 1)[label]

    area = per_label(None)
    total = per_label(wts)
    with np.errstate(invalid="ignore", divide="ignore"):
        mx, my = per_label(wts * gx) / total, per_label(wts * gy) / total
        centre_x, centre_y = np.zeros(count + 1), np.zeros(count + 1)
        centre_x[label], centre_y[label] = mx, my
        ddx, ddy = gx - centre_x[lab], gy - centre_y[lab]
        cxx, cyy, cxy = per_label(wts * ddx * ddx) / total, per_label(wts * ddy * ddy) / total, per_label(wts * ddx * ddy) / total
    touches_edge = per_label(((gx == 0) | (gy == 0) | (gx == s - 1) | (gy == s - 1)).astype(np.float64)) > 0
    measured = (label > 0) & (area >= 5)  # SExtractor's minimum area
    covariance = np.stack([np.stack([cxx, cxy], -1), np.stack([cxy, cyy], -1)], -2)
    covariance[~measured] = np.eye(2)
    evals, evecs = np.linalg.eigh(covariance)
    a2, b2 = evals[:, 1], evals[:, 0]
    # The thresholded footprint truncates the PSF: compare with the minor axis, not sigma.
    trail = np.sqrt(np.maximum(12.0 * (a2 - np.maximum(b2, 0.0)), 0.0))
    # Elongated, not a round footprint that a noise bump lengthened: a trail of 1.5 FWHM on a
    # PSF-smoothed stamp has a2 / b2 of about 1.5.
    elongated = a2 > 1.4 * np.maximum(b2, 1e-12)
    trailed = measured & (trail > TRAIL_MIN_FWHM * fwhm) & elongated & ~touches_edge
    rows = index[trailed]
    shapes.trailed[rows] = True
    shapes.trail_length_px[rows] = trail[trailed]
    shapes.trail_angle_deg[rows] = np.degrees(np.arctan2(evecs[trailed, 1, 1], evecs[trailed, 0, 1])) % 180.0
    # Longer than the centroid's window: the trail's middle is its first moment.
    long = trailed & (trail > LONG_TRAIL_FWHM * fwhm)
    shapes.dx[index[long]], shapes.dy[index[long]] = mx[long] - half, my[long] - half
    shapes.converged[index[long]] = True
    return long


def _footprint_labels(labels: np.ndarray, image: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """
    Each stamp's footprint: the label of the brightest labelled pixel within one pixel of its
    (x, y), or 0 where there is none.
    """
    m, s = labels.shape[0], labels.shape[-1]
    rows = np.round(y).astype(np.int64)[:, None] + np.arange(-1, 2)
    cols = np.round(x).astype(np.int64)[:, None] + np.arange(-1, 2)
    at = (np.arange(m)[:, None, None], np.clip(rows, 0, s - 1)[:, :, None], np.clip(cols, 0, s - 1)[:, None, :])
    inside = (((rows >= 0) & (rows < s))[:, :, None] & ((cols >= 0) & (cols < s))[:, None, :]).reshape(m, 9)
    near = np.where(inside, labels[at].reshape(m, 9), 0)
    values = image[at].reshape(m, 9)
    best = np.argmax(np.where(near > 0, values, -np.inf), axis=1)
    return np.where((near > 0).any(axis=1), near[np.arange(m), best], 0)


def measure_ccd_fwhm(image: np.ndarray) -> float:
    """
    Measure the PSF FWHM (px) on a whole CCD image with the worker side's `estimate_fwhm`: what
    `NightStore.ccd_context` calls for a CCD whose header gives no PSF size. Imported at the call, so
    that reducing a night whose headers give the PSF (the simulator's, DECam's) needs no worker code.
    """
    from skyblink.workers.source_detection import estimate_fwhm  # noqa: PLC0415 - the worker side, only when measuring

    return estimate_fwhm(image)
