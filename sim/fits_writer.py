"""FITS headers and files of the simulated night.

Layout
------
* ``ccds == 1``: the image is in the primary HDU, whose header holds the exposure keywords, the
  WCS and ``CCDNUM = 0``.
* ``ccds > 1``: an empty primary HDU with the exposure keywords, then one ``ImageHDU`` per CCD
  (``EXTNAME = 'CCD000'``, ``CCDNUM``, ``INHERIT = T``) carrying its WCS and a copy of the
  exposure keywords (``SKYLEVEL`` there is the sky at that CCD's centre). CCDs are appended one
  at a time so memory stays bounded by one CCD.
* Masks: an empty primary HDU and one tile-compressed uint8 ``CompImageHDU`` per CCD
  (``EXTNAME = 'CCD000'``..., also when there is a single CCD), RICE_1 in 512x512 tiles (lossless
  for integers; GZIP would embed a timestamp and break byte-identical output).

Header keywords: TELESCOP='skyblink-sim', FIELD, EXPID, IMAGETYP ('science' | 'reference'),
DATE-OBS (start, ISO UTC), MJD-OBS (start), EXPTIME [s], FILTER, GAIN [e-/ADU], RDNOISE [e-],
SATURATE [ADU], SEEING (PSF FWHM, arcsec), MAGZP (magnitude giving 1 ADU/s: a source of
magnitude m gives ``EXPTIME * 10**(-0.4 (m - MAGZP))`` ADU), SKYLEVEL [ADU], MAGLIM (5-sigma
point-source limit), NCCD, BUNIT='adu', RA/DEC (boresight, deg), ROTANG (deg), NCOMBINE,
PSFBETA (Moffat beta), SIMVER. No DATE or CHECKSUM is written, so files are byte-identical
across runs.

Notes
-----
Internal to `skyblink.sim`. Not thread-safe per file.

"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits

from .conditions import SATURATE_ADU, Conditions
from .wcs_layout import Pointing

__all__ = ["SIMULATOR_VERSION", "CcdFileWriter", "image_header"]

SIMULATOR_VERSION = "1.0"
_MASK_TILE = 512  # mask tile edge: few tiles keep compression fast (row tiles cost ~1 s/CCD)
_MASK_BITS = (
    ("MASKB1", "COSMIC_RAY", "mask bit value 1"),
    ("MASKB2", "HOT_PIXEL", "mask bit value 2"),
    ("MASKB4", "BAD_COLUMN", "mask bit value 4"),
    ("MASKB8", "SATELLITE", "mask bit value 8"),
    ("MASKB16", "SATURATED", "mask bit value 16 (saturated or bled)"),
)


def image_header(
    *,
    field_id: str,
    exposure_id: str,
    image_type: str,
    band: str,
    cond: Conditions,
    pointing: Pointing,
    n_ccds: int,
) -> fits.Header:
    """Return the exposure-level header cards of one image.

    Parameters
    ----------
    field_id : str
        Field, e.g. 'F00'.
    exposure_id : str
        Exposure, e.g. 'F00-003' (references: 'F00-ref').
    image_type : {'science', 'reference'}
        ``IMAGETYP``.
    band : str
        Filter name.
    cond : `~skyblink.sim.conditions.Conditions`
        How the image was taken.
    pointing : `~skyblink.sim.wcs_layout.Pointing`
        Boresight and rotation.
    n_ccds : int
        Number of CCDs in the file.

    Returns
    -------
    `~astropy.io.fits.Header`

    Raises
    ------
    ValueError
        If ``image_type`` is not 'science' or 'reference'.

    """
    if image_type not in {"science", "reference"}:
        msg = f"image_type must be 'science' or 'reference', got {image_type!r}"
        raise ValueError(msg)
    header = fits.Header()
    cards: list[tuple[str, Any, str]] = [
        ("TELESCOP", "skyblink-sim", "simulated telescope"),
        ("INSTRUME", "skyblink-sim-cam", "simulated camera"),
        ("SIMVER", SIMULATOR_VERSION, "skyblink.sim version"),
        ("FIELD", field_id, "field id"),
        ("EXPID", exposure_id, "exposure id"),
        ("IMAGETYP", image_type, "science or reference (mean coadd)"),
        ("DATE-OBS", cond.date_obs, "UTC start of exposure"),
        ("MJD-OBS", cond.mjd_start, "[d] MJD (UTC) of exposure start"),
        ("EXPTIME", cond.exptime, "[s] exposure time (per combined frame)"),
        ("NCOMBINE", cond.depth, "exposures combined (mean)"),
        ("TEXPTIME", cond.exptime * cond.depth, "[s] total exposure time"),
        ("FILTER", band, "filter"),
        ("GAIN", cond.gain, "[e-/ADU] (x NCOMBINE for a mean coadd)"),
        ("RDNOISE", cond.read_noise, "[e-] read noise of the summed frames"),
        ("SATURATE", float(SATURATE_ADU), "[ADU] saturated pixels hold this value"),
        ("SEEING", cond.fwhm_arcsec, "[arcsec] PSF FWHM (Moffat)"),
        ("PSFBETA", cond.beta, "Moffat power index of the PSF"),
        ("MAGZP", cond.magzp, "[mag] source giving 1 ADU/s in total"),
        ("SKYLEVEL", cond.sky_adu, "[ADU] sky level at the boresight"),
        ("MAGLIM", cond.limiting_mag, "5-sigma point-source limiting mag"),
        ("NCCD", n_ccds, "number of CCDs"),
        ("BUNIT", "adu", "pixel unit"),
        ("RA", pointing.ra, "[deg] boresight RA (ICRS)"),
        ("DEC", pointing.dec, "[deg] boresight Dec (ICRS)"),
        ("ROTANG", pointing.rotation_deg, "[deg] rotation of the pixel axes"),
    ]
    for key, value, comment in cards:
        header[key] = (value, comment)
    return header


class CcdFileWriter:
    """Write one image file (or its mask) CCD by CCD.

    Parameters
    ----------
    path : Path
        File to create (overwritten).
    header : `~astropy.io.fits.Header`
        Exposure-level cards.
    n_ccds : int
        Number of CCDs that will be added.
    mask : bool, optional
        Write uint8 masks as RICE_1 tile-compressed extensions instead of pixels.

    Notes
    -----
    With ``n_ccds == 1`` and ``mask=False`` the single CCD goes into the primary HDU, so nothing
    is written until `add` is called; otherwise the primary HDU is written at construction and
    every `add` appends one extension.

    """

    def __init__(self, path: Path, header: fits.Header, n_ccds: int, *, mask: bool = False) -> None:
        self.path = Path(path)
        self._header = header
        self._n_ccds = n_ccds
        self._mask = mask
        self._added = 0
        self._single = n_ccds == 1 and not mask
        if not self._single:
            primary = fits.PrimaryHDU(header=header.copy())
            if mask:
                for key, value, comment in _MASK_BITS:
                    primary.header[key] = (value, comment)
            primary.writeto(self.path, overwrite=True)

    def add(self, ccd: int, data: np.ndarray, ccd_header: fits.Header) -> None:
        """Write CCD ``ccd`` with its ``data`` and per-CCD cards (WCS, SKYLEVEL).

        Raises
        ------
        ValueError
            If CCDs are added out of order or more than ``n_ccds`` are added.

        """
        if ccd != self._added or ccd >= self._n_ccds:
            msg = (
                f"CCDs must be added in order 0..{self._n_ccds - 1}; "
                f"expected {self._added}, got {ccd}"
            )
            raise ValueError(msg)
        header = self._header.copy()
        header.update(ccd_header)
        header["CCDNUM"] = (ccd, "CCD index")
        if self._single:
            fits.PrimaryHDU(data=data, header=header).writeto(self.path, overwrite=True)
        else:
            name = f"CCD{ccd:03d}"
            header["INHERIT"] = (True, "inherit the primary header")
            if self._mask:
                tile = (min(data.shape[0], _MASK_TILE), min(data.shape[1], _MASK_TILE))
                hdu: fits.ImageHDU | fits.CompImageHDU = fits.CompImageHDU(
                    data=data,
                    header=header,
                    name=name,
                    compression_type="RICE_1",
                    tile_shape=tile,
                )
            else:
                hdu = fits.ImageHDU(data=data, header=header, name=name)
            with fits.open(self.path, mode="append") as hdul:
                hdul.append(hdu)
        self._added += 1

    def close(self) -> None:
        """Check that every CCD was written.

        Raises
        ------
        RuntimeError
            If fewer than ``n_ccds`` CCDs were added.

        """
        if self._added != self._n_ccds:
            msg = f"{self.path}: {self._added} of {self._n_ccds} CCDs were written"
            raise RuntimeError(msg)
