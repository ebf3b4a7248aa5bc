"""
One CCD's facts, read once from the store: the `CcdContext` every step of the night asks for.

The per-tile program (CPU and GPU), the SEP baseline, the reference catalogs and the reduce step
all need the same facts of a CCD: its celestial WCS and pixel scale, the PSF FWHM in pixels of
the science and of its reference, the calibration constants (gain, read noise, saturation), the
factor that puts reference ADU on the science's scale, the band and the mid-exposure time. They
are read here, by one rule each, from the CCD's stored header and metadata
(`NightStore.ccd_context`, cached per store), so no step recomputes them its own way.

The rules
---------
- Pixel scale: the WCS's projection-plane scale along the first axis (arcsec per pixel).
- PSF FWHM (px): `skyblink.headers.psf_fwhm_px` through the ``[headers]`` keywords (``SEEING`` in
  arcsec first, then ``FWHM`` in pixels), else measured on the whole CCD by the ``measure_fwhm``
  function the caller passes (the workers' `estimate_fwhm`), else a `HeaderFactError` naming the
  file and the keywords. The reference's FWHM is converted with the science's pixel scale (the
  reference is warped onto the science grid); without a reference image it is the science's.
- Gain, saturation, read noise: the CCD header's first keyword of ``headers.gain``,
  ``headers.saturate`` and ``headers.read_noise`` (`calibration_facts`).
- Flux scale: ``10 ** (0.4 * (MAGZP_sci - MAGZP_ref))``, 1 when either header has no ``MAGZP``.
- Band: the first letter of the ``FILTER`` value; time: ``MJD-OBS`` (or ``DATE-OBS``) plus half
  of ``EXPTIME``, in TAI. Both are checked only when asked for (`CcdContext.band`,
  `CcdContext.mjd_tai`): tiles are processed without them, an alert cannot be.

Notes
-----
Driver side: astropy and numpy, no torch. Thread-safe (a cache filled twice by two threads holds
equal values).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from astropy.io import fits
from astropy.time import Time
from astropy.wcs import WCS
from astropy.wcs.utils import proj_plane_pixel_scales

from skyblink.headers import HeadersConfig, psf_fwhm_px

from .bands import Band

__all__ = ["AB_NJY_ZERO", "CcdContext", "CcdContextCache", "CcdStore", "MeasureFwhm", "calibration_facts", "flux_scale",
           "pixel_scale_arcsec", "sky_noise_adu"]

#: AB magnitude of 1 nJy.
AB_NJY_ZERO = 31.4

#: A function measuring the PSF FWHM (px) on a whole CCD image (e.g. `skyblink.workers.estimate_fwhm`).
MeasureFwhm = Callable[[np.ndarray], float]


class CcdStore(Protocol):
    """What a store answers about its images: `NightStore`, or a pair of files (`PairStore`)."""

    url: str

    def ccd_names(self, key: str) -> list[str]:
        """The CCD names of an exposure (``ccd000``, ...)."""
        ...

    def image(self, key: str, ccd: str = "ccd000") -> Any:
        """The CCD's pixels (sliceable, with ``shape`` and ``dtype``)."""
        ...

    def header(self, key: str, ccd: str = "ccd000") -> fits.Header:
        """The CCD's FITS header."""
        ...

    def wcs(self, key: str, ccd: str = "ccd000") -> WCS:
        """The CCD's celestial WCS."""
        ...

    def ccd_metadata(self, key: str, ccd: str = "ccd000") -> dict[str, Any]:
        """The CCD's JSON facts (field, mjd_obs, exptime, filter, ccdnum, ...)."""
        ...

    def ccd_description(self, key: str, ccd: str = "ccd000") -> tuple[dict[str, Any], fits.Header, WCS]:
        """`ccd_metadata`, `header` and `wcs` of one CCD at once."""
        ...

    def reference_of(self, key: str, ccd: str = "ccd000") -> str:
        """The key of the exposure's reference image."""
        ...

    def source_name(self, key: str, ccd: str = "ccd000") -> str:
        """What to name in an error about this CCD: its file where known."""
        ...

    def ccd_context(self, key: str, ccd: str = "ccd000", *, headers: HeadersConfig | None = None,
                    measure_fwhm: MeasureFwhm | None = None) -> CcdContext:
        """The CCD's facts (`CcdContext`)."""
        ...


