"""
Peak finding on detector heatmaps: max-pool suppression, a score threshold, an optional S/N
gate from the matched-filtered difference (`skyblink.workers.matched_filter`) and top-K per tile;
and the significant point-like sources of the difference itself, which are candidates whatever
the detector scored at their place (`difference_point_sources`).

A source that brightened on top of a galaxy's core, or beside a catalogued star, is a transient
when the difference holds significant flux there in the shape of the PSF. The detector, trained
mostly on transients in empty sky, may call such a place static (the nuclear transient of the
DECam pair in ``shared/data/sfft-decam``: static 0.33-0.47, transient 0.02-0.03, at a
difference S/N of 19-28). So, as the classical difference-image pipelines (ZTF's, Rubin's) detect
on the difference, a peak of the matched-filter S/N map at `DIFFERENCE_SNR_THRESHOLD` or more
that is compact and has no comparable negative lobe beside it is a candidate too, after the
detector's own peaks; the classifier's real/bogus then decides whether it is alerted.

No peak, the detector's or the difference's, stands where its core holds a pixel the calibration
could not measure (saturated, or an unusable flat: `masked_cores`). The simulator's saturated hot
pixels, like real sensors', sit on the CCD in every exposure and in no (dithered) reference, and
L.A.Cosmic leaves masked pixels as they are: such a pixel reached the difference at S/N 1149 and
was alerted on the scoring night (benchmarks/BENCHMARKS.md, issue 20).

Notes
-----
Pure numpy/scipy. The GPU tile program finds the places that could be a peak with
`max_filter_tensor` (a square maximum filter as two 1-D max-pools, exact: a 13x13 window reads
26 pixels, not 169) and reads the same tests only there (`difference_point_sources_at`,
`any_within`: each place's square of the map gathered; tested against these at every pixel).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from scipy.ndimage import maximum_filter, minimum_filter

from skyblink.lazy_import import lazy_module

if TYPE_CHECKING:
    import torch
    import torch.nn.functional as F
else:
    # The optional [ml] extra, imported by the first tensor function: the numpy functions (and the
    # driver, which imports this module) work without it and do not pay for it.
    torch = lazy_module("torch")
    F = lazy_module("torch.nn.functional")

__all__ = ["DIFFERENCE_SNR_THRESHOLD", "MASKED_CORE_FWHM", "MAX_NEGATIVE_LOBE", "MAX_RING", "Peaks", "any_within",
           "difference_point_sources", "difference_point_sources_at", "difference_windows", "find_peaks", "masked_cores",
           "max_filter_tensor", "windows_bound"]

#: S/N a point-like difference source needs to be a candidate without the detector's new-source score.
DIFFERENCE_SNR_THRESHOLD = 10.0
#: Deepest negative S/N within 2 FWHM of a difference source, as a fraction of its peak S/N (a star
#: that the PSF matching left as a dipole or a ring has a negative part comparable to its positive one;
#: on the DECam pairs: star residuals -0.38 to -1.8, the transient -0.10 to -0.18).
MAX_NEGATIVE_LOBE = 0.3
#: Highest S/N on a circle of `_RING_RADIUS_FWHM` around a difference source, as a fraction of its peak S/N, for
#: it to count as compact: a point source's matched-filter profile there is 4 % of its peak; a trail or a streak
#: crosses the circle at its own S/N, and an extended residual (a galaxy's) stays high around it.
MAX_RING = 0.5
_RING_RADIUS_FWHM = 1.75
#: Directions the circle is sampled in (a trail as wide as the PSF covers 33 degrees of it at this radius).
_RING_DIRECTIONS = 16
_LOBE_RADIUS_FWHM = 2.0
#: Radius, in FWHM, of a candidate's core (at least its 3x3 pixels): a candidate whose core holds a pixel that
#: the calibration could not measure (saturated, or an unusable flat) is not one (`masked_cores`).
MASKED_CORE_FWHM = 0.5


def _core_radius(fwhm_px: float | None) -> int:
    """Half-edge of a candidate's core window, pixels: half a FWHM, at least 1 (the 3x3)."""
    return 1 if fwhm_px is None else max(1, int(np.ceil(MASKED_CORE_FWHM * fwhm_px)))


