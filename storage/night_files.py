"""
The night's files beside its Zarr arrays: per-unit results and the catalogs, their paths and their
declared schemas.

::

    <store>/results/units/<exposure name>/<ccd>/<y0>-<x0>.parquet   a work unit's candidates
    <store>/catalogs/detections.parquet                              the night's detections
    <store>/catalogs/objects.parquet                                 the night's objects
    <store>/catalogs/reference-<field>-snr<S/N>-v<version>.parquet   a field's reference sources

Every file is written whole and atomically (`skyblink.storage.parquet_io.write_parquet_atomic`)
in its declared schema (`skyblink.storage.schemas.tables`), and read back with the schema
checked (`read_parquet_checked`), so a file of another version is one error naming it and the
column.

Notes
-----
Driver side (fsspec, pyarrow); any fsspec file system the store is on. `NightStore.files` is the
store's; the worker actors build one from the store URL alone to write their units' results.
"""

from __future__ import annotations

from typing import Any

import fsspec
import pyarrow as pa

from .parquet_io import read_parquet_checked, write_parquet_atomic

__all__ = ["CATALOGS", "NightFiles"]

#: The night's catalogs (`skyblink.storage.schemas.tables.detections_schema`, `OBJECTS_SCHEMA`).
CATALOGS = ("detections", "objects")


class NightFiles:
    """
    Paths, writes and checked reads of a night's Parquet files. Stable.

    Parameters
    ----------
    url : str
        The night store's URL (`NightStore.url`): the files live under it.
    """

    def __init__(self, url: str) -> None:
        self.url = str(url)
        fs, root = fsspec.core.url_to_fs(self.url)
        self.fs: Any = fs
        self.root = str(root).rstrip("/")

    # ---------------------------------------------------------------- paths

    @property
    def units_root(self) -> str:
        """The folder of every unit's result file."""
        return f"{self.root}/results/units"

    def unit_results_dir(self, exposure: str) -> str:
        """The folder of one exposure's unit results (``exposure``: its store key or name)."""
        return f"{self.units_root}/{exposure.rsplit('/', 1)[-1]}"

    def unit_result_path(self, exposure: str, ccd: str, y0: int, x0: int) -> str:
        """The result file of the work unit whose core starts at (``y0``, ``x0``) of ``exposure``'s ``ccd``."""
        return f"{self.unit_results_dir(exposure)}/{ccd}/{y0}-{x0}.parquet"

    def catalog_path(self, name: str) -> str:
        """
        The file of one of the night's catalogs (`CATALOGS`: ``detections``, ``objects``).

        Raises
        ------
        KeyError
            ``name`` is not one of them.
        """
        if name not in CATALOGS:
            msg = f"no catalog {name!r} in a night store; the catalogs are {sorted(CATALOGS)}"
            raise KeyError(msg)
        return f"{self.root}/catalogs/{name}.parquet"

    def reference_catalog_path(self, field: str, snr_threshold: float, version: int) -> str:
        """The cached reference-source catalog of ``field`` at ``snr_threshold`` (detection algorithm ``version``)."""
        return f"{self.root}/catalogs/reference-{field}-snr{snr_threshold:g}-v{version}.parquet"

    # ---------------------------------------------------------------- reading and writing

    def exists(self, path: str) -> bool:
        """Whether ``path`` (one of this night's files) exists."""
        return bool(self.fs.exists(path))

    def write(self, path: str, table: pa.Table, schema: pa.Schema) -> None:
        """
        Write ``table`` to ``path`` in its declared ``schema``, atomically.

        Raises
        ------
        skyblink.storage.TableSchemaError
            ``table`` lacks a declared column, has another, or one does not convert (names ``path``
            and the column); nothing is written.
        skyblink.storage.StoreWriteError
            The file system refused (disk full, read-only): names ``path``.
        """
        write_parquet_atomic(self.fs, path, table, schema=schema)

    def read(self, path: str, schema: pa.Schema) -> pa.Table:
        """
        Read ``path`` and check it has the declared ``schema``.

        Raises
        ------
        FileNotFoundError
            No such file.
        skyblink.storage.TableSchemaError
            Its columns differ from ``schema`` (names ``path`` and the column).
        """
        return read_parquet_checked(self.fs, path, schema)