@dataclass(frozen=True, slots=True)
class CcdContext:
    """
    The facts of one CCD of one exposure (or reference) and of its reference. Stable.

    Attributes
    ----------
    key, ccd_name : str
        Store key (``exposures/F00-003``) and CCD (``ccd000``).
    source : str
        The file (or store key) named in errors.
    exposure_id, field : str
        The exposure's name; its field (empty when the header names none).
    ccd : int
        The CCD's number (``CCDNUM``, else its index).
    wcs : astropy.wcs.WCS
        Celestial WCS (SIP included).
    pixel_scale_arcsec : float
    fwhm_px, reference_fwhm_px : float
        PSF FWHM of the science and of its reference, science pixels.
    reference_key : str or None
        Store key of the reference image; None when the store holds none for the field.
    gain : float or None
        e-/ADU; None when the header gives none (the pixels are then taken as electrons).
    read_noise : float
        Electrons (0 when absent).
    saturate : float or None
        Raw ADU at or above which a pixel is saturated.
    flux_scale : float
        Reference ADU to science ADU (from the two ``MAGZP``; 1 without them).
    magzp : float or None
        Science zero point (the magnitude of 1 ADU per second).
    exptime : float
        Seconds (0 when absent).
    filter : str or None
        The filter keyword's value.
    skylevel : float or None
        ``SKYLEVEL`` (ADU) where the header gives the sky level (simulated nights).
    """

    key: str
    ccd_name: str
    source: str
    exposure_id: str
    field: str
    ccd: int
    wcs: WCS
    pixel_scale_arcsec: float
    fwhm_px: float
    reference_fwhm_px: float
    reference_key: str | None
    gain: float | None
    read_noise: float
    saturate: float | None
    flux_scale: float
    magzp: float | None
    exptime: float
    filter: str | None
    skylevel: float | None
    mid_mjd_tai: float | None

    @property
    def difference_fwhm_px(self) -> float:
        """PSF FWHM of the difference image: the broader of science and reference (px)."""
        return max(self.fwhm_px, self.reference_fwhm_px)

    @property
    def band(self) -> Band:
        """
        The band (the first letter of the filter's name).

        Raises
        ------
        ValueError
            The filter keyword is absent or names no known band (the message names the file).
        """
        try:
            return Band(str(self.filter or "").strip().lower()[:1])
        except ValueError:
            msg = (f"{self.source}: FILTER {self.filter!r} is not one of the bands {[b.value for b in Band]}")
            raise ValueError(msg) from None

    @property
    def mjd_tai(self) -> float:
        """
        The mid-exposure time, MJD (TAI).

        Raises
        ------
        ValueError
            The header has no MJD-OBS or DATE-OBS (the message names the file).
        """
        if self.mid_mjd_tai is None:
            msg = f"{self.source}: no MJD-OBS or DATE-OBS, an alert needs the observation time"
            raise ValueError(msg)
        return self.mid_mjd_tai

    @property
    def njy_per_adu(self) -> float | None:
        """nJy per science ADU from ``MAGZP`` and ``EXPTIME``; None without them."""
        if self.magzp is None or self.exptime <= 0:
            return None
        # m = MAGZP - 2.5 log10(ADU / EXPTIME) and m = 31.4 - 2.5 log10(nJy).
        return float(10.0 ** (-0.4 * (self.magzp - AB_NJY_ZERO)) / self.exptime)

    def reference(self) -> str:
        """
        Return the store key of the CCD's reference image.

        Raises
        ------
        KeyError
            The store holds no reference for the field (the message names the file and field).
        """
        if self.reference_key is None:
            msg = f"{self.source}: the store holds no reference image of field {self.field!r}"
            raise KeyError(msg)
        return self.reference_key


def pixel_scale_arcsec(wcs: WCS) -> float:
    """Return the pixel scale (arcsec per pixel) of a WCS: its celestial projection plane's first axis."""
    return float(proj_plane_pixel_scales(wcs.celestial)[0] * 3600.0)


