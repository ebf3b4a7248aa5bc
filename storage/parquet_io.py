"""
The one way the store's Parquet files are written: whole files, atomically.

Unit results, the night's detections and objects catalogs and the reference-source catalogs go
through `write_parquet_atomic`, which writes with `skyblink.storage.atomic.write_atomic`: a
hidden temporary beside the target, then a move over it; and they are read back by
`read_parquet_checked`. Both hold the table to its declared schema
(`skyblink.storage.schemas.tables`) where one is given. A reader (or the next run's "is this
unit done?") never sees half a file, two writers of one path leave one whole file, and a full or
read-only disk is one `StoreWriteError` line naming the file, with no temporary left.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from .atomic import write_atomic
from .schemas.tables import check, conform

__all__ = ["PARQUET_COMPRESSION", "read_parquet_checked", "write_parquet_atomic"]

#: Parquet codec of every table the store writes.
PARQUET_COMPRESSION = "zstd"


def write_parquet_atomic(fs: Any, path: str, table: pa.Table, *, compression: str = PARQUET_COMPRESSION,
                         schema: pa.Schema | None = None) -> None:
    """
    Write ``table`` to ``path`` as one Parquet file, atomically.

    Parameters
    ----------
    fs : fsspec.AbstractFileSystem
        The file system of ``path`` (e.g. from `fsspec.core.url_to_fs`).
    path : str
        The target, in ``fs``'s terms; its parent directories are made.
    table : pyarrow.Table
    compression : str
        Parquet codec (zstd by default).
    schema : pyarrow.Schema, optional
        The table's declared schema: the table is written in its column order and types
        (`skyblink.storage.schemas.tables.conform`).

    Raises
    ------
    skyblink.storage.TableSchemaError
        ``table`` does not have ``schema``'s columns (the message names ``path`` and the column);
        nothing is written.
    skyblink.storage.StoreWriteError
        The file system refused the write or the move (disk full, read-only, permission): the
        message names ``path`` and the reason; the previous ``path`` is untouched.
    pyarrow.ArrowException
        Arrow could not encode the table (e.g. an unknown codec); no temporary is left.
    """
    if schema is not None:
        table = conform(table, schema, path)
    write_atomic(fs, path, lambda fh: pq.write_table(table, fh, compression=compression))


def read_parquet_checked(fs: Any, path: str, schema: pa.Schema) -> pa.Table:
    """
    Read a Parquet file of the store and check it has its declared schema.

    Parameters
    ----------
    fs : fsspec.AbstractFileSystem
    path : str
    schema : pyarrow.Schema
        The declared schema (`skyblink.storage.schemas.tables`).

    Returns
    -------
    pyarrow.Table
        In ``schema``'s column order.

    Raises
    ------
    FileNotFoundError
        No file at ``path``.
    skyblink.storage.TableSchemaError
        The file's columns differ from ``schema``: the message names ``path`` and the column.
    """
    with fs.open(path, "rb") as fh:
        table = pq.read_table(fh)
    check(table.schema, schema, path)
    return table.select(schema.names)
