"""
Read real survey alert packets -- ZTF and Rubin -- into skyblink's stamps and detections.

What is read
------------
* **ZTF** alert packets, schemas 3.x to 4.02: Avro container files (one alert as ZTF sends it, or
  many, as Fink re-writes them), and Kowalski/MongoDB extended-JSON exports. Cutouts are gzipped
  single-HDU FITS in DN with no WCS and a non-standard first card (read by
  `skyblink.storage.alerts.ztf_cutouts.read_cutout_image`).
* Either survey's alerts as the Fink broker stores them: **Parquet** files, one alert a row (the
  packet's fields as columns, cutouts as gzipped-FITS bytes); the history columns
  (``prv_candidates``, ``prvDiaSources``, ...) are not read.
* **Rubin** alert packets, ``lsst.v9_0`` to ``lsst.v11_1`` (and any later ``lsst.v<M>_<m>``):
  Avro container files (writer schema embedded, e.g. Fink's files) and single messages in the
  Confluent wire format as Rubin's Kafka sends them (byte 0, the 4-byte big-endian schema id
  ``major * 100 + minor``, then the schemaless datum). A framed message needs the writer schema,
  which skyblink does not ship (the schemas are GPLv3): pass ``rubin_schema_dir`` (the
  ``schema`` folder of the ``lsst-alert-packet`` package or a checkout of lsst/alert_packet), set
  ``SKYBLINK_RUBIN_SCHEMA_DIR``, or install ``lsst-alert-packet``. Cutouts are FITS files with the
  image in nJy (primary HDU), its variance (``UNCERT``) and the PSF (``PSFIMAGE``); their WCS has
  no ``CTYPE`` (a local TAN about the source: ``CRVAL`` is the diaSource position), so RA---TAN /
  DEC--TAN is assumed.

The stamp rule (63x63)
----------------------
skyblink's packets carry 63x63 stamps centred on the detection (`STAMP_SIZE`). A cutout of any
size (ZTF: 63, or fewer at a CCD edge; Rubin: 30 to 102) is brought to 63x63 by `fit_stamp`: the
source pixel (ZTF: 31 of an uncut stamp, or the CCD-edge side worked out from ``xpos/ypos``;
Rubin: ``CRPIX - 1``, since ``CRVAL`` is the source) is placed at pixel (31, 31), a larger cutout
is cropped, a smaller one padded with NaN. The pixel scale is kept (ZTF 1.01"/px, Rubin 0.2"/px):
resampling is the classifier's business (`skyblink.evaluation.survey_scores`). NaN means "no data"
-- masked pixels in the packet as well as padding -- and `SurveyStamps.mask` marks them.

Errors
------
A packet that cannot be read raises (or, from the file readers, is reported as) a
`SurveyPacketError` naming the packet (file, record index, alert id when known) and the field;
the file readers go on with the next packet.

Notes
-----
CPU only; no GPU memory. Thread-safe (every record is immutable), except that reading a ZTF
cutout silences one astropy warning with `warnings.catch_warnings` (process-wide).
"""

from __future__ import annotations

import gzip
import io
import json
import math
import os
import zlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from functools import cache
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import fastavro
import numpy as np

from skyblink.lazy_import import lazy_module

from .builder import STAMP_SIZE
from .errors import AlertError
from .packet import AlertType, Band, ClassProbabilities, Detection, DetectionFlag
from .schema import _HEADER, _MAGIC
from .ztf_cutouts import ZtfCutoutError, read_cutout_image, read_mongo_json_alert

if TYPE_CHECKING:
    import pyarrow.parquet as pq
    from astropy import wcs as astropy_wcs
    from astropy.io import fits
else:
    # Slow to import, and only some readers need them.
    pq = lazy_module("pyarrow.parquet")
    astropy_wcs = lazy_module("astropy.wcs")
    fits = lazy_module("astropy.io.fits")

__all__ = [
    "RUBIN_SCHEMA_ENV",
    "SurveyAlert",
    "SurveyPacketError",
    "SurveyReadReport",
    "SurveyStamps",
    "Survey",
    "fit_stamp",
    "frame_rubin_record",
    "load_rubin_schema",
    "read_survey_files",
    "read_survey_packets",
    "survey_alert_from_record",
]

#: Environment variable naming the folder of Rubin's ``<major>/<minor>/lsst.v*.avsc`` schemas.
RUBIN_SCHEMA_ENV = "SKYBLINK_RUBIN_SCHEMA_DIR"
#: Pixel scales, arcsec per pixel.
ZTF_PIXEL_SCALE = 1.01
RUBIN_PIXEL_SCALE = 0.2
#: AB magnitude of 1 nJy.
_AB_NJY_ZP = 31.4
_ZTF_BANDS = {1: Band.G, 2: Band.R, 3: Band.I}
#: ZTF readout-channel quadrants are 3072 x 3080 pixels (used to tell which side a cut stamp lost).
_ZTF_QUADRANT = (3080, 3072)
_CUTOUTS = (("science", "cutoutScience"), ("template", "cutoutTemplate"), ("difference", "cutoutDifference"))
_CONTAINER_MAGIC = b"Obj\x01"
_PARQUET_MAGIC = b"PAR1"