def masked_cores(masked: np.ndarray, fwhm_px: float | None) -> np.ndarray:
    """
    The pixels whose core holds a masked pixel: where a candidate may not stand.

    A saturated pixel keeps no measurable value (L.A.Cosmic leaves masked pixels as they are, so
    a saturated hot pixel, fixed on the CCD and absent from a dithered reference, reaches the
    difference at thousands of sigma in the shape of a point source, and the PSF matching
    spreads it over its neighbours). A transient measured through such a pixel has no flux or
    position to give, so it is no candidate, as survey pipelines drop sources with a saturated
    centre.

    Parameters
    ----------
    masked : (H, W) bool ndarray
        Pixels the calibration flagged (`skyblink.workers.calibration.Calibrated.mask`:
        saturated, or an unusable flat); cleaned cosmic rays are not masked here.
    fwhm_px : float or None
        PSF FWHM of the difference, pixels: the core is within `MASKED_CORE_FWHM` of it (at least
        the 3x3); None for the 3x3.

    Returns
    -------
    (H, W) bool ndarray
        True within the core's reach of a masked pixel.
    """
    r = _core_radius(fwhm_px)
    return maximum_filter(np.asarray(masked, dtype=bool), size=2 * r + 1, mode="constant", cval=False)


def max_filter_tensor(x: torch.Tensor, size: int) -> torch.Tensor:
    """
    Maximum over the ``size x size`` window centred on each pixel of each (H, W) image.

    As ``F.max_pool2d(x[:, None], size, 1, size // 2)[:, 0]`` (windows cut at the edges, as
    ``scipy.ndimage.maximum_filter`` with ``mode="constant"`` and ``cval`` -inf), bit for bit,
    computed as a maximum along columns and then along rows over shifted views: ``2 * size``
    reads a pixel instead of ``size**2``, and a compiler (`skyblink.workers.fused`) makes each
    axis one kernel with no index map (CUDA's max-pool writes an int64 argmax per pixel).

    Parameters
    ----------
    x : (B, H, W) float tensor
    size : int
        Odd window edge, pixels.

    Returns
    -------
    (B, H, W) float tensor

    Raises
    ------
    ValueError
        If ``size`` is not a positive odd number.
    """
    if size < 1 or size % 2 == 0:
        msg = f"size must be a positive odd number of pixels, got {size!r}"
        raise ValueError(msg)
    reach = size // 2

    def along(y: torch.Tensor, dim: int) -> torch.Tensor:
        n = y.shape[dim]
        padded = F.pad(y, (reach, reach) if dim == 2 else (0, 0, reach, reach), value=-float("inf"))
        out = padded.narrow(dim, reach, n)
        for k in range(1, reach + 1):
            for shift in (-k, k):
                out = torch.maximum(out, padded.narrow(dim, reach + shift, n))
        return out

    return along(along(x, 1), 2)


@dataclass(frozen=True, slots=True)
class Peaks:
    """
    Peaks of one heatmap: positions (x, y, sub-pixel), score, channel and matched-filter S/N
    (NaN when no S/N map was given). Empty when none.
    """

    x: np.ndarray
    y: np.ndarray
    score: np.ndarray
    channel: np.ndarray
    snr: np.ndarray

    def __len__(self) -> int:
        return len(self.score)


