"""
Read the (science, template, difference) cutouts and candidate fields out of ZTF alert packets.

Three sources are understood:

* one record of a ZTF alert (the ``dict`` fastavro decodes), with `cutouts_from_record`;
* a ZTF Avro container file (one or many alerts; raw ZTF packets or Fink's re-written ones),
  with `iter_avro_records` / `iter_avro_cutouts`;
* an alert exported from Kowalski/MongoDB as extended JSON (cutouts as ``{"$binary": ...}``),
  with `read_mongo_json_alert`.

Each ``stampData`` is a gzip-compressed single-HDU FITS file holding one 2-D float32 image
(63x63, smaller at a CCD edge). ZTF writes its first card non-standard (``SIMPLE  =  T`` in the
wrong column), so the FITS reader here runs with astropy's tolerant options and silences
astropy's ``VerifyWarning`` for that one call only.

Notes
-----
CPU only; no GPU memory. The functions are thread-safe except that silencing astropy's warnings
uses `warnings.catch_warnings`, which changes the process-wide warning filters while a cutout is
being parsed (Python's documented limitation).
"""

from __future__ import annotations

import base64
import gzip
import io
import json
import warnings
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import fastavro
import numpy as np

from skyblink.lazy_import import lazy_module

if TYPE_CHECKING:
    from astropy.io import fits
    from astropy.io.fits import verify as fits_verify
else:
    fits = lazy_module("astropy.io.fits")  # slow to import; only reading a cutout needs it
    fits_verify = lazy_module("astropy.io.fits.verify")

__all__ = [
    "CUTOUT_FIELDS",
    "ZtfCutoutError",
    "ZtfCutouts",
    "cutouts_from_record",
    "is_ztf_alert",
    "iter_avro_cutouts",
    "iter_avro_records",
    "read_cutout_image",
    "read_mongo_json_alert",
]

#: Cutout fields of a ZTF alert, in the channel order braai (and skyblink's classifier) use.
CUTOUT_FIELDS = ("cutoutScience", "cutoutTemplate", "cutoutDifference")

_GZIP_MAGIC = b"\x1f\x8b"


class ZtfCutoutError(ValueError):
    """
    A cutout of a ZTF alert could not be read. Not retryable: the packet itself is bad.

    Attributes
    ----------
    object_id, candid : str or None, int or None
        The packet (``objectId``, ``candid``) when known.
    field : str or None
        The alert field (e.g. ``"cutoutTemplate"``) that failed.
    source : str or None
        Where the packet came from (a file path), when known.
    """

    def __init__(self, reason: str, *, object_id: str | None = None, candid: int | None = None,
                 field: str | None = None, source: str | None = None) -> None:
        where = f"alert objectId={object_id!r} candid={candid!r}"
        if field is not None:
            where += f" field {field!r}"
        if source is not None:
            where += f" in {source}"
        super().__init__(f"{where}: {reason}")
        self.object_id, self.candid, self.field, self.source = object_id, candid, field, source


