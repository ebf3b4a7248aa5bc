"""
Check that every shipped schema version round-trips its sample data (``skyblink alerts validate``).

For each version: read ``sample_data/alert.json`` (Avro JSON encoding), build typed `Alert`
records from it, encode them in the wire format with validation, decode them again and compare
with the sample field by field (floats to float32 precision, as Avro ``float`` stores them).

Notes
-----
Thread-safe: reads files only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from .errors import AlertError
from .packet import Alert
from .schema import (
    AlertSchema,
    decode_payload,
    encode_payload,
    load_sample,
    load_schema,
    schema_versions,
)

__all__ = ["SchemaCheck", "round_trip_difference", "validate_schemas"]


@dataclass(frozen=True, slots=True)
class SchemaCheck:
    """
    The outcome of one schema version's round trip. Stable.

    Attributes
    ----------
    version : str
    schema_id : int
    samples : int
        Sample packets checked.
    payload_bytes : int
        Wire-format bytes of the largest sample.
    error : str or None
        What failed; None when every sample round-trips.
    """

    version: str
    schema_id: int
    samples: int
    payload_bytes: int
    error: str | None = None

    @property
    def ok(self) -> bool:
        """Whether the version round-trips."""
        return self.error is None


def round_trip_difference(a: Any, b: Any, path: str = "alert") -> str | None:
    """
    Return where two decoded records differ (floats compared to float32 precision), or None.

    Parameters
    ----------
    a, b : Any
        Records, lists or scalars.
    path : str, optional
        Name of the top level, used in the answer.

    Returns
    -------
    str or None
        ``"<path>: <a> != <b>"`` for the first difference.
    """
    if isinstance(a, dict) and isinstance(b, dict):
        if a.keys() != b.keys():
            return f"{path}: fields {sorted(a)} != {sorted(b)}"
        for key in a:
            found = round_trip_difference(a[key], b[key], f"{path}.{key}")
            if found:
                return found
        return None
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return f"{path}: {len(a)} items != {len(b)}"
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            found = round_trip_difference(x, y, f"{path}[{i}]")
            if found:
                return found
        return None
    if isinstance(a, float) and isinstance(b, float | int) and not isinstance(b, bool):
        same = (math.isnan(a) and math.isnan(float(b))) or math.isclose(a, float(b), rel_tol=1e-6, abs_tol=1e-30)
        return None if same else f"{path}: {a!r} != {b!r}"
    return None if a == b else f"{path}: {_short(a)} != {_short(b)}"


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def check_schema(schema: AlertSchema) -> SchemaCheck:
    """
    Round-trip one version's sample data.

    Parameters
    ----------
    schema : AlertSchema

    Returns
    -------
    SchemaCheck
    """
    try:
        samples = load_sample(schema)
        largest = 0
        for i, record in enumerate(samples):
            alert = Alert.from_avro(record)  # typed checks: ranges, enums, probabilities
            payload = encode_payload(alert.to_avro(), schema)
            largest = max(largest, len(payload))
            decoded_schema, decoded = decode_payload(payload)
            if decoded_schema.version != schema.version:
                return SchemaCheck(schema.version, schema.schema_id, i, largest, "decoded with another schema")
            difference = round_trip_difference(record, decoded, f"sample[{i}]")
            if difference:
                return SchemaCheck(schema.version, schema.schema_id, len(samples), largest, difference)
            if encode_payload(Alert.from_avro(decoded).to_avro(), schema) != payload:
                error = f"sample[{i}]: re-encoding the decoded packet gives other bytes"
                return SchemaCheck(schema.version, schema.schema_id, len(samples), largest, error)
    except AlertError as exc:
        return SchemaCheck(schema.version, schema.schema_id, 0, 0, str(exc))
    if not samples:
        return SchemaCheck(schema.version, schema.schema_id, 0, 0, f"{schema.sample_path} holds no sample")
    return SchemaCheck(schema.version, schema.schema_id, len(samples), largest)


def validate_schemas(versions: list[str] | None = None) -> list[SchemaCheck]:
    """
    Round-trip the sample data of every shipped schema version (or of the ones named).

    Parameters
    ----------
    versions : list of str, optional
        Default: every shipped version.

    Returns
    -------
    list of SchemaCheck
        One per version, oldest first.

    Raises
    ------
    SchemaNotFoundError
        A named version is not shipped.
    """
    return [check_schema(load_schema(v)) for v in (versions or list(schema_versions()))]