def find_peaks(
    heatmaps: np.ndarray,
    *,
    threshold: float = 0.5,
    kernel: int = 5,
    top_k: int = 512,
    offsets: np.ndarray | None = None,
    channels: tuple[int, ...] | None = None,
    snr: np.ndarray | None = None,
    snr_threshold: float = 5.0,
    difference_fwhm_px: float | None = None,
    difference_snr_threshold: float = DIFFERENCE_SNR_THRESHOLD,
    masked: np.ndarray | None = None,
) -> Peaks:
    """
    Find local maxima of per-class heatmaps, and optionally the difference's own point sources.

    Parameters
    ----------
    heatmaps : (C, H, W) ndarray
        Scores in [0, 1].
    threshold : float
        Minimum score of a peak.
    kernel : int
        Edge of the max-pool window: a pixel is a peak when it is the maximum of its window
        over the selected channels.
    top_k : int
        Keep at most this many peaks (the detector's by decreasing score, then the difference's).
    offsets : (2, H, W) ndarray, optional
        Sub-pixel (dx, dy) added to each detector peak's pixel position.
    channels : tuple of int, optional
        Channels to search (default all); suppression runs over their maximum.
    snr : (H, W) ndarray, optional
        Matched-filter S/N map of the difference (`skyblink.workers.matched_filter_snr`). A
        peak's S/N is the map's maximum over its 3x3 neighbourhood (the detector's peak and the
        filter's may differ by a pixel); peaks below ``snr_threshold`` are dropped before top-K.
    snr_threshold : float
        Minimum S/N of a peak when ``snr`` is given.
    difference_fwhm_px : float, optional
        With ``snr``: also return the sources of `difference_point_sources` (S/N at least
        ``difference_snr_threshold``, filtered with this FWHM) that have no detector peak within
        1 FWHM, after the detector's peaks, by decreasing S/N; their score is the heatmap's there
        (below ``threshold``), their position the S/N map's peak refined by a parabola.
    difference_snr_threshold : float
        Least S/N of a difference source (``snr_threshold`` where that is higher).
    masked : (H, W) bool ndarray, optional
        Pixels the calibration flagged (saturated, unusable flat): no peak, the detector's or the
        difference's, stands where its core holds one (`masked_cores`, with ``difference_fwhm_px``).

    Returns
    -------
    Peaks
        The detector's peaks by decreasing score, then the difference's by decreasing S/N;
        zero-length arrays when nothing passes.

    Raises
    ------
    ValueError
        If ``snr`` or ``masked`` does not have the heatmaps' spatial shape.
    """
    chosen = heatmaps if channels is None else heatmaps[list(channels)]
    best = chosen.max(axis=0)
    which = chosen.argmax(axis=0)
    is_peak = (best >= threshold) & (best == maximum_filter(best, size=kernel, mode="constant", cval=0.0))
    if snr is not None:
        if snr.shape != best.shape:
            msg = f"snr must have the heatmaps' spatial shape {best.shape}, got {snr.shape}"
            raise ValueError(msg)
        peak_snr = maximum_filter(snr, size=3, mode="nearest")
        is_peak &= peak_snr >= snr_threshold
    blocked = None
    if masked is not None:
        if masked.shape != best.shape:
            msg = f"masked must have the heatmaps' spatial shape {best.shape}, got {masked.shape}"
            raise ValueError(msg)
        blocked = masked_cores(masked, difference_fwhm_px)
        is_peak &= ~blocked
    ys, xs = np.nonzero(is_peak)
    scores = best[ys, xs]
    order = np.argsort(-scores, kind="stable")[:top_k]
    ys, xs, scores = ys[order], xs[order], scores[order]
    fx, fy = xs.astype(np.float32), ys.astype(np.float32)
    if offsets is not None:
        fx = fx + offsets[0, ys, xs]
        fy = fy + offsets[1, ys, xs]
    if snr is not None and difference_fwhm_px is not None and len(ys) < top_k:
        near = np.zeros(best.shape, dtype=bool)
        near[ys, xs] = True
        reach = difference_windows(difference_fwhm_px)[2]
        near = maximum_filter(near, size=2 * reach + 1, mode="constant", cval=False)
        dys, dxs, dfy, dfx = _difference_sources(snr, difference_fwhm_px, max(snr_threshold, difference_snr_threshold), kernel)
        extra = ~near[dys, dxs] if blocked is None else ~(near | blocked)[dys, dxs]
        dys, dxs, dfy, dfx = (a[extra][: top_k - len(ys)] for a in (dys, dxs, dfy, dfx))
        ys, xs = np.concatenate([ys, dys]), np.concatenate([xs, dxs])
        scores = np.concatenate([scores, best[dys, dxs]])
        fx, fy = np.concatenate([fx, dfx]).astype(np.float32), np.concatenate([fy, dfy]).astype(np.float32)
    channel_ids = np.asarray(channels if channels is not None else range(heatmaps.shape[0]))[which[ys, xs]]
    snrs = peak_snr[ys, xs].astype(np.float32) if snr is not None else np.full(len(ys), np.nan, dtype=np.float32)
    return Peaks(fx, fy, scores.astype(np.float32), channel_ids.astype(np.int64), snrs)


def _ring_offsets(fwhm_px: float) -> list[tuple[int, int]]:
    """Integer (dy, dx) of the `_RING_DIRECTIONS` points at `_RING_RADIUS_FWHM` around a source."""
    radius = _RING_RADIUS_FWHM * fwhm_px
    angles = 2.0 * np.pi * np.arange(_RING_DIRECTIONS) / _RING_DIRECTIONS
    return sorted({(round(radius * np.sin(a)), round(radius * np.cos(a))) for a in angles})


