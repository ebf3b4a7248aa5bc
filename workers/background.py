"""
Mesh-based background and noise estimation, reproducing SEP (SExtractor's background).

The steps and their rules are SEP's (``sep.Background``), so that a background subtracted here
is the one SEP would subtract, edges and partial meshes included:

1. The image is cut into ``bh x bw`` meshes from the lower-left corner; the last row and column
   of meshes are partial when the image is not a multiple of the mesh.
2. Per mesh: a mesh with fewer than half of its pixels usable (masked or non-finite pixels are
   not) is *bad*. Otherwise the mean and standard deviation of its pixels are computed, then
   again over the pixels within 2 sigma of that mean; those define a histogram of about one bin
   per pixel spanning +-5 sigma. On the histogram, the median, mean and sigma are iterated with
   +-3 sigma cuts about the median until sigma changes by less than 1e-4 (relative) or drops
   below 0.1 bin (100 passes at most). The background is the mode estimate
   ``2.5 median - 1.5 mean`` unless ``|mean - median| >= 0.3 sigma``, in which case the median;
   the noise is the clipped sigma.
3. Bad meshes take the average of the nearest good meshes (Euclidean distance on the mesh grid).
4. Median filter of ``fh x fw`` meshes whose window shrinks symmetrically at the grid edges (the
   corner mesh is never filtered); a mesh takes the median background, and the median noise of
   the same window, when the median differs from it by at least ``filter_threshold``.
5. Natural bicubic spline through the mesh nodes, extrapolated beyond the outermost nodes.
   SEP places node ``k`` at pixel ``(k + 0.5) bw - 0.5`` along x but at ``(k + 0.5) bh`` along y,
   and the last (partial) mesh's node where a full mesh would have it; so does this module.

Notes
-----
Pure numpy, thread-safe, allocates no GPU memory; no Python loop over meshes or pixels (the
histogram iterations loop over passes, vectorized over meshes). The torch port lives in
`skyblink.workers.tile_program` and shares the spline operator and the histogram rules, so
both compute the same background.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

__all__ = ["Background", "estimate_background"]

MIN_GOOD_FRACTION = 0.5  # SEP's BACK_MINGOODFRAC: a mesh needs this fraction of usable pixels
HISTOGRAM_NSIGMA = 5.0  # SEP's QUANTIF_NSIGMA: the histogram spans mean +- this many sigma
HISTOGRAM_MAX_LEVELS = 4096  # SEP's QUANTIF_NMAXLEVELS
HISTOGRAM_STEP = math.sqrt(2.0 / math.pi) * HISTOGRAM_NSIGMA / 4.0  # bins per pixel (QUANTIF_AMIN = 4)
PRECLIP_NSIGMA = 2.0  # the cut before the histogram
CONVERGED = 1e-4  # relative change of the histogram sigma that ends the iterations
MIN_SIGMA_BINS = 0.1  # the iterations also end when sigma drops below this many bins
SKEW_LIMIT = 0.3  # |mean - median| / sigma at or beyond which the median replaces the mode estimate


@dataclass(frozen=True, slots=True)
class Background:
    """
    A background model. Stable.

    Attributes
    ----------
    level : (ny, nx) ndarray of float32
        Background at every pixel.
    rms : (ny, nx) ndarray of float32
        Background noise (1 sigma) at every pixel.
    global_level, global_rms : float
        Medians of the (filtered) mesh values, SEP's ``globalback`` and ``globalrms``.
    mesh_level, mesh_rms : (gy, gx) ndarray of float32
        The mesh grid after bad-mesh interpolation and median filtering.
    """

    level: np.ndarray
    rms: np.ndarray
    global_level: float
    global_rms: float
    mesh_level: np.ndarray
    mesh_rms: np.ndarray


def as_pair(value: int | tuple[int, int], name: str, minimum: int) -> tuple[int, int]:
    """
    Return ``value`` as a (y, x) pair of ints, both at least ``minimum``.

    Parameters
    ----------
    value : int or (int, int)
        One size for both axes, or (along y, along x).
    name : str
        Parameter name for the error message.
    minimum : int
        Smallest allowed size.

    Returns
    -------
    (int, int)

    Raises
    ------
    ValueError
        A size is below ``minimum`` or ``value`` is not one int or a pair.
    """
    pair = (value, value) if isinstance(value, int | np.integer) else tuple(value)
    if len(pair) != 2 or any(int(v) != v or v < minimum for v in pair):
        msg = f"{name} must be an int >= {minimum} or a (y, x) pair of them, got {value!r}"
        raise ValueError(msg)
    return int(pair[0]), int(pair[1])


# ------------------------------------------------------------------------------------------ spline


@lru_cache(maxsize=64)
def spline_operator(n_nodes: int, mesh: int, n_pixels: int, *, axis: str, curved: bool = True) -> np.ndarray:
    """
    Return the (n_pixels, n_nodes) matrix of SEP's natural cubic spline along one axis.

    The pixel map is ``A_y @ grid @ A_x.T``. Experimental.

    Parameters
    ----------
    n_nodes : int
        Meshes along the axis.
    mesh : int
        Mesh size along the axis in pixels.
    n_pixels : int
        Pixels along the axis.
    axis : {"y", "x"}
        SEP places node ``k`` at ``(k + 0.5) mesh`` along y and at ``(k + 0.5) mesh - 0.5`` along x.
    curved : bool
        False for SEP's x axis of a grid one mesh high: it then interpolates linearly along x
        (its curvature terms along x are those of the y pass, all zero).

    Returns
    -------
    (n_pixels, n_nodes) ndarray of float64, read-only

    Notes
    -----
    Natural boundary conditions (zero second derivative at the outermost nodes); pixels beyond
    them use the cubic of the outermost interval, as SEP does.
    """
    if n_nodes == 1:
        operator = np.ones((n_pixels, 1))
        operator.setflags(write=False)
        return operator
    offset = 0.0 if axis == "y" else 0.5
    pos = (np.arange(n_pixels) + offset) / mesh - 0.5
    k = np.clip(np.floor(pos).astype(np.int64), 0, n_nodes - 2)
    d = pos - k
    cd = 1.0 - d
    second = _sep_curvature(n_nodes) if curved else np.zeros((n_nodes, n_nodes))
    eye = np.eye(n_nodes)
    operator = (cd[:, None] * eye[k] + d[:, None] * eye[k + 1]
                + (cd**3 - cd)[:, None] * second[k] + (d**3 - d)[:, None] * second[k + 1])
    operator.setflags(write=False)
    return operator


def _sep_curvature(n_nodes: int) -> np.ndarray:
    """
    The (n, n) matrix giving SEP's curvature terms from the node values (unit node spacing).

    SEP solves the natural-spline system ``y''[i-1] + 4 y''[i] + y''[i+1] = 6 (y[i-1] - 2 y[i]
    + y[i+1])`` by forward elimination and divides by 6 at every step of the back substitution
    (``D[i] = (c[i] D[i+1] + u[i]) / 6``), which is not quite ``y'' / 6`` away from the two last
    nodes. Its maps are made with these values, so ours are too.
    """
    curvature = np.zeros((n_nodes, n_nodes))
    if n_nodes < 3:
        return curvature
    eye = np.eye(n_nodes)
    c = np.zeros(n_nodes)
    u = np.zeros((n_nodes, n_nodes))
    for i in range(1, n_nodes - 1):  # over nodes of one axis, once per cached shape
        c[i] = -1.0 / (c[i - 1] + 4.0)
        u[i] = c[i] * (u[i - 1] - 6.0 * (eye[i + 1] + eye[i - 1] - 2.0 * eye[i]))
    for i in range(n_nodes - 2, 0, -1):
        curvature[i] = (c[i] * curvature[i + 1] + u[i]) / 6.0
    return curvature


def _spline_to_pixels(grid: np.ndarray, mesh: tuple[int, int], shape: tuple[int, int]) -> np.ndarray:
    ay = spline_operator(grid.shape[0], mesh[0], shape[0], axis="y")
    ax = spline_operator(grid.shape[1], mesh[1], shape[1], axis="x", curved=grid.shape[0] > 1)
    return (ay @ grid.astype(np.float64) @ ax.T).astype(np.float32)


# ------------------------------------------------------------------------------------ mesh stats


def _mesh_statistics(
    image: np.ndarray, usable: np.ndarray, mesh: tuple[int, int], nsigma: float, max_iters: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per-mesh background and sigma (float32, NaN for bad meshes) in SEP's way; (gy, gx) each."""
    ny, nx = image.shape
    bh, bw = mesh
    gy, gx = -(-ny // bh), -(-nx // bw)
    n_mesh = gy * gx
    mesh_id = ((np.arange(ny) // bh)[:, None] * gx + (np.arange(nx) // bw)[None, :]).ravel()
    flat = image.ravel()
    ids = mesh_id[usable.ravel()]
    pix = flat[usable.ravel()]
    pix64 = pix.astype(np.float64)
    heights = np.minimum(bh, ny - np.arange(gy) * bh)
    widths = np.minimum(bw, nx - np.arange(gx) * bw)
    area = (heights[:, None] * widths[None, :]).ravel().astype(np.float32)

    n1 = np.bincount(ids, minlength=n_mesh).astype(np.float64)
    bad = n1.astype(np.float32) < area * np.float32(MIN_GOOD_FRACTION)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.bincount(ids, weights=pix64, minlength=n_mesh) / n1
        var = np.bincount(ids, weights=pix64 * pix64, minlength=n_mesh) / n1 - mean * mean
    sigma = np.sqrt(np.where(var > 0.0, var, 0.0))
    lcut = (mean - PRECLIP_NSIGMA * sigma).astype(np.float32)
    hcut = (mean + PRECLIP_NSIGMA * sigma).astype(np.float32)
    keep = (pix >= lcut[ids]) & (pix <= hcut[ids])
    n2 = np.bincount(ids[keep], minlength=n_mesh).astype(np.float64)
    bad |= n2 == 0
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.bincount(ids[keep], weights=pix64[keep], minlength=n_mesh) / n2
        var = np.bincount(ids[keep], weights=pix64[keep] ** 2, minlength=n_mesh) / n2 - mean * mean
    sigma = np.sqrt(np.where(var > 0.0, var, 0.0))
    mean = np.where(bad, 0.0, mean)
    sigma = np.where(bad, 0.0, sigma)
    nlevels = np.minimum((HISTOGRAM_STEP * n2 + 1.0).astype(np.int64), HISTOGRAM_MAX_LEVELS)
    nlevels = np.where(bad, 1, nlevels)
    qscale = np.where(sigma > 0.0, 2.0 * HISTOGRAM_NSIGMA * sigma / nlevels, 1.0).astype(np.float32)
    qzero = (mean - HISTOGRAM_NSIGMA * sigma).astype(np.float32)
    cste = (0.499999 - (qzero / qscale).astype(np.float64)).astype(np.float32)

    # Histogram of every usable pixel (not only the 2-sigma ones), bins as SEP truncates them.
    level = pix / qscale[ids] + cste[ids]  # float32 arithmetic, as SEP's
    inside = (level > -1.0) & (level < nlevels[ids]) & ~bad[ids]
    n_levels_max = int(nlevels.max())
    index = ids[inside].astype(np.int64) * n_levels_max + level[inside].astype(np.int64)
    histo = np.bincount(index, minlength=n_mesh * n_levels_max).reshape(n_mesh, n_levels_max)

    mode, clipped = _histogram_mode(histo, nlevels, mean.astype(np.float32), nsigma, max_iters)
    back = (qzero + mode * qscale).astype(np.float32)
    rms = (clipped * qscale).astype(np.float32)
    back[bad] = np.nan
    rms[bad] = np.nan
    return back.reshape(gy, gx), rms.reshape(gy, gx)


def _histogram_mode(
    histo: np.ndarray, nlevels: np.ndarray, mean: np.ndarray, nsigma: float, max_iters: int
) -> tuple[np.ndarray, np.ndarray]:
    """
    SEP's ``backguess`` on every histogram row at once; return (mode, sigma) in bin units.

    The row's median walk (a low and a high pointer meeting where the two partial sums balance)
    ends at the first bin ``p`` of the window with ``C[p] + C[p + 1] >= C[lo] + C[hi + 1]`` for
    the cumulative counts ``C``, so each pass is a few gathers and one binary search per row.
    """
    n_mesh, n_bins = histo.shape
    bins = np.arange(n_bins, dtype=np.int64)
    zero = np.zeros((n_mesh, 1), dtype=np.int64)
    c0 = np.concatenate([zero, np.cumsum(histo, axis=1)], axis=1)
    c1 = np.concatenate([zero, np.cumsum(histo * bins, axis=1)], axis=1)
    c2 = np.concatenate([zero, np.cumsum(histo * bins * bins, axis=1)], axis=1)
    pair = c0[:, :-1] + c0[:, 1:]  # nondecreasing along each row
    stride = int(pair[:, -1].max()) + 1
    rows = np.arange(n_mesh)
    pair_flat = (pair + (rows * stride)[:, None]).ravel()

    top = nlevels.astype(np.int64) - 1
    lo = np.zeros(n_mesh, dtype=np.int64)
    hi = top.copy()
    sig = 10.0 * top.astype(np.float64)
    sig_prev = np.ones(n_mesh)
    mea = mean.astype(np.float64)
    med = mea.copy()

    def at(table: np.ndarray, index: np.ndarray) -> np.ndarray:
        return table[rows, index]

    for _ in range(max_iters):
        with np.errstate(invalid="ignore", divide="ignore"):
            active = (sig >= MIN_SIGMA_BINS) & (np.abs(sig / sig_prev - 1.0) > CONVERGED)
        if not active.any():
            break
        width = hi - lo + 1
        nonempty = width > 0
        lo_c = np.clip(lo, 0, n_bins)
        hi_c = np.clip(hi + 1, 0, n_bins)
        total = np.where(nonempty, at(c0, hi_c) - at(c0, lo_c), 0)
        target = at(c0, hi_c) + at(c0, lo_c)
        p = np.searchsorted(pair_flat, target + rows * stride, side="left") - rows * n_bins
        p = np.where(nonempty, np.clip(p, lo, np.maximum(hi, lo)), lo)
        high_ptr = np.where(nonempty, p - 1, hi)
        low_sum = np.where(nonempty, at(c0, np.clip(p, 0, n_bins)) - at(c0, lo_c), 0)
        high_sum = total - low_sum
        h_low = at(histo, np.clip(p, 0, n_bins - 1))
        h_high = at(histo, np.clip(high_ptr, 0, n_bins - 1))
        with np.errstate(invalid="ignore", divide="ignore"):
            new_med = np.where(
                high_ptr >= 0,
                high_ptr + 0.5 + (high_sum - low_sum).astype(np.float64) / (2.0 * np.maximum(h_low, h_high)),
                0.0,
            )
            s1 = np.where(nonempty, at(c1, hi_c) - at(c1, lo_c), 0).astype(np.float64)
            s2 = np.where(nonempty, at(c2, hi_c) - at(c2, lo_c), 0).astype(np.float64)
            new_mea = np.where(total > 0, s1 / total, 0.0)
            var = np.where(total > 0, s2 / total - new_mea * new_mea, 0.0)
        new_sig = np.sqrt(np.where(var > 0.0, var, 0.0))
        low = new_med - nsigma * new_sig
        high = new_med + nsigma * new_sig
        with np.errstate(invalid="ignore"):
            # SEP rounds half away from zero; the clamps only keep the casts finite.
            new_lo = np.where(low > 0.0, np.floor(np.where(low > 0.0, np.minimum(low, n_bins), 0.0) + 0.5), 0.0)
            high_ok = high < top
            high_round = np.maximum(np.where(high > 0.0, high + 0.5, high - 0.5), -1.0)
            new_hi = np.where(high_ok, np.trunc(np.where(high_ok, high_round, 0.0)), top)
        new_lo, new_hi = new_lo.astype(np.int64), new_hi.astype(np.int64)
        sig_prev = np.where(active, sig, sig_prev)
        sig = np.where(active, new_sig, sig)
        mea = np.where(active, new_mea, mea)
        med = np.where(active, new_med, med)
        lo = np.where(active, new_lo, lo)
        hi = np.where(active, new_hi, hi)

    with np.errstate(invalid="ignore", divide="ignore"):
        skewed = np.abs((mea - med) / sig) >= SKEW_LIMIT
    mode = np.where(sig > 0.0, np.where(skewed, med, 2.5 * med - 1.5 * mea), mea)
    return mode, sig


# -------------------------------------------------------------------------------------- filtering


def _fill_bad_meshes(level: np.ndarray, rms: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Bad (NaN) meshes take the mean of the nearest good meshes; (0, 1) when none is good."""
    bad = np.isnan(level)
    if not bad.any():
        return level, rms
    level, rms = level.copy(), rms.copy()
    good = ~bad
    if not good.any():
        level[:] = 0.0
        rms[:] = 1.0
        return level, rms
    by, bx = np.nonzero(bad)
    vy, vx = np.nonzero(good)
    d2 = (by[:, None] - vy[None, :]) ** 2 + (bx[:, None] - vx[None, :]) ** 2
    nearest = d2 == d2.min(axis=1, keepdims=True)
    count = nearest.sum(axis=1).astype(np.float32)
    level[bad] = (nearest * level[good][None, :]).sum(axis=1, dtype=np.float32) / count
    rms[bad] = (nearest * rms[good][None, :]).sum(axis=1, dtype=np.float32) / count
    return level, rms


def _shrinking_windows(grid: np.ndarray, half: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(gy, gx, window) values of SEP's edge-shrinking median windows, NaN outside, and their counts."""
    gy, gx = grid.shape
    hy, hx = half
    padded = np.full((gy + 2 * hy, gx + 2 * hx), np.nan, dtype=grid.dtype)
    padded[hy:hy + gy, hx:hx + gx] = grid
    windows = np.lib.stride_tricks.sliding_window_view(padded, (2 * hy + 1, 2 * hx + 1)).copy()
    ry = np.minimum(np.minimum(np.arange(gy), gy - 1 - np.arange(gy)), hy)
    rx = np.minimum(np.minimum(np.arange(gx), gx - 1 - np.arange(gx)), hx)
    dy = np.abs(np.arange(-hy, hy + 1))
    dx = np.abs(np.arange(-hx, hx + 1))
    outside = (dy[None, None, :, None] > ry[:, None, None, None]) | (dx[None, None, None, :] > rx[None, :, None, None])
    windows[outside] = np.nan
    count = (2 * ry[:, None] + 1) * (2 * rx[None, :] + 1)
    return windows.reshape(gy, gx, -1), count


def _median_filter(
    level: np.ndarray, rms: np.ndarray, filter_size: tuple[int, int], threshold: float
) -> tuple[np.ndarray, np.ndarray]:
    """SEP's ``filterback`` median filter (after bad meshes are filled)."""
    half = (filter_size[0] // 2, filter_size[1] // 2)
    win_level, count = _shrinking_windows(level, half)
    win_rms, _ = _shrinking_windows(rms, half)
    middle = (count // 2)[..., None]
    med_level = np.take_along_axis(np.sort(win_level, axis=-1), middle, axis=-1)[..., 0]  # NaN sort last
    med_rms = np.take_along_axis(np.sort(win_rms, axis=-1), middle, axis=-1)[..., 0]
    replace = np.abs(med_level - level) >= threshold  # float32 difference, as SEP's
    return np.where(replace, med_level, level), np.where(replace, med_rms, rms)


def _global_rms(rms: np.ndarray) -> float:
    value = float(np.median(rms))
    if value <= 0.0:
        positive = rms[rms > 0.0]
        value = float(np.median(positive)) if positive.size else 1.0
    return value


# ------------------------------------------------------------------------------------------- API


def estimate_background(
    image: np.ndarray,
    *,
    mask: np.ndarray | None = None,
    mesh: int | tuple[int, int] = 64,
    filter_size: int | tuple[int, int] = 3,
    filter_threshold: float = 0.0,
    nsigma: float = 3.0,
    max_iters: int = 100,
) -> Background:
    """
    Estimate the background and its noise at every pixel, as ``sep.Background`` does. Stable.

    Parameters
    ----------
    image : (ny, nx) ndarray
        Pixels, used as float32 (as SEP does); non-finite pixels are ignored.
    mask : (ny, nx) ndarray of bool, optional
        True where a pixel must be ignored (saturated, bad column, ...).
    mesh : int or (int, int)
        Mesh size in pixels, one for both axes or (``bh``, ``bw``).
    filter_size : int or (int, int)
        Median filter over the mesh grid in meshes, one for both axes or (``fh``, ``fw``);
        1 disables it.
    filter_threshold : float
        SEP's ``fthresh``: a mesh is replaced by the filtered value only where they differ by at
        least this much (0: everywhere).
    nsigma : float
        Clipping threshold of the histogram iterations (SEP: 3).
    max_iters : int
        Histogram iterations at most (SEP: 100).

    Returns
    -------
    Background

    Raises
    ------
    ValueError
        ``image`` is not 2-D, ``mask`` has another shape, or a size is out of range.

    Notes
    -----
    Agrees with ``sep.Background(image, mask=mask, bw=, bh=, fw=, fh=, fthresh=)`` to float32
    rounding of the spline (see ``benchmarks/background_vs_sep.py`` for the measured figures).
    Where no mesh is usable, the background is 0 and the noise 1, as in SEP.
    """
    if image.ndim != 2:
        msg = f"image must be 2-D, got shape {image.shape}"
        raise ValueError(msg)
    if mask is not None and mask.shape != image.shape:
        msg = f"mask shape {mask.shape} differs from image shape {image.shape}"
        raise ValueError(msg)
    mesh_yx = as_pair(mesh, "mesh", 4)
    filter_yx = as_pair(filter_size, "filter_size", 1)
    pixels = np.asarray(image, dtype=np.float32)
    usable = np.isfinite(pixels)
    if mask is not None:
        usable &= ~mask.astype(bool)
    level, rms = _mesh_statistics(pixels, usable, mesh_yx, nsigma, max_iters)
    level, rms = _fill_bad_meshes(level, rms)
    level, rms = _median_filter(level, rms, filter_yx, filter_threshold)
    return Background(
        level=_spline_to_pixels(level, mesh_yx, pixels.shape),
        rms=np.maximum(_spline_to_pixels(rms, mesh_yx, pixels.shape), np.float32(1e-6)),
        global_level=float(np.median(level)),
        global_rms=_global_rms(rms),
        mesh_level=level,
        mesh_rms=rms,
    )