class Survey(StrEnum):
    """The survey a packet comes from."""

    ZTF = "ztf"
    RUBIN = "rubin"


class SurveyPacketError(AlertError):
    """
    A survey packet (or one of its fields) could not be read. Not retryable: the packet is bad.

    Attributes
    ----------
    packet : str
        The packet: file, record index and alert id when known (``"a.avro#2 (candid 123)"``).
    field : str
        The packet field at fault (``"cutoutTemplate"``, ``"payload"``, ``"candidate.magpsf"``).
    reason : str
        What is wrong.
    """

    def __init__(self, packet: str, field: str, reason: str) -> None:
        super().__init__(f"packet {packet}: field {field!r}: {reason}")
        self.packet, self.field, self.reason = packet, field, reason


def fit_stamp(image: np.ndarray, centre: tuple[float, float], size: int = STAMP_SIZE) -> np.ndarray:
    """
    Bring a cutout of any size to ``size`` x ``size`` with the source pixel at the centre. Stable.

    Parameters
    ----------
    image : (ny, nx) array_like
        The cutout.
    centre : (float, float)
        The source position (row, column), 0-based pixels of ``image``; rounded to a pixel.
    size : int
        Output edge, odd (default 63).

    Returns
    -------
    (size, size) `~numpy.ndarray` of float32
        Pixel ``round(centre)`` at ``(size // 2, size // 2)``; cropped where the cutout is larger,
        NaN where it does not reach.

    Raises
    ------
    ValueError
        ``image`` is not 2-D or ``size`` is not a positive odd integer.
    """
    data = np.asarray(image, dtype=np.float32)
    if data.ndim != 2:  # a 2-D image
        msg = f"image must be 2-D, got shape {data.shape}"
        raise ValueError(msg)
    if size < 1 or size % 2 == 0:
        msg = f"size must be a positive odd integer, got {size!r}"
        raise ValueError(msg)
    half = size // 2
    cy, cx = (round(float(c)) for c in centre)
    out = np.full((size, size), np.nan, dtype=np.float32)
    y0, x0 = cy - half, cx - half  # image pixel that lands on out[0, 0]
    sy, sx = max(0, y0), max(0, x0)
    ey, ex = min(data.shape[0], y0 + size), min(data.shape[1], x0 + size)
    if ey > sy and ex > sx:
        out[sy - y0 : ey - y0, sx - x0 : ex - x0] = data[sy:ey, sx:ex]
    return out


