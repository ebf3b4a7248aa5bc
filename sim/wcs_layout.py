"""Where the simulated telescope points and how its CCDs tile the focal plane.

Coordinates
-----------
*Focal-plane pixels* ``(u, v)`` are measured in pixels from the boresight along the axes of the
unrotated field frame. CCD ``k`` sits in a grid of ``ncols x nrows`` CCDs (``ncols =
ceil(sqrt(n))``) separated by ``gap_px`` pixels, filled row by row from the lower left; its pixel
``(x, y)`` (0-based) is at focal-plane position ``(x + ox_k, y + oy_k)``.

Every CCD of one exposure shares the exposure's CRVAL and CD matrix and differs only by CRPIX,
so a straight line on the sky (a great circle, in the gnomonic projection) is a straight line on
every CCD. Each exposure of a field is dithered by up to ``MAX_DITHER_PX`` pixels and rotated by
up to ``MAX_ROTATION_DEG`` about the field centre. References are unrotated, pointed at the field
centre, and each reference CCD is larger by `reference_margin` pixels per side so that it covers
the footprint of that CCD in every exposure.

WCS headers are written by hand with a ``CDi_j`` matrix (``astropy.wcs.WCS.to_header`` would
write ``PCi_j`` + ``CDELTi``) and parsed back with `astropy.wcs.WCS`.

Notes
-----
Internal to `skyblink.sim`. Pure functions; process-safe.

"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS

from .seeds import Stream, rng_for

__all__ = [
    "MAX_DITHER_PX",
    "MAX_ROTATION_DEG",
    "FocalPlane",
    "Pointing",
    "ccd_wcs",
    "ccd_wcs_header",
    "exposure_pointing",
    "field_center",
    "focal_plane_to_sky",
    "reference_margin",
    "reference_pointing",
]

MAX_DITHER_PX = 10.0
"""Largest dither of an exposure from the field centre, in pixels (radius)."""
MAX_ROTATION_DEG = 0.2
"""Largest rotation of an exposure relative to the field frame, in degrees."""
_MAX_ABS_DEC = 60.0


@dataclass(frozen=True, slots=True)
class FocalPlane:
    """The CCD grid of the camera.

    Attributes
    ----------
    n_ccds : int
        Number of CCDs.
    ccd_size : int
        CCD width and height in pixels.
    gap_px : int
        Gap between neighbouring CCDs in pixels.

    """

    n_ccds: int
    ccd_size: int
    gap_px: int

    @classmethod
    def for_config(cls, n_ccds: int, ccd_size: int) -> FocalPlane:
        """Return the focal plane of ``n_ccds`` CCDs of ``ccd_size`` pixels (gap: size/64, >= 8)."""
        if n_ccds < 1 or ccd_size < 1:
            msg = f"n_ccds and ccd_size must be >= 1, got {n_ccds!r} and {ccd_size!r}"
            raise ValueError(msg)
        return cls(n_ccds=n_ccds, ccd_size=ccd_size, gap_px=max(8, ccd_size // 64))

    @property
    def ncols(self) -> int:
        """Number of CCD columns of the grid."""
        return math.ceil(math.sqrt(self.n_ccds))

    @property
    def nrows(self) -> int:
        """Number of CCD rows of the grid."""
        return math.ceil(self.n_ccds / self.ncols)

    @property
    def width(self) -> float:
        """Focal-plane width in pixels, gaps included."""
        return self.ncols * self.ccd_size + (self.ncols - 1) * self.gap_px

    @property
    def height(self) -> float:
        """Focal-plane height in pixels, gaps included."""
        return self.nrows * self.ccd_size + (self.nrows - 1) * self.gap_px

    @property
    def corner_radius(self) -> float:
        """Distance from the boresight to the farthest focal-plane corner, in pixels."""
        return math.hypot(self.width / 2, self.height / 2)

    def origin(self, ccd: int) -> tuple[float, float]:
        """Return the focal-plane position ``(ox, oy)`` of pixel (0, 0) of CCD ``ccd``.

        Raises
        ------
        ValueError
            If ``ccd`` is not in ``[0, n_ccds)``.

        """
        if not 0 <= ccd < self.n_ccds:
            msg = f"ccd must be in [0, {self.n_ccds}), got {ccd!r}"
            raise ValueError(msg)
        col, row = ccd % self.ncols, ccd // self.ncols
        step = self.ccd_size + self.gap_px
        return col * step - self.width / 2, row * step - self.height / 2


@dataclass(frozen=True, slots=True)
class Pointing:
    """Where one image points.

    Attributes
    ----------
    ra, dec : float
        Boresight (CRVAL) in degrees, ICRS.
    rotation_deg : float
        Rotation of the pixel axes relative to the field frame, degrees counter-clockwise.

    """

    ra: float
    dec: float
    rotation_deg: float


def field_center(seed: int, field: int) -> tuple[float, float]:
    """Return the centre (RA, Dec) in degrees of field ``field``.

    Fields are spread in RA by the golden angle and lie uniformly on the sphere within
    |Dec| <= 60 deg, away from the poles.
    """
    rng = rng_for(seed, Stream.FIELD_POINTING, field)
    ra = (rng.uniform(0.0, 360.0) + field * 137.50776) % 360.0
    sin_lim = math.sin(math.radians(_MAX_ABS_DEC))
    dec = math.degrees(math.asin(rng.uniform(-sin_lim, sin_lim)))
    return ra, dec


def _field_frame_wcs(ra: float, dec: float, pixel_scale_arcsec: float) -> WCS:
    """Unrotated TAN WCS whose 0-based pixel (0, 0) is the field centre (focal-plane pixels)."""
    header = fits.Header()
    _put_wcs(header, ra, dec, 1.0, 1.0, pixel_scale_arcsec, 0.0)
    return WCS(header)


def exposure_pointing(seed: int, field: int, exposure: int, pixel_scale_arcsec: float) -> Pointing:
    """Return the dithered, rotated pointing of exposure ``exposure`` of field ``field``.

    The dither is uniform within a disc of `MAX_DITHER_PX` pixels and the rotation uniform in
    +/- `MAX_ROTATION_DEG`.
    """
    rng = rng_for(seed, Stream.EXPOSURE_POINTING, field, exposure)
    radius = MAX_DITHER_PX * math.sqrt(rng.uniform(0.09, 1.0))
    phi = rng.uniform(0.0, 2 * math.pi)
    rotation = rng.uniform(-MAX_ROTATION_DEG, MAX_ROTATION_DEG)
    ra0, dec0 = field_center(seed, field)
    frame = _field_frame_wcs(ra0, dec0, pixel_scale_arcsec)
    ra, dec = frame.all_pix2world([[radius * math.cos(phi), radius * math.sin(phi)]], 0)[0]
    return Pointing(ra=float(ra), dec=float(dec), rotation_deg=float(rotation))


def reference_pointing(seed: int, field: int) -> Pointing:
    """Return the pointing of the reference of field ``field``: its centre, unrotated."""
    ra, dec = field_center(seed, field)
    return Pointing(ra=ra, dec=dec, rotation_deg=0.0)


def reference_margin(plane: FocalPlane) -> int:
    """Return the extra pixels per side of each reference CCD.

    At least 64, and enough (rounded up to a multiple of 16) to cover any exposure's dither plus
    its rotation at the far corner of the focal plane.
    """
    need = MAX_DITHER_PX + math.radians(MAX_ROTATION_DEG) * plane.corner_radius + 8
    return max(64, 16 * math.ceil(need / 16))


def _put_wcs(
    header: fits.Header,
    ra: float,
    dec: float,
    crpix1: float,
    crpix2: float,
    pixel_scale_arcsec: float,
    rotation_deg: float,
) -> None:
    scale = pixel_scale_arcsec / 3600.0
    c, s = math.cos(math.radians(rotation_deg)), math.sin(math.radians(rotation_deg))
    cards = [
        ("WCSAXES", 2, "Number of WCS axes"),
        ("CTYPE1", "RA---TAN", "Gnomonic projection"),
        ("CTYPE2", "DEC--TAN", "Gnomonic projection"),
        ("CUNIT1", "deg", ""),
        ("CUNIT2", "deg", ""),
        ("RADESYS", "ICRS", ""),
        ("CRVAL1", ra, "[deg] RA of the reference point (boresight)"),
        ("CRVAL2", dec, "[deg] Dec of the reference point (boresight)"),
        ("CRPIX1", crpix1, "1-based x of the boresight on this CCD"),
        ("CRPIX2", crpix2, "1-based y of the boresight on this CCD"),
        ("CD1_1", -scale * c, "[deg/px] (East to the left)"),
        ("CD1_2", scale * s, "[deg/px]"),
        ("CD2_1", scale * s, "[deg/px]"),
        ("CD2_2", scale * c, "[deg/px]"),
    ]
    for key, value, comment in cards:
        header[key] = (value, comment)


def ccd_wcs_header(
    pointing: Pointing,
    plane: FocalPlane,
    ccd: int,
    pixel_scale_arcsec: float,
    *,
    margin: int = 0,
) -> fits.Header:
    """Return the WCS cards (TAN, CD matrix) of CCD ``ccd``.

    Parameters
    ----------
    pointing : `Pointing`
        Boresight and rotation of the image.
    plane : `FocalPlane`
        CCD layout.
    ccd : int
        CCD index in ``[0, plane.n_ccds)``.
    pixel_scale_arcsec : float
        Pixel scale in arcsec per pixel.
    margin : int, optional
        Extra pixels on every side of the CCD (references); pixel (0, 0) moves out by ``margin``.

    Returns
    -------
    `~astropy.io.fits.Header`
        WCSAXES, CTYPEi, CUNITi, RADESYS, CRVALi, CRPIXi and CDi_j.

    """
    ox, oy = plane.origin(ccd)
    header = fits.Header()
    _put_wcs(
        header,
        pointing.ra,
        pointing.dec,
        -(ox - margin) + 1.0,
        -(oy - margin) + 1.0,
        pixel_scale_arcsec,
        pointing.rotation_deg,
    )
    return header


def ccd_wcs(
    pointing: Pointing,
    plane: FocalPlane,
    ccd: int,
    pixel_scale_arcsec: float,
    *,
    margin: int = 0,
) -> WCS:
    """Return the celestial WCS of CCD ``ccd`` (see `ccd_wcs_header` for the parameters).

    Returns
    -------
    `~astropy.wcs.WCS`
        With ``pixel_shape`` set to the CCD size plus twice ``margin``.

    """
    wcs = WCS(ccd_wcs_header(pointing, plane, ccd, pixel_scale_arcsec, margin=margin))
    size = plane.ccd_size + 2 * margin
    wcs.pixel_shape = (size, size)
    return wcs


def focal_plane_to_sky(
    u: np.ndarray, v: np.ndarray, seed: int, field: int, pixel_scale_arcsec: float
) -> tuple[np.ndarray, np.ndarray]:
    """Return (RA, Dec) in degrees of field-frame focal-plane pixel positions ``(u, v)``."""
    ra0, dec0 = field_center(seed, field)
    ra, dec = _field_frame_wcs(ra0, dec0, pixel_scale_arcsec).all_pix2world(u, v, 0)
    return np.asarray(ra, dtype=np.float64), np.asarray(dec, dtype=np.float64)