def _parabola(minus: np.ndarray | torch.Tensor, centre: np.ndarray | torch.Tensor,
              plus: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
    """Sub-pixel offset of a peak from its value and its two neighbours' (0 where the curvature is not negative)."""
    lib = np if isinstance(centre, np.ndarray) else torch
    curvature = minus - 2.0 * centre + plus
    step = 0.5 * (minus - plus) / lib.where(curvature < 0, curvature, -1.0)
    return lib.where(curvature < 0, lib.clip(step, -0.5, 0.5), 0.0)


def _difference_sources(snr: np.ndarray, fwhm_px: float, snr_threshold: float,
                        kernel: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Integer and sub-pixel positions (ys, xs, fy, fx) of `difference_point_sources`, by decreasing S/N."""
    lobe = difference_windows(fwhm_px)[1]  # raises for a non-positive FWHM
    snr = np.nan_to_num(np.asarray(snr, dtype=np.float32))
    is_source = (snr >= snr_threshold) & (snr == maximum_filter(snr, size=kernel, mode="constant", cval=-np.inf))
    is_source &= minimum_filter(snr, size=2 * lobe + 1, mode="nearest") > -MAX_NEGATIVE_LOBE * snr
    reach = int(np.ceil(_RING_RADIUS_FWHM * fwhm_px)) + 1
    padded = np.pad(snr, reach, mode="constant", constant_values=-np.inf)
    h, w = snr.shape
    ring = np.max([padded[reach + dy: reach + dy + h, reach + dx: reach + dx + w] for dy, dx in _ring_offsets(fwhm_px)], axis=0)
    is_source &= ring < MAX_RING * snr
    ys, xs = np.nonzero(is_source)
    order = np.argsort(-snr[ys, xs], kind="stable")
    ys, xs = ys[order], xs[order]
    edge = np.pad(snr, 1, mode="edge")
    fy = ys + _parabola(edge[ys, xs + 1], edge[ys + 1, xs + 1], edge[ys + 2, xs + 1])
    fx = xs + _parabola(edge[ys + 1, xs], edge[ys + 1, xs + 1], edge[ys + 1, xs + 2])
    return ys, xs, np.asarray(fy, dtype=np.float64), np.asarray(fx, dtype=np.float64)


def difference_point_sources(snr: np.ndarray, fwhm_px: float, *, snr_threshold: float = DIFFERENCE_SNR_THRESHOLD,
                             kernel: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """
    Significant point-like positive sources of a difference image, whatever the detector scored there.

    A peak of the matched-filter S/N map (the maximum of its ``kernel`` x ``kernel`` window) at
    ``snr_threshold`` or more,

    - with no negative lobe beside it: the map's minimum within 2 FWHM is above
      `MAX_NEGATIVE_LOBE` times minus the peak (a misaligned or mismatched star leaves a dipole
      or a ring);
    - compact: the map stays below `MAX_RING` times the peak on a circle of 1.75 FWHM around it
      (a trail or a streak crosses the circle at its own S/N; an extended residual surrounds it).

    Parameters
    ----------
    snr : (H, W) ndarray
        Matched-filter S/N map of the difference (`skyblink.workers.matched_filter_snr`).
    fwhm_px : float
        PSF FWHM the map was filtered with, pixels.
    snr_threshold : float
        Least S/N of a source.
    kernel : int
        Edge of the max-pool window of a peak (as `find_peaks`).

    Returns
    -------
    ys, xs : (N,) ndarray of int
        Pixel positions of the sources, by decreasing S/N.

    Raises
    ------
    ValueError
        If ``fwhm_px`` is not positive.
    """
    ys, xs, _, _ = _difference_sources(snr, fwhm_px, snr_threshold, kernel)
    return ys, xs


def difference_windows(fwhm_px: float) -> list[int]:
    """
    The integer windows of the difference's point sources at ``fwhm_px``, as `find_peaks` and
    `difference_point_sources` use them, in one list (a program copies it to the device as a
    tensor, so that one compiled program serves every seeing up to `windows_bound`):
    ``[core half-width (masked_cores), lobe half-width, reach of a detector peak, ring dy0, dx0,
    dy1, dx1, ...]``, the ring's `_RING_DIRECTIONS` offsets with the distinct ones repeated to fill.

    Raises
    ------
    ValueError
        If ``fwhm_px`` is not positive.
    """
    if not fwhm_px > 0:
        msg = f"fwhm_px must be positive, got {fwhm_px!r}"
        raise ValueError(msg)
    ring = _ring_offsets(fwhm_px)
    ring = (ring * _RING_DIRECTIONS)[:_RING_DIRECTIONS]
    return [_core_radius(fwhm_px), int(np.ceil(_LOBE_RADIUS_FWHM * fwhm_px)), int(np.ceil(fwhm_px)),
            *(v for pair in ring for v in pair)]


def windows_bound(windows: list[int]) -> int:
    """The largest half-width or ring offset of `difference_windows`: the padding its tensors need."""
    return max(abs(v) for v in windows)


def _square(bound: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Row and column offsets of `_around`'s (2 ``bound`` + 1)^2 square, row by row, and their Chebyshev distance."""
    steps = torch.arange(-bound, bound + 1, device=device)
    side = steps.shape[0]
    dy, dx = steps[:, None].expand(side, side).reshape(-1), steps[None, :].expand(side, side).reshape(-1)
    return dy, dx, torch.maximum(dy.abs(), dx.abs())


def _around(values: torch.Tensor, fill: float | bool, bound: int, index: torch.Tensor) -> torch.Tensor:
    """
    The (2 ``bound`` + 1)^2 square around each flat pixel ``index`` (B, n) of ``values`` (B, H, W),
    ``fill`` beyond the tiles' edges: (B, n, (2 bound + 1)^2), in `_square`'s order.
    """
    b, h, w = values.shape
    side = w + 2 * bound
    padded = F.pad(values[:, None], (bound,) * 4, value=fill)[:, 0].reshape(b, (h + 2 * bound) * side)
    steps = torch.arange(2 * bound + 1, device=values.device)
    square = (steps[:, None] * side + steps[None, :]).reshape(-1)  # from the square's top-left corner
    corner = (index // w) * side + index % w
    return padded.gather(1, (corner[:, :, None] + square).reshape(b, -1)).reshape(b, index.shape[1], square.shape[0])


def any_within(mask: torch.Tensor, index: torch.Tensor, radius: torch.Tensor, *, bound: int) -> torch.Tensor:
    """
    Whether a ``mask`` pixel lies within ``radius`` pixels (Chebyshev) of each place: the
    ``(2 radius + 1)^2`` maximum filter of ``mask`` (as `masked_cores` with the core's radius)
    read only at the places.

    Parameters
    ----------
    mask : (B, H, W) bool tensor
    index : (B, n) int64 tensor
        Flat pixel positions ``y * W + x`` in each image.
    radius : 0-d integer tensor
        At most ``bound`` (not checked: no host sync).
    bound : int

    Returns
    -------
    (B, n) bool tensor
    """
    _, _, reach = _square(bound, mask.device)
    return (_around(mask, False, bound, index) & (reach <= radius)).any(dim=2)


def difference_point_sources_at(snr: torch.Tensor, index: torch.Tensor, windows: torch.Tensor, *, bound: int,
                                snr_threshold: float = DIFFERENCE_SNR_THRESHOLD) -> tuple[torch.Tensor, ...]:
    """
    `difference_point_sources` for a batch on any device, read only at given places: each one's
    test (threshold, 5x5 local maximum, negative lobe, ring) from the square of the map around
    it, and its sub-pixel offsets (the parabola through it and its neighbours, edges repeated),
    at a cost per place, not per pixel.

    Parameters
    ----------
    snr : (B, H, W) float tensor
    index : (B, n) int64 tensor
        Flat pixel positions ``y * W + x`` in each image.
    windows : int64 tensor
        `difference_windows` on ``snr``'s device.
    bound : int
        `windows_bound` or more (and at least 2).
    snr_threshold : float

    Returns
    -------
    is_source : (B, n) bool tensor
    dy, dx : (B, n) float32 tensors
    """
    b, h, w = snr.shape
    level = torch.nan_to_num(snr.to(torch.float32))
    dy, dx, reach = _square(bound, snr.device)
    square = _around(level, float("nan"), bound, index)  # NaN beyond the edges (none inside)
    outside = torch.isnan(square)
    here = level.flatten(1).gather(1, index)
    peak = torch.where(outside | (reach > 2), -float("inf"), square).amax(dim=2)  # the 5x5 maximum, cut at the edges
    lobe = torch.where(outside | (reach > windows[1]), float("inf"), square).amin(dim=2)
    on_ring = ((dy[None, :] == windows[3::2, None]) & (dx[None, :] == windows[4::2, None])).any(dim=0)
    ring = torch.where(outside | ~on_ring, -float("inf"), square).amax(dim=2)
    is_source = ((here >= snr_threshold) & (here == peak) & (lobe > -MAX_NEGATIVE_LOBE * here)
                 & (ring < MAX_RING * here))
    y, x = index // w, index % w
    flat = level.flatten(1)

    def at(yy: torch.Tensor, xx: torch.Tensor) -> torch.Tensor:
        return flat.gather(1, yy * w + xx)

    sub_dy = _parabola(at((y - 1).clamp(min=0), x), here, at((y + 1).clamp(max=h - 1), x))
    sub_dx = _parabola(at(y, (x - 1).clamp(min=0)), here, at(y, (x + 1).clamp(max=w - 1)))
    return is_source, sub_dy.float(), sub_dx.float()  # type: ignore[union-attr]
