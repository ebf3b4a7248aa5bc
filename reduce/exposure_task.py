"""
The per-exposure reduce step as a unit of parallel work: one exposure's candidates in, its
located, merged and matched detections out (`reduce_exposure`), and the same as a Ray task
(`reduce_exposure_task`) for the driver to run beside the worker actors.

The store travels by URL, the tables by Ray's object store (Arrow), so the task needs nothing of
the driver's state; its result is what `skyblink.reduce.steps.static_detections` gives for the
exposure in the driver's own process.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc
import ray

from skyblink.config import NightConfig
from skyblink.storage import NightStore

from .steps import static_detections

__all__ = ["reduce_exposure", "reduce_exposure_task"]


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


@ray.remote(num_cpus=1, max_retries=2)
def reduce_exposure_task(candidates: pa.Table, store_url: str, night: str, config: NightConfig) -> pa.Table:
    """`reduce_exposure` as a Ray task (one CPU; retried twice if its worker dies). Stable."""
    return reduce_exposure(candidates, store_url, night, config)