@dataclass(frozen=True, slots=True)
class ZtfCutouts:
    """
    The three cutouts of one ZTF alert and the candidate fields needed to score it. Stable.

    Attributes
    ----------
    object_id : str
        ZTF object name (``objectId``).
    candid : int
        Candidate id (``candid``).
    science, template, difference : (ny, nx) `~numpy.ndarray` of float32
        Raw cutout pixels as in the FITS files (NaNs kept; native byte order).
    candidate : Mapping
        The alert's ``candidate`` record (all its fields, e.g. ``drb``, ``drbversion``, ``rb``).
    source : str or None
        The file the alert was read from, when known.
    """

    object_id: str
    candid: int
    science: np.ndarray
    template: np.ndarray
    difference: np.ndarray
    candidate: Mapping[str, Any] = field(repr=False)
    source: str | None = None

    @property
    def drb(self) -> float | None:
        """ZTF's deep real/bogus score in the packet (``candidate.drb``); None before schema 3.3."""
        value = self.candidate.get("drb")
        return None if value is None else float(value)

    @property
    def drbversion(self) -> str | None:
        """Model that computed ``drb`` (``candidate.drbversion``, e.g. ``"d6_m7"``); None if absent."""
        return self.candidate.get("drbversion")

    @property
    def triplet(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(science, template, difference), the order braai expects."""
        return self.science, self.template, self.difference


def read_cutout_image(stamp: bytes, *, field: str | None = None, object_id: str | None = None,
                      candid: int | None = None, source: str | None = None) -> np.ndarray:
    """
    Decode one ``stampData``: gunzip (when gzip-compressed) and read the FITS primary image.

    Parameters
    ----------
    stamp : bytes
        The ``stampData`` bytes (gzip-compressed FITS, or plain FITS).
    field, object_id, candid, source : optional
        Used only to name the packet in an error message.

    Returns
    -------
    image : (ny, nx) `~numpy.ndarray` of float32
        Native byte order, newly allocated; NaNs are kept.

    Raises
    ------
    ZtfCutoutError
        The bytes are not gzip/FITS, or the primary HDU holds no 2-D image.
    """
    def fail(reason: str) -> ZtfCutoutError:
        return ZtfCutoutError(reason, object_id=object_id, candid=candid, field=field, source=source)

    if not isinstance(stamp, bytes | bytearray | memoryview):
        msg = f"stampData is {type(stamp).__name__}, expected bytes"
        raise fail(msg)
    raw = bytes(stamp)
    if raw[:2] == _GZIP_MAGIC:
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            msg = f"stampData is not valid gzip ({e})"
            raise fail(msg) from e
    try:
        with warnings.catch_warnings():
            # ZTF writes 'SIMPLE  =  T' in the wrong column; astropy reads it fine but warns.
            warnings.simplefilter("ignore", fits_verify.VerifyWarning)
            with fits.open(io.BytesIO(raw), ignore_missing_simple=True, ignore_missing_end=True,
                           memmap=False, lazy_load_hdus=False) as hdul:
                data = hdul[0].data
                image = None if data is None else np.array(data, dtype=np.float32)
    except (OSError, ValueError, TypeError, IndexError) as e:
        msg = f"stampData is not a readable FITS file ({type(e).__name__}: {e})"
        raise fail(msg) from e
    if image is None or image.ndim != 2:  # a 2-D image
        shape = None if image is None else image.shape
        msg = f"FITS primary HDU holds no 2-D image (shape {shape})"
        raise fail(msg)
    return image


def is_ztf_alert(record: Mapping[str, Any]) -> bool:
    """Return True when ``record`` looks like a ZTF alert (objectId, candid, candidate and the three cutouts)."""
    return (isinstance(record.get("candidate"), Mapping) and "objectId" in record
            and all(isinstance(record.get(name), Mapping) for name in CUTOUT_FIELDS))


def cutouts_from_record(record: Mapping[str, Any], *, source: str | Path | None = None) -> ZtfCutouts:
    """
    Return the cutouts and candidate of one decoded ZTF alert record.

    Parameters
    ----------
    record : Mapping
        One alert as fastavro decodes it (or as `read_mongo_json_alert` returns it).
    source : str or Path, optional
        The file it came from, for error messages.

    Returns
    -------
    `ZtfCutouts`

    Raises
    ------
    ZtfCutoutError
        A field is missing or a cutout cannot be decoded; the message names objectId, candid and
        the field.
    """
    src = None if source is None else str(source)
    object_id = record.get("objectId")
    candidate = record.get("candidate")
    candid = record.get("candid")
    if candid is None and isinstance(candidate, Mapping):
        candid = candidate.get("candid")
    if not isinstance(candidate, Mapping):
        msg = "no 'candidate' record (not a ZTF alert?)"
        raise ZtfCutoutError(msg, object_id=object_id, candid=candid, field="candidate", source=src)
    images = []
    for name in CUTOUT_FIELDS:
        cutout = record.get(name)
        stamp = cutout.get("stampData") if isinstance(cutout, Mapping) else None
        if stamp is None:
            msg = "cutout is missing or has no stampData"
            raise ZtfCutoutError(msg, object_id=object_id, candid=candid, field=name, source=src)
        images.append(read_cutout_image(stamp, field=name, object_id=object_id, candid=candid, source=src))
    return ZtfCutouts(object_id=str(object_id), candid=int(candid) if candid is not None else -1,
                      science=images[0], template=images[1], difference=images[2],
                      candidate=candidate, source=src)


def iter_avro_records(path: str | Path) -> Iterator[dict[str, Any]]:
    """
    Yield the records of an Avro container file (a ZTF packet file holds one or more alerts).

    Parameters
    ----------
    path : str or Path
        An Avro Object Container File (writer schema embedded), e.g. a ZTF ``<candid>.avro``.

    Yields
    ------
    dict
        Each record as fastavro decodes it, in file order.
    """
    with Path(path).open("rb") as fh:
        yield from cast(Iterator[dict[str, Any]], fastavro.reader(fh))


def iter_avro_cutouts(path: str | Path) -> Iterator[ZtfCutouts]:
    """
    Yield `ZtfCutouts` for every ZTF alert in an Avro file.

    Raises
    ------
    ZtfCutoutError
        A record is not a ZTF alert (e.g. a Rubin alert) or a cutout cannot be read; the message
        names the file and the packet.
    """
    for record in iter_avro_records(path):
        if not is_ztf_alert(record):
            msg = f"record is not a ZTF alert (top-level fields: {sorted(record)[:8]}...)"
            raise ZtfCutoutError(msg, object_id=record.get("objectId"), candid=record.get("candid"),
                                 source=str(path))
        yield cutouts_from_record(record, source=path)


def _from_extended_json(obj: dict[str, Any]) -> Any:
    """``object_hook`` turning MongoDB extended-JSON wrappers into Python values."""
    if len(obj) <= 2 and "$binary" in obj:  # {"$binary": ..., "$type": ...}
        payload = obj["$binary"]
        if isinstance(payload, Mapping):  # canonical v2 form: {"$binary": {"base64": ..., "subType": ...}}
            payload = payload["base64"]
        return base64.b64decode(payload)
    if len(obj) == 1:
        ((key, value),) = obj.items()
        if key == "$numberLong" or key == "$numberInt":
            return int(value)
        if key == "$numberDouble":
            return float(value)
        if key == "$oid":
            return str(value)
    return obj


def read_mongo_json_alert(path: str | Path) -> dict[str, Any]:
    """
    Read a ZTF alert exported from MongoDB (Kowalski) as extended JSON.

    Parameters
    ----------
    path : str or Path
        A ``.json`` file holding one alert document.

    Returns
    -------
    dict
        The alert with ``{"$binary": ...}`` cutouts decoded to ``bytes`` and ``$numberLong`` /
        ``$numberInt`` / ``$numberDouble`` / ``$oid`` wrappers unwrapped; pass it to
        `cutouts_from_record`. Extra MongoDB fields (``_id``, ``coordinates``) are kept.

    Raises
    ------
    ValueError
        The file is not JSON or not one alert document.
    """
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"), object_hook=_from_extended_json)
    except json.JSONDecodeError as e:
        msg = f"{path}: not a JSON document ({e})"
        raise ValueError(msg) from e
    if not isinstance(doc, dict):
        msg = f"{path}: expected one alert object, got a JSON {type(doc).__name__}"
        raise ValueError(msg)  # a malformed file, not a wrong argument type
    return doc
