"""
The alert packet as typed, frozen records, and its deterministic id.

`Alert` mirrors the Avro schema (``storage/schemas/alert/<major>/<minor>/alert.avsc``) field for
field; `Alert.to_avro` and `Alert.from_avro` convert to and from the dicts that fastavro reads and
writes. Units: angles in degrees, their errors in arcsec, fluxes in nJy, times MJD (TAI).

Notes
-----
Thread-safe: every record is immutable.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from enum import IntFlag, StrEnum
from typing import Any

from ..bands import Band
from .errors import AlertDecodeError

__all__ = [
    "Alert",
    "AlertType",
    "Band",
    "ClassProbabilities",
    "Cutout",
    "CutoutKind",
    "Detection",
    "DetectionFlag",
    "MovingObject",
    "make_alert_id",
]

_INT63 = (1 << 63) - 1


class AlertType(StrEnum):
    """Why an alert was sent."""

    TRANSIENT = "transient"
    VARIABLE = "variable"
    MOVING = "moving"
    ANOMALY = "anomaly"


class CutoutKind(StrEnum):
    """The three cutouts of a packet."""

    SCIENCE = "science"
    TEMPLATE = "template"
    DIFFERENCE = "difference"


class DetectionFlag(IntFlag):
    """Bits of `Detection.flags` (documented in the schema too)."""

    NONE = 0
    SATURATED = 1
    EDGE = 2
    BAD_PIXELS = 4
    COSMIC_RAY = 8
    DIPOLE = 16
    TRAILED = 32
    NO_TEMPLATE = 64
    NEAR_BRIGHT_STAR = 128
    NEGATIVE = 256


def make_alert_id(night: str, exposure_id: str, ccd: int, candidate_key: int | tuple[float, float]) -> int:
    """
    Return the deterministic alertId of a detection.

    Parameters
    ----------
    night : str
        The night, e.g. ``"20261125"``.
    exposure_id : str
        The exposure.
    ccd : int
        The CCD within the exposure.
    candidate_key : int or (float, float)
        The candidate id, or its (x, y) pixel position (rounded to 0.01 px, so the float noise of
        a rerun does not change the id).

    Returns
    -------
    int
        A non-negative integer below 2**63 (an Avro ``long``), identical on every rerun.

    Notes
    -----
    The first 8 bytes of a BLAKE2b hash, top bit cleared: two of ten million alerts of one night
    share an id with probability about 5e-6.
    """
    if isinstance(candidate_key, tuple):
        x, y = candidate_key
        key = f"xy:{round(x * 100)}:{round(y * 100)}"
    else:
        key = f"id:{int(candidate_key)}"
    text = f"{night}|{exposure_id}|{int(ccd)}|{key}".encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "big") & _INT63


def _require(record: dict[str, Any], name: str, where: str) -> Any:
    try:
        return record[name]
    except KeyError:
        raise AlertDecodeError("missing", field=f"{where}.{name}") from None


@dataclass(frozen=True, slots=True)
class ClassProbabilities:
    """Classifier probabilities of one detection; they sum to 1 (within 1e-3). Stable."""

    star: float
    galaxy: float
    transient: float
    variable: float
    moving: float
    artifact: float

    def __post_init__(self) -> None:
        values = (self.star, self.galaxy, self.transient, self.variable, self.moving, self.artifact)
        if any(not 0.0 <= v <= 1.0 for v in values) or abs(sum(values) - 1.0) > 1e-3:
            msg = f"class probabilities must each be in [0, 1] and sum to 1, got {values}"
            raise ValueError(msg)

    def to_avro(self) -> dict[str, float]:
        """Return the Avro dict."""
        return {
            "star": self.star,
            "galaxy": self.galaxy,
            "transient": self.transient,
            "variable": self.variable,
            "moving": self.moving,
            "artifact": self.artifact,
        }

    @classmethod
    def from_avro(cls, record: dict[str, Any]) -> ClassProbabilities:
        """Build from the Avro dict; raises AlertDecodeError naming a missing field."""
        names = ("star", "galaxy", "transient", "variable", "moving", "artifact")
        values = [_require(record, name, "classProbabilities") for name in names]
        try:
            return cls(*values)
        except ValueError as exc:
            raise AlertDecodeError(str(exc), field="classProbabilities") from None


@dataclass(frozen=True, slots=True)
class Detection:
    """
    One detection on a difference image. Stable.

    Attributes
    ----------
    candidate_id : int
    mjd : float
        Mid-exposure, MJD (TAI).
    ra, dec : float
        ICRS, degrees.
    ra_err, dec_err : float
        1-sigma, arcsec.
    x, y : float
        0-based pixel centroid on the CCD.
    exposure_id, field : str
    ccd : int
    band : Band
    flux, flux_err : float
        Difference-image PSF flux, nJy.
    snr : float
    mag, mag_err : float or None
        AB magnitude; None when the flux is not positive.
    real_bogus : float
        In [0, 1].
    class_probabilities : ClassProbabilities
    alert_type : AlertType
    flags : DetectionFlag
    """

    candidate_id: int
    mjd: float
    ra: float
    dec: float
    ra_err: float
    dec_err: float
    x: float
    y: float
    exposure_id: str
    field: str
    ccd: int
    band: Band
    flux: float
    flux_err: float
    snr: float
    mag: float | None
    mag_err: float | None
    real_bogus: float
    class_probabilities: ClassProbabilities
    alert_type: AlertType
    flags: DetectionFlag = DetectionFlag.NONE

    def __post_init__(self) -> None:
        if not 0.0 <= self.real_bogus <= 1.0:
            msg = f"real_bogus must be in [0, 1], got {self.real_bogus!r}"
            raise ValueError(msg)
        if not (-90.0 <= self.dec <= 90.0 and math.isfinite(self.ra)):
            msg = f"ra/dec must be finite with dec in [-90, 90], got ({self.ra!r}, {self.dec!r})"
            raise ValueError(msg)

    def to_avro(self) -> dict[str, Any]:
        """Return the Avro dict."""
        return {
            "candidateId": self.candidate_id,
            "mjd": self.mjd,
            "ra": self.ra,
            "dec": self.dec,
            "raErr": self.ra_err,
            "decErr": self.dec_err,
            "x": self.x,
            "y": self.y,
            "exposureId": self.exposure_id,
            "field": self.field,
            "ccd": self.ccd,
            "band": str(self.band),
            "flux": self.flux,
            "fluxErr": self.flux_err,
            "snr": self.snr,
            "mag": self.mag,
            "magErr": self.mag_err,
            "realBogus": self.real_bogus,
            "classProbabilities": self.class_probabilities.to_avro(),
            "alertType": str(self.alert_type),
            "flags": int(self.flags),
        }

    @classmethod
    def from_avro(cls, record: dict[str, Any], where: str = "detection") -> Detection:
        """Build from the Avro dict; raises AlertDecodeError naming the field at fault."""
        get = lambda name: _require(record, name, where)  # noqa: E731 - local shorthand
        try:
            return cls(
                candidate_id=get("candidateId"),
                mjd=get("mjd"),
                ra=get("ra"),
                dec=get("dec"),
                ra_err=get("raErr"),
                dec_err=get("decErr"),
                x=get("x"),
                y=get("y"),
                exposure_id=get("exposureId"),
                field=get("field"),
                ccd=get("ccd"),
                band=Band(get("band")),
                flux=get("flux"),
                flux_err=get("fluxErr"),
                snr=get("snr"),
                mag=record.get("mag"),
                mag_err=record.get("magErr"),
                real_bogus=get("realBogus"),
                class_probabilities=ClassProbabilities.from_avro(get("classProbabilities")),
                alert_type=AlertType(get("alertType")),
                flags=DetectionFlag(record.get("flags", 0)),
            )
        except ValueError as exc:
            raise AlertDecodeError(str(exc), field=where) from None


@dataclass(frozen=True, slots=True)
class MovingObject:
    """
    Motion of a moving object linked across the night, and its predicted position. Stable.

    Attributes
    ----------
    rate, rate_err : float
        Arcsec per hour.
    position_angle, position_angle_err : float
        Direction of motion, degrees east of north.
    n_detections : int
        Detections linked tonight.
    predicted_mjd, predicted_ra, predicted_dec : float
        Predicted position (degrees) at a time (MJD TAI).
    predicted_err_major, predicted_err_minor : float
        1-sigma error ellipse semi-axes, arcsec.
    predicted_err_pa : float
        Position angle of the major axis, degrees east of north.
    """

    rate: float
    rate_err: float
    position_angle: float
    position_angle_err: float
    n_detections: int
    predicted_mjd: float
    predicted_ra: float
    predicted_dec: float
    predicted_err_major: float
    predicted_err_minor: float
    predicted_err_pa: float

    def to_avro(self) -> dict[str, Any]:
        """Return the Avro dict."""
        return {
            "rate": self.rate,
            "rateErr": self.rate_err,
            "positionAngle": self.position_angle,
            "positionAngleErr": self.position_angle_err,
            "nDetections": self.n_detections,
            "predictedMjd": self.predicted_mjd,
            "predictedRa": self.predicted_ra,
            "predictedDec": self.predicted_dec,
            "predictedErrMajor": self.predicted_err_major,
            "predictedErrMinor": self.predicted_err_minor,
            "predictedErrPa": self.predicted_err_pa,
        }

    @classmethod
    def from_avro(cls, record: dict[str, Any]) -> MovingObject:
        """Build from the Avro dict; raises AlertDecodeError naming a missing field."""
        get = lambda name: _require(record, name, "movingObject")  # noqa: E731 - local shorthand
        return cls(
            rate=get("rate"),
            rate_err=get("rateErr"),
            position_angle=get("positionAngle"),
            position_angle_err=get("positionAngleErr"),
            n_detections=get("nDetections"),
            predicted_mjd=get("predictedMjd"),
            predicted_ra=get("predictedRa"),
            predicted_dec=get("predictedDec"),
            predicted_err_major=get("predictedErrMajor"),
            predicted_err_minor=get("predictedErrMinor"),
            predicted_err_pa=get("predictedErrPa"),
        )


@dataclass(frozen=True, slots=True)
class Cutout:
    """
    One image stamp: gzipped FITS bytes with the stamp's WCS. Stable.

    Read the pixels and WCS back with `~skyblink.storage.alerts.read_cutout`.
    """

    file_name: str
    stamp_data: bytes

    def to_avro(self) -> dict[str, Any]:
        """Return the Avro dict."""
        return {"fileName": self.file_name, "stampData": self.stamp_data}

    @classmethod
    def from_avro(cls, record: dict[str, Any] | None) -> Cutout | None:
        """Build from the Avro dict (None stays None)."""
        if record is None:
            return None
        return cls(_require(record, "fileName", "cutout"), _require(record, "stampData", "cutout"))


@dataclass(frozen=True, slots=True)
class Alert:
    """
    One alert packet. Stable.

    Attributes
    ----------
    alert_id : int
        Deterministic (`make_alert_id`), below 2**63.
    night : str
    object_id : int
    detection : Detection
    prv_detections : tuple of Detection
        The object's earlier detections of the night, oldest first; empty when none.
    moving_object : MovingObject or None
    cutout_science, cutout_template, cutout_difference : Cutout or None
        None when absent or in the side store.
    cutout_store_key : str or None
        Redis key of the side-store hash holding the cutouts; None when inline.
    real_bogus_model : str or None
        The network that scored the detections, name and version (``"classifier 1.0"``); None when
        not recorded (and in packets of schema 1.0, which has no such field).
    """

    alert_id: int
    night: str
    object_id: int
    detection: Detection
    prv_detections: tuple[Detection, ...] = ()
    moving_object: MovingObject | None = None
    cutout_science: Cutout | None = None
    cutout_template: Cutout | None = None
    cutout_difference: Cutout | None = None
    cutout_store_key: str | None = field(default=None)
    real_bogus_model: str | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.alert_id <= _INT63:
            msg = f"alert_id must be in [0, 2**63), got {self.alert_id!r}; use make_alert_id"
            raise ValueError(msg)

    def cutouts(self) -> dict[CutoutKind, Cutout]:
        """Return the inline cutouts present, by kind (empty when none)."""
        pairs = (
            (CutoutKind.SCIENCE, self.cutout_science),
            (CutoutKind.TEMPLATE, self.cutout_template),
            (CutoutKind.DIFFERENCE, self.cutout_difference),
        )
        return {kind: cutout for kind, cutout in pairs if cutout is not None}

    def to_avro(self) -> dict[str, Any]:
        """
        Return the dict that fastavro writes with the alert schema.

        Returns
        -------
        dict
            Field names as in the schema (camelCase).
        """
        return {
            "alertId": self.alert_id,
            "night": self.night,
            "objectId": self.object_id,
            "detection": self.detection.to_avro(),
            "prvDetections": [d.to_avro() for d in self.prv_detections],
            "movingObject": None if self.moving_object is None else self.moving_object.to_avro(),
            "cutoutScience": None if self.cutout_science is None else self.cutout_science.to_avro(),
            "cutoutTemplate": None if self.cutout_template is None else self.cutout_template.to_avro(),
            "cutoutDifference": None if self.cutout_difference is None else self.cutout_difference.to_avro(),
            "cutoutStoreKey": self.cutout_store_key,
            "realBogusModel": self.real_bogus_model,  # schema 1.1; a 1.0 writer leaves it out
        }

    @classmethod
    def from_avro(cls, record: dict[str, Any]) -> Alert:
        """
        Build an alert from a record read with the alert schema.

        Parameters
        ----------
        record : dict

        Returns
        -------
        Alert

        Raises
        ------
        AlertDecodeError
            A field is missing or out of range; the message names it.
        """
        moving = record.get("movingObject")
        try:
            return cls(
                alert_id=_require(record, "alertId", "alert"),
                night=_require(record, "night", "alert"),
                object_id=_require(record, "objectId", "alert"),
                detection=Detection.from_avro(_require(record, "detection", "alert")),
                prv_detections=tuple(
                    Detection.from_avro(d, f"prvDetections[{i}]")
                    for i, d in enumerate(record.get("prvDetections") or ())
                ),
                moving_object=None if moving is None else MovingObject.from_avro(moving),
                cutout_science=Cutout.from_avro(record.get("cutoutScience")),
                cutout_template=Cutout.from_avro(record.get("cutoutTemplate")),
                cutout_difference=Cutout.from_avro(record.get("cutoutDifference")),
                cutout_store_key=record.get("cutoutStoreKey"),
                real_bogus_model=record.get("realBogusModel"),
            )
        except ValueError as exc:
            raise AlertDecodeError(str(exc), field="alertId") from None

    def without_cutouts(self, store_key: str | None) -> Alert:
        """Return a copy with the inline cutouts removed and ``cutout_store_key`` set."""
        return Alert(
            self.alert_id,
            self.night,
            self.object_id,
            self.detection,
            self.prv_detections,
            self.moving_object,
            None,
            None,
            None,
            store_key,
        )

    def with_cutouts(self, cutouts: dict[CutoutKind, Cutout]) -> Alert:
        """Return a copy with the given cutouts inline (as fetched from the side store)."""
        return Alert(
            self.alert_id,
            self.night,
            self.object_id,
            self.detection,
            self.prv_detections,
            self.moving_object,
            cutouts.get(CutoutKind.SCIENCE, self.cutout_science),
            cutouts.get(CutoutKind.TEMPLATE, self.cutout_template),
            cutouts.get(CutoutKind.DIFFERENCE, self.cutout_difference),
            self.cutout_store_key,
        )
