"""The point-spread function of the simulated telescope and rendering of sources through it.

The PSF is a circular Moffat profile ``I(r) = A (1 + r^2/gamma^2)^-beta`` (astropy's
`~astropy.modeling.functional_models.Moffat2D`, whose ``gamma`` is the core width and ``alpha``
our ``beta``), with ``FWHM = 2 gamma sqrt(2^(1/beta) - 1)``. Point sources are rendered as a batch
of sub-pixel-centred stamps, evaluated on a 2x2 sub-pixel grid per pixel and scatter-added with
`numpy.bincount`. The stamp radius grows with the flux so that bright stars keep their wings;
the flux outside a stamp is lost (as the analytic normalisation says), while the truth catalogue
keeps the total flux.

Notes
-----
Internal to `skyblink.sim`. Pure functions on NumPy arrays; ``render_*`` add into ``image`` in
place.

"""

from __future__ import annotations

import math

import numpy as np
from astropy.modeling.functional_models import Moffat2D
from scipy.special import gamma as gamma_function

__all__ = [
    "line_profile",
    "moffat_gamma",
    "noise_equivalent_area",
    "psf_kernel",
    "render_point_sources",
    "render_segments",
    "stamp_radius",
]

_OVERSAMPLE = 2
_CHUNK_PIXELS = 4_000_000  # sub-pixel evaluations per batch, bounds the temporary memory


def moffat_gamma(fwhm_px: float, beta: float) -> float:
    """Return the Moffat core width ``gamma`` (pixels) of a PSF with FWHM ``fwhm_px`` and ``beta``.

    Raises
    ------
    ValueError
        If ``fwhm_px`` <= 0 or ``beta`` <= 1 (the profile would not be normalisable).

    """
    if fwhm_px <= 0:
        msg = f"fwhm_px must be > 0, got {fwhm_px!r}"
        raise ValueError(msg)
    if beta <= 1:
        msg = f"beta must be > 1 for a normalisable Moffat profile, got {beta!r}"
        raise ValueError(msg)
    return fwhm_px / (2.0 * math.sqrt(2.0 ** (1.0 / beta) - 1.0))


def _moffat_amplitude(flux: np.ndarray, gamma: float, beta: float) -> np.ndarray:
    """Peak surface brightness of a Moffat profile of total ``flux``."""
    return flux * (beta - 1.0) / (math.pi * gamma**2)


def stamp_radius(flux: np.ndarray, fwhm_px: float) -> np.ndarray:
    """Return the stamp half-size in pixels used to render sources of total ``flux`` electrons.

    Faint sources get ``max(5, 2.5 FWHM)``; sources above 1e4, 3e5 and 1e7 electrons get
    ``6 FWHM``, 64 and 160 pixels so that the wings of bright stars reach the sky noise.
    """
    small = max(5, math.ceil(2.5 * fwhm_px))
    mid = max(small, math.ceil(6 * fwhm_px))
    flux = np.asarray(flux, dtype=np.float64)
    radius = np.full(flux.shape, small, dtype=np.int64)
    radius[flux > 1e4] = mid
    radius[flux > 3e5] = max(mid, 64)
    radius[flux > 1e7] = max(mid, 160)
    return radius


def _scatter_add(image: np.ndarray, iy: np.ndarray, ix: np.ndarray, values: np.ndarray) -> None:
    ny, nx = image.shape
    inside = (ix >= 0) & (ix < nx) & (iy >= 0) & (iy < ny)
    if not inside.any():
        return
    flat = iy[inside] * nx + ix[inside]
    image += np.bincount(flat, weights=values[inside], minlength=nx * ny).reshape(ny, nx)


