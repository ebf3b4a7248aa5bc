"""
Peak finding on detector heatmaps: max-pool suppression, a score threshold and top-K per tile.

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
    """Peaks of one heatmap: positions (x, y, sub-pixel), score and channel. Empty when none."""

    x: np.ndarray
    y: np.ndarray
    score: np.ndarray
    channel: np.ndarray

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

    Returns
    -------
    Peaks
        Sorted by decreasing score; zero-length arrays when nothing passes.
    """
    chosen = heatmaps if channels is None else heatmaps[list(channels)]
    best = chosen.max(axis=0)
    which = chosen.argmax(axis=0)
    is_peak = (best >= threshold) & (best == maximum_filter(best, size=kernel, mode="constant", cval=0.0))
    ys, xs = np.nonzero(is_peak)
    scores = best[ys, xs]
    order = np.argsort(-scores, kind="stable")[:top_k]
    ys, xs, scores = ys[order], xs[order], scores[order]
    fx, fy = xs.astype(np.float32), ys.astype(np.float32)
    if offsets is not None:
        fx = fx + offsets[0, ys, xs]
        fy = fy + offsets[1, ys, xs]
    channel_ids = np.asarray(channels if channels is not None else range(heatmaps.shape[0]))[which[ys, xs]]
    return Peaks(fx, fy, scores.astype(np.float32), channel_ids.astype(np.int64))
