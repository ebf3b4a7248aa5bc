"""
The night's per-tile results, kept beside the store and keyed by work unit.

Every work unit's candidates are written as one small Parquet file named after the unit's key,
by an atomic rename: a unit is done exactly when its file exists, a unit redone (its actor died,
the driver was restarted) overwrites its file with the same rows, and nothing is ever counted
twice. Resuming a night is listing these files.

Layout, under the store::

    results/units/<exposure name>/<ccd>/<y0>-<x0>.parquet

Notes
-----
Works on any fsspec file system the store is on. The worker actor that ran a unit writes its
file (`store_unit_results` is the actors' ``result_sink``), so results go to the store in
parallel and not through the driver; the temporary name is unique, so even two writers of one
unit (a call retried while its first actor was dying) leave one whole file.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from skyblink.stamps import STAMP_HALF
from skyblink.storage.parquet_io import write_parquet_atomic

if TYPE_CHECKING:  # only named in annotations: a reduce task reading results imports no worker side (torch)
    from skyblink.workers.tile_unit import CandidateRecord, WorkUnit

__all__ = ["CANDIDATE_SCHEMA", "UnitStore", "candidates_table", "stamps_of", "store_unit_results"]

_STAMP_SHAPE = (3, 2 * STAMP_HALF + 1, 2 * STAMP_HALF + 1)

#: Columns of a unit's Parquet file (one row per candidate). Stable.
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


def candidates_table(records: Sequence[CandidateRecord]) -> pa.Table:
    """Return the records as a table of `CANDIDATE_SCHEMA` (empty table for no records)."""
    return pa.table(
        {
            "unit": [r.unit for r in records],
            "exposure": [r.exposure for r in records],
            "ccd": [r.ccd for r in records],
            "x": [r.x for r in records],
            "y": [r.y for r in records],
            "score": [r.score for r in records],
            "snr": [r.snr for r in records],
            "real_bogus": [r.real_bogus for r in records],
            "class_probs": [list(r.class_probs) for r in records],
            "stamp": [np.ascontiguousarray(r.stamp, dtype=np.float16).tobytes() for r in records],
        },
        schema=CANDIDATE_SCHEMA,
    )


def stamps_of(table: pa.Table) -> np.ndarray:
    """Return the ``stamp`` column as an (n, 3, 63, 63) float32 array."""
    raw = table.column("stamp").to_pylist()
    if not raw:
        return np.zeros((0, *_STAMP_SHAPE), np.float32)
    return np.frombuffer(b"".join(raw), dtype=np.float16).reshape(-1, *_STAMP_SHAPE).astype(np.float32)


class UnitStore:
    """
    Per-unit result files of one store. Stable.

    Parameters
    ----------
    store_url : str
        The night store's URL (`NightStore.url`); results live under ``<store>/results/units``.
    """

    def __init__(self, store_url: str) -> None:
        self.fs, root = fsspec.core.url_to_fs(store_url)
        self.root = f"{root.rstrip('/')}/results/units"

    def path(self, unit: WorkUnit) -> str:
        """Return the file of a unit."""
        exposure_name = unit.exposure.rsplit("/", 1)[-1]
        return f"{self.root}/{exposure_name}/{unit.ccd}/{unit.y0}-{unit.x0}.parquet"

    def write(self, unit: WorkUnit, records: Sequence[CandidateRecord]) -> None:
        """
        Write (or overwrite with the same rows) a unit's candidates, atomically.

        Parameters
        ----------
        unit : WorkUnit
        records : sequence of CandidateRecord
            May be empty: the empty file still marks the unit done.
        """
        write_parquet_atomic(self.fs, self.path(unit), candidates_table(records))

    def done(self, units: Iterable[WorkUnit]) -> set[str]:
        """Return the keys of the given units whose result file exists."""
        units = list(units)
        exposures = {u.exposure.rsplit("/", 1)[-1] for u in units}
        present: set[str] = set()
        for name in exposures:
            base = f"{self.root}/{name}"
            if not self.fs.exists(base):
                continue
            present.update(p.rstrip("/") for p in self.fs.find(base) if p.endswith(".parquet"))
        return {u.key for u in units if self.path(u).rstrip("/") in present or self._stripped(self.path(u)) in present}

    def _stripped(self, path: str) -> str:
        # Local file systems may list paths without the protocol prefix that url_to_fs kept.
        return self.fs._strip_protocol(path)  # fsspec's own normaliser

    def read(self, units: Iterable[WorkUnit], *, threads: int | None = None) -> pa.Table:
        """
        Return the candidates of the given (done) units as one table, in the units' order.

        The files are small and many (a Rubin-size visit has 3,024), so ``threads`` read them at
        once (default: up to 16, two per CPU); Parquet decoding releases the GIL.

        Raises
        ------
        FileNotFoundError
            A unit has no result file.
        """

        def read_one(unit: WorkUnit) -> pa.Table:
            with self.fs.open(self.path(unit), "rb") as fh:
                return pq.read_table(fh)

        units = list(units)
        threads = threads or min(16, 2 * (os.cpu_count() or 1))
        if threads == 1 or len(units) < 2 * threads:
            tables = [read_one(unit) for unit in units]
        else:
            with ThreadPoolExecutor(threads, thread_name_prefix="unit-reader") as pool:
                tables = list(pool.map(read_one, units))
        if not tables:
            return CANDIDATE_SCHEMA.empty_table()
        return pa.concat_tables(tables).cast(CANDIDATE_SCHEMA)


@functools.lru_cache(maxsize=16)
def _unit_store(store_url: str) -> UnitStore:
    return UnitStore(store_url)


def store_unit_results(unit: WorkUnit, records: Sequence[CandidateRecord]) -> None:
    """
    Write a unit's candidates into its store's results (the worker actors' ``result_sink``).

    Parameters
    ----------
    unit : WorkUnit
    records : sequence of CandidateRecord
        May be empty: the empty file still marks the unit done.
    """
    _unit_store(unit.store_url).write(unit, records)