def flux_scale(*, science_magzp: float | None, reference_magzp: float | None,
               science_exptime: float | None = None, reference_exptime: float | None = None) -> float:
    """
    Return the factor that puts reference ADU on the science image's flux scale.

    ``MAGZP`` is the magnitude giving 1 ADU per second; with equal zero points and exposure
    times the factor is 1. Missing keywords give 1 (the images are assumed already matched).
    """
    if science_magzp is None or reference_magzp is None:
        return 1.0
    scale = 10.0 ** (0.4 * (science_magzp - reference_magzp))
    if science_exptime and reference_exptime:
        scale *= science_exptime / reference_exptime
    return float(scale)


def calibration_facts(header: Mapping[str, Any], headers: HeadersConfig | None = None, *,
                      source: str = "header") -> tuple[float | None, float | None, float]:
    """
    Return the gain (e-/ADU), saturation (ADU) and read noise (e-) of a CCD's header.

    Each is the first of its ``headers`` keywords the header holds (default ``GAIN``/``EGAIN``,
    ``SATURATE``/``SATURATN``/``SATLEVEL``, ``RDNOISE``/``READNOIS``/``RON``); gain and saturation
    are None when absent, the read noise 0.

    Raises
    ------
    ValueError
        The gain is present but not positive (the message names ``source`` and the keyword).
    """
    config = headers or HeadersConfig()

    def first(names: list[str]) -> tuple[str, Any] | None:
        return next(((n, header.get(n)) for n in names if header.get(n) is not None), None)

    found_gain = first(config.gain)
    if found_gain is not None and not float(found_gain[1]) > 0:
        msg = f"{source}: header {found_gain[0]} must be a positive number of e-/ADU, got {found_gain[1]!r}"
        raise ValueError(msg)
    found_saturate = first(config.saturate)
    found_noise = first(config.read_noise)
    return (None if found_gain is None else float(found_gain[1]),
            None if found_saturate is None else float(found_saturate[1]),
            0.0 if found_noise is None else float(found_noise[1]))


def _number(value: Any) -> float | None:
    return None if value is None else float(value)


