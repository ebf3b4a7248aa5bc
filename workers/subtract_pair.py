"""
One science/reference pair of FITS images through the per-tile program the workers run.

The two images are held in memory behind the few store methods `prepare_tile` and
`process_tile` read (`PairStore`), so the pair goes through exactly the night's per-tile program:
calibration, cosmic rays, warp of the reference onto the science grid by both WCS, background,
PSF matching, difference, detector, peaks, classifier. The science image is cut into work units
of any size (the last row and column of tiles reach beyond the image; those pixels are masked),
each unit's difference core is pasted into the science-sized difference and noise maps, and the
candidates of every core are gathered.

Notes
-----
Worker side (numpy, the inference runners passed in). Not thread-safe per `PairStore`.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from astropy.io import fits
from astropy.utils.exceptions import AstropyWarning
from astropy.wcs import WCS

from skyblink.headers import HeadersConfig
from skyblink.storage import InvalidExposureError, open_fits_exposure

from .matched_filter import DEFAULT_SNR_THRESHOLD
from .tile_unit import CandidateRecord, WorkUnit, plan_tiles, prepare_tile, process_tile

__all__ = ["PairDifference", "PairImage", "PairStore", "read_pair_image", "subtract_pair"]

_SCIENCE = "exposures/science"
_REFERENCE = "references/pair"


@dataclass(frozen=True, slots=True)
class PairImage:
    """
    One image of a pair: pixels, header and celestial WCS header text. Stable.

    Attributes
    ----------
    data : (ny, nx) ndarray
        Pixels in ADU (any numeric dtype; BZERO/BSCALE already applied).
    header : astropy.io.fits.Header
        Header the facts are read from (the CCD's HDU over the primary's cards).
    wcs_header : str
        Celestial WCS as FITS header text (TPV and SIP kept).
    path : Path
        The file, named in errors.
    mask : (ny, nx) bool ndarray, optional
        True on bad pixels (from the file's mask or zero-weight plane).
    """

    data: np.ndarray
    header: fits.Header
    wcs_header: str
    path: Path
    mask: np.ndarray | None = None

    @property
    def wcs(self) -> WCS:
        """The celestial WCS."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", AstropyWarning)
            return WCS(fits.Header.fromstring(self.wcs_header))


class PairStore:
    """
    A science and a reference image behind the store methods the per-tile program reads.

    Keys: ``exposures/science`` and ``references/pair``, one CCD ``ccd000`` each. Masked science
    pixels are NaN in `image` (the program treats them as beyond the CCD: no difference there).
    """

    url = "memory://pair"

    def __init__(self, science: PairImage, reference: PairImage) -> None:
        self._images = {_SCIENCE: science, _REFERENCE: reference}
        self._pixels = {key: _float_pixels(entry) for key, entry in self._images.items()}

    def ccd_names(self, key: str) -> list[str]:
        """One CCD per image."""
        return ["ccd000"]

    def image(self, key: str, ccd: str = "ccd000") -> np.ndarray:
        """The pixels, float32; NaN on masked pixels."""
        return self._pixels[key]

    def header(self, key: str, ccd: str = "ccd000") -> fits.Header:
        """The image's header."""
        return self._images[key].header

    def wcs(self, key: str, ccd: str = "ccd000") -> WCS:
        """The image's celestial WCS."""
        return self._images[key].wcs

    def source_name(self, key: str, ccd: str = "ccd000") -> str:
        """The file the image came from (named in errors)."""
        return str(self._images[key].path)

    def reference_of(self, key: str, ccd: str = "ccd000") -> str:
        """The key of the reference image (``references/pair``), whatever the science's key."""
        return _REFERENCE

    def ccd_metadata(self, key: str, ccd: str = "ccd000") -> dict[str, Any]:
        """The field the science belongs to (its reference is ``references/<field>``)."""
        return {"field": "pair"}


def read_pair_image(path: Path | str, *, ccd: int = 0, headers: HeadersConfig | None = None) -> PairImage:
    """
    Read one CCD of a FITS file (single HDU or multi-extension, any pixel type, BZERO/BSCALE
    applied, TPV or SIP WCS) with the ingest's validating reader, with its mask and weight planes.

    Parameters
    ----------
    path : Path or str
    ccd : int
        Which CCD (0-based among the file's image HDUs that are not mask or weight planes).
    headers : HeadersConfig, optional
        Header keywords (the ``[headers]`` configuration section).

    Raises
    ------
    InvalidExposureError
        The file is not a valid image, or has no CCD ``ccd``.
    """
    path = Path(path)
    with open_fits_exposure(path, headers=headers) as reader:
        n = len(reader.exposure.ccds)
        if not 0 <= ccd < n:
            raise InvalidExposureError(path, f"has {n} CCD image(s), no CCD {ccd}")
        for image in reader.images():
            if image.index == ccd:
                header = reader.exposure.primary_header.copy() if image.hdu else fits.Header()
                for card in image.header.cards:
                    if card.keyword not in ("", "COMMENT", "HISTORY"):
                        header[card.keyword] = (card.value, card.comment)
                return PairImage(image.data, header, image.wcs_header, path, image.mask)
    raise InvalidExposureError(path, f"no CCD {ccd}")  # pragma: no cover - the loop returns


