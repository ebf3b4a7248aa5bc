"""
Read and validate one FITS exposure: single-HDU, multi-extension and tile-compressed (``.fits.fz``).

A valid CCD image is 2-D, integer or floating point, mostly finite, carries a celestial WCS that
evaluates, and has sane saturation and calibration keywords. Anything else raises
`InvalidExposureError` with one line naming the HDU, keyword or value, so the caller can quarantine
the file and go on with the night.

Notes
-----
Thread-safe (no shared state). Pure CPU; allocates no GPU memory. Pixels are returned in native
byte order exactly as astropy scales them (uint16 with BZERO=32768 stays uint16).
"""

from __future__ import annotations

import contextlib
import math
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import numpy as np
from astropy.io import fits
from astropy.time import Time
from astropy.utils.exceptions import AstropyWarning
from astropy.wcs import WCS

from skyblink.headers import HeadersConfig, band_name
from skyblink.threads import ordered_map

from .errors import InvalidExposureError

__all__ = [
    "CcdHeader",
    "CcdImage",
    "ExposureReader",
    "FitsExposure",
    "open_fits_exposure",
    "read_fits_exposure",
]

#: Keywords tried, in order, for the saturation level (ADU), by default (``headers.saturate``).
SATURATION_KEYWORDS = tuple(HeadersConfig().saturate)
_TEXT_KEYWORDS = {"field": ("FIELD", "OBJECT"), "imagetyp": ("IMAGETYP",), "bunit": ("BUNIT",)}


def _float_keywords(config: HeadersConfig) -> dict[str, tuple[tuple[str, ...], str]]:
    """Metadata key -> (header keywords tried, configuration key naming them)."""
    return {"exptime": (("EXPTIME", "EXPOSURE"), "EXPTIME"), "gain": (tuple(config.gain), "headers.gain"),
            "rdnoise": (tuple(config.read_noise), "headers.read_noise"),
            "fwhm_px": (tuple(config.fwhm_px), "headers.fwhm_px"), "seeing": (tuple(config.seeing_arcsec), "headers.seeing_arcsec")}


@dataclass(frozen=True, slots=True)
class CcdHeader:
    """
    The validated header of one CCD image, before its pixels are read. Stable.

    Attributes
    ----------
    index : int
        Position of the CCD among the file's image HDUs (0-based).
    hdu : int
        HDU number in the file.
    extname : str
        EXTNAME, or ``"PRIMARY"``.
    shape : tuple of int
        (ny, nx).
    header : astropy.io.fits.Header
        The HDU's own header (for compressed HDUs, the image header).
    wcs_header : str
        The celestial WCS as FITS header text (``WCS.to_header_string(relax=True)``, SIP included).
    metadata : dict
        JSON-safe facts from the header: mjd_obs, exptime, gain, rdnoise, filter, ccdnum, ...
    """

    index: int
    hdu: int
    extname: str
    shape: tuple[int, int]
    header: fits.Header
    wcs_header: str
    metadata: dict[str, Any]


@dataclass(frozen=True, slots=True)
class CcdImage:
    """
    One validated 2-D image of an exposure. Stable.

    Attributes
    ----------
    index : int
        Position of the CCD among the file's image HDUs (0-based).
    hdu : int
        HDU number in the file.
    extname : str
        EXTNAME, or ``"PRIMARY"``.
    data : numpy.ndarray
        Pixels, native byte order.
    header : astropy.io.fits.Header
        The HDU's own header (for compressed HDUs, the image header).
    wcs_header : str
        The celestial WCS as FITS header text (``WCS.to_header_string(relax=True)``, SIP included).
    metadata : dict
        JSON-safe per-CCD facts: saturate, saturate_source, gain, rdnoise, n_nonfinite, ...
    mask : numpy.ndarray of bool, optional
        True on bad pixels, from the file's mask plane (non-zero) and weight plane (zero), where
        the file has them (``headers.mask_extensions``, ``headers.weight_extensions``).
    """

    index: int
    hdu: int
    extname: str
    data: np.ndarray
    header: fits.Header
    wcs_header: str
    metadata: dict[str, Any]
    mask: np.ndarray | None = None


@dataclass(frozen=True, slots=True)
class FitsExposure:
    """A FITS file whose headers are validated: exposure-level facts and each CCD's header. Stable."""

    path: Path
    primary_header: fits.Header
    metadata: dict[str, Any]
    ccds: tuple[CcdHeader, ...] = ()


