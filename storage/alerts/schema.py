"""
The versioned Avro alert schema and the Confluent wire format of a packet.

Every shipped version lives in ``storage/schemas/alert/<major>/<minor>/alert.avsc`` with sample
data in ``sample_data/alert.json`` (Avro JSON encoding); ``latest.txt`` names the version that
producers write. The schema id carried by every message is ``major * 100 + minor`` (1.0 -> 100).

A payload is the Confluent wire format: byte 0, the 4-byte big-endian schema id, then the
schemaless Avro datum. Readers pick the writer schema from the id, so a consumer reads packets of
every shipped version.

Notes
-----
Thread-safe: parsed schemas are cached and never mutated.
"""

from __future__ import annotations

import io
import json
import struct
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, cast

import fastavro
from fastavro import json_reader
from fastavro.validation import ValidationError, validate

from .errors import AlertDecodeError, AlertEncodeError, SchemaNotFoundError

__all__ = [
    "SCHEMA_ROOT",
    "AlertSchema",
    "decode_payload",
    "encode_payload",
    "latest_schema",
    "load_sample",
    "load_schema",
    "schema_for_id",
    "schema_versions",
]

#: Folder holding ``<major>/<minor>/alert.avsc`` and ``latest.txt``.
SCHEMA_ROOT = Path(__file__).resolve().parent.parent / "schemas" / "alert"

_MAGIC = 0
_HEADER = struct.Struct(">bI")


@dataclass(frozen=True, slots=True)
class AlertSchema:
    """
    One shipped version of the alert schema. Stable.

    Attributes
    ----------
    major, minor : int
        The version.
    path : Path
        The ``alert.avsc`` file.
    parsed : dict
        The schema as parsed by `fastavro.parse_schema` (do not mutate).
    """

    major: int
    minor: int
    path: Path
    parsed: Any

    @property
    def version(self) -> str:
        """``"<major>.<minor>"``, the value of every stream entry's ``schema_version`` field."""
        return f"{self.major}.{self.minor}"

    @property
    def schema_id(self) -> int:
        """The id carried in the wire-format header: ``major * 100 + minor``."""
        return self.major * 100 + self.minor

    @property
    def sample_path(self) -> Path:
        """The version's sample packet, ``sample_data/alert.json``."""
        return self.path.parent / "sample_data" / "alert.json"


@cache
def _all_schemas() -> dict[str, AlertSchema]:
    found: dict[str, AlertSchema] = {}
    for avsc in sorted(SCHEMA_ROOT.glob("*/*/alert.avsc")):
        major, minor = avsc.parent.parent.name, avsc.parent.name
        if not (major.isdigit() and minor.isdigit()):
            continue
        with avsc.open() as fh:
            parsed = fastavro.parse_schema(json.load(fh))
        schema = AlertSchema(int(major), int(minor), avsc, parsed)
        found[schema.version] = schema
    return dict(sorted(found.items(), key=lambda item: (item[1].major, item[1].minor)))


def schema_versions() -> tuple[str, ...]:
    """
    Return every shipped schema version, oldest first.

    Returns
    -------
    tuple of str
        Versions such as ``("1.0",)``.
    """
    return tuple(_all_schemas())


def load_schema(version: str) -> AlertSchema:
    """
    Return one shipped schema version.

    Parameters
    ----------
    version : str
        ``"<major>.<minor>"``.

    Returns
    -------
    AlertSchema

    Raises
    ------
    SchemaNotFoundError
        No such version is shipped.
    """
    try:
        return _all_schemas()[version]
    except KeyError:
        raise SchemaNotFoundError(f"version {version!r}", schema_versions()) from None


def latest_schema() -> AlertSchema:
    """
    Return the version producers write, as named by ``latest.txt``.

    Returns
    -------
    AlertSchema

    Raises
    ------
    SchemaNotFoundError
        ``latest.txt`` names a version that is not shipped.
    """
    return load_schema(_latest_version())


@cache
def _latest_version() -> str:
    return (SCHEMA_ROOT / "latest.txt").read_text().strip()


@cache
def _by_id() -> dict[int, AlertSchema]:
    return {schema.schema_id: schema for schema in _all_schemas().values()}


def schema_for_id(schema_id: int) -> AlertSchema:
    """
    Return the shipped schema with a wire-format schema id.

    Parameters
    ----------
    schema_id : int
        ``major * 100 + minor``.

    Returns
    -------
    AlertSchema

    Raises
    ------
    SchemaNotFoundError
        No shipped version has this id.
    """
    try:
        return _by_id()[schema_id]
    except KeyError:
        raise SchemaNotFoundError(f"id {schema_id}", schema_versions()) from None