def _float_pixels(entry: PairImage) -> np.ndarray:
    data = np.asarray(entry.data, dtype=np.float32)
    if entry.mask is not None:
        data = np.where(entry.mask, np.float32(np.nan), data)
    return data


@dataclass(slots=True)
class PairDifference:
    """
    The result of `subtract_pair`. Stable.

    Attributes
    ----------
    difference : (ny, nx) ndarray of float32
        PSF-matched science minus reference, in the science image's units (ADU); NaN where
        the reference does not cover or the science is masked.
    noise : (ny, nx) ndarray of float32
        Expected 1-sigma noise of ``difference``, same units; NaN where it is NaN.
    candidates : list of CandidateRecord
        Candidates (x, y in 0-based science pixels).
    fwhm_px : (float, float)
        PSF FWHM of the science and the reference used, pixels.
    seconds : dict
        Wall time of the image steps (``prepare``) and of detection and classification (``detect``).
    """

    difference: np.ndarray
    noise: np.ndarray
    candidates: list[CandidateRecord] = field(default_factory=list)
    fwhm_px: tuple[float, float] = (0.0, 0.0)
    seconds: dict[str, float] = field(default_factory=dict)


def subtract_pair(science: PairImage, reference: PairImage, detector: Any, classifier: Any, *, tile_size: int = 1024,
                  margin: int = 32, threshold: float = 0.3, top_k: int = 64, snr_threshold: float = DEFAULT_SNR_THRESHOLD,
                  reject_cosmics: bool = True, headers: HeadersConfig | None = None,
                  psf_match: Literal["gaussian", "kernel"] = "kernel") -> PairDifference:
    """
    Subtract a reference from a science image with the workers' per-tile program.

    Parameters
    ----------
    science, reference : PairImage
        The two images; the reference may be on another pixel grid (it is warped by both WCS).
    detector, classifier : InferenceRunner
        Active runners (ONNX Runtime on the CPU, torch or TensorRT on a GPU).
    tile_size : int
        Largest work-unit core edge; images smaller than it are one unit (rounded up to 32).
    margin, threshold, top_k, snr_threshold, reject_cosmics
        As `skyblink.workers.process_tile`.
    headers : HeadersConfig, optional
        Header keywords for the PSF size.
    psf_match : {"kernel", "gaussian"}
        PSF matching (`skyblink.workers.difference.matched_difference`).

    Returns
    -------
    PairDifference

    Raises
    ------
    HeaderFactError
        A PSF size is in no header and cannot be measured.
    """
    store = PairStore(science, reference)
    ny, nx = science.data.shape
    size = min(tile_size, int(math.ceil(max(ny, nx) / 32) * 32))
    difference = np.full((ny, nx), np.nan, np.float32)
    noise = np.full((ny, nx), np.nan, np.float32)
    records: list[CandidateRecord] = []
    seconds = {"prepare": 0.0, "detect": 0.0}
    fwhm = (0.0, 0.0)
    for unit in plan_tiles(store, _SCIENCE, size=size, margin=margin):
        start = time.perf_counter()
        prepared = prepare_tile(unit, store, reject_cosmics=reject_cosmics, headers=headers, psf_match=psf_match)
        seconds["prepare"] += time.perf_counter() - start
        start = time.perf_counter()
        records += process_tile(unit, store, detector, classifier, threshold=threshold, top_k=top_k,
                                snr_threshold=snr_threshold, prepared=prepared)
        seconds["detect"] += time.perf_counter() - start
        _paste(unit, prepared.origin, prepared.matched.difference / prepared.gain, difference)
        _paste(unit, prepared.origin, prepared.matched.noise / prepared.gain, noise)
        fwhm = prepared.fwhm_px
    bad = ~np.isfinite(noise)
    if science.mask is not None:
        bad |= science.mask
    difference[bad] = np.nan
    noise[bad] = np.nan
    return PairDifference(difference, noise, records, fwhm, seconds)


def _paste(unit: WorkUnit, origin: tuple[int, int], window: np.ndarray, out: np.ndarray) -> None:
    """Copy the unit's core from its window into the full-image array ``out`` (clipped to the image)."""
    ny, nx = out.shape
    y1, x1 = min(unit.y0 + unit.size, ny), min(unit.x0 + unit.size, nx)
    oy, ox = origin
    out[unit.y0:y1, unit.x0:x1] = window[unit.y0 - oy:y1 - oy, unit.x0 - ox:x1 - ox]