@dataclass(frozen=True, slots=True)
class SurveyStamps:
    """
    The three stamps of one survey alert, 63x63 about the source (`fit_stamp`). Stable.

    Attributes
    ----------
    science, template, difference : (63, 63) `~numpy.ndarray` of float32
        Pixels in the packet's unit; NaN where masked or outside the cutout.
    unit : str
        ``"DN"`` (ZTF) or ``"nJy"`` (Rubin).
    pixel_scale_arcsec : float
        1.01 (ZTF) or 0.2 (Rubin).
    raw_shape : (int, int)
        Shape of the cutouts as read (e.g. (30, 30), (63, 53)).
    centre : (float, float)
        Source position (row, column) in the raw cutout, 0-based.
    difference_sign : int
        +1 when ``difference`` is science minus template; -1 when the packet wrote template minus
        science (ZTF's ``refmsci`` difference for ``isdiffpos = 'f'``, where the source is positive).
    science_variance, template_variance, difference_variance : (63, 63) ndarray or None
        Per-pixel variance in the unit squared (Rubin ``UNCERT``); None when the packet has none.
    psf : ndarray or None
        The difference image's PSF (Rubin ``PSFIMAGE``, sums to about 1); None when absent.
    wcs_header : dict or None
        The science cutout's WCS keywords (with CTYPE added for Rubin); None for ZTF (no WCS).
    raw : (science, template, difference)
        The cutouts as read, before `fit_stamp` (what ZTF's braai takes).
    """

    science: np.ndarray
    template: np.ndarray
    difference: np.ndarray
    unit: str
    pixel_scale_arcsec: float
    raw_shape: tuple[int, int]
    centre: tuple[float, float]
    difference_sign: int = 1
    science_variance: np.ndarray | None = field(default=None, repr=False)
    template_variance: np.ndarray | None = field(default=None, repr=False)
    difference_variance: np.ndarray | None = field(default=None, repr=False)
    psf: np.ndarray | None = field(default=None, repr=False)
    wcs_header: Mapping[str, Any] | None = field(default=None, repr=False)
    raw: tuple[np.ndarray, np.ndarray, np.ndarray] | None = field(default=None, repr=False)

    @property
    def triplet(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(science, template, difference), the classifier's channel order."""
        return self.science, self.template, self.difference

    @property
    def mask(self) -> np.ndarray:
        """(3, 63, 63) bool: True where a stamp has no data (NaN: masked, or outside the cutout)."""
        return ~np.isfinite(np.stack(self.triplet))

    def wcs(self) -> Any:
        """Return the science cutout's `~astropy.wcs.WCS` (of the raw cutout), or None (ZTF)."""
        if self.wcs_header is None:
            return None
        return astropy_wcs.WCS(dict(self.wcs_header))


@dataclass(frozen=True, slots=True)
class SurveyAlert:
    """
    One alert of a survey, read into skyblink's stamps and detection fields. Stable.

    Attributes
    ----------
    survey : Survey
    alert_id : int
        ZTF ``candid`` or Rubin ``diaSourceId``.
    object_id : str
        ZTF ``objectId``, or Rubin ``diaObjectId`` (``"0"`` when the source has no diaObject).
    schema_version : str
        ZTF ``schemavsn`` (``"3.3"``, ``"4.02"``) or the Rubin schema (``"lsst.v10_0"``).
    packet : str
        Where it came from, for messages: ``"<file>#<record index>"``.
    stamps : SurveyStamps or None
        None when the packet carries no cutouts (e.g. Rubin's synthetic sample alerts).
    scores : Mapping of str to float
        The survey's own real/bogus scores present in the packet: ``drb``, ``rb`` (ZTF),
        ``reliability`` (Rubin).
    record : Mapping
        The packet's ``candidate`` (ZTF) or ``diaSource`` (Rubin) record, all fields.
    """

    survey: Survey
    alert_id: int
    object_id: str
    schema_version: str
    packet: str
    stamps: SurveyStamps | None
    scores: Mapping[str, float]
    record: Mapping[str, Any] = field(repr=False)

    @property
    def packet_score_name(self) -> str | None:
        """``drb`` where the ZTF packet has it, else ``rb``; ``reliability`` for Rubin; None if absent."""
        order = ("drb", "rb") if self.survey is Survey.ZTF else ("reliability",)
        return next((name for name in order if name in self.scores), None)

    @property
    def packet_score(self) -> float | None:
        """The value of `packet_score_name`, or None."""
        name = self.packet_score_name
        return None if name is None else self.scores[name]

    def detection(self, class_probabilities: ClassProbabilities, *, real_bogus: float | None = None,
                  alert_type: AlertType = AlertType.TRANSIENT) -> Detection:
        """
        Return this alert as skyblink's `~skyblink.storage.alerts.Detection`.

        Parameters
        ----------
        class_probabilities : ClassProbabilities
            Class probabilities (e.g. from skyblink's classifier); packets carry none.
        real_bogus : float, optional
            Real/bogus score; default the packet's own (`packet_score`), else 0.5.
        alert_type : AlertType
            Default transient.

        Returns
        -------
        Detection
            Flux in nJy (ZTF: from ``magpsf``, negative for ``isdiffpos = 'f'``); position errors
            in arcsec (NaN for ZTF, whose packets carry none); pixels 0-based.

        Raises
        ------
        SurveyPacketError
            A field the detection needs is missing or invalid; the message names it.
        """
        score = real_bogus if real_bogus is not None else self.packet_score
        fields = (_ztf_detection_fields if self.survey is Survey.ZTF else _rubin_detection_fields)(self)
        try:
            return Detection(real_bogus=0.5 if score is None else float(np.clip(score, 0.0, 1.0)),
                             class_probabilities=class_probabilities, alert_type=alert_type, **fields)
        except (ValueError, TypeError) as exc:
            raise SurveyPacketError(self.packet, "candidate" if self.survey is Survey.ZTF else "diaSource",
                                    str(exc)) from exc


@dataclass(frozen=True, slots=True)
class SurveyReadReport:
    """
    What reading some packet files gave: the alerts read, and one error per packet that failed. Stable.

    Attributes
    ----------
    alerts : tuple of SurveyAlert
        In file order.
    errors : tuple of SurveyPacketError
        Each names its packet and field.
    """

    alerts: tuple[SurveyAlert, ...] = ()
    errors: tuple[SurveyPacketError, ...] = ()

    def __add__(self, other: SurveyReadReport) -> SurveyReadReport:
        """Concatenate two reports."""
        return SurveyReadReport(self.alerts + other.alerts, self.errors + other.errors)


# --- helpers -------------------------------------------------------------------------------


def _finite(value: Any) -> float | None:
    """``value`` as a float, or None when missing or not finite."""
    if value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _null_records(value: Any) -> Any:
    """Spark writes an absent nested record as one whose fields are all null: turn it into None."""
    if isinstance(value, Mapping) and value and all(v is None for v in value.values()):
        return None
    return value


def _packet_name(source: str, index: int, alert_id: Any = None) -> str:
    name = f"{source}#{index}"
    return name if alert_id is None else f"{name} (alert {alert_id})"


# --- ZTF -----------------------------------------------------------------------------------


def _ztf_centre(shape: tuple[int, int], candidate: Mapping[str, Any]) -> tuple[float, float]:
    """Source pixel of a ZTF cutout: 31 on an uncut axis; on a cut one, the side by the CCD edge."""
    half = STAMP_SIZE // 2
    centre = []
    for n, key, extent in zip(shape, ("ypos", "xpos"), _ZTF_QUADRANT, strict=True):
        missing = STAMP_SIZE - n
        pos = _finite(candidate.get(key))
        low_side_cut = missing > 0 and pos is not None and pos < extent / 2
        centre.append(float(half - missing) if low_side_cut else float(half))
    return centre[0], centre[1]


def _ztf_stamps(record: Mapping[str, Any], candidate: Mapping[str, Any], packet: str, source: str) -> SurveyStamps:
    images = []
    for _, name in _CUTOUTS:
        cutout = record.get(name)
        stamp = cutout.get("stampData") if isinstance(cutout, Mapping) else None
        if stamp is None:
            raise SurveyPacketError(packet, name, "cutout is missing or has no stampData")
        try:
            images.append(read_cutout_image(stamp, field=name, object_id=record.get("objectId"),
                                            candid=candidate.get("candid"), source=source))
        except ZtfCutoutError as exc:
            raise SurveyPacketError(packet, name, str(exc).split(": ", 1)[-1]) from exc
    shapes = {image.shape for image in images}
    if len(shapes) != 1:
        raise SurveyPacketError(packet, "cutoutTemplate", f"cutout shapes differ: {[i.shape for i in images]}")
    shape = images[0].shape
    if max(shape) > STAMP_SIZE:
        raise SurveyPacketError(packet, "cutoutScience", f"ZTF cutouts are at most 63x63, got {shape}")
    diff_name = str((record.get("cutoutDifference") or {}).get("fileName") or "")
    negated = "refmsci" in diff_name or str(candidate.get("isdiffpos")) in ("f", "0")
    centre = _ztf_centre(shape, candidate)
    science, template, difference = (fit_stamp(image, centre) for image in images)
    return SurveyStamps(science, template, difference, unit="DN", pixel_scale_arcsec=ZTF_PIXEL_SCALE,
                        raw_shape=(int(shape[0]), int(shape[1])), centre=centre, difference_sign=-1 if negated else 1,
                        raw=(images[0], images[1], images[2]))


def _ztf_alert(record: Mapping[str, Any], source: str, index: int) -> SurveyAlert:
    candidate = record.get("candidate")
    candid = record.get("candid")
    if candid is None and isinstance(candidate, Mapping):
        candid = candidate.get("candid")
    packet = _packet_name(source, index, candid)
    if not isinstance(candidate, Mapping):
        raise SurveyPacketError(packet, "candidate", "no candidate record")
    if candid is None:
        raise SurveyPacketError(packet, "candid", "missing")
    scores = {name: v for name in ("drb", "rb") if (v := _finite(candidate.get(name))) is not None}
    return SurveyAlert(
        survey=Survey.ZTF, alert_id=int(candid), object_id=str(record.get("objectId")),
        schema_version=str(record.get("schemavsn") or "?"), packet=packet,
        stamps=_ztf_stamps(record, candidate, packet, source), scores=scores, record=candidate,
    )


def _ztf_detection_fields(alert: SurveyAlert) -> dict[str, Any]:
    c = alert.record

    def need(name: str) -> Any:
        value = c.get(name)
        if value is None:
            raise SurveyPacketError(alert.packet, f"candidate.{name}", "missing")
        return value

    mag, mag_err = float(need("magpsf")), float(need("sigmapsf"))
    negative = str(c.get("isdiffpos")) in ("f", "0")
    flux = 10 ** ((_AB_NJY_ZP - mag) / 2.5) * (-1.0 if negative else 1.0)
    flux_err = abs(flux) * mag_err * math.log(10) / 2.5
    fid = int(need("fid"))
    if fid not in _ZTF_BANDS:
        raise SurveyPacketError(alert.packet, "candidate.fid", f"unknown ZTF filter id {fid}")
    return {
        "candidate_id": alert.alert_id, "mjd": float(need("jd")) - 2400000.5,
        "ra": float(need("ra")), "dec": float(need("dec")), "ra_err": math.nan, "dec_err": math.nan,
        "x": float(need("xpos")) - 1.0, "y": float(need("ypos")) - 1.0,
        "exposure_id": str(c.get("pid")), "field": str(c.get("field")), "ccd": int(c.get("rcid") or 0),
        "band": _ZTF_BANDS[fid], "flux": flux, "flux_err": flux_err,
        "snr": abs(flux) / flux_err if flux_err > 0 else math.nan, "mag": mag, "mag_err": mag_err,
        "flags": DetectionFlag.NEGATIVE if negative else DetectionFlag.NONE,
    }


# --- Rubin ---------------------------------------------------------------------------------


def _read_rubin_cutout(data: Any, packet: str, name: str) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None, dict[str, Any]]:
    """Return (image, variance, psf, header cards) of one Rubin cutout (FITS bytes, maybe gzipped)."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise SurveyPacketError(packet, name, f"cutout is {type(data).__name__}, expected FITS bytes")
    raw = bytes(data)
    try:
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
        with fits.open(io.BytesIO(raw), memmap=False, lazy_load_hdus=False) as hdul:
            image = hdul[0].data
            header = {k: v for k, v in hdul[0].header.items() if k not in ("COMMENT", "HISTORY", "")}
            names = [hdu.name for hdu in hdul]
            variance = hdul["UNCERT"].data if "UNCERT" in names else None
            psf = hdul["PSFIMAGE"].data if "PSFIMAGE" in names else None
            image = None if image is None else np.array(image, dtype=np.float32)
            variance = None if variance is None else np.array(variance, dtype=np.float32)
            psf = None if psf is None else np.array(psf, dtype=np.float64)
    except (OSError, ValueError, TypeError, IndexError, KeyError, EOFError, zlib.error) as exc:
        raise SurveyPacketError(packet, name, f"not a readable FITS file ({type(exc).__name__}: {exc})") from exc
    if image is None or image.ndim != 2:  # a 2-D image
        raise SurveyPacketError(packet, name, f"primary HDU holds no 2-D image (shape {None if image is None else image.shape})")
    if variance is not None and variance.shape != image.shape:
        raise SurveyPacketError(packet, name, f"UNCERT shape {variance.shape} differs from the image's {image.shape}")
    return image, variance, psf, header


def _rubin_wcs_header(header: Mapping[str, Any]) -> dict[str, Any] | None:
    """The cutout's WCS cards, with the missing CTYPE of Rubin cutouts set to RA---TAN / DEC--TAN."""
    keys = ("WCSAXES", "CRPIX1", "CRPIX2", "CRVAL1", "CRVAL2", "CDELT1", "CDELT2", "PC1_1", "PC1_2", "PC2_1",
            "PC2_2", "CD1_1", "CD1_2", "CD2_1", "CD2_2", "CTYPE1", "CTYPE2", "CUNIT1", "CUNIT2", "LATPOLE", "LONPOLE",
            "RADESYS", "EQUINOX")
    cards = {k: header[k] for k in keys if k in header}
    if not {"CRPIX1", "CRPIX2", "CRVAL1", "CRVAL2"} <= cards.keys():
        return None
    cards.setdefault("CTYPE1", "RA---TAN")
    cards.setdefault("CTYPE2", "DEC--TAN")
    cards["NAXIS"] = 2
    return cards


