"""
Mesh-based background and noise estimation, as SExtractor and SEP do it.

The image is cut into square meshes; in each, pixels are sigma-clipped about the median until
stable, the background is the mode estimate ``2.5 median - 1.5 mean`` (the median where the
distribution is too skewed), and the noise is the clipped standard deviation. The mesh grid is
median-filtered to remove meshes spoiled by bright stars and interpolated to every pixel with a
bicubic spline.

Notes
-----
Pure numpy/scipy, thread-safe, allocates no GPU memory. The GPU port lives in the worker's tile
program and follows the same steps.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import median_filter

from ._mesh_spline import mesh_to_pixel_operator

__all__ = ["Background", "estimate_background"]


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
        Medians of the mesh values.
    """

    level: np.ndarray
    rms: np.ndarray
    global_level: float
    global_rms: float


def _clipped_mesh_stats(blocks: np.ndarray, nsigma: float, max_iters: int) -> tuple[np.ndarray, np.ndarray]:
    """Sigma-clip each row of ``blocks`` (NaN = ignored); return (mode estimate, std) per row."""
    data = blocks.copy()
    for _ in range(max_iters):
        med = np.nanmedian(data, axis=1, keepdims=True)
        std = np.nanstd(data, axis=1, keepdims=True)
        clip = np.abs(data - med) > nsigma * std
        if not clip.any():
            break
        data[clip] = np.nan
    with np.errstate(invalid="ignore"):
        med = np.nanmedian(data, axis=1)
        mean = np.nanmean(data, axis=1)
        std = np.nanstd(data, axis=1)
        skew = np.abs(mean - med) / np.where(std > 0, std, np.inf)
    mode = np.where(skew < 0.3, 2.5 * med - 1.5 * mean, med)
    return mode, std


def _spline_to_pixels(grid: np.ndarray, mesh: int, shape: tuple[int, int]) -> np.ndarray:
    ay = mesh_to_pixel_operator(grid.shape[0], mesh, shape[0])
    ax = mesh_to_pixel_operator(grid.shape[1], mesh, shape[1])
    return (ay @ grid @ ax.T).astype(np.float32)


def estimate_background(
    image: np.ndarray,
    *,
    mask: np.ndarray | None = None,
    mesh: int = 64,
    filter_size: int = 3,
    nsigma: float = 3.0,
    max_iters: int = 10,
) -> Background:
    """
    Estimate the background and its noise at every pixel.

    Parameters
    ----------
    image : (ny, nx) ndarray
        Pixels; NaN pixels are ignored.
    mask : (ny, nx) ndarray of bool, optional
        True where a pixel must be ignored (saturated, bad column, ...).
    mesh : int
        Mesh edge in pixels (SEP's ``bw``/``bh``).
    filter_size : int
        Median filter over the mesh grid (SEP's ``fw``/``fh``); 1 disables it.
    nsigma : float
        Clipping threshold.
    max_iters : int
        Clipping iterations at most.

    Returns
    -------
    Background

    Raises
    ------
    ValueError
        ``image`` is not 2-D, ``mask`` has another shape, or ``mesh`` < 4.
    """
    if image.ndim != 2:
        msg = f"image must be 2-D, got shape {image.shape}"
        raise ValueError(msg)
    if mask is not None and mask.shape != image.shape:
        msg = f"mask shape {mask.shape} differs from image shape {image.shape}"
        raise ValueError(msg)
    if mesh < 4:
        msg = f"mesh must be at least 4 pixels, got {mesh}"
        raise ValueError(msg)
    ny, nx = image.shape
    gy, gx = -(-ny // mesh), -(-nx // mesh)
    padded = np.full((gy * mesh, gx * mesh), np.nan, dtype=np.float64)
    padded[:ny, :nx] = image
    if mask is not None:
        padded[:ny, :nx][mask] = np.nan
    blocks = padded.reshape(gy, mesh, gx, mesh).transpose(0, 2, 1, 3).reshape(gy * gx, mesh * mesh)
    level, rms = _clipped_mesh_stats(blocks, nsigma, max_iters)
    level, rms = level.reshape(gy, gx), rms.reshape(gy, gx)
    # Meshes with no usable pixel take the median of the others.
    for grid in (level, rms):
        bad = ~np.isfinite(grid)
        if bad.all():
            msg = "no usable pixel in the image for the background"
            raise ValueError(msg)
        grid[bad] = np.nanmedian(grid)
    if filter_size > 1:
        level = median_filter(level, size=filter_size, mode="nearest")
        rms = median_filter(rms, size=filter_size, mode="nearest")
    return Background(
        level=_spline_to_pixels(level, mesh, image.shape),
        rms=np.maximum(_spline_to_pixels(rms, mesh, image.shape), np.float32(1e-6)),
        global_level=float(np.median(level)),
        global_rms=float(np.median(rms)),
    )
