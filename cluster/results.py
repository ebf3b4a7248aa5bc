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

import numpy as np
import pyarrow as pa

from skyblink.config import NightConfig
from skyblink.storage.night_files import NightFiles
from skyblink.storage.schemas.tables import CANDIDATE_SCHEMA

if TYPE_CHECKING:  # only named in annotations: a reduce task reading results imports no worker side (torch)
    from skyblink.workers.tile_unit import CandidateRecord, WorkUnit

__all__ = ["CANDIDATE_SCHEMA",  # re-exported from skyblink.storage.schemas.tables, where it is declared
           "UnitStore", "candidates_table", "exposure_static_detections", "store_unit_results"]


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


class UnitStore:
    """
    Per-unit result files of one store. Stable.

    Parameters
    ----------
    store_url : str
        The night store's URL (`NightStore.url`); results live under ``<store>/results/units``.
    """

    def __init__(self, store_url: str) -> None:
        self.files = NightFiles(store_url)
        self.fs = self.files.fs

    def path(self, unit: WorkUnit) -> str:
        """Return the file of a unit (`skyblink.storage.night_files.NightFiles.unit_result_path`)."""
        return self.files.unit_result_path(unit.exposure, unit.ccd, unit.y0, unit.x0)

    def write(self, unit: WorkUnit, records: Sequence[CandidateRecord]) -> None:
        """
        Write (or overwrite with the same rows) a unit's candidates, atomically.

        Parameters
        ----------
        unit : WorkUnit
        records : sequence of CandidateRecord
            May be empty: the empty file still marks the unit done.
        """
        self.files.write(self.path(unit), candidates_table(records), CANDIDATE_SCHEMA)

    def done(self, units: Iterable[WorkUnit], *, present: set[str] | None = None) -> set[str]:
        """
        Return the keys of the given units whose result file exists.

        ``present``: the result files of their exposures as `present` listed them (listed here when not given).
        """
        units = list(units)
        if present is None:
            present = set()
            for name in {u.exposure.rsplit("/", 1)[-1] for u in units}:
                present |= self.present(name)
        return {u.key for u in units if self.path(u).rstrip("/") in present or self._stripped(self.path(u)) in present}

    def present(self, exposure: str) -> set[str]:
        """Return the result files of one exposure (its name or store key) now in the store (for `done`)."""
        base = self.files.unit_results_dir(exposure.rsplit("/", 1)[-1])
        if not self.fs.exists(base):
            return set()
        return {p.rstrip("/") for p in self.fs.find(base) if p.endswith(".parquet")}

    def forget(self, exposure: str) -> None:
        """
        Delete every result of one exposure (its name or store key): its file was quarantined
        after some of its CCDs had landed and been processed, so they are not the night's.
        """
        base = self.files.unit_results_dir(exposure.rsplit("/", 1)[-1])
        if self.fs.exists(base):
            self.fs.rm(base, recursive=True)

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
        skyblink.storage.TableSchemaError
            A unit's file does not have `CANDIDATE_SCHEMA` (names the file and the column).
        """

        def read_one(unit: WorkUnit) -> pa.Table:
            return self.files.read(self.path(unit), CANDIDATE_SCHEMA)

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


def exposure_static_detections(store_url: str, units: list[WorkUnit], night: str,
                               config: NightConfig) -> tuple[pa.Table, pa.Table]:
    """
    Read one exposure's unit results (all of them, or a run of whole CCDs) and reduce them
    (`skyblink.reduce.exposure_task.reduce_exposure`): the body of the night run's reduce Ray
    tasks. The results are read in the task, so that their stamps never pass through the driver,
    and this module imports no worker side.

    Parameters
    ----------
    store_url : str
        The night's store.
    units : list of WorkUnit
        Units of one exposure with results (whole CCDs: duplicates are merged within a CCD).
    night : str
        Part of every alert id.
    config : NightConfig

    Returns
    -------
    candidates : pyarrow.Table
        The units' results, in the order of ``units``.
    static : pyarrow.Table
        Their static detections (``row`` indexing ``candidates``).

    Raises
    ------
    ValueError
        The units are of more than one exposure.
    """
    # Here, not at the top: the GPU actors import this module for `store_unit_results`, and the
    # reduce would bring the alert packets and Redis into their start (issue 22: the actor's
    # imports are on the demo night's critical path).
    from skyblink.reduce.exposure_task import reduce_exposure  # noqa: PLC0415

    candidates = UnitStore(store_url).read(units)
    return candidates, reduce_exposure(candidates, store_url, night, config)
