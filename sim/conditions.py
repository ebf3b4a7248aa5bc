"""The simulated camera and the observing conditions of each image.

Camera (fixed): gain `GAIN` e-/ADU, read noise `READ_NOISE` e-, full well `FULL_WELL` e-, so
``SATURATE = floor(FULL_WELL / GAIN)`` ADU (below the uint16 limit).

Photometry: ``ZP_E[band]`` is the magnitude giving 1 electron per second (a Rubin-like 8 m
class telescope); the header keyword ``MAGZP`` is the magnitude giving **1 ADU per second**,
``MAGZP = zp_e - 2.5 log10(GAIN)``, so a source of magnitude ``m`` gives
``EXPTIME * 10**(-0.4 (m - MAGZP))`` ADU in total. Dark-sky brightness per band is
``SKY_MAG[band]`` mag/arcsec^2.

Each exposure draws its seeing (FWHM lognormal about 1.0 arcsec, clipped to [0.8, 2.0]), Moffat
beta (2.5 to 4), transparency loss (0 to 0.1 mag), sky brightness (-0.5 to +0.3 mag from dark
sky) and a linear sky gradient (up to 6 % across half the focal plane). References are mean
coadds of ``reference_depth`` exposures taken in good seeing (0.8 to 1.0 arcsec) under dark,
clear sky: their pixels are on the same ADU-per-EXPTIME scale as one exposure, with
``GAIN = depth * GAIN`` and ``RDNOISE = sqrt(depth) * READ_NOISE`` (electrons of the summed stack).

Exposure timing: exposure ``n`` of field ``k`` starts ``(n * fields + k) * cadence / fields``
minutes after ``night_start``, so the fields are interleaved and each is revisited every
``cadence_minutes``. References carry an epoch 30 days before the night.

Notes
-----
Internal to `skyblink.sim`. Pure functions; process-safe.

"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from astropy.time import Time, TimeDelta

from skyblink.config import SimConfig

from .psf import moffat_gamma, noise_equivalent_area
from .seeds import Stream, rng_for

__all__ = [
    "FULL_WELL",
    "GAIN",
    "READ_NOISE",
    "SATURATE_ADU",
    "SKY_MAG",
    "ZP_E",
    "Conditions",
    "exposure_conditions",
    "exposure_start",
    "limiting_magnitude",
    "nominal_conditions",
    "reference_conditions",
]

GAIN = 1.7
READ_NOISE = 6.0
FULL_WELL = 100_000.0
SATURATE_ADU = math.floor(FULL_WELL / GAIN)
ZP_E = {"g": 28.4, "r": 28.2, "i": 27.9, "z": 27.4}
SKY_MAG = {"g": 22.1, "r": 21.2, "i": 20.5, "z": 19.6}
REFERENCE_EPOCH_DAYS = -30.0


@dataclass(frozen=True, slots=True)
class Conditions:
    """How one image was taken.

    Attributes
    ----------
    mjd_start : float
        MJD (UTC) at the start of the exposure (``MJD-OBS``).
    date_obs : str
        ISO UTC start time (``DATE-OBS``).
    exptime : float
        Seconds per (combined) exposure; pixel values are electrons in ``exptime`` / gain.
    depth : int
        Number of exposures combined (1 for science exposures).
    fwhm_arcsec : float
        PSF FWHM in arcsec.
    beta : float
        Moffat power index of the PSF.
    zp_e : float
        Magnitude giving 1 e-/s, transparency included.
    sky_e : float
        Mean sky in electrons per pixel per ``exptime`` at the boresight.
    gradient : tuple[float, float]
        Fractional sky change per half focal-plane width along focal-plane u and v.
    pixel_scale_arcsec : float
        Arcsec per pixel.

    """

    mjd_start: float
    date_obs: str
    exptime: float
    depth: int
    fwhm_arcsec: float
    beta: float
    zp_e: float
    sky_e: float
    gradient: tuple[float, float]
    pixel_scale_arcsec: float

    @property
    def mjd_mid(self) -> float:
        """MJD at mid-exposure (when light curves and positions are evaluated)."""
        return self.mjd_start + self.exptime / 2.0 / 86400.0

    @property
    def fwhm_px(self) -> float:
        """PSF FWHM in pixels."""
        return self.fwhm_arcsec / self.pixel_scale_arcsec

    @property
    def gamma_px(self) -> float:
        """Moffat core width in pixels."""
        return moffat_gamma(self.fwhm_px, self.beta)

    @property
    def gain(self) -> float:
        """Effective e-/ADU of the pixel values (``depth * GAIN`` for a mean coadd)."""
        return GAIN * self.depth

    @property
    def read_noise(self) -> float:
        """Read noise in electrons of the summed stack."""
        return READ_NOISE * math.sqrt(self.depth)

    @property
    def magzp(self) -> float:
        """Magnitude giving 1 ADU/s (header ``MAGZP``)."""
        return self.zp_e - 2.5 * math.log10(GAIN)

    @property
    def sky_adu(self) -> float:
        """Sky level in ADU at the boresight (header ``SKYLEVEL``)."""
        return self.sky_e / GAIN

    def electrons(self, mag: npt.ArrayLike) -> np.ndarray:
        """Return the electrons collected in one ``exptime`` from sources of magnitude ``mag``."""
        return self.exptime * 10.0 ** (-0.4 * (np.asarray(mag, dtype=np.float64) - self.zp_e))

    @property
    def limiting_mag(self) -> float:
        """5-sigma point-source limiting magnitude of one ``exptime`` of this image."""
        return limiting_magnitude(
            zp_e=self.zp_e,
            exptime=self.exptime * self.depth,
            sky_e=self.sky_e * self.depth,
            read_noise=self.read_noise,
            fwhm_px=self.fwhm_px,
            beta=self.beta,
        )


def limiting_magnitude(
    *, zp_e: float, exptime: float, sky_e: float, read_noise: float, fwhm_px: float, beta: float
) -> float:
    """Return the magnitude of a point source detected at signal-to-noise 5 by PSF photometry.

    Solves ``F / sqrt(F + NEA (sky_e + read_noise^2)) = 5`` for the flux ``F`` in electrons,
    with NEA the PSF's noise-equivalent area.
    """
    background = noise_equivalent_area(fwhm_px, beta) * (sky_e + read_noise**2)
    flux = (25.0 + math.sqrt(625.0 + 100.0 * background)) / 2.0
    return zp_e - 2.5 * math.log10(flux / exptime)


def _sky_e(config: SimConfig, sky_mag: float, zp_e: float) -> float:
    pixel_area = config.pixel_scale_arcsec**2
    return config.exptime * pixel_area * 10.0 ** (-0.4 * (sky_mag - zp_e))


def exposure_start(config: SimConfig, field: int, exposure: int) -> Time:
    """Return the UTC start time of exposure ``exposure`` of field ``field``."""
    minutes = (exposure * config.fields + field) * config.cadence_minutes / config.fields
    return Time(config.night_start, format="isot", scale="utc") + TimeDelta(
        minutes * 60.0, format="sec"
    )


def exposure_conditions(config: SimConfig, field: int, exposure: int) -> Conditions:
    """Return the conditions of exposure ``exposure`` of field ``field`` (see the module notes)."""
    rng = rng_for(config.seed, Stream.EXPOSURE_CONDITIONS, field, exposure)
    fwhm = float(np.clip(np.exp(rng.normal(0.0, 0.25)) * 1.0, 0.8, 2.0))
    beta = float(rng.uniform(2.5, 4.0))
    zp_e = ZP_E[config.band] - float(rng.uniform(0.0, 0.1))
    sky_mag = SKY_MAG[config.band] + float(rng.uniform(-0.5, 0.3))
    amp = float(rng.uniform(0.0, 0.06))
    angle = float(rng.uniform(0.0, 2 * math.pi))
    start = exposure_start(config, field, exposure)
    return Conditions(
        mjd_start=float(start.mjd),
        date_obs=start.isot,
        exptime=config.exptime,
        depth=1,
        fwhm_arcsec=fwhm,
        beta=beta,
        zp_e=zp_e,
        sky_e=_sky_e(config, sky_mag, zp_e),
        gradient=(amp * math.cos(angle), amp * math.sin(angle)),
        pixel_scale_arcsec=config.pixel_scale_arcsec,
    )


def reference_conditions(config: SimConfig, field: int) -> Conditions:
    """Return the conditions of the mean-coadd reference of field ``field``."""
    rng = rng_for(config.seed, Stream.REFERENCE_CONDITIONS, field)
    start = Time(config.night_start, format="isot", scale="utc") + TimeDelta(
        REFERENCE_EPOCH_DAYS, format="jd"
    )
    zp_e = ZP_E[config.band]
    amp = float(rng.uniform(0.0, 0.02))
    angle = float(rng.uniform(0.0, 2 * math.pi))
    return Conditions(
        mjd_start=float(start.mjd),
        date_obs=start.isot,
        exptime=config.exptime,
        depth=config.reference_depth,
        fwhm_arcsec=float(rng.uniform(0.8, 1.0)),
        beta=3.0,
        zp_e=zp_e,
        sky_e=_sky_e(config, SKY_MAG[config.band], zp_e),
        gradient=(amp * math.cos(angle), amp * math.sin(angle)),
        pixel_scale_arcsec=config.pixel_scale_arcsec,
    )


def nominal_conditions(config: SimConfig) -> Conditions:
    """Return median conditions (1 arcsec seeing, dark sky), used to set catalogue depths."""
    zp_e = ZP_E[config.band]
    start = Time(config.night_start, format="isot", scale="utc")
    return Conditions(
        mjd_start=float(start.mjd),
        date_obs=start.isot,
        exptime=config.exptime,
        depth=1,
        fwhm_arcsec=1.0,
        beta=3.0,
        zp_e=zp_e,
        sky_e=_sky_e(config, SKY_MAG[config.band], zp_e),
        gradient=(0.0, 0.0),
        pixel_scale_arcsec=config.pixel_scale_arcsec,
    )


def saturation_magnitude(config: SimConfig) -> float:
    """Return the magnitude whose peak pixel reaches the full well in 0.8 arcsec seeing."""
    nominal = nominal_conditions(config)
    gamma = moffat_gamma(0.8 / config.pixel_scale_arcsec, 3.0)
    peak_fraction = (3.0 - 1.0) / (math.pi * gamma**2)
    flux = max(FULL_WELL - nominal.sky_e, 1.0) / min(peak_fraction, 1.0)
    return nominal.zp_e - 2.5 * math.log10(flux / config.exptime)
