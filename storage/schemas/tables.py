"""
Arrow schemas of the Parquet tables a night's store holds, and the check that a table has its schema.

- `CANDIDATE_SCHEMA`: a work unit's result file (``results/units/...``), one row per candidate.
- `detections_schema`: the night's detections catalog (``catalogs/detections.parquet``).
- `OBJECTS_SCHEMA`: the night's objects catalog (``catalogs/objects.parquet``).
- `REFERENCE_SCHEMA`: a field's reference-source catalog (``catalogs/reference-...parquet``).

`conform` is applied before every write (`skyblink.storage.parquet_io.write_parquet_atomic`) and
`check` after every read (`skyblink.storage.parquet_io.read_parquet_checked`): a table with a
missing, unexpected or differently typed column is a `TableSchemaError` naming the file and the
column, instead of a wrong catalog further down.

Notes
-----
Driver side: pyarrow only.
"""

from __future__ import annotations

from collections.abc import Sequence

import pyarrow as pa

from ..errors import TableSchemaError

__all__ = ["CANDIDATE_SCHEMA", "OBJECTS_SCHEMA", "REFERENCE_SCHEMA", "check", "conform", "detections_schema"]

#: Columns of a work unit's result file (one row per candidate). Stable.
CANDIDATE_SCHEMA = pa.schema(
    [
        ("unit", pa.string()),
        ("exposure", pa.string()),
        ("ccd", pa.string()),
        ("x", pa.float64()),
        ("y", pa.float64()),
        ("score", pa.float32()),
        ("snr", pa.float32()),
        ("real_bogus", pa.float32()),
        ("class_probs", pa.list_(pa.float32())),
        ("stamp", pa.binary()),  # (3, 63, 63) float16, C order: science, reference, difference
    ]
)

#: Columns of a field's reference-source catalog. Stable.
REFERENCE_SCHEMA = pa.schema([("ra", pa.float64()), ("dec", pa.float64()), ("x", pa.float64()), ("y", pa.float64()),
                              ("snr", pa.float32()), ("concentration", pa.float32()), ("extended", pa.bool_()),
                              ("ccd", pa.string())])

#: Columns of the night's objects catalog (one row per object). Stable.
OBJECTS_SCHEMA = pa.schema([("object_id", pa.int64()), ("ra", pa.float64()), ("dec", pa.float64()),
                            ("first_mjd", pa.float64()), ("last_mjd", pa.float64()), ("max_real_bogus", pa.float32()),
                            ("n_detections", pa.int64()), ("n_alerts", pa.int64())])

_F64 = pa.float64()


def detections_schema(classes: Sequence[str]) -> pa.Schema:
    """
    Return the columns of the night's detections catalog (one row per detection). Stable.

    Parameters
    ----------
    classes : sequence of str
        The classifier's classes (`skyblink.model_io.CLASSIFIER_CLASSES`): one ``p_<class>``
        column each.
    """
    return pa.schema(
        [("unit", pa.string()), ("exposure", pa.string()), ("ccd", pa.string()), ("score", pa.float32()),
         ("snr", pa.float32()), ("real_bogus", pa.float32()), ("x", _F64), ("y", _F64), ("x_peak", _F64),
         ("y_peak", _F64), ("trailed", pa.bool_())]
        + [(f"p_{name}", pa.float32()) for name in classes]
        + [("candidate_id", pa.int64()), ("alert_id", pa.int64()), ("exposure_id", pa.string()), ("field", pa.string()),
           ("ccd_num", pa.int64()), ("band", pa.string()), ("mjd", _F64), ("exptime", _F64), ("fwhm_arcsec", _F64),
           ("ra", _F64), ("dec", _F64), ("ra_err", _F64), ("dec_err", _F64), ("flux", _F64), ("flux_err", _F64),
           ("mag", _F64), ("mag_err", _F64), ("trail_length_arcsec", _F64), ("trail_pa", _F64),
           ("reference_index", pa.int64()), ("reference_separation", _F64), ("reference_extended", pa.bool_()),
           ("tracklet_id", pa.int64()), ("tracklet_n", pa.int32()), ("rate", _F64), ("rate_err", _F64),
           ("position_angle", _F64), ("position_angle_err", _F64), ("predicted_mjd", _F64), ("predicted_ra", _F64),
           ("predicted_dec", _F64), ("predicted_err_major", _F64), ("predicted_err_minor", _F64),
           ("predicted_err_pa", _F64), ("object_id", pa.int64()), ("alert_type", pa.string())]
    )


def _first_difference(found: pa.Schema, schema: pa.Schema) -> tuple[str, str] | None:
    """(column, how it differs) of the first column where ``found`` and ``schema`` differ, else None."""
    for field in schema:
        if field.name not in found.names:
            return field.name, f"is missing (expected {field.type})"
    for name in found.names:
        if name not in schema.names:
            return name, "is not in the declared schema"
    for field in schema:
        if not found.field(field.name).type.equals(field.type):
            return field.name, f"has type {found.field(field.name).type}, expected {field.type}"
    return None


def check(found: pa.Schema, schema: pa.Schema, path: str) -> None:
    """
    Check that a table read from ``path`` has the declared ``schema`` (names and types; order free).

    Raises
    ------
    TableSchemaError
        Naming ``path`` and the first column that is missing, unexpected or of another type.
    """
    difference = _first_difference(found, schema)
    if difference is not None:
        raise TableSchemaError(path, *difference)


def conform(table: pa.Table, schema: pa.Schema, path: str) -> pa.Table:
    """
    Return ``table`` with the declared ``schema``'s column order and types, for writing to ``path``.

    Columns whose values convert losslessly (an all-null column, an int32 written as int64) are
    cast; an empty table is the schema's empty table.

    Raises
    ------
    TableSchemaError
        A column is missing or unexpected, or its values do not convert to the declared type; the
        message names ``path`` and the column.
    """
    if table.num_rows == 0:
        return schema.empty_table()
    difference = _first_difference(table.schema, schema)
    if difference is not None and "type" not in difference[1]:
        raise TableSchemaError(path, *difference)
    columns = []
    for field in schema:
        column = table.column(field.name)
        if not column.type.equals(field.type):
            try:
                column = column.cast(field.type, safe=True)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                raise TableSchemaError(path, field.name, f"has type {column.type}, not convertible to {field.type}: {exc}") from None
        columns.append(column)
    return pa.Table.from_arrays(columns, schema=schema)
