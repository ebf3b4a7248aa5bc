"""The truth catalogue: what was injected into each image, one row per object per CCD it falls on.

Schema (`TRUTH_COLUMNS`)
------------------------
``id`` (str; stable over the night for stars ``F00-S000123``, galaxies ``-G``, variables ``-V``,
transients ``-T`` and movers ``-M``; hot pixels ``HP<ccd>-<n>`` and bad columns ``BC<ccd>-<n>``
are stable per CCD; cosmic rays ``CR-<exposure>-<ccd>-<n>`` and satellites ``SAT-<exposure>``
are per exposure), ``type`` (star, galaxy, variable, transient, moving, cosmic_ray, hot_pixel,
bad_column, satellite), ``ra``/``dec`` (deg, ICRS), ``ccd``, ``x``/``y`` (0-based pixel
coordinates of this CCD, i.e. ``wcs.all_world2pix(ra, dec, 0)``; a row is written when
``-0.5 <= x, y < size - 0.5``), ``mag`` (at mid-exposure; NaN for artifacts), ``flux``
(electrons of the object in this exposure; for references, per ``EXPTIME`` of the mean coadd),
``in_reference``, and event columns that are NaN (or False / '') where they do not apply:
``ra_rate``/``dec_rate`` (arcsec/hour; ra_rate is d(RA)cos(Dec)/dt), ``trailed``,
``trail_length_px``/``trail_angle_deg`` (motion during the exposure for movers; length and
angle of cosmic-ray tracks, bad columns and satellite trails; angle in degrees counter-clockwise
from +x in this CCD's pixels), ``peak_mjd``, ``period_hours``, ``amplitude_mag``, ``mean_mag``,
``lc_model`` ('sine', 'eclipsing', 'transient'), ``host_id``, ``r_eff_arcsec``, ``sersic_n``.

Files are Parquet written by astropy (table meta as YAML in the Parquet key
``table_meta_yaml``). astropy's Parquet *reader* needs pandas, which skyblink does not depend
on; `read_truth` reads them with pyarrow alone.

Notes
-----
Stable (the schema is what scoring code reads). Pure functions.

"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
from astropy.table import Table
from astropy.table import meta as table_meta

__all__ = ["TRUTH_COLUMNS", "TRUTH_TYPES", "assemble_truth", "read_truth", "write_truth"]

TRUTH_TYPES = (
    "star",
    "galaxy",
    "variable",
    "transient",
    "moving",
    "cosmic_ray",
    "hot_pixel",
    "bad_column",
    "satellite",
)

TRUTH_COLUMNS: dict[str, tuple[type | str, Any]] = {
    "id": (str, ""),
    "type": (str, ""),
    "ra": ("f8", np.nan),
    "dec": ("f8", np.nan),
    "ccd": ("i4", -1),
    "x": ("f8", np.nan),
    "y": ("f8", np.nan),
    "mag": ("f8", np.nan),
    "flux": ("f8", np.nan),
    "in_reference": (bool, False),
    "ra_rate": ("f8", np.nan),
    "dec_rate": ("f8", np.nan),
    "trailed": (bool, False),
    "trail_length_px": ("f8", np.nan),
    "trail_angle_deg": ("f8", np.nan),
    "peak_mjd": ("f8", np.nan),
    "period_hours": ("f8", np.nan),
    "amplitude_mag": ("f8", np.nan),
    "mean_mag": ("f8", np.nan),
    "lc_model": (str, ""),
    "host_id": (str, ""),
    "r_eff_arcsec": ("f8", np.nan),
    "sersic_n": ("f8", np.nan),
}
"""Column name -> (dtype, fill value where not applicable)."""


def assemble_truth(parts: Sequence[Mapping[str, Any]], meta: Mapping[str, Any]) -> Table:
    """Build a truth table from column blocks.

    Parameters
    ----------
    parts : sequence of mappings
        Each maps column names to equal-length arrays (or scalars broadcast to the block);
        columns a block lacks get their fill value. Must contain ``type`` and ``ccd``.
    meta : mapping
        Table metadata (exposure id, conditions, ...).

    Returns
    -------
    `~astropy.table.Table`
        Columns in `TRUTH_COLUMNS` order; zero rows when ``parts`` hold none.

    Raises
    ------
    ValueError
        If a block has an unknown column, mismatched lengths or an unknown type.

    """
    blocks: dict[str, list[np.ndarray]] = {name: [] for name in TRUTH_COLUMNS}
    for part in parts:
        unknown = set(part) - set(TRUTH_COLUMNS)
        if unknown:
            msg = f"unknown truth columns {sorted(unknown)}; known: {list(TRUTH_COLUMNS)}"
            raise ValueError(msg)
        n = len(np.atleast_1d(part["x"]))
        for name, (dtype, fill) in TRUTH_COLUMNS.items():
            value = part.get(name, fill)
            column = np.asarray(value if np.ndim(value) else np.full(n, value, dtype=object))
            if column.shape != (n,):
                msg = f"truth column {name!r} has shape {column.shape}, expected ({n},)"
                raise ValueError(msg)
            blocks[name].append(column.astype(str if dtype is str else dtype))
        bad = set(np.asarray(blocks["type"][-1]).tolist()) - set(TRUTH_TYPES)
        if bad:
            msg = f"unknown truth types {sorted(bad)}; known: {TRUTH_TYPES}"
            raise ValueError(msg)
    columns = {}
    for name, (dtype, _) in TRUTH_COLUMNS.items():
        data = blocks[name]
        columns[name] = (
            np.concatenate(data).astype(str if dtype is str else dtype)
            if data
            else np.zeros(0, dtype=str if dtype is str else dtype)
        )
    return Table(columns, meta=dict(meta))


def write_truth(table: Table, path: Path) -> None:
    """Write a truth table to Parquet at ``path`` (overwriting); byte-identical for equal input."""
    table.write(path, format="parquet", overwrite=True)


def read_truth(path: Path) -> Table:
    """Read a truth Parquet file written by `write_truth`, with its metadata, without pandas.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.

    """
    arrow = pq.read_table(path)
    raw = (arrow.schema.metadata or {}).get(b"table_meta_yaml")
    meta = {}
    if raw is not None:
        header = table_meta.get_header_from_yaml(raw.decode("utf-8").split("\n"))
        meta = dict(header.get("meta", {}))
    columns = {}
    for name in arrow.column_names:
        values = arrow.column(name).to_numpy(zero_copy_only=False)
        columns[name] = values.astype(str) if values.dtype == object else values
    return Table(columns, meta=meta)
