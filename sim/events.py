"""What changes during the night: variable stars, transients and moving objects.

All three are drawn per field from the night's seed, with magnitudes from 3 mag brighter to
1 mag fainter than the nominal 5-sigma limit (uniform), so that completeness curves span the
detection threshold. They are placed on the focal plane (gaps included). Counts scale with
its area (default 2048x2048 CCD: ~20 variables,
~20 transients, ~15 movers per field) and never fall below a floor (3, 3, 5) so that small test
images still contain events.

* Variables (in the reference at ``mean_mag``): 60 % sinusoidal,
  ``m = mean + A sin(2 pi (t - t0) / P)`` with A 0.1-1 mag; 40 % eclipsing, ``mean_mag`` out of
  eclipse, a Gaussian primary dip of depth A (0.3-1.5 mag) and a secondary of 0.3 A, each of
  width 0.05 P. Periods 1-12 hours (log-uniform).
* Transients (never in the reference): peak magnitude and ``peak_mjd`` (from a day before the
  night to half a day after it), rising at 0.5-20 mag/day and declining at 0.1-1 mag/day
  (log-uniform), linear in magnitude. 40 % sit on a host galaxy, offset by up to 1.5 half-light
  radii (``host_id`` names it).
* Moving objects (never in the reference): motion along a great circle at 0.1-60 arcsec/min
  (log-uniform) with a random direction; the position at the field's middle exposure is placed
  so that the object stays on the focal plane for the neighbouring exposures whenever its rate
  allows (rate x cadence < 90 % of the half focal plane), so most movers appear in >= 3 exposures.
  Positions come from `astropy.coordinates.SkyCoord.directional_offset_by`.

Notes
-----
Internal to `skyblink.sim`. Catalogues are cached per process.

"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from astropy import units as u
from astropy.coordinates import SkyCoord

from skyblink.config import SimConfig

from .conditions import exposure_conditions, nominal_conditions
from .seeds import Stream, rng_for
from .sky import galaxies_for_field
from .wcs_layout import FocalPlane, focal_plane_to_sky

__all__ = [
    "Movers",
    "Transients",
    "Variables",
    "movers_for_field",
    "transients_for_field",
    "variables_for_field",
]

_REFERENCE_AREA_PX = 2048.0 * 2048.0


def _focal_plane(config: SimConfig) -> FocalPlane:
    return FocalPlane.for_config(config.ccds, config.image_size)


def _area_factor(config: SimConfig) -> float:
    plane = _focal_plane(config)
    return plane.width * plane.height / _REFERENCE_AREA_PX


def _on_focal_plane(
    rng: np.random.Generator, n: int, config: SimConfig
) -> tuple[np.ndarray, np.ndarray]:
    """Uniform positions over the focal plane, 8 pixels in from its edges."""
    plane = _focal_plane(config)
    hw, hh = plane.width / 2 - 8, plane.height / 2 - 8
    return rng.uniform(-hw, hw, n), rng.uniform(-hh, hh, n)


def _event_mags(rng: np.random.Generator, n: int, config: SimConfig) -> np.ndarray:
    m5 = nominal_conditions(config).limiting_mag
    return rng.uniform(m5 - 3.0, m5 + 1.0, n)


@dataclass(frozen=True, slots=True)
class Variables:
    """Variable stars; ``lc_model`` is 'sine' or 'eclipsing'."""

    ids: np.ndarray
    ra: np.ndarray
    dec: np.ndarray
    u: np.ndarray
    v: np.ndarray
    mean_mag: np.ndarray
    amplitude_mag: np.ndarray
    period_hours: np.ndarray
    t0_mjd: np.ndarray
    lc_model: np.ndarray

    def mag_at(self, mjd: float) -> np.ndarray:
        """Return the magnitudes at time ``mjd`` (UTC MJD)."""
        phase = ((mjd - self.t0_mjd) * 24.0 / self.period_hours) % 1.0
        sine = self.mean_mag + self.amplitude_mag * np.sin(2 * np.pi * phase)
        width = 0.05
        primary = np.minimum(phase, 1.0 - phase)
        secondary = np.abs(phase - 0.5)
        dip = self.amplitude_mag * (
            np.exp(-0.5 * (primary / width) ** 2) + 0.3 * np.exp(-0.5 * (secondary / width) ** 2)
        )
        return np.where(self.lc_model == "sine", sine, self.mean_mag + dip)


@dataclass(frozen=True, slots=True)
class Transients:
    """Transients; ``host_id`` is '' when hostless."""

    ids: np.ndarray
    ra: np.ndarray
    dec: np.ndarray
    u: np.ndarray
    v: np.ndarray
    peak_mag: np.ndarray
    peak_mjd: np.ndarray
    rise_mag_per_day: np.ndarray
    decline_mag_per_day: np.ndarray
    host_id: np.ndarray

    def mag_at(self, mjd: float) -> np.ndarray:
        """Return the magnitudes at time ``mjd`` (UTC MJD)."""
        dt = mjd - self.peak_mjd
        return self.peak_mag + np.where(
            dt < 0, -dt * self.rise_mag_per_day, dt * self.decline_mag_per_day
        )


@dataclass(frozen=True, slots=True)
class Movers:
    """Moving objects on great circles; rates in arcsec/minute, anchor at ``anchor_mjd``."""

    ids: np.ndarray
    ra: np.ndarray
    dec: np.ndarray
    anchor_mjd: float
    position_angle_deg: np.ndarray
    rate_arcsec_per_min: np.ndarray
    mag: np.ndarray

    def position_at(self, mjd: float) -> tuple[np.ndarray, np.ndarray]:
        """Return (RA, Dec) in degrees at time ``mjd``."""
        anchor = SkyCoord(self.ra * u.deg, self.dec * u.deg, frame="icrs")
        distance = self.rate_arcsec_per_min * (mjd - self.anchor_mjd) * 1440.0
        moved = anchor.directional_offset_by(self.position_angle_deg * u.deg, distance * u.arcsec)
        return moved.ra.deg, moved.dec.deg

    def rates_at(self, mjd: float) -> tuple[np.ndarray, np.ndarray]:
        """Return (ra_rate, dec_rate) in arcsec/hour at ``mjd``; ra_rate is d(RA)cos(Dec)/dt."""
        step = 1.0 / 1440.0
        ra0, dec0 = self.position_at(mjd)
        ra1, dec1 = self.position_at(mjd + step)
        here = SkyCoord(ra0 * u.deg, dec0 * u.deg, frame="icrs")
        there = SkyCoord(ra1 * u.deg, dec1 * u.deg, frame="icrs")
        angle = here.position_angle(there).rad
        rate = self.rate_arcsec_per_min * 60.0
        return rate * np.sin(angle), rate * np.cos(angle)


def _count(rng: np.random.Generator, per_ccd: float, config: SimConfig, floor: int) -> int:
    return max(floor, int(rng.poisson(per_ccd * _area_factor(config))))


@functools.lru_cache(maxsize=8)
def variables_for_field(config: SimConfig, field: int) -> Variables:
    """Return the variable stars of field ``field``; ids ``'<field>-V<nnnnn>'``. Cached."""
    rng = rng_for(config.seed, Stream.VARIABLES, field)
    n = _count(rng, 20.0, config, 3)
    uu, vv = _on_focal_plane(rng, n, config)
    ra, dec = focal_plane_to_sky(uu, vv, config.seed, field, config.pixel_scale_arcsec)
    sine = rng.uniform(size=n) < 0.6
    amplitude = np.where(sine, rng.uniform(0.1, 1.0, n), rng.uniform(0.3, 1.5, n))
    period = np.exp(rng.uniform(np.log(1.0), np.log(12.0), n))
    t0 = nominal_conditions(config).mjd_start + rng.uniform(0.0, 1.0, n) * period / 24.0
    return Variables(
        ids=np.array([f"F{field:02d}-V{i:05d}" for i in range(n)], dtype=object),
        ra=ra,
        dec=dec,
        u=uu,
        v=vv,
        mean_mag=_event_mags(rng, n, config),
        amplitude_mag=amplitude,
        period_hours=period,
        t0_mjd=t0,
        lc_model=np.where(sine, "sine", "eclipsing").astype(object),
    )


@functools.lru_cache(maxsize=8)
def transients_for_field(config: SimConfig, field: int) -> Transients:
    """Return the transients of field ``field``; ids ``'<field>-T<nnnnn>'``. Cached."""
    rng = rng_for(config.seed, Stream.TRANSIENTS, field)
    n = _count(rng, 20.0, config, 3)
    uu, vv = _on_focal_plane(rng, n, config)
    hosts = np.full(n, "", dtype=object)
    galaxies = galaxies_for_field(config, field)
    hosted = rng.uniform(size=n) < 0.4
    plane = _focal_plane(config)
    on_plane = np.flatnonzero(
        (np.abs(galaxies.u) < plane.width / 2 - 8) & (np.abs(galaxies.v) < plane.height / 2 - 8)
    )
    if on_plane.size:
        pick = on_plane[rng.integers(0, on_plane.size, n)]
        radius = rng.uniform(0.0, 1.5, n) * galaxies.r_eff_arcsec[pick] / config.pixel_scale_arcsec
        angle = rng.uniform(0.0, 2 * np.pi, n)
        uu = np.where(hosted, galaxies.u[pick] + radius * np.cos(angle), uu)
        vv = np.where(hosted, galaxies.v[pick] + radius * np.sin(angle), vv)
        hosts = np.where(hosted, galaxies.ids[pick], hosts)
    ra, dec = focal_plane_to_sky(uu, vv, config.seed, field, config.pixel_scale_arcsec)
    night = nominal_conditions(config).mjd_start
    span = config.exposures_per_field * config.cadence_minutes / 1440.0
    return Transients(
        ids=np.array([f"F{field:02d}-T{i:05d}" for i in range(n)], dtype=object),
        ra=ra,
        dec=dec,
        u=uu,
        v=vv,
        peak_mag=_event_mags(rng, n, config),
        peak_mjd=night + rng.uniform(-1.0, span + 0.5, n),
        rise_mag_per_day=np.exp(rng.uniform(np.log(0.5), np.log(20.0), n)),
        decline_mag_per_day=np.exp(rng.uniform(np.log(0.1), np.log(1.0), n)),
        host_id=hosts.astype(object),
    )


@functools.lru_cache(maxsize=8)
def movers_for_field(config: SimConfig, field: int) -> Movers:
    """Return the moving objects of field ``field``; ids ``'<field>-M<nnnnn>'``. Cached."""
    rng = rng_for(config.seed, Stream.MOVERS, field)
    plane = FocalPlane.for_config(config.ccds, config.image_size)
    focal_area = plane.width * plane.height / _REFERENCE_AREA_PX
    n = max(5, int(rng.poisson(15.0 * focal_area)))
    rate = np.exp(rng.uniform(np.log(0.1), np.log(60.0), n))  # arcsec/min
    direction = rng.uniform(0.0, 2 * np.pi, n)
    half = 0.9 * min(plane.width, plane.height) / 2
    rate_px = rate / config.pixel_scale_arcsec
    along_max = np.maximum(0.0, half - rate_px * config.cadence_minutes)
    along = rng.uniform(-1.0, 1.0, n) * along_max
    across = rng.uniform(-half, half, n)
    cu = along * np.cos(direction) - across * np.sin(direction)
    cv = along * np.sin(direction) + across * np.cos(direction)
    ra, dec = focal_plane_to_sky(cu, cv, config.seed, field, config.pixel_scale_arcsec)
    ra2, dec2 = focal_plane_to_sky(
        cu + np.cos(direction),
        cv + np.sin(direction),
        config.seed,
        field,
        config.pixel_scale_arcsec,
    )
    anchor = SkyCoord(ra * u.deg, dec * u.deg, frame="icrs")
    position_angle = anchor.position_angle(SkyCoord(ra2 * u.deg, dec2 * u.deg, frame="icrs")).deg
    middle = exposure_conditions(config, field, config.exposures_per_field // 2)
    return Movers(
        ids=np.array([f"F{field:02d}-M{i:05d}" for i in range(n)], dtype=object),
        ra=ra,
        dec=dec,
        anchor_mjd=middle.mjd_mid,
        position_angle_deg=position_angle,
        rate_arcsec_per_min=rate,
        mag=_event_mags(rng, n, config),
    )