def _rubin_stamps(record: Mapping[str, Any], packet: str) -> SurveyStamps | None:
    if all(record.get(name) is None for _, name in _CUTOUTS):
        return None
    parts = []
    for _, name in _CUTOUTS:
        if record.get(name) is None:
            raise SurveyPacketError(packet, name, "cutout is null while the others are present")
        parts.append(_read_rubin_cutout(record[name], packet, name))
    shapes = {p[0].shape for p in parts}
    if len(shapes) != 1:
        raise SurveyPacketError(packet, "cutoutTemplate", f"cutout shapes differ: {[p[0].shape for p in parts]}")
    shape = parts[0][0].shape
    header = parts[0][3]
    crpix = (_finite(header.get("CRPIX2")), _finite(header.get("CRPIX1")))
    if crpix[0] is not None and crpix[1] is not None:
        centre = (crpix[0] - 1.0, crpix[1] - 1.0)  # CRVAL is the source: CRPIX (1-based) is its pixel
    else:
        centre = ((shape[0] - 1) / 2, (shape[1] - 1) / 2)
    science, template, difference = (fit_stamp(p[0], centre) for p in parts)
    variances = [None if p[1] is None else fit_stamp(p[1], centre) for p in parts]
    return SurveyStamps(
        science, template, difference, unit=str(header.get("BUNIT", "nJy")).strip() or "nJy", pixel_scale_arcsec=RUBIN_PIXEL_SCALE,
        raw_shape=(int(shape[0]), int(shape[1])), centre=centre, difference_sign=1,
        science_variance=variances[0], template_variance=variances[1], difference_variance=variances[2],
        psf=parts[2][2], wcs_header=_rubin_wcs_header(header), raw=(parts[0][0], parts[1][0], parts[2][0]),
    )


