"""
Peak finding on detector heatmaps: max-pool suppression, a score threshold, an optional S/N
gate from the matched-filtered difference (`skyblink.workers.matched_filter`) and top-K per tile.

Notes
-----
Pure numpy/scipy. The GPU tile program does the same with ``torch.nn.functional.max_pool2d``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import maximum_filter

__all__ = ["Peaks", "find_peaks"]


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
) -> Peaks:
    """
    Find local maxima of per-class heatmaps.

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
        Keep at most this many peaks (highest scores first).
    offsets : (2, H, W) ndarray, optional
        Sub-pixel (dx, dy) added to each peak's pixel position.
    channels : tuple of int, optional
        Channels to search (default all); suppression runs over their maximum.
    snr : (H, W) ndarray, optional
        Matched-filter S/N map of the difference (`skyblink.workers.matched_filter_snr`). A
        peak's S/N is the map's maximum over its 3x3 neighbourhood (the detector's peak and the
        filter's may differ by a pixel); peaks below ``snr_threshold`` are dropped before top-K.
    snr_threshold : float
        Minimum S/N of a peak when ``snr`` is given.

    Returns
    -------
    Peaks
        Sorted by decreasing score; zero-length arrays when nothing passes.

    Raises
    ------
    ValueError
        If ``snr`` does not have the heatmaps' spatial shape.
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
    ys, xs = np.nonzero(is_peak)
    scores = best[ys, xs]
    order = np.argsort(-scores, kind="stable")[:top_k]
    ys, xs, scores = ys[order], xs[order], scores[order]
    fx, fy = xs.astype(np.float32), ys.astype(np.float32)
    if offsets is not None:
        fx = fx + offsets[0, ys, xs]
        fy = fy + offsets[1, ys, xs]
    channel_ids = np.asarray(channels if channels is not None else range(heatmaps.shape[0]))[which[ys, xs]]
    snrs = peak_snr[ys, xs].astype(np.float32) if snr is not None else np.full(len(ys), np.nan, dtype=np.float32)
    return Peaks(fx, fy, scores.astype(np.float32), channel_ids.astype(np.int64), snrs)