def encode_payload(record: dict[str, Any], schema: AlertSchema | None = None, *, check: bool = True) -> bytes:
    """
    Encode an alert record (the Avro dict) in the Confluent wire format.

    Parameters
    ----------
    record : dict
        The alert as a dict matching the schema (`~skyblink.storage.alerts.Alert.to_avro`).
    schema : AlertSchema, optional
        Writer schema (default: the latest).
    check : bool, optional
        Validate every field against the schema first (default True); the error names the field.

    Returns
    -------
    bytes
        ``b"\\x00" + schema id (4 bytes, big-endian) + schemaless Avro``.

    Raises
    ------
    AlertEncodeError
        The record does not fit the schema.
    """
    schema = schema or latest_schema()
    alert_id = record.get("alertId")
    if check:
        light = _light(record)
        # raise_errors=False is 4x faster (no error objects for union branches tried); on a
        # failure, validate again to get the reasons.
        if not validate(light, schema.parsed, raise_errors=False):
            try:
                validate(light, schema.parsed, raise_errors=True)
            except ValidationError as exc:
                raise AlertEncodeError(alert_id, _validation_reason(exc)) from exc
    out = io.BytesIO()
    out.write(_HEADER.pack(_MAGIC, schema.schema_id))
    try:
        fastavro.schemaless_writer(out, schema.parsed, record)
    except (TypeError, ValueError, KeyError, AttributeError) as exc:
        raise AlertEncodeError(alert_id, f"{type(exc).__name__}: {exc}") from exc
    return out.getvalue()


_CUTOUT_FIELDS = ("cutoutScience", "cutoutTemplate", "cutoutDifference")


def _light(record: dict[str, Any]) -> dict[str, Any]:
    """
    Return the record with empty stamp bytes, for validation only.

    fastavro's validator renders every datum it tries against a union branch as JSON, which for
    kilobytes of stamp bytes costs milliseconds; an empty ``bytes`` checks the same types.
    """
    light = dict(record)
    for name in _CUTOUT_FIELDS:
        cutout = light.get(name)
        if isinstance(cutout, dict) and isinstance(cutout.get("stampData"), bytes | bytearray):
            light[name] = {**cutout, "stampData": b""}
    return light


def _validation_reason(exc: ValidationError) -> str:
    # fastavro reports "<path> is <value> of type <type> expected <schema>"; keep it short: stamps
    # are kilobytes.
    reasons = []
    for item in exc.errors or [str(exc)]:
        text = str(item)
        reasons.append(text if len(text) < 300 else text[:300] + "...")
    return "; ".join(reasons)


def decode_payload(payload: bytes, *, entry_id: str | None = None) -> tuple[AlertSchema, dict[str, Any]]:
    """
    Decode a wire-format payload into its writer schema and the Avro record.

    Parameters
    ----------
    payload : bytes
        Magic byte, schema id, schemaless Avro.
    entry_id : str, optional
        Stream entry id, named in errors.

    Returns
    -------
    schema : AlertSchema
        The writer schema named by the id.
    record : dict
        The decoded record.

    Raises
    ------
    AlertDecodeError
        Bad magic byte, unknown schema id, truncated or trailing bytes, or a datum that does not
        read as the schema; the message names the entry and the field.
    """
    if len(payload) < _HEADER.size:
        reason = f"{len(payload)} bytes is shorter than the 5-byte wire-format header"
        raise AlertDecodeError(reason, field="payload", entry_id=entry_id)
    magic, schema_id = _HEADER.unpack_from(payload)
    if magic != _MAGIC:
        reason = f"magic byte {magic} is not 0: not the Confluent wire format"
        raise AlertDecodeError(reason, field="payload", entry_id=entry_id)
    try:
        schema = schema_for_id(schema_id)
    except SchemaNotFoundError as exc:
        raise AlertDecodeError(str(exc), field="payload", entry_id=entry_id) from None
    stream = io.BytesIO(payload)
    stream.seek(_HEADER.size)
    try:
        record = fastavro.schemaless_reader(stream, schema.parsed, None)
    except (EOFError, StopIteration, IndexError, ValueError, TypeError, UnicodeDecodeError, OverflowError) as exc:
        reason = f"not a valid schema {schema.version} datum ({type(exc).__name__}: {exc})"
        raise AlertDecodeError(reason, field="payload", entry_id=entry_id) from exc
    if stream.tell() != len(payload):
        reason = f"{len(payload) - stream.tell()} trailing byte(s) after the schema {schema.version} datum"
        raise AlertDecodeError(reason, field="payload", entry_id=entry_id)
    if not isinstance(record, dict):
        reason = f"decoded to {type(record).__name__}, not a record"
        raise AlertDecodeError(reason, field="payload", entry_id=entry_id)
    return schema, record


def load_sample(schema: AlertSchema) -> list[dict[str, Any]]:
    """
    Read the sample packets shipped with a schema version.

    Parameters
    ----------
    schema : AlertSchema

    Returns
    -------
    list of dict
        The records of ``sample_data/alert.json`` (Avro JSON encoding, one record a line).

    Raises
    ------
    AlertDecodeError
        The sample file is missing or does not read as the schema.
    """
    path = schema.sample_path
    try:
        with path.open() as fh:
            return [cast(dict[str, Any], record) for record in json_reader(fh, schema.parsed)]
    except FileNotFoundError:
        reason = f"schema {schema.version} ships no sample data at {path}"
        raise AlertDecodeError(reason, field="sample_data") from None
    except (ValueError, KeyError, TypeError) as exc:
        reason = f"{path} does not read as schema {schema.version}: {exc}"
        raise AlertDecodeError(reason, field="sample_data") from exc
