"""
What surveys name differently in their FITS headers: the ``[headers]`` configuration section and
the functions that read a fact (PSF size, gain, read noise, saturation, time, filter) through it.

The defaults read the simulator's files (``SEEING`` in arcsec, ``GAIN``, ``RDNOISE``,
``SATURATE``, ``MJD-OBS``, ``FILTER``) and DECam community-pipeline files (``FWHM`` in pixels,
``FILTER = 'i DECam SDSS c0003 7835.0 1470.0'``) as they are. A fact that is needed and cannot be
found is a `HeaderFactError` naming the file, the keywords looked for and the configuration key
that supplies them.

Notes
-----
Driver side: pydantic only. The image-based PSF measurement is the workers' (`skyblink.workers.
estimate_fwhm`); the caller passes it as ``measure``, so this module imports no worker code.
Thread-safe.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["HeaderFactError", "HeadersConfig", "band_name", "find_number", "psf_fwhm_px"]


class HeaderFactError(ValueError):
    """A fact the pipeline needs is in no header keyword; the message names where to supply it."""


class HeadersConfig(BaseModel):
    """The ``[headers]`` section: header keywords, in the order they are tried, per fact."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)

    seeing_arcsec: list[str] = Field(["SEEING"], description="Keywords giving the PSF FWHM in arcsec (tried first).")
    fwhm_px: list[str] = Field(["FWHM", "FWHM_PX"], description="Keywords giving the PSF FWHM in pixels.")
    measure_fwhm: bool = Field(
        True, description="Measure the PSF FWHM from the image's stars when no keyword gives it (else an error)."
    )
    gain: list[str] = Field(["GAIN", "EGAIN"], description="Keywords giving the gain, e-/ADU.")
    read_noise: list[str] = Field(["RDNOISE", "READNOIS", "RON"], description="Keywords giving the read noise, e-.")
    saturate: list[str] = Field(["SATURATE", "SATURATN", "SATLEVEL"], description="Keywords giving the saturation level, ADU.")
    mjd: list[str] = Field(["MJD-OBS"], description="Keywords giving the exposure's start as an MJD.")
    date: list[str] = Field(["DATE-OBS"], description="Keywords giving the exposure's start as an ISO date (used without MJD).")
    filter: list[str] = Field(["FILTER", "BAND"], description="Keywords naming the filter.")
    filter_names: dict[str, str] = Field(
        {}, description="Filter keyword values (whole, or their first word) -> band name; unlisted: the first word."
    )
    mask_extensions: list[str] = Field(
        ["MASK", "BPM", "DQ"], description="EXTNAMEs of bad-pixel mask planes (non-zero: bad), not CCDs."
    )
    weight_extensions: list[str] = Field(
        ["WEIGHT", "WHT", "INVVAR"], description="EXTNAMEs of inverse-variance weight planes (0: bad), not CCDs."
    )


def find_number(header: Mapping[str, Any], names: list[str] | tuple[str, ...]) -> tuple[str, float] | None:
    """Return (keyword, value) of the first of ``names`` that ``header`` holds as a finite number, else None."""
    for name in names:
        value = header.get(name)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if math.isfinite(value):
            return name, float(value)
    return None


def psf_fwhm_px(header: Mapping[str, Any], pixel_scale_arcsec: float, *, source: str,
                config: HeadersConfig | None = None, measure: Callable[[], float] | None = None) -> float:
    """
    Return the PSF FWHM of an image in pixels, from its header or measured on its stars.

    Parameters
    ----------
    header : mapping
        The image's FITS header.
    pixel_scale_arcsec : float
        Pixel scale (arcsec per pixel), to convert a seeing in arcsec.
    source : str
        What to name in an error (the file, or the store key and CCD).
    config : HeadersConfig, optional
        Keywords to try; default: the defaults.
    measure : callable, optional
        Measures the FWHM (px) on the image's stars (e.g. `skyblink.workers.estimate_fwhm` on its
        pixels); called when no keyword gives the FWHM and ``config.measure_fwhm`` is set.

    Raises
    ------
    HeaderFactError
        No keyword gives it and it may not (or cannot) be measured.
    """
    config = config or HeadersConfig()
    found = find_number(header, config.seeing_arcsec)
    if found is not None and found[1] > 0:
        return found[1] / pixel_scale_arcsec
    found = find_number(header, config.fwhm_px)
    if found is not None and found[1] > 0:
        return found[1]
    if config.measure_fwhm and measure is not None:
        return float(measure())
    looked = ", ".join([*(f"{k} (arcsec)" for k in config.seeing_arcsec), *(f"{k} (px)" for k in config.fwhm_px)])
    how = "" if config.measure_fwhm else "; or set headers.measure_fwhm = true to measure it from the stars"
    msg = (f"{source}: no PSF FWHM in the header (looked for {looked}); name the keyword in "
           f"headers.seeing_arcsec or headers.fwhm_px{how}")
    raise HeaderFactError(msg)


def band_name(value: str | None, config: HeadersConfig | None = None) -> str | None:
    """Return the band of a filter keyword's value: its entry in ``headers.filter_names``, else its first word."""
    if value is None:
        return None
    config = config or HeadersConfig()
    text = str(value).strip()
    if text in config.filter_names:
        return config.filter_names[text]
    first = text.split()[0] if text.split() else text
    return config.filter_names.get(first, first)
