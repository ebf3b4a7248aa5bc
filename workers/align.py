"""
Bring a reference image onto a science image's pixel grid, using both WCS.

The mapping from science pixels to reference pixels is computed exactly with astropy at a grid
of control points and interpolated (cubic spline on the CPU, bilinear from a uniform lattice on the
device) to every pixel: a sampling grid, as GridSample
takes it. The warp then samples the reference bilinearly at those positions.

Notes
-----
Pure numpy/scipy/astropy, thread-safe. The GPU tile program uses the same sampling grid with
``torch.nn.functional.grid_sample``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from scipy.interpolate import RectBivariateSpline
from scipy.ndimage import map_coordinates

if TYPE_CHECKING:  # astropy is needed by the caller who built the WCS, not to import this module
    from astropy.wcs import WCS

__all__ = ["control_points", "sampling_grid", "warp"]


def sampling_grid(science_wcs: WCS, reference_wcs: WCS, shape: tuple[int, int], *, step: int = 32,
                  origin: tuple[int, int] = (0, 0)) -> np.ndarray:
    """
    Return, for each science pixel, the reference pixel that sees the same sky.

    Parameters
    ----------
    science_wcs, reference_wcs : astropy.wcs.WCS
        Celestial WCS of the two images (0-based pixel convention).
    shape : (ny, nx)
        Size of the science region.
    step : int
        Control-point spacing in pixels; the exact mapping is evaluated there and interpolated.
    origin : (y0, x0)
        Science pixel of the region's first pixel (for tiles cut from a CCD).

    Returns
    -------
    (2, ny, nx) ndarray of float32
        Reference (x, y) pixel coordinates, 0-based.
    """
    ny, nx = shape
    ys = np.unique(np.r_[np.arange(0, ny, step), ny - 1]).astype(float)
    xs = np.unique(np.r_[np.arange(0, nx, step), nx - 1]).astype(float)
    gx, gy = np.meshgrid(xs + origin[1], ys + origin[0])
    world = science_wcs.all_pix2world(np.column_stack([gx.ravel(), gy.ravel()]), 0)
    ref = reference_wcs.all_world2pix(world, 0)
    out = np.empty((2, ny, nx), dtype=np.float32)
    k = min(3, len(ys) - 1, len(xs) - 1)
    for axis in range(2):
        spline = RectBivariateSpline(ys, xs, ref[:, axis].reshape(len(ys), len(xs)), kx=k, ky=k)
        out[axis] = spline(np.arange(ny), np.arange(nx))
    return out


def control_points(science_wcs: WCS, reference_wcs: WCS, shape: tuple[int, int], *, step: int = 32,
                   origin: tuple[int, int] = (0, 0)) -> np.ndarray:
    """
    Return the exact science-to-reference mapping on a uniform lattice of control points.

    The lattice spans the region's first and last pixels with at most ``step`` pixels between
    points, so that upsampling it with corner-aligned interpolation (bilinear on the device, see
    `skyblink.workers.gpu_units`) gives the full sampling grid without sending it over the bus.

    Parameters
    ----------
    science_wcs, reference_wcs : astropy.wcs.WCS
    shape : (ny, nx)
    step : int
        Largest spacing between control points, pixels.
    origin : (y0, x0)
        Science pixel of the region's first pixel.

    Returns
    -------
    (2, my, mx) ndarray of float64
        Reference (x, y) pixel coordinates at ``linspace(0, n - 1, m)`` along each axis.
    """
    ny, nx = shape
    ys = np.linspace(0, ny - 1, int(np.ceil((ny - 1) / step)) + 1)
    xs = np.linspace(0, nx - 1, int(np.ceil((nx - 1) / step)) + 1)
    gx, gy = np.meshgrid(xs + origin[1], ys + origin[0])
    world = science_wcs.all_pix2world(np.column_stack([gx.ravel(), gy.ravel()]), 0)
    ref = reference_wcs.all_world2pix(world, 0)
    return ref.T.reshape(2, len(ys), len(xs))


def warp(image: np.ndarray, grid: np.ndarray, *, order: int = 1, fill: float = np.nan) -> np.ndarray:
    """
    Sample ``image`` at the (x, y) positions of ``grid`` (from `sampling_grid`).

    Parameters
    ----------
    image : (my, mx) ndarray
        The reference pixels.
    grid : (2, ny, nx) ndarray
        Positions in ``image``'s pixel coordinates.
    order : int
        Spline order: 1 is bilinear (what GridSample does), 3 bicubic.
    fill : float
        Value outside ``image``.

    Returns
    -------
    (ny, nx) ndarray of float32
    """
    coords = np.stack([grid[1], grid[0]])  # map_coordinates wants (row, column)
    return map_coordinates(image.astype(np.float32, copy=False), coords, order=order, mode="constant", cval=fill).astype(np.float32)
