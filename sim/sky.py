"""The static sky of a field: stars, galaxies and the sky background.

Catalogue (per field, drawn once from the night's seed and the field index)
---------------------------------------------------------------------------
Objects are placed uniformly over the field's reference footprint (the focal plane plus the
reference margin and a render pad). Counts scale with that area; for the default 2048x2048
CCD at 0.6 arcsec/px (0.117 deg^2) they are about

* stars: ``STAR_DENSITY`` = 25,700 per deg^2 (~3,000 per CCD) times a per-field density factor
  (lognormal, 0.6-1.6), magnitudes from ``dN/dm ~ 10^(0.3 m)`` between 2.5 mag brighter than
  saturation and 2 mag fainter than the nominal 5-sigma limit;
* galaxies: ``GALAXY_DENSITY`` = 2,600 per deg^2 (~300 per CCD), ``dN/dm ~ 10^(0.35 m)`` from
  7 mag brighter to 1 mag fainter than the limit, Sersic index 0.5-4, ellipticity 0-0.6, random
  position angle and a half-light radius shrinking with magnitude (median 1.6 arcsec at 4 mag
  above the limit).

Galaxies are rendered as Sersic stamps (astropy ``Sersic2D.evaluate``, 2x2 sub-pixel sampling,
normalised to the total flux), FFT-convolved stamp by stamp with the image's PSF
(`scipy.signal.fftconvolve` on the batch) and scatter-added.

Notes
-----
Internal to `skyblink.sim`. Catalogues are cached per process (`functools.lru_cache`).

"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from astropy.modeling.functional_models import Sersic2D
from scipy.signal import fftconvolve

from skyblink.config import SimConfig

from .conditions import nominal_conditions, saturation_magnitude
from .psf import psf_kernel
from .seeds import Stream, rng_for
from .wcs_layout import FocalPlane, focal_plane_to_sky, reference_margin

__all__ = [
    "GALAXY_DENSITY",
    "STAR_DENSITY",
    "Galaxies",
    "Stars",
    "field_extent",
    "galaxies_for_field",
    "power_law_magnitudes",
    "render_galaxies",
    "sky_background",
    "stars_for_field",
]

STAR_DENSITY = 25_700.0
GALAXY_DENSITY = 2_600.0
RENDER_PAD_PX = 170
_DEG2_PER_PX2_PER_ARCSEC2 = 1.0 / 3600.0**2


@dataclass(frozen=True, slots=True)
class Stars:
    """Point sources of a field; ``u, v`` are field-frame focal-plane pixels (see wcs_layout)."""

    ids: np.ndarray
    ra: np.ndarray
    dec: np.ndarray
    u: np.ndarray
    v: np.ndarray
    mag: np.ndarray


@dataclass(frozen=True, slots=True)
class Galaxies:
    """Sersic galaxies of a field (angles in degrees, counter-clockwise from +x)."""

    ids: np.ndarray
    ra: np.ndarray
    dec: np.ndarray
    u: np.ndarray
    v: np.ndarray
    mag: np.ndarray
    r_eff_arcsec: np.ndarray
    sersic_n: np.ndarray
    ellip: np.ndarray
    theta_deg: np.ndarray


def field_extent(config: SimConfig) -> tuple[float, float]:
    """Return the half-width and half-height (pixels) of the area where objects are placed."""
    plane = FocalPlane.for_config(config.ccds, config.image_size)
    pad = reference_margin(plane) + RENDER_PAD_PX
    return plane.width / 2 + pad, plane.height / 2 + pad


def _area_deg2(config: SimConfig) -> float:
    hw, hh = field_extent(config)
    return 4 * hw * hh * config.pixel_scale_arcsec**2 * _DEG2_PER_PX2_PER_ARCSEC2


def power_law_magnitudes(
    rng: np.random.Generator, n: int, bright: float, faint: float, slope: float
) -> np.ndarray:
    """Draw ``n`` magnitudes from ``dN/dm ~ 10^(slope m)`` on ``[bright, faint]``.

    Raises
    ------
    ValueError
        If ``bright >= faint`` or ``slope <= 0``.

    """
    if bright >= faint or slope <= 0:
        msg = (
            f"need bright < faint and slope > 0, got bright={bright}, faint={faint}, slope={slope}"
        )
        raise ValueError(msg)
    lo, hi = 10.0 ** (slope * bright), 10.0 ** (slope * faint)
    return np.log10(lo + rng.uniform(size=n) * (hi - lo)) / slope


def _uniform_positions(
    rng: np.random.Generator, n: int, config: SimConfig
) -> tuple[np.ndarray, np.ndarray]:
    hw, hh = field_extent(config)
    return rng.uniform(-hw, hw, n), rng.uniform(-hh, hh, n)


def _density_factor(config: SimConfig, field: int) -> float:
    rng = rng_for(config.seed, Stream.STARS, field, 1)
    return float(np.clip(np.exp(rng.normal(0.0, 0.3)), 0.6, 1.6))


@functools.lru_cache(maxsize=8)
def stars_for_field(config: SimConfig, field: int) -> Stars:
    """Return the (non-variable) stars of field ``field``; ids are ``'<field>-S<nnnnnn>'``.

    Cached per process; the same arguments always give the same catalogue.
    """
    rng = rng_for(config.seed, Stream.STARS, field)
    n = int(rng.poisson(STAR_DENSITY * _density_factor(config, field) * _area_deg2(config)))
    m5 = nominal_conditions(config).limiting_mag
    mag = power_law_magnitudes(rng, n, saturation_magnitude(config) - 2.5, m5 + 2.0, 0.3)
    u, v = _uniform_positions(rng, n, config)
    ra, dec = focal_plane_to_sky(u, v, config.seed, field, config.pixel_scale_arcsec)
    ids = np.array([f"F{field:02d}-S{i:06d}" for i in range(n)], dtype=object)
    return Stars(ids=ids, ra=ra, dec=dec, u=u, v=v, mag=mag)


@functools.lru_cache(maxsize=8)
def galaxies_for_field(config: SimConfig, field: int) -> Galaxies:
    """Return the galaxies of field ``field``; ids are ``'<field>-G<nnnnnn>'``. Cached."""
    rng = rng_for(config.seed, Stream.GALAXIES, field)
    n = int(rng.poisson(GALAXY_DENSITY * _area_deg2(config)))
    m5 = nominal_conditions(config).limiting_mag
    mag = power_law_magnitudes(rng, n, m5 - 7.0, m5 + 1.0, 0.35)
    u, v = _uniform_positions(rng, n, config)
    ra, dec = focal_plane_to_sky(u, v, config.seed, field, config.pixel_scale_arcsec)
    median_r = 1.6 * 10.0 ** (-0.15 * (mag - (m5 - 4.0)))
    r_eff = np.clip(median_r * np.exp(rng.normal(0.0, 0.35, n)), 0.3, 8.0)
    ids = np.array([f"F{field:02d}-G{i:06d}" for i in range(n)], dtype=object)
    return Galaxies(
        ids=ids,
        ra=ra,
        dec=dec,
        u=u,
        v=v,
        mag=mag,
        r_eff_arcsec=r_eff,
        sersic_n=rng.uniform(0.5, 4.0, n),
        ellip=rng.uniform(0.0, 0.6, n),
        theta_deg=rng.uniform(0.0, 180.0, n),
    )


def render_galaxies(
    image: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    flux: np.ndarray,
    *,
    r_eff_px: np.ndarray,
    sersic_n: np.ndarray,
    ellip: np.ndarray,
    theta_rad: np.ndarray,
    fwhm_px: float,
    beta: float,
) -> None:
    """Add PSF-convolved Sersic galaxies to ``image`` (electrons) in place.

    Parameters
    ----------
    image : (ny, nx) `~numpy.ndarray` of float64
        Modified in place.
    x, y : (n,) `~numpy.ndarray`
        0-based pixel positions of the galaxy centres.
    flux : (n,) `~numpy.ndarray`
        Total electrons of each galaxy.
    r_eff_px, sersic_n, ellip, theta_rad : (n,) `~numpy.ndarray`
        Sersic half-light radius (pixels), index, ellipticity and position angle (radians
        counter-clockwise from +x in pixel coordinates).
    fwhm_px, beta : float
        PSF parameters.

    """
    kernel = psf_kernel(fwhm_px, beta)
    k = kernel.shape[0] // 2
    half = np.clip(np.ceil(r_eff_px * (3.0 + 1.5 * sersic_n)), 6, 96).astype(np.int64)
    buckets = np.array([8, 16, 32, 64, 96])
    half = buckets[np.searchsorted(buckets, half)]
    ny, nx = image.shape
    near = (x > -half - k) & (x < nx + half + k) & (y > -half - k) & (y < ny + half + k)
    sub = np.array([-0.25, 0.25])
    for h in np.unique(half[near]):
        for idx in np.array_split(np.flatnonzero(near & (half == h)), max(1, int(h) // 8)):
            if idx.size == 0:
                continue
            offsets = np.arange(-h, h + 1)
            ix0 = np.rint(x[idx]).astype(np.int64)
            iy0 = np.rint(y[idx]).astype(np.int64)
            dx = (x[idx] - ix0)[:, None, None]
            dy = (y[idx] - iy0)[:, None, None]
            args = (
                r_eff_px[idx][:, None, None],
                sersic_n[idx][:, None, None],
                dx,
                dy,
                ellip[idx][:, None, None],
                theta_rad[idx][:, None, None],
            )
            stamps = np.zeros((idx.size, offsets.size, offsets.size))
            for sy in sub:
                for sx in sub:
                    r, n, x0, y0, e, t = args
                    stamps += Sersic2D.evaluate(
                        offsets[None, None, :] + sx,
                        offsets[None, :, None] + sy,
                        1.0,
                        r,
                        n,
                        x0,
                        y0,
                        e,
                        t,
                    )
            stamps *= (flux[idx] / stamps.sum(axis=(1, 2)))[:, None, None]
            conv = fftconvolve(stamps, kernel[None], mode="full", axes=(1, 2))
            full = np.arange(-(h + k), h + k + 1)
            size = full.size
            iy = (iy0[:, None, None] + full[None, :, None]).repeat(size, axis=2)
            ix = (ix0[:, None, None] + full[None, None, :]).repeat(size, axis=1)
            inside = (ix >= 0) & (ix < nx) & (iy >= 0) & (iy < ny)
            image += np.bincount(
                (iy * nx + ix)[inside], weights=conv[inside], minlength=nx * ny
            ).reshape(ny, nx)


def sky_background(
    shape: tuple[int, int],
    *,
    origin: tuple[float, float],
    level: float,
    gradient: tuple[float, float],
    half_width: float,
) -> np.ndarray:
    """Return the expected sky (electrons) of one CCD: a plane continuous across the focal plane.

    Parameters
    ----------
    shape : (ny, nx)
        CCD shape.
    origin : (ox, oy)
        Focal-plane position of CCD pixel (0, 0).
    level : float
        Sky at the boresight, electrons per pixel.
    gradient : (gu, gv)
        Fractional change per ``half_width`` pixels along focal-plane u and v.
    half_width : float
        Half the focal-plane width in pixels.

    Returns
    -------
    (ny, nx) `~numpy.ndarray` of float64

    """
    ny, nx = shape
    u = (np.arange(nx) + origin[0]) / half_width
    v = (np.arange(ny) + origin[1]) / half_width
    return level * (1.0 + gradient[0] * u[None, :] + gradient[1] * v[:, None])