def _rubin_alert(record: Mapping[str, Any], source: str, index: int, schema_version: str) -> SurveyAlert:
    dia = record.get("diaSource")
    alert_id = record.get("diaSourceId") or (dia.get("diaSourceId") if isinstance(dia, Mapping) else None)
    packet = _packet_name(source, index, alert_id)
    if not isinstance(dia, Mapping):
        raise SurveyPacketError(packet, "diaSource", "no diaSource record")
    if alert_id is None:
        raise SurveyPacketError(packet, "diaSourceId", "missing")
    scores = {"reliability": v} if (v := _finite(dia.get("reliability"))) is not None else {}
    dia_object = _null_records(record.get("diaObject"))
    object_id = dia.get("diaObjectId") or (dia_object or {}).get("diaObjectId") or 0
    version = str(record.get("lsst_schema_version") or schema_version)
    return SurveyAlert(survey=Survey.RUBIN, alert_id=int(alert_id), object_id=str(object_id), schema_version=version,
                       packet=packet, stamps=_rubin_stamps(record, packet), scores=scores, record=dia)


def _rubin_detection_fields(alert: SurveyAlert) -> dict[str, Any]:
    d = alert.record

    def need(name: str) -> Any:
        value = d.get(name)
        if value is None:
            raise SurveyPacketError(alert.packet, f"diaSource.{name}", "missing")
        return value

    flux, flux_err = float(need("psfFlux")), float(need("psfFluxErr"))
    mag = _AB_NJY_ZP - 2.5 * math.log10(flux) if flux > 0 else None
    mag_err = 2.5 / math.log(10) * flux_err / flux if flux > 0 else None
    band = str(need("band"))
    try:
        band_enum = Band(band)
    except ValueError as exc:
        raise SurveyPacketError(alert.packet, "diaSource.band", f"unknown band {band!r}") from exc
    bits = {"isNegative": DetectionFlag.NEGATIVE, "isDipole": DetectionFlag.DIPOLE,
            "pixelFlags_saturatedCenter": DetectionFlag.SATURATED, "pixelFlags_edge": DetectionFlag.EDGE,
            "pixelFlags_crCenter": DetectionFlag.COSMIC_RAY, "pixelFlags_bad": DetectionFlag.BAD_PIXELS,
            "glint_trail": DetectionFlag.TRAILED}
    flags = DetectionFlag.NONE
    for name, bit in bits.items():
        if d.get(name):
            flags |= bit
    snr = _finite(d.get("snr"))
    return {
        "candidate_id": alert.alert_id, "mjd": float(need("midpointMjdTai")),
        "ra": float(need("ra")), "dec": float(need("dec")),
        "ra_err": (_finite(d.get("raErr")) or math.nan) * 3600.0, "dec_err": (_finite(d.get("decErr")) or math.nan) * 3600.0,
        "x": float(need("x")), "y": float(need("y")), "exposure_id": str(need("visit")),
        "field": str(d.get("visit")), "ccd": int(need("detector")), "band": band_enum,
        "flux": flux, "flux_err": flux_err, "snr": snr if snr is not None else abs(flux) / flux_err,
        "mag": mag, "mag_err": mag_err, "flags": flags,
    }