class CcdContextCache:
    """
    The `CcdContext` of each CCD of one store, read once (and each image's PSF FWHM measured once).

    Parameters
    ----------
    store : CcdStore
        The store whose headers, WCS and images are read.
    version : callable, optional
        Returns a token of what is stored under a key (e.g. its source file's checksum): a context
        is read again when the token of its exposure or of its reference has changed (the key
        was ingested again from another file). Default: what is stored never changes.

    Notes
    -----
    A context without a reference image is not kept: the reference may land later in the night.
    """

    def __init__(self, store: CcdStore, *, version: Callable[[str], object] | None = None) -> None:
        self._store = store
        self._version = version
        self._contexts: dict[tuple[str, str, str], tuple[CcdContext, object, object]] = {}
        self._fwhm: dict[tuple[str, str, str, object], float] = {}
        self._lock = threading.Lock()

    def _token(self, key: str | None) -> object:
        return None if key is None or self._version is None else self._version(key)

    def context(self, key: str, ccd: str, *, headers: HeadersConfig | None = None,
                measure_fwhm: MeasureFwhm | None = None) -> CcdContext:
        """
        Return the facts of one CCD, read on first use.

        Parameters
        ----------
        key : str
            Store key of the exposure (or reference).
        ccd : str
        headers : HeadersConfig, optional
            Header keywords (the ``[headers]`` section); default: the defaults.
        measure_fwhm : callable, optional
            Measures the PSF FWHM (px) on a whole CCD image where no keyword gives it.

        Raises
        ------
        KeyError
            ``key`` is not a completely ingested exposure of the store, or has no CCD ``ccd``.
        skyblink.headers.HeaderFactError
            No keyword gives the PSF FWHM (of the science or its reference) and none is measured.
        ValueError
            The header's gain is not positive.
        """
        config = headers or HeadersConfig()
        cache_key = (key, ccd, config.model_dump_json())
        found = self._contexts.get(cache_key)
        if found is not None:
            context, token, reference_token = found
            if token == self._token(key) and reference_token == self._token(context.reference_key):
                return context
        context = self._read(key, ccd, config, measure_fwhm)
        if context.reference_key is not None:
            with self._lock:
                self._contexts[cache_key] = (context, self._token(key), self._token(context.reference_key))
        return context

    def _read(self, key: str, ccd: str, headers: HeadersConfig, measure: MeasureFwhm | None) -> CcdContext:
        store = self._store
        source = store.source_name(key, ccd)
        meta, header, wcs = store.ccd_description(key, ccd)  # one read of the CCD's attributes
        scale = pixel_scale_arcsec(wcs)
        fwhm = self._fwhm_px(key, ccd, header, scale, headers, measure)
        reference_key: str | None
        try:
            reference_key = store.reference_of(key, ccd)
            reference_header = store.header(reference_key, ccd)
        except (KeyError, ValueError):  # no field, or no reference of the field in the store
            reference_key, reference_header = None, None
        if reference_key is None or reference_header is None:
            reference_fwhm, scale_ref = fwhm, 1.0
        else:
            reference_fwhm = self._fwhm_px(reference_key, ccd, reference_header, scale, headers, measure)
            scale_ref = flux_scale(science_magzp=_number(header.get("MAGZP")),
                                   reference_magzp=_number(reference_header.get("MAGZP")))
        gain, saturate, read_noise = calibration_facts(header, headers, source=source)
        exptime = float(meta.get("exptime") or header.get("EXPTIME") or 0.0)
        mjd_obs = meta.get("mjd_obs")
        mid_mjd_tai = (None if mjd_obs is None else
                       float(Time(float(mjd_obs) + exptime / 2 / 86400.0, format="mjd", scale="utc").tai.mjd))
        return CcdContext(
            key=key, ccd_name=ccd, source=source, exposure_id=key.rsplit("/", 1)[-1],
            field=str(meta.get("field") or ""), ccd=int(meta.get("ccdnum", 0)), wcs=wcs, pixel_scale_arcsec=scale,
            fwhm_px=fwhm, reference_fwhm_px=reference_fwhm, reference_key=reference_key, gain=gain,
            read_noise=read_noise, saturate=saturate, flux_scale=scale_ref, magzp=_number(header.get("MAGZP")),
            exptime=exptime, filter=None if meta.get("filter") is None else str(meta["filter"]),
            skylevel=_number(header.get("SKYLEVEL")), mid_mjd_tai=mid_mjd_tai,
        )

    def _fwhm_px(self, key: str, ccd: str, header: Mapping[str, Any], scale: float, headers: HeadersConfig,
                 measure: MeasureFwhm | None) -> float:
        """One image's PSF FWHM (px at ``scale``), measured at most once per image."""
        cache_key = (key, ccd, f"{scale!r}/{headers.model_dump_json()}", self._token(key))
        found = self._fwhm.get(cache_key)
        if found is not None:
            return found
        store = self._store
        on_image = None
        if measure is not None:
            measure_on = measure

            def on_image() -> float:
                return measure_on(np.asarray(store.image(key, ccd)[...], dtype=np.float32))

        value = psf_fwhm_px(header, scale, source=store.source_name(key, ccd), config=headers, measure=on_image)
        with self._lock:
            self._fwhm[cache_key] = value
        return value


def sky_noise_adu(context: CcdContext, image: Any, *, gain_fallback: float | None = None,
                  read_noise_fallback: float | None = None) -> float:
    """
    Return the sky noise per pixel (ADU, one sigma) of a CCD.

    From ``SKYLEVEL``, the gain and the read noise where the header gives the sky level, else a
    robust estimate (1.4826 MAD) on the CCD's central 512 x 512 window.

    Parameters
    ----------
    context : CcdContext
    image : array-like
        The CCD's pixels (sliceable, with ``shape``).
    gain_fallback, read_noise_fallback : float, optional
        Gain and read noise used when the CCD header has none (e.g. the exposure's primary
        header's, from the ingest's metadata); else 1 and 0.
    """
    if context.skylevel is not None:
        gain = context.gain or gain_fallback or 1.0
        read_noise = context.read_noise or read_noise_fallback or 0.0
        return math.sqrt(max(context.skylevel, 0.0) * gain + read_noise**2) / gain
    ny, nx = image.shape
    h = min(ny, 512) // 2
    w = min(nx, 512) // 2
    window = np.asarray(image[ny // 2 - h : ny // 2 + h, nx // 2 - w : nx // 2 + w], dtype=np.float64)
    window = window[np.isfinite(window)]
    return float(1.4826 * np.median(np.abs(window - np.median(window))))