def render_point_sources(
    image: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    flux: np.ndarray,
    *,
    fwhm_px: float,
    beta: float,
) -> None:
    """Add Moffat point sources to ``image`` in place.

    Parameters
    ----------
    image : (ny, nx) `~numpy.ndarray` of float64
        Image in electrons; modified in place.
    x, y : (n,) `~numpy.ndarray`
        0-based pixel positions of the source centres (pixel centres are integers).
    flux : (n,) `~numpy.ndarray`
        Total electrons of each source (before truncation by the stamp).
    fwhm_px : float
        PSF FWHM in pixels.
    beta : float
        Moffat power index, > 1.

    Raises
    ------
    ValueError
        If the arrays differ in length or the PSF parameters are invalid.

    """
    x, y, flux = (np.atleast_1d(np.asarray(a, dtype=np.float64)) for a in (x, y, flux))
    if not x.shape == y.shape == flux.shape:
        msg = f"x, y and flux must have the same shape, got {x.shape}, {y.shape}, {flux.shape}"
        raise ValueError(msg)
    gamma = moffat_gamma(fwhm_px, beta)
    radius = stamp_radius(flux, fwhm_px)
    ny, nx = image.shape
    near = (x > -radius - 1) & (x < nx + radius) & (y > -radius - 1) & (y < ny + radius)
    sub = (np.arange(_OVERSAMPLE) + 0.5) / _OVERSAMPLE - 0.5
    for r in np.unique(radius[near]):
        sel = np.flatnonzero(near & (radius == r))
        offsets = np.arange(-r, r + 1)
        size = offsets.size
        per_source = size * size * _OVERSAMPLE**2
        step = max(1, _CHUNK_PIXELS // per_source)
        for start in range(0, sel.size, step):
            idx = sel[start : start + step]
            ix0 = np.rint(x[idx]).astype(np.int64)[:, None, None]
            iy0 = np.rint(y[idx]).astype(np.int64)[:, None, None]
            amp = _moffat_amplitude(flux[idx], gamma, beta)[:, None, None]
            dx = x[idx, None, None] - ix0
            dy = y[idx, None, None] - iy0
            stamps = np.zeros((idx.size, size, size))
            for sy in sub:
                for sx in sub:
                    stamps += Moffat2D.evaluate(
                        offsets[None, None, :] + sx,
                        offsets[None, :, None] + sy,
                        amp,
                        dx,
                        dy,
                        gamma,
                        beta,
                    )
            stamps /= _OVERSAMPLE**2
            _scatter_add(
                image,
                (iy0 + offsets[None, :, None]).repeat(size, axis=2),
                (ix0 + offsets[None, None, :]).repeat(size, axis=1),
                stamps,
            )


def render_segments(
    image: np.ndarray,
    x0: np.ndarray,
    y0: np.ndarray,
    x1: np.ndarray,
    y1: np.ndarray,
    flux: np.ndarray,
    *,
    fwhm_px: float,
    beta: float,
) -> None:
    """Add trailed sources, the PSF convolved with a line segment, to ``image`` in place.

    Each segment from ``(x0, y0)`` to ``(x1, y1)`` is sampled every half pixel and its ``flux``
    spread evenly over the samples, each rendered with `render_point_sources`.
    """
    x0, y0, x1, y1, flux = (
        np.atleast_1d(np.asarray(a, dtype=np.float64)) for a in (x0, y0, x1, y1, flux)
    )
    length = np.hypot(x1 - x0, y1 - y0)
    n_samples = np.maximum(2, np.ceil(length / 0.5).astype(np.int64) + 1)
    owner = np.repeat(np.arange(x0.size), n_samples)
    frac = np.concatenate([np.linspace(0.0, 1.0, n) for n in n_samples]) if x0.size else np.zeros(0)
    xs = x0[owner] + frac * (x1 - x0)[owner]
    ys = y0[owner] + frac * (y1 - y0)[owner]
    render_point_sources(image, xs, ys, (flux / n_samples)[owner], fwhm_px=fwhm_px, beta=beta)


def psf_kernel(fwhm_px: float, beta: float, *, radius: int | None = None) -> np.ndarray:
    """Return the PSF sampled on a pixel grid, normalised to unit sum.

    Parameters
    ----------
    fwhm_px : float
        FWHM in pixels.
    beta : float
        Moffat power index, > 1.
    radius : int, optional
        Kernel half-size in pixels (default ``ceil(4 FWHM)``, at least 4).

    Returns
    -------
    (2 radius + 1, 2 radius + 1) `~numpy.ndarray` of float64

    """
    if radius is None:
        radius = max(4, math.ceil(4 * fwhm_px))
    kernel = np.zeros((2 * radius + 1, 2 * radius + 1))
    render_point_sources(
        kernel, np.array([radius]), np.array([radius]), np.array([1.0]), fwhm_px=fwhm_px, beta=beta
    )
    return kernel / kernel.sum()


def noise_equivalent_area(fwhm_px: float, beta: float) -> float:
    """Return the noise-equivalent area ``1 / sum(psf^2)`` in pixels of a PSF."""
    kernel = psf_kernel(fwhm_px, beta, radius=max(8, math.ceil(8 * fwhm_px)))
    return float(1.0 / np.sum(kernel**2))


def line_profile(distance: np.ndarray, *, fwhm_px: float, beta: float) -> np.ndarray:
    """Return the cross-section of an infinitely long line through the PSF, per unit line flux.

    Integrating the Moffat profile along the line gives ``(1 + d^2/gamma^2)^(1/2 - beta)``,
    normalised here so that its integral over ``d`` is 1.
    """
    gamma = moffat_gamma(fwhm_px, beta)
    norm = gamma * math.sqrt(math.pi) * gamma_function(beta - 1.0) / gamma_function(beta - 0.5)
    return (1.0 + (np.asarray(distance) / gamma) ** 2) ** (0.5 - beta) / norm