# --- records, schemas, files ---------------------------------------------------------------


def survey_alert_from_record(record: Mapping[str, Any], *, source: str = "<record>", index: int = 0,
                             schema_version: str = "?") -> SurveyAlert:
    """
    Read one decoded packet record (ZTF or Rubin) into a `SurveyAlert`. Stable.

    Parameters
    ----------
    record : Mapping
        As fastavro decodes it (or a ZTF MongoDB export, cutouts as bytes).
    source : str
        File or message it came from, for errors.
    index : int
        Its index in ``source``.
    schema_version : str
        Writer schema name when the record does not say (Rubin: ``"lsst.v10_0"``).

    Returns
    -------
    SurveyAlert

    Raises
    ------
    SurveyPacketError
        The record is neither a ZTF nor a Rubin alert, or a field cannot be read.
    """
    if not isinstance(record, Mapping):
        raise SurveyPacketError(_packet_name(source, index), "record", f"decoded to {type(record).__name__}, not a record")
    if "candidate" in record and "objectId" in record:
        return _ztf_alert(record, source, index)
    if "diaSource" in record:
        return _rubin_alert(record, source, index, schema_version)
    keys = sorted(record)[:8]
    raise SurveyPacketError(_packet_name(source, index), "record", f"neither a ZTF nor a Rubin alert (fields {keys}...)")


