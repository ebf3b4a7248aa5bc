"""
Bring stamps from elsewhere (ZTF or Rubin cutouts) to the classifier's input: a 63x63 triplet in
noise units.

Rule: each channel has its median subtracted and is divided by its robust noise
(1.4826 x the median absolute deviation), so it is in sigma units like the tile program's
output; NaNs become 0. A stamp larger than 63 px is cropped about its centre; a smaller one is
padded with 0 (the sky level after normalisation) on both sides, the centre kept in place.
"""

from __future__ import annotations

import numpy as np

from .model_io import STAMP_SIZE

__all__ = ["fit_stamp", "sigma_normalize", "sigma_triplet"]

_MAD_TO_SIGMA = 1.4826


def sigma_normalize(image: np.ndarray) -> np.ndarray:
    """Return ``image`` minus its median, over its robust sigma, NaN -> 0 (float32)."""
    data = np.asarray(image, dtype=np.float64)
    finite = np.isfinite(data)
    if not finite.any():
        return np.zeros(data.shape, np.float32)
    median = np.median(data[finite])
    sigma = _MAD_TO_SIGMA * np.median(np.abs(data[finite] - median))
    if not sigma > 0:
        sigma = float(np.std(data[finite])) or 1.0
    return np.where(finite, (data - median) / sigma, 0.0).astype(np.float32)


def fit_stamp(image: np.ndarray, size: int = STAMP_SIZE) -> np.ndarray:
    """Crop about the centre or zero-pad symmetrically to ``size`` x ``size``."""
    out = np.zeros((size, size), np.float32)
    ny, nx = image.shape
    sy, sx = max(0, (ny - size) // 2), max(0, (nx - size) // 2)
    crop = image[sy : sy + size, sx : sx + size]
    oy, ox = (size - crop.shape[0]) // 2, (size - crop.shape[1]) // 2
    out[oy : oy + crop.shape[0], ox : ox + crop.shape[1]] = crop
    return out


def sigma_triplet(science: np.ndarray, template: np.ndarray, difference: np.ndarray) -> np.ndarray:
    """Return the (3, 63, 63) float32 classifier input for one cutout triplet."""
    return np.stack([fit_stamp(sigma_normalize(c)) for c in (science, template, difference)])
