"""
The bicubic spline from a mesh grid to pixels, as a linear operator.

A not-a-knot cubic spline through the mesh centres, held constant beyond the outermost centres
(what SExtractor/SEP and scipy's RectBivariateSpline do), is linear in the mesh values: the
pixel map is ``A_y @ grid @ A_x.T``. Building the two small matrices once per tile shape lets the
CPU (numpy) and GPU (torch matmul) paths compute exactly the same background.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from scipy.interpolate import make_interp_spline

__all__ = ["mesh_to_pixel_operator"]


@lru_cache(maxsize=64)
def mesh_to_pixel_operator(n_mesh: int, mesh: int, n_pixels: int) -> np.ndarray:
    """
    Return the (n_pixels, n_mesh) matrix that interpolates mesh-centre values along one axis.

    Parameters
    ----------
    n_mesh : int
        Meshes along the axis (centres at ``(i + 0.5) * mesh - 0.5``).
    mesh : int
        Mesh size in pixels.
    n_pixels : int
        Pixels along the axis.
    """
    if n_mesh == 1:
        return np.ones((n_pixels, 1))
    centres = (np.arange(n_mesh) + 0.5) * mesh - 0.5
    positions = np.clip(np.arange(n_pixels, dtype=float), centres[0], centres[-1])
    spline = make_interp_spline(centres, np.eye(n_mesh), k=min(3, n_mesh - 1))
    operator = spline(positions)
    operator.setflags(write=False)
    return operator