def _rubin_schema_root(schema_dir: str | Path | None) -> Path:
    if schema_dir is not None:
        return Path(schema_dir)
    env = os.environ.get(RUBIN_SCHEMA_ENV)
    if env:
        return Path(env)
    try:
        return Path(str(resources.files("lsst.alert.packet") / "schema"))
    except ModuleNotFoundError:
        msg = (f"reading a framed Rubin message needs Rubin's schemas: pass rubin_schema_dir (--rubin-schemas), "
               f"set {RUBIN_SCHEMA_ENV}, or `pip install lsst-alert-packet`")
        raise FileNotFoundError(msg) from None


@cache
def _load_rubin_schema_cached(root: str, major: int, minor: int) -> Any:
    path = Path(root) / str(major) / str(minor) / f"lsst.v{major}_{minor}.alert.avsc"
    if not path.is_file():
        msg = f"no Rubin schema lsst.v{major}_{minor} at {path}"
        raise FileNotFoundError(msg)
    # load_schema resolves the named types (lsst.v10_0.diaSource, ...) from sibling files.
    return fastavro.schema.load_schema(str(path))


def load_rubin_schema(schema_id: int, schema_dir: str | Path | None = None) -> Any:
    """
    Return the parsed Rubin alert schema with a Confluent schema id (``major * 100 + minor``). Stable.

    Parameters
    ----------
    schema_id : int
        E.g. 900 (lsst.v9_0), 1000 (lsst.v10_0), 1101 (lsst.v11_1).
    schema_dir : str or Path, optional
        Folder holding ``<major>/<minor>/lsst.v<major>_<minor>.*.avsc``; default as in the module notes.

    Returns
    -------
    The parsed schema (for `fastavro.schemaless_reader`).

    Raises
    ------
    FileNotFoundError
        No schema folder is known, or it has no such version.
    """
    major, minor = divmod(int(schema_id), 100)
    return _load_rubin_schema_cached(str(_rubin_schema_root(schema_dir)), major, minor)


def frame_rubin_record(record: Mapping[str, Any], schema_id: int, schema_dir: str | Path | None = None) -> bytes:
    """
    Encode a Rubin alert record as one Confluent-framed message, as Rubin's Kafka sends it. Stable.

    Parameters
    ----------
    record : Mapping
        The alert, fitting the schema (extra fields, e.g. a broker's, must be dropped first).
    schema_id : int
        ``major * 100 + minor`` of the writer schema.
    schema_dir : str or Path, optional
        As for `load_rubin_schema`.

    Returns
    -------
    bytes
        ``b"\\x00"``, the 4-byte big-endian id, the schemaless datum.
    """
    out = io.BytesIO()
    out.write(_HEADER.pack(_MAGIC, int(schema_id)))
    fastavro.schemaless_writer(out, load_rubin_schema(schema_id, schema_dir), dict(record))
    return out.getvalue()


def _read_framed(payload: bytes, source: str, schema_dir: str | Path | None) -> SurveyAlert:
    packet = _packet_name(source, 0)
    if len(payload) < _HEADER.size:
        raise SurveyPacketError(packet, "payload", f"{len(payload)} bytes is shorter than the 5-byte wire-format header")
    magic, schema_id = _HEADER.unpack_from(payload)
    if magic != _MAGIC:
        raise SurveyPacketError(packet, "payload", f"magic byte {magic} is not 0: not the Confluent wire format")
    major, minor = divmod(schema_id, 100)
    try:
        schema = load_rubin_schema(schema_id, schema_dir)
    except FileNotFoundError as exc:
        raise SurveyPacketError(packet, "payload", f"schema id {schema_id} (lsst.v{major}_{minor}): {exc}") from exc
    stream = io.BytesIO(payload)
    stream.seek(_HEADER.size)
    try:
        record = fastavro.schemaless_reader(stream, schema, None)
    except (EOFError, StopIteration, IndexError, ValueError, TypeError, UnicodeDecodeError, OverflowError) as exc:
        reason = f"not a valid lsst.v{major}_{minor} datum ({type(exc).__name__}: {exc})"
        raise SurveyPacketError(packet, "payload", reason) from exc
    if stream.tell() != len(payload):
        reason = f"{len(payload) - stream.tell()} trailing byte(s) after the lsst.v{major}_{minor} datum"
        raise SurveyPacketError(packet, "payload", reason)
    return survey_alert_from_record(cast(Mapping[str, Any], record), source=source, index=0, schema_version=f"lsst.v{major}_{minor}")


