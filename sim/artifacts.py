"""Instrumental and environmental artifacts: hot pixels, bad columns, cosmic rays, satellites.

* Hot pixels: fixed per CCD for the whole night (drawn from the seed and the CCD index only),
  ``max(2, Poisson(50 x area))`` per CCD (area in units of a 2048x2048 CCD), dark charge
  log-uniform 300-30,000 e- per 30 s; the first hot pixel of every CCD holds four times the full
  well, as real sensors always have a few saturated hot pixels, so every CCD exercises the
  saturation and bleed path.
* Bad columns: fixed per CCD, ``1 + Poisson(0.5 x size/2048)``; half run the full column, half
  from a random row to the top (a charge trap); half are dead (read 0 e-), half hot (+2,000 e-
  per 30 s).
* Cosmic rays: per exposure and CCD, ``Poisson(40 x area x exptime/30 s)``; 60 % compact hits
  (1-4 pixels) and 40 % short tracks (3-30 px, random angle); lognormal charge (median 3,000 e-
  per pixel for hits, 1,500 for tracks). Not PSF-convolved.
* Satellites: at most one per exposure, with probability ``min(0.9, 0.2 sqrt(focal-plane area))``;
  a straight line across the whole focal plane with the PSF's cross-section
  (`psf.line_profile`), 2,000-50,000 e- per pixel of length.

None of these is in the references (a coadd of dithered exposures rejects them).

Notes
-----
Internal to `skyblink.sim`. Pure functions.

"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from skyblink.config import SimConfig

from .conditions import FULL_WELL
from .psf import line_profile
from .seeds import Stream, rng_for
from .wcs_layout import FocalPlane

__all__ = [
    "BadColumns",
    "CosmicRays",
    "HotPixels",
    "SatelliteTrail",
    "bad_columns",
    "cosmic_rays",
    "hot_pixels",
    "render_satellite",
    "satellite_trail",
]

_CCD_AREA = 2048.0 * 2048.0


@dataclass(frozen=True, slots=True)
class HotPixels:
    """Hot pixels of one CCD; ``dark_e`` is the charge per exposure of ``exptime``."""

    x: np.ndarray
    y: np.ndarray
    dark_e: np.ndarray


@dataclass(frozen=True, slots=True)
class BadColumns:
    """Bad columns of one CCD: rows ``[y0, y1)`` of column ``x``; dead (0 e-) or hot."""

    x: np.ndarray
    y0: np.ndarray
    y1: np.ndarray
    dead: np.ndarray
    hot_e: np.ndarray


@dataclass(frozen=True, slots=True)
class CosmicRays:
    """Cosmic-ray charge of one CCD exposure: per-pixel deposits and a per-ray summary."""

    iy: np.ndarray
    ix: np.ndarray
    charge: np.ndarray
    owner: np.ndarray
    x: np.ndarray
    y: np.ndarray
    total_e: np.ndarray
    length_px: np.ndarray
    angle_deg: np.ndarray


@dataclass(frozen=True, slots=True)
class SatelliteTrail:
    """A satellite crossing the focal plane through ``(u, v)`` at ``angle_deg`` from +u."""

    u: float
    v: float
    angle_deg: float
    e_per_px: float


def hot_pixels(config: SimConfig, ccd: int) -> HotPixels:
    """Return the hot pixels of CCD ``ccd`` (the same in every exposure of the night)."""
    rng = rng_for(config.seed, Stream.HOT_PIXELS, ccd)
    size = config.image_size
    n = max(2, int(rng.poisson(50.0 * size * size / _CCD_AREA)))
    dark = np.exp(rng.uniform(math.log(300.0), math.log(30_000.0), n)) * config.exptime / 30.0
    dark[0] = 4.0 * FULL_WELL
    return HotPixels(x=rng.integers(0, size, n), y=rng.integers(0, size, n), dark_e=dark)


def bad_columns(config: SimConfig, ccd: int) -> BadColumns:
    """Return the bad columns of CCD ``ccd`` (the same in every exposure of the night)."""
    rng = rng_for(config.seed, Stream.BAD_COLUMNS, ccd)
    size = config.image_size
    n = 1 + int(rng.poisson(0.5 * size / 2048.0))
    full = rng.uniform(size=n) < 0.5
    start = np.where(full, 0, rng.integers(0, size, n))
    return BadColumns(
        x=rng.integers(0, size, n),
        y0=start,
        y1=np.full(n, size),
        dead=rng.uniform(size=n) < 0.5,
        hot_e=np.full(n, 2000.0 * config.exptime / 30.0),
    )


def cosmic_rays(rng: np.random.Generator, shape: tuple[int, int], exptime: float) -> CosmicRays:
    """Draw the cosmic rays that hit one CCD during one exposure.

    Parameters
    ----------
    rng : `numpy.random.Generator`
        The exposure's and CCD's cosmic-ray stream.
    shape : (ny, nx)
        CCD shape.
    exptime : float
        Exposure time in seconds.

    Returns
    -------
    `CosmicRays`
        Deposits inside the CCD; pixels hit by several rays appear several times.

    """
    ny, nx = shape
    n = int(rng.poisson(40.0 * ny * nx / _CCD_AREA * exptime / 30.0))
    iys, ixs, charges, owners = [], [], [], []
    cx, cy, total, length, angle = (np.zeros(n) for _ in range(5))
    neighbours = np.array([(-1, 0), (1, 0), (0, -1), (0, 1), (-1, -1), (1, 1), (-1, 1), (1, -1)])
    for i in range(n):
        x0, y0 = rng.uniform(0, nx - 1), rng.uniform(0, ny - 1)
        if rng.uniform() < 0.6:
            k = int(rng.integers(0, 4))
            offs = np.vstack([[0, 0], neighbours[rng.permutation(8)[:k]]])
            px = np.rint(x0).astype(np.int64) + offs[:, 0]
            py = np.rint(y0).astype(np.int64) + offs[:, 1]
            q = 3000.0 * np.exp(rng.normal(0.0, 0.8, offs.shape[0]))
            q[1:] *= rng.uniform(0.1, 0.5, k)
            length[i], angle[i] = 0.0, np.nan
        else:
            ell = rng.uniform(3.0, 30.0)
            phi = rng.uniform(0.0, 180.0)
            steps = np.linspace(-ell / 2, ell / 2, math.ceil(ell * 2) + 1)
            pts = np.unique(
                np.rint(
                    np.column_stack(
                        [
                            x0 + steps * math.cos(math.radians(phi)),
                            y0 + steps * math.sin(math.radians(phi)),
                        ]
                    )
                ).astype(np.int64),
                axis=0,
            )
            px, py = pts[:, 0], pts[:, 1]
            q = 1500.0 * np.exp(rng.normal(0.0, 0.5, px.size))
            length[i], angle[i] = ell, phi
        keep = (px >= 0) & (px < nx) & (py >= 0) & (py < ny)
        px, py, q = px[keep], py[keep], q[keep]
        iys.append(py)
        ixs.append(px)
        charges.append(q)
        owners.append(np.full(px.size, i))
        total[i] = q.sum()
        cx[i] = np.average(px, weights=q) if q.size else x0
        cy[i] = np.average(py, weights=q) if q.size else y0

    def cat(parts: list[np.ndarray], dtype: type) -> np.ndarray:
        return np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype)

    return CosmicRays(
        iy=cat(iys, np.int64),
        ix=cat(ixs, np.int64),
        charge=cat(charges, np.float64),
        owner=cat(owners, np.int64),
        x=cx,
        y=cy,
        total_e=total,
        length_px=length,
        angle_deg=angle,
    )


def satellite_trail(config: SimConfig, field: int, exposure: int) -> SatelliteTrail | None:
    """Return the satellite crossing exposure ``exposure`` of field ``field``, or None."""
    rng = rng_for(config.seed, Stream.SATELLITES, field, exposure)
    plane = FocalPlane.for_config(config.ccds, config.image_size)
    probability = min(0.9, 0.2 * math.sqrt(plane.width * plane.height / _CCD_AREA))
    draws = rng.uniform(size=5)
    if draws[0] >= probability:
        return None
    return SatelliteTrail(
        u=float((draws[1] - 0.5) * plane.width),
        v=float((draws[2] - 0.5) * plane.height),
        angle_deg=float(draws[3] * 180.0),
        e_per_px=float(math.exp(math.log(2000.0) + draws[4] * math.log(25.0))),
    )


def render_satellite(
    image: np.ndarray,
    trail: SatelliteTrail,
    origin: tuple[float, float],
    *,
    fwhm_px: float,
    beta: float,
) -> tuple[np.ndarray, dict[str, float]] | None:
    """Add a satellite trail to one CCD's expected electrons in place.

    Parameters
    ----------
    image : (ny, nx) `~numpy.ndarray` of float64
        Modified in place.
    trail : `SatelliteTrail`
        The trail in exposure focal-plane pixels.
    origin : (ox, oy)
        Focal-plane position of the CCD's pixel (0, 0).
    fwhm_px, beta : float
        PSF parameters.

    Returns
    -------
    (contribution, summary) or None
        None when the trail misses the CCD; otherwise the added electrons (ny, nx) and a
        summary with x, y (the trail point nearest the CCD centre), length_px (inside the CCD),
        angle_deg and flux (electrons on the CCD).

    """
    ny, nx = image.shape
    px, py = trail.u - origin[0], trail.v - origin[1]
    c, s = math.cos(math.radians(trail.angle_deg)), math.sin(math.radians(trail.angle_deg))
    centre_x, centre_y = (nx - 1) / 2, (ny - 1) / 2
    if abs((centre_x - px) * s - (centre_y - py) * c) > math.hypot(nx, ny) / 2 + 10 * fwhm_px:
        return None
    xs = np.arange(nx, dtype=np.float64)
    ys = np.arange(ny, dtype=np.float64)
    distance = np.abs((xs[None, :] - px) * s - (ys[:, None] - py) * c)
    contribution = trail.e_per_px * line_profile(distance, fwhm_px=fwhm_px, beta=beta)
    image += contribution
    t_near = (centre_x - px) * c + (centre_y - py) * s
    lo, hi = -math.inf, math.inf
    for p, d, n in ((px, c, nx), (py, s, ny)):
        if abs(d) < 1e-12:
            if not -0.5 <= p < n - 0.5:
                lo, hi = 0.0, 0.0
            continue
        t1, t2 = (-0.5 - p) / d, (n - 0.5 - p) / d
        lo, hi = max(lo, min(t1, t2)), min(hi, max(t1, t2))
    summary = {
        "x": px + t_near * c,
        "y": py + t_near * s,
        "length_px": max(0.0, hi - lo),
        "angle_deg": trail.angle_deg,
        "flux": float(contribution.sum()),
    }
    return contribution, summary
