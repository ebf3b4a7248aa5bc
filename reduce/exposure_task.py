"""
The per-exposure reduce step as a unit of parallel work: one exposure's candidates in, its
located, merged and matched detections out (`reduce_exposure`). The night run runs it as a Ray
task beside the worker actors (`skyblink.cluster.results.exposure_static_detections`, which reads
the exposure's results in the task).

The store travels by URL, the tables by Ray's object store (Arrow), so the task needs nothing of
the driver's state; its result is what `skyblink.reduce.steps.static_detections` gives for the
exposure in the driver's own process.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from skyblink.config import NightConfig
from skyblink.storage import NightStore

from .steps import static_detections

__all__ = ["reduce_exposure"]


def reduce_exposure(candidates: pa.Table, store_url: str, night: str, config: NightConfig) -> pa.Table:
    """
    Locate, merge and match the candidates of one exposure (`static_detections`).

    Parameters
    ----------
    candidates : pyarrow.Table
        The exposure's unit results (rows of `skyblink.cluster.results.CANDIDATE_SCHEMA`), all
        of one exposure; empty is allowed.
    store_url : str
        The night's store (opened read-only; a field's reference catalog is cached in it on
        first use).
    night : str
        Part of every alert id.
    config : NightConfig

    Returns
    -------
    pyarrow.Table
        The exposure's detections (``row`` indexing ``candidates``), sorted by `DETECTION_ORDER`.

    Raises
    ------
    ValueError
        The candidates hold more than one exposure (the message names them).
    """
    exposures = pc.unique(candidates.column("exposure")).to_pylist()
    if len(exposures) > 1:
        msg = f"reduce_exposure takes the candidates of one exposure, got {len(exposures)}: {sorted(exposures)[:5]}"
        raise ValueError(msg)
    return static_detections(candidates, NightStore(store_url), night, config)