def _iter_container(data: bytes, source: str) -> Iterator[SurveyAlert | SurveyPacketError]:
    try:
        reader = fastavro.reader(io.BytesIO(data))
    except (ValueError, EOFError, TypeError, KeyError) as exc:
        yield SurveyPacketError(_packet_name(source, 0), "avro header", f"not a readable Avro container ({exc})")
        return
    writer = reader.writer_schema
    name = str(writer.get("name", "")) if isinstance(writer, dict) else ""
    version = name.rsplit(".", 1)[0] if name.startswith("lsst.") else "?"
    index = 0
    while True:
        try:
            record = next(reader)
        except StopIteration:
            return
        except (EOFError, ValueError, TypeError, IndexError, UnicodeDecodeError, OverflowError, zlib.error) as exc:
            reason = f"the file ends or is garbled here ({type(exc).__name__}: {exc}); later records are lost"
            yield SurveyPacketError(_packet_name(source, index), "avro block", reason)
            return
        try:
            yield survey_alert_from_record(cast(Mapping[str, Any], record), source=source, index=index, schema_version=version)
        except SurveyPacketError as exc:
            yield exc
        index += 1


def _iter_parquet(path: str | Path, source: str) -> Iterator[SurveyAlert | SurveyPacketError]:
    try:
        parquet = pq.ParquetFile(path)
        columns = [name for name in parquet.schema_arrow.names if not name.startswith("prv")]
        rows = parquet.read(columns=columns).to_pylist()
    except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
        yield SurveyPacketError(_packet_name(source, 0), "parquet", f"not a readable Parquet file ({exc})")
        return
    for index, record in enumerate(rows):
        try:
            yield survey_alert_from_record(record, source=source, index=index,
                                           schema_version=str(record.get("lsst_schema_version") or "?"))
        except SurveyPacketError as exc:
            yield exc


def read_survey_packets(path: str | Path, *, rubin_schema_dir: str | Path | None = None) -> SurveyReadReport:
    """
    Read every alert of one packet file: Avro container, Confluent-framed message, ZTF JSON or Fink Parquet. Stable.

    Parameters
    ----------
    path : str or Path
        ``*.avro`` (container: ``Obj\\x01`` magic; framed: byte 0 then a schema id), a Kowalski
        extended-JSON ``*.json``, or a Fink ``*.parquet`` (``PAR1`` magic; one alert a row).
    rubin_schema_dir : str or Path, optional
        Rubin's schema folder, needed for framed messages only (see the module notes).

    Returns
    -------
    SurveyReadReport
        The alerts read and one `SurveyPacketError` per packet that could not be (a truncated
        container keeps the records before the cut).
    """
    source = str(path)
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        return SurveyReadReport(errors=(SurveyPacketError(_packet_name(source, 0), "file", str(exc)),))
    if data[:4] == _CONTAINER_MAGIC:
        items = list(_iter_container(data, source))
    elif data[:4] == _PARQUET_MAGIC:
        items = list(_iter_parquet(path, source))
    elif data[:1] == bytes([_MAGIC]):
        try:
            items = [_read_framed(data, source, rubin_schema_dir)]
        except SurveyPacketError as exc:
            items = [exc]
    elif data.lstrip()[:1] == b"{":
        try:
            items = [survey_alert_from_record(read_mongo_json_alert(path), source=source)]
        except SurveyPacketError as exc:
            items = [exc]
        except (ValueError, json.JSONDecodeError) as exc:
            items = [SurveyPacketError(_packet_name(source, 0), "json", str(exc))]
    else:
        items = [SurveyPacketError(_packet_name(source, 0), "file",
                                   f"not an Avro container, a Confluent-framed message, a JSON alert or a Parquet file (starts {data[:8]!r})")]
    alerts = tuple(i for i in items if isinstance(i, SurveyAlert))
    errors = tuple(i for i in items if isinstance(i, SurveyPacketError))
    return SurveyReadReport(alerts, errors)


def read_survey_files(paths: Iterable[str | Path], *, rubin_schema_dir: str | Path | None = None) -> SurveyReadReport:
    """
    `read_survey_packets` over many files; a file that fails does not stop the others. Stable.

    Parameters
    ----------
    paths : iterable of str or Path
        Packet files, read in order.
    rubin_schema_dir : str or Path, optional
        As for `read_survey_packets`.

    Returns
    -------
    SurveyReadReport
    """
    report = SurveyReadReport()
    for path in paths:
        report = report + read_survey_packets(path, rubin_schema_dir=rubin_schema_dir)
    return report
