"""Render one CCD of one image (a science exposure or a field reference).

A science CCD holds the static sky (stars, galaxies, variables at their current magnitude),
transients, moving objects (trailed when they move more than 1.5 FWHM during the exposure),
hot pixels, bad columns, cosmic rays and satellite trails, with photon noise, bleeding, read
noise and saturation (see `detector`). A reference CCD is larger by `reference_margin` pixels per
side and holds only the static sky, with variables at their mean magnitude, as a mean coadd of
``reference_depth`` exposures.

Mask bits (`MaskBit`): 1 cosmic ray, 2 hot pixel, 4 bad column, 8 satellite trail (where the
trail adds more than half the sky noise), 16 saturated or bled.

Notes
-----
Internal to `skyblink.sim`. One call renders one CCD, so CCDs can be rendered in any order and
in any process; the result depends only on the configuration and the indices.

"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntFlag
from typing import Any

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS

from skyblink.config import SimConfig

from .artifacts import bad_columns, cosmic_rays, hot_pixels, render_satellite, satellite_trail
from .conditions import (
    FULL_WELL,
    SATURATE_ADU,
    Conditions,
    exposure_conditions,
    reference_conditions,
)
from .detector import bleed_columns, photon_noise, read_out
from .events import movers_for_field, transients_for_field, variables_for_field
from .psf import render_point_sources, render_segments
from .seeds import Stream, rng_for
from .sky import RENDER_PAD_PX, galaxies_for_field, render_galaxies, sky_background, stars_for_field
from .wcs_layout import (
    FocalPlane,
    Pointing,
    ccd_wcs_header,
    exposure_pointing,
    reference_margin,
    reference_pointing,
)

__all__ = ["MaskBit", "RenderedCcd", "render_ccd"]

TRAIL_THRESHOLD_FWHM = 1.5


class MaskBit(IntFlag):
    """Bits of the artifact mask."""

    COSMIC_RAY = 1
    HOT_PIXEL = 2
    BAD_COLUMN = 4
    SATELLITE = 8
    SATURATED = 16


@dataclass(frozen=True, slots=True)
class RenderedCcd:
    """One rendered CCD.

    Attributes
    ----------
    ccd : int
        CCD index.
    pixels : (ny, nx) `~numpy.ndarray` of uint16 or float32
        Stored ADU.
    mask : (ny, nx) `~numpy.ndarray` of uint8
        Artifact bitmask (`MaskBit`).
    wcs_header : `~astropy.io.fits.Header`
        The CCD's WCS cards (TAN, CD matrix).
    sky_adu : float
        Sky level at the CCD centre in ADU.
    truth_parts : list of dict
        Column blocks for `truth.assemble_truth`.

    """

    ccd: int
    pixels: np.ndarray
    mask: np.ndarray
    wcs_header: fits.Header
    sky_adu: float
    truth_parts: list[dict[str, Any]]


def _on_ccd(x: np.ndarray, y: np.ndarray, size: int) -> np.ndarray:
    return (x >= -0.5) & (x < size - 0.5) & (y >= -0.5) & (y < size - 0.5)


def _candidates(u: np.ndarray, v: np.ndarray, box: tuple[float, float, float, float]) -> np.ndarray:
    u0, u1, v0, v1 = box
    return np.flatnonzero((u >= u0) & (u < u1) & (v >= v0) & (v < v1))


def render_ccd(config: SimConfig, field: int, ccd: int, *, exposure: int | None) -> RenderedCcd:
    """Render CCD ``ccd`` of exposure ``exposure`` of field ``field``, or of its reference.

    Parameters
    ----------
    config : `~skyblink.config.SimConfig`
        The night.
    field : int
        Field index in ``[0, config.fields)``.
    ccd : int
        CCD index in ``[0, config.ccds)``.
    exposure : int or None
        Exposure index in ``[0, config.exposures_per_field)``, or None for the reference.

    Returns
    -------
    `RenderedCcd`

    Raises
    ------
    ValueError
        If an index is out of range.

    """
    if not 0 <= field < config.fields:
        msg = f"field must be in [0, {config.fields}), got {field!r}"
        raise ValueError(msg)
    if exposure is not None and not 0 <= exposure < config.exposures_per_field:
        msg = f"exposure must be in [0, {config.exposures_per_field}) or None, got {exposure!r}"
        raise ValueError(msg)
    plane = FocalPlane.for_config(config.ccds, config.image_size)
    margin = reference_margin(plane)
    is_ref = exposure is None
    m = margin if is_ref else 0
    size = config.image_size + 2 * m
    noise_key: tuple[int, ...]
    if exposure is None:
        pointing: Pointing = reference_pointing(config.seed, field)
        cond: Conditions = reference_conditions(config, field)
        noise_stream, noise_key = Stream.REFERENCE_PIXEL_NOISE, (field, ccd)
    else:
        pointing = exposure_pointing(config.seed, field, exposure, config.pixel_scale_arcsec)
        cond = exposure_conditions(config, field, exposure)
        noise_stream, noise_key = Stream.PIXEL_NOISE, (field, exposure, ccd)
    wcs_header = ccd_wcs_header(pointing, plane, ccd, config.pixel_scale_arcsec, margin=m)
    wcs = WCS(wcs_header)
    ox, oy = plane.origin(ccd)
    origin = (ox - m, oy - m)
    pad = margin + RENDER_PAD_PX
    box = (origin[0] - pad, origin[0] + size + pad, origin[1] - pad, origin[1] + size + pad)
    mjd = cond.mjd_mid
    expected = sky_background(
        (size, size),
        origin=origin,
        level=cond.sky_e,
        gradient=cond.gradient,
        half_width=plane.width / 2,
    )
    parts: list[dict[str, Any]] = []
    point_x, point_y, point_flux = [], [], []

    def place(ra: np.ndarray, dec: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if ra.size == 0:
            return np.zeros(0), np.zeros(0)
        x, y = wcs.all_world2pix(ra, dec, 0)
        return np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)

    def add_points(x: np.ndarray, y: np.ndarray, flux: np.ndarray) -> None:
        point_x.append(x)
        point_y.append(y)
        point_flux.append(flux)

    def truth(kind: str, x: np.ndarray, y: np.ndarray, **cols: Any) -> None:
        keep = _on_ccd(x, y, size)
        block = {"type": kind, "ccd": ccd, "x": x[keep], "y": y[keep]}
        for name, value in cols.items():
            block[name] = value[keep] if np.ndim(value) else value
        if keep.any():
            parts.append(block)

    # Stars.
    stars = stars_for_field(config, field)
    idx = _candidates(stars.u, stars.v, box)
    x, y = place(stars.ra[idx], stars.dec[idx])
    flux = cond.electrons(stars.mag[idx])
    add_points(x, y, flux)
    truth(
        "star",
        x,
        y,
        id=stars.ids[idx],
        ra=stars.ra[idx],
        dec=stars.dec[idx],
        mag=stars.mag[idx],
        flux=flux,
        in_reference=True,
    )

    # Variables.
    var = variables_for_field(config, field)
    idx = _candidates(var.u, var.v, box)
    x, y = place(var.ra[idx], var.dec[idx])
    mag = var.mean_mag[idx] if is_ref else var.mag_at(mjd)[idx]
    flux = cond.electrons(mag)
    add_points(x, y, flux)
    truth(
        "variable",
        x,
        y,
        id=var.ids[idx],
        ra=var.ra[idx],
        dec=var.dec[idx],
        mag=mag,
        flux=flux,
        in_reference=True,
        period_hours=var.period_hours[idx],
        amplitude_mag=var.amplitude_mag[idx],
        mean_mag=var.mean_mag[idx],
        lc_model=var.lc_model[idx],
    )

    if not is_ref:
        # Transients.
        tra = transients_for_field(config, field)
        idx = _candidates(tra.u, tra.v, box)
        x, y = place(tra.ra[idx], tra.dec[idx])
        mag = tra.mag_at(mjd)[idx]
        flux = cond.electrons(mag)
        add_points(x, y, flux)
        truth(
            "transient",
            x,
            y,
            id=tra.ids[idx],
            ra=tra.ra[idx],
            dec=tra.dec[idx],
            mag=mag,
            flux=flux,
            in_reference=False,
            peak_mjd=tra.peak_mjd[idx],
            lc_model="transient",
            host_id=tra.host_id[idx],
        )

    render_point_sources(
        expected,
        np.concatenate(point_x),
        np.concatenate(point_y),
        np.concatenate(point_flux),
        fwhm_px=cond.fwhm_px,
        beta=cond.beta,
    )

    # Galaxies, PSF-convolved.
    gal = galaxies_for_field(config, field)
    idx = _candidates(gal.u, gal.v, box)
    x, y = place(gal.ra[idx], gal.dec[idx])
    flux = cond.electrons(gal.mag[idx])
    render_galaxies(
        expected,
        x,
        y,
        flux,
        r_eff_px=gal.r_eff_arcsec[idx] / config.pixel_scale_arcsec,
        sersic_n=gal.sersic_n[idx],
        ellip=gal.ellip[idx],
        theta_rad=np.radians(gal.theta_deg[idx] - pointing.rotation_deg),
        fwhm_px=cond.fwhm_px,
        beta=cond.beta,
    )
    truth(
        "galaxy",
        x,
        y,
        id=gal.ids[idx],
        ra=gal.ra[idx],
        dec=gal.dec[idx],
        mag=gal.mag[idx],
        flux=flux,
        in_reference=True,
        r_eff_arcsec=gal.r_eff_arcsec[idx],
        sersic_n=gal.sersic_n[idx],
    )

    mask = np.zeros((size, size), dtype=np.uint8)
    if not is_ref:
        assert exposure is not None  # for the type checker
        _add_movers(config, field, cond, wcs, expected, truth)
        _add_fixed_defects(config, ccd, expected, mask, wcs, parts)
        trail = satellite_trail(config, field, exposure)
        if trail is not None:
            hit = render_satellite(expected, trail, origin, fwhm_px=cond.fwhm_px, beta=cond.beta)
            if hit is not None:
                contribution, summary = hit
                mask[contribution > 0.5 * math.sqrt(cond.sky_e)] |= np.uint8(MaskBit.SATELLITE)
                sx, sy = summary["x"], summary["y"]
                ra, dec = wcs.all_pix2world([sx], [sy], 0)
                parts.append(
                    {
                        "id": f"SAT-F{field:02d}-{exposure:03d}",
                        "type": "satellite",
                        "ccd": ccd,
                        "x": np.array([sx]),
                        "y": np.array([sy]),
                        "ra": ra,
                        "dec": dec,
                        "flux": summary["flux"],
                        "trail_length_px": summary["length_px"],
                        "trail_angle_deg": summary["angle_deg"],
                    }
                )

    rng = rng_for(config.seed, noise_stream, *noise_key)
    electrons = photon_noise(expected, rng, depth=cond.depth)
    del expected
    if not is_ref:
        assert exposure is not None
        _add_cosmic_rays(config, field, exposure, ccd, electrons, mask, wcs, parts)
        dead = bad_columns(config, ccd)
        for x0, y0, y1, is_dead in zip(dead.x, dead.y0, dead.y1, dead.dead, strict=True):
            if is_dead:
                electrons[y0:y1, x0] = 0.0
    saturated = bleed_columns(electrons, FULL_WELL)
    mask[saturated] |= np.uint8(MaskBit.SATURATED)
    # `electrons` is per exposure (the mean of a coadd): scale the stack's noise and gain to it.
    pixels = read_out(
        electrons,
        rng,
        read_noise=cond.read_noise / cond.depth,
        gain=cond.gain / cond.depth,
        saturate_adu=SATURATE_ADU,
        saturated=saturated,
        dtype=config.pixel_dtype,
    )
    centre = sky_background(
        (1, 1),
        origin=(origin[0] + size / 2, origin[1] + size / 2),
        level=cond.sky_e,
        gradient=cond.gradient,
        half_width=plane.width / 2,
    )
    return RenderedCcd(
        ccd=ccd,
        pixels=pixels,
        mask=mask,
        wcs_header=wcs_header,
        sky_adu=float(centre[0, 0]) / (cond.gain / cond.depth),
        truth_parts=parts,
    )


def _add_movers(
    config: SimConfig,
    field: int,
    cond: Conditions,
    wcs: WCS,
    expected: np.ndarray,
    truth: Callable[..., None],
) -> None:
    movers = movers_for_field(config, field)
    half = cond.exptime / 2.0 / 86400.0
    ra, dec = movers.position_at(cond.mjd_mid)
    ra0, dec0 = movers.position_at(cond.mjd_mid - half)
    ra1, dec1 = movers.position_at(cond.mjd_mid + half)
    x, y = (np.asarray(a) for a in wcs.all_world2pix(ra, dec, 0))
    x0, y0 = (np.asarray(a) for a in wcs.all_world2pix(ra0, dec0, 0))
    x1, y1 = (np.asarray(a) for a in wcs.all_world2pix(ra1, dec1, 0))
    length = np.hypot(x1 - x0, y1 - y0)
    trailed = length > TRAIL_THRESHOLD_FWHM * cond.fwhm_px
    flux = cond.electrons(movers.mag)
    ny, nx = expected.shape
    reach = 200.0 + length
    near = (x > -reach) & (x < nx + reach) & (y > -reach) & (y < ny + reach)
    draw = near & trailed
    render_segments(
        expected,
        x0[draw],
        y0[draw],
        x1[draw],
        y1[draw],
        flux[draw],
        fwhm_px=cond.fwhm_px,
        beta=cond.beta,
    )
    draw = near & ~trailed
    render_point_sources(
        expected, x[draw], y[draw], flux[draw], fwhm_px=cond.fwhm_px, beta=cond.beta
    )
    ra_rate, dec_rate = movers.rates_at(cond.mjd_mid)
    truth(
        "moving",
        x,
        y,
        id=movers.ids,
        ra=ra,
        dec=dec,
        mag=movers.mag,
        flux=flux,
        in_reference=False,
        ra_rate=ra_rate,
        dec_rate=dec_rate,
        trailed=trailed,
        trail_length_px=length,
        trail_angle_deg=np.degrees(np.arctan2(y1 - y0, x1 - x0)),
    )


def _add_fixed_defects(
    config: SimConfig,
    ccd: int,
    expected: np.ndarray,
    mask: np.ndarray,
    wcs: WCS,
    parts: list[dict[str, Any]],
) -> None:
    hot = hot_pixels(config, ccd)
    np.add.at(expected, (hot.y, hot.x), hot.dark_e)
    mask[hot.y, hot.x] |= np.uint8(MaskBit.HOT_PIXEL)
    ra, dec = wcs.all_pix2world(hot.x.astype(float), hot.y.astype(float), 0)
    parts.append(
        {
            "id": np.array([f"HP{ccd:03d}-{i:04d}" for i in range(hot.x.size)]),
            "type": "hot_pixel",
            "ccd": ccd,
            "x": hot.x.astype(float),
            "y": hot.y.astype(float),
            "ra": ra,
            "dec": dec,
            "flux": hot.dark_e,
        }
    )
    cols = bad_columns(config, ccd)
    for i, (x0, y0, y1, dead, hot_e) in enumerate(
        zip(cols.x, cols.y0, cols.y1, cols.dead, cols.hot_e, strict=True)
    ):
        mask[y0:y1, x0] |= np.uint8(MaskBit.BAD_COLUMN)
        if not dead:
            expected[y0:y1, x0] += hot_e
        yc = (y0 + y1 - 1) / 2
        ra, dec = wcs.all_pix2world([float(x0)], [yc], 0)
        parts.append(
            {
                "id": f"BC{ccd:03d}-{i:02d}",
                "type": "bad_column",
                "ccd": ccd,
                "x": np.array([float(x0)]),
                "y": np.array([yc]),
                "ra": ra,
                "dec": dec,
                "flux": 0.0 if dead else hot_e * (y1 - y0),
                "trail_length_px": float(y1 - y0),
                "trail_angle_deg": 90.0,
            }
        )


def _add_cosmic_rays(
    config: SimConfig,
    field: int,
    exposure: int,
    ccd: int,
    electrons: np.ndarray,
    mask: np.ndarray,
    wcs: WCS,
    parts: list[dict[str, Any]],
) -> None:
    rng = rng_for(config.seed, Stream.COSMIC_RAYS, field, exposure, ccd)
    rays = cosmic_rays(rng, electrons.shape, config.exptime)
    if rays.x.size == 0:
        return
    np.add.at(electrons, (rays.iy, rays.ix), rays.charge)
    mask[rays.iy, rays.ix] |= np.uint8(MaskBit.COSMIC_RAY)
    ra, dec = wcs.all_pix2world(rays.x, rays.y, 0)
    parts.append(
        {
            "id": np.array(
                [f"CR-F{field:02d}-{exposure:03d}-{ccd:03d}-{i:04d}" for i in range(rays.x.size)]
            ),
            "type": "cosmic_ray",
            "ccd": ccd,
            "x": rays.x,
            "y": rays.y,
            "ra": ra,
            "dec": dec,
            "flux": rays.total_e,
            "trail_length_px": rays.length_px,
            "trail_angle_deg": rays.angle_deg,
        }
    )