def _number(value: Any, keyword: str, path: Path, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        msg = f"{where}: keyword {keyword}={value!r} is not a finite number"
        raise InvalidExposureError(path, msg)
    return float(value)


def _lookup(headers: tuple[fits.Header, ...], names: tuple[str, ...]) -> tuple[str, Any] | None:
    for header in headers:
        for name in names:
            if name in header and header[name] is not None and header[name] != "":
                return name, header[name]
    return None


def _observation_metadata(
    headers: tuple[fits.Header, ...], path: Path, where: str, config: HeadersConfig | None = None
) -> dict[str, Any]:
    config = config or HeadersConfig()
    meta: dict[str, Any] = {}
    for key, (names, _) in _float_keywords(config).items():
        found = _lookup(headers, names)
        meta[key] = None if found is None else _number(found[1], found[0], path, where)
    for key, names in _TEXT_KEYWORDS.items():
        found = _lookup(headers, names)
        meta[key] = None if found is None else str(found[1]).strip()
    found = _lookup(headers, tuple(config.filter))
    meta["filter"] = None if found is None else str(found[1]).strip()
    meta["band"] = band_name(meta["filter"], config)
    mjd = _lookup(headers, tuple(config.mjd))
    date = _lookup(headers, tuple(config.date))
    if mjd is not None:
        meta["mjd_obs"] = _number(mjd[1], mjd[0], path, where)
    elif date is not None:
        try:
            meta["mjd_obs"] = float(Time(str(date[1]), scale="utc").mjd)
        except ValueError as exc:
            msg = f"{where}: keyword {date[0]}={date[1]!r} is not a date ({exc})"
            raise InvalidExposureError(path, msg) from exc
    else:
        meta["mjd_obs"] = None
    meta["date_obs"] = None if date is None else str(date[1])
    if meta["gain"] is not None and meta["gain"] <= 0:
        msg = f"{where}: gain keyword ({', '.join(config.gain)}) = {meta['gain']!r} must be positive (e-/ADU)"
        raise InvalidExposureError(path, msg)
    if meta["exptime"] is not None and meta["exptime"] < 0:
        msg = f"{where}: keyword EXPTIME={meta['exptime']!r} must not be negative"
        raise InvalidExposureError(path, msg)
    return meta


def _celestial_wcs(header: fits.Header, hdul: fits.HDUList, path: Path, where: str, shape: tuple[int, int]) -> str:
    with warnings.catch_warnings():
        # Real headers trigger astropy's harmless fix-ups (DATE-OBS format, RADECSYS, ...).
        warnings.simplefilter("ignore", AstropyWarning)
        try:
            wcs = WCS(header, fobj=hdul)
        except Exception as exc:
            msg = f"{where}: WCS keywords cannot be parsed ({type(exc).__name__}: {exc})"
            raise InvalidExposureError(path, msg) from exc
    ctypes = ", ".join(f"CTYPE{i + 1}={c!r}" for i, c in enumerate(wcs.wcs.ctype))
    if not wcs.has_celestial or wcs.naxis != 2 or wcs.celestial.naxis != 2:
        msg = f"{where}: no celestial WCS ({ctypes or 'no CTYPE keywords'})"
        raise InvalidExposureError(path, msg)
    centre = ((shape[1] - 1) / 2.0, (shape[0] - 1) / 2.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AstropyWarning)
        try:
            world = wcs.all_pix2world([centre], 0)
        except Exception as exc:
            msg = f"{where}: celestial WCS ({ctypes}) does not evaluate ({exc})"
            raise InvalidExposureError(path, msg) from exc
        if not np.all(np.isfinite(world)):
            msg = f"{where}: celestial WCS ({ctypes}) maps the image centre to {world.tolist()}"
            raise InvalidExposureError(path, msg)
        return wcs.to_header_string(relax=True)


def _saturation(headers: tuple[fits.Header, ...], data: np.ndarray, path: Path, where: str,
                keywords: tuple[str, ...] = SATURATION_KEYWORDS) -> tuple[float | None, str]:
    found = _lookup(headers, keywords)
    if found is not None:
        value = _number(found[1], found[0], path, where)
        if value <= 0:
            msg = f"{where}: saturation keyword {found[0]}={value!r} must be positive"
            raise InvalidExposureError(path, msg)
        return value, found[0]
    if np.issubdtype(data.dtype, np.integer):
        return float(np.iinfo(data.dtype).max), "dtype"
    return None, "none"


def _image_hdus(hdul: fits.HDUList, config: HeadersConfig | None = None) -> list[tuple[int, fits.hdu.base.ExtensionHDU | fits.PrimaryHDU]]:
    """The image HDUs that are CCDs (mask and weight planes are not)."""
    planes = _plane_names(config or HeadersConfig())
    images = []
    for number, hdu in enumerate(hdul):
        if isinstance(hdu, (fits.PrimaryHDU, fits.ImageHDU, fits.CompImageHDU)) and hdu.header.get("NAXIS", 0) > 0:
            if str(hdu.header.get("EXTNAME", "")).strip().upper() in planes:
                continue
            images.append((number, hdu))
    return images


def _plane_names(config: HeadersConfig) -> set[str]:
    return {name.upper() for name in (*config.mask_extensions, *config.weight_extensions)}


def _quality_planes(hdul: fits.HDUList, config: HeadersConfig, n_ccds: int) -> dict[int, list[tuple[int, str]]]:
    """
    CCD index -> [(HDU number, "mask" or "weight")]: a plane belongs to the CCD of its EXTVER
    (1-based), or to the only CCD of a single-CCD file.
    """
    masks = {name.upper() for name in config.mask_extensions}
    weights = {name.upper() for name in config.weight_extensions}
    out: dict[int, list[tuple[int, str]]] = {}
    for number, hdu in enumerate(hdul):
        name = str(hdu.header.get("EXTNAME", "")).strip().upper()
        if number == 0 or name not in masks | weights or hdu.header.get("NAXIS", 0) != 2:
            continue
        extver = hdu.header.get("EXTVER")
        index = 0 if n_ccds == 1 else (int(extver) - 1 if isinstance(extver, int) else None)
        if index is not None and 0 <= index < n_ccds:
            out.setdefault(index, []).append((number, "mask" if name in masks else "weight"))
    return out


def _validated_hdu(index: int, number: int, hdu: Any, hdul: fits.HDUList, path: Path,
                   config: HeadersConfig | None = None) -> CcdHeader:
    config = config or HeadersConfig()
    extname = str(hdu.header.get("EXTNAME", "PRIMARY" if number == 0 else f"HDU{number}"))
    where = f"HDU {number} ({extname})"
    header = hdu.header
    if header.get("NAXIS") != 2:
        dims = tuple(header.get(f"NAXIS{i}") for i in range(1, int(header.get("NAXIS", 0)) + 1))
        msg = f"{where}: image has {header.get('NAXIS')} axes {dims}, expected a 2-D image"
        raise InvalidExposureError(path, msg)
    shape = (int(header["NAXIS2"]), int(header["NAXIS1"]))
    if 0 in shape:
        msg = f"{where}: image has shape {shape}, no pixels"
        raise InvalidExposureError(path, msg)
    wcs_header = _celestial_wcs(header, hdul, path, where, shape)
    headers = (header, hdul[0].header)
    metadata = _observation_metadata(headers, path, where, config)
    found = _lookup(headers, tuple(config.saturate))
    if found is not None and _number(found[1], found[0], path, where) <= 0:
        msg = f"{where}: saturation keyword {found[0]}={found[1]!r} must be positive"
        raise InvalidExposureError(path, msg)
    metadata["ccdnum"] = int(header["CCDNUM"]) if isinstance(header.get("CCDNUM"), int) else index
    return CcdHeader(index, number, extname, shape, header.copy(), wcs_header, metadata)


def _read_pixels(ccd: CcdHeader, hdul: fits.HDUList, path: Path, max_nonfinite_fraction: float, *,
                 watch_truncation: bool = True, config: HeadersConfig | None = None,
                 planes: list[tuple[int, str]] = ()) -> CcdImage:  # type: ignore[assignment]
    config = config or HeadersConfig()
    where = f"HDU {ccd.hdu} ({ccd.extname})"
    # catch_warnings is not thread-safe before Python 3.14: threads read without it.
    with warnings.catch_warnings(record=True) if watch_truncation else contextlib.nullcontext([]) as caught:
        if watch_truncation:
            warnings.simplefilter("always")
        try:
            raw = hdul[ccd.hdu].data
            data = None if raw is None else np.array(raw, dtype=raw.dtype.newbyteorder("="))
        except Exception as exc:
            msg = f"{where}: pixel data cannot be read ({type(exc).__name__}: {exc})"
            raise InvalidExposureError(path, msg) from exc
        finally:
            # Decompressed or read data would otherwise stay cached on the HDU.
            hdul[ccd.hdu].__dict__.pop("data", None)
    _raise_on_truncation(caught, path, where)
    if data is None or data.shape != ccd.shape:
        got = None if data is None else data.shape
        msg = f"{where}: header declares a {ccd.shape} image but the pixels read are {got}"
        raise InvalidExposureError(path, msg)
    if not (np.issubdtype(data.dtype, np.integer) or np.issubdtype(data.dtype, np.floating)):
        msg = f"{where}: pixel type {data.dtype} is neither integer nor floating point"
        raise InvalidExposureError(path, msg)
    n_nonfinite = 0
    if np.issubdtype(data.dtype, np.floating):
        n_nonfinite = int(data.size - np.count_nonzero(np.isfinite(data)))
        if n_nonfinite == data.size:
            msg = f"{where}: every pixel is NaN or infinite"
            raise InvalidExposureError(path, msg)
        if n_nonfinite / data.size > max_nonfinite_fraction:
            msg = (
                f"{where}: {n_nonfinite / data.size:.1%} of pixels are NaN or infinite, more than "
                f"ingest.max_nonfinite_fraction={max_nonfinite_fraction}"
            )
            raise InvalidExposureError(path, msg)
    saturate, saturate_source = _saturation((ccd.header, hdul[0].header), data, path, where, tuple(config.saturate))
    mask = None
    for number, kind in planes:
        plane = np.asarray(hdul[number].data)
        if plane.shape != data.shape:
            msg = f"HDU {number} ({hdul[number].name}): {kind} plane of shape {plane.shape} for a {data.shape} image"
            raise InvalidExposureError(path, msg)
        bad = plane != 0 if kind == "mask" else ~(np.isfinite(plane) & (plane > 0))
        mask = bad if mask is None else (mask | bad)
    metadata = {
        **ccd.metadata,
        "saturate": saturate,
        "saturate_source": saturate_source,
        "n_nonfinite": n_nonfinite,
        "shape": list(data.shape),
        "dtype": str(data.dtype),
    }
    if mask is not None:
        metadata["n_masked"] = int(mask.sum())
    return CcdImage(ccd.index, ccd.hdu, ccd.extname, data, ccd.header, ccd.wcs_header, metadata, mask)


def _raise_on_truncation(caught: list[warnings.WarningMessage], path: Path, where: str) -> None:
    for warning in caught:
        text = str(warning.message)
        if "truncated" in text.lower():
            msg = f"{where}: file is truncated ({text})"
            raise InvalidExposureError(path, msg)


class ExposureReader:
    """
    An open FITS exposure whose headers and WCS are validated; pixels are read CCD by CCD.

    Use as a context manager (`open_fits_exposure`). Memory stays at one CCD however many the
    file has (a Rubin visit is 189 CCDs of 4096x4096), or at a few when they are read in threads
    (`images`). Not thread-safe: one thread iterates.

    Attributes
    ----------
    exposure : FitsExposure
        Exposure-level metadata and every CCD's validated header.
    """

    def __init__(self, hdul: fits.HDUList, exposure: FitsExposure, max_nonfinite_fraction: float,
                 headers: HeadersConfig | None = None) -> None:
        self._hdul = hdul
        self.exposure = exposure
        self._max_nonfinite_fraction = max_nonfinite_fraction
        self._headers = headers or HeadersConfig()
        self._planes = _quality_planes(hdul, self._headers, len(exposure.ccds))

    def images(self, *, threads: int = 1) -> Iterator[CcdImage]:
        """
        Yield each CCD with its pixels, in file order.

        Parameters
        ----------
        threads : int, optional
            CCDs read at once, each thread through its own handle on the file, holding at most
            ``2 * threads`` CCDs read ahead. A gzip-, bzip2- or zip-wrapped file is read by one thread
            whatever this says (it can only be read from its start).

        Raises
        ------
        InvalidExposureError
            Pixels cannot be read, have a non-numeric type, or are too often NaN/inf.
        """
        path, fraction = self.exposure.path, self._max_nonfinite_fraction
        if threads <= 1 or len(self.exposure.ccds) <= 1 or _stream_compressed(path):
            for ccd in self.exposure.ccds:
                yield _read_pixels(ccd, self._hdul, path, fraction, config=self._headers,
                                   planes=self._planes.get(ccd.index, []))
            return
        # The whole file's length was checked against its headers when it was opened (a truncated
        # file fails there), so the threads need not catch astropy's truncation warnings.
        local, handles = threading.local(), []

        def read(ccd: CcdHeader) -> CcdImage:
            hdul = getattr(local, "hdul", None)
            if hdul is None:
                hdul = local.hdul = fits.open(path, memmap=False, lazy_load_hdus=True)
                handles.append(hdul)
            return _read_pixels(ccd, hdul, path, fraction, watch_truncation=False, config=self._headers,
                                planes=self._planes.get(ccd.index, []))

        try:
            yield from ordered_map(read, self.exposure.ccds, threads=threads, name="ccd-reader")
        finally:
            for hdul in handles:
                hdul.close()

    def close(self) -> None:
        """Close the file."""
        self._hdul.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_fits_exposure(path: Path | str, *, max_nonfinite_fraction: float = 0.5,
                       headers: HeadersConfig | None = None) -> ExposureReader:
    """
    Open a FITS file and validate every image HDU's header and WCS.

    Parameters
    ----------
    path : Path or str
        A ``.fits``, ``.fit``, ``.fits.gz`` or tile-compressed ``.fits.fz`` file.
    max_nonfinite_fraction : float, optional
        Largest tolerated fraction of NaN/inf pixels in one image, checked as pixels are read;
        an all-NaN image is always refused.
    headers : HeadersConfig, optional
        Header keywords of the facts read (the ``[headers]`` configuration section); default:
        the simulator's and DECam's names. Mask and weight planes named there are not CCDs: they
        become the ``mask`` of the CCD they belong to.

    Returns
    -------
    ExposureReader
        Context manager holding the open file; iterate ``images()`` for the pixels.

    Raises
    ------
    InvalidExposureError
        The file is empty, unreadable, truncated, has no 2-D image, no celestial WCS, or a
        malformed numeric keyword. The message names the HDU and keyword.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise InvalidExposureError(path, f"cannot be read ({exc.strerror})") from exc
    if size == 0:
        raise InvalidExposureError(path, "empty file (0 bytes)")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            hdul = fits.open(path, memmap=False, lazy_load_hdus=False)
        except Exception as exc:
            msg = f"not a readable FITS file ({type(exc).__name__}: {exc})"
            raise InvalidExposureError(path, msg) from exc
    try:
        _raise_on_truncation(caught, path, "HDU list")
        images = _image_hdus(hdul, headers)
        if not images:
            raise InvalidExposureError(path, f"no image HDU among {len(hdul)} HDU(s)")
        ccds = tuple(_validated_hdu(i, number, hdu, hdul, path, headers) for i, (number, hdu) in enumerate(images))
        primary = hdul[0].header.copy()
        metadata = _observation_metadata((primary, ccds[0].header), path, "primary header", headers)
        metadata["n_ccds"] = len(ccds)
    except BaseException:
        hdul.close()
        raise
    return ExposureReader(hdul, FitsExposure(path, primary, metadata, ccds), max_nonfinite_fraction, headers)


def _stream_compressed(path: Path) -> bool:
    """Whether the whole file is gzip, bzip2 or zip compressed (readable only from its start)."""
    with path.open("rb") as fh:
        magic = fh.read(4)
    return magic[:2] == b"\x1f\x8b" or magic[:3] == b"BZh" or magic == b"PK\x03\x04"


def read_fits_exposure(path: Path | str, *, max_nonfinite_fraction: float = 0.5,
                       headers: HeadersConfig | None = None) -> tuple[FitsExposure, list[CcdImage]]:
    """
    Read and validate a whole FITS file into memory (small files, tests, notebooks).

    Returns the `FitsExposure` and every `CcdImage`; raises `InvalidExposureError` as
    `open_fits_exposure` and `ExposureReader.images` do.
    """
    with open_fits_exposure(path, max_nonfinite_fraction=max_nonfinite_fraction, headers=headers) as reader:
        return reader.exposure, list(reader.images())
