"""
Alert packets as units of parallel work: a run of consecutive alerts in, their packets built
(cutouts as gzipped FITS, Avro) and edge-filtered out, ready for
`skyblink.storage.alerts.AlertProducer.publish_encoded`. The night run builds a large visit's
packets this way in Ray tasks beside the producer: in the driver's threads they are bound by
Python's one lock (a Rubin-size visit's 10,582 packets took 16.7 s to build and publish on a
16-core H100 node, 2026-12-06).

`alert_parts` splits the alerts in time order and gives each run the rows its packets need (every
earlier row of their objects: the ``prv_detections``); `encode_alert_part` builds one run with
`skyblink.reduce.steps.build_alerts`, as the driver would, so the stream receives the same entries
in the same order either way.
"""

from __future__ import annotations

from collections.abc import Collection

import numpy as np
import pyarrow as pa

from skyblink.config import AlertsConfig
from skyblink.storage import NightStore
from skyblink.storage.alerts import AlertBuilder, AlertEncoder, EncodedAlert
from skyblink.storage.alerts.cutouts import GzipMode

from .steps import alerted_rows, build_alerts

__all__ = ["AlertPart", "alert_parts", "encode_alert_part"]

#: One run of alerts: the detections its packets need, and the ids of the alerts to build.
AlertPart = tuple[pa.Table, list[int]]


def alert_parts(detections: pa.Table, exposures: Collection[str] | None, size: int) -> list[AlertPart]:
    """
    Split the alerts of ``detections`` (of ``exposures``, or all) into runs of ``size`` in the
    table's order, each with the rows its packets need.

    Parameters
    ----------
    detections : pyarrow.Table
        From `skyblink.reduce.steps.decide`, in time order (with ``object_id``, ``alert_id``,
        ``alert_type``, ``exposure_id``).
    exposures : collection of str, optional
        Exposure ids whose alerts are built; default all.
    size : int
        Alerts per run (the last one may have fewer).

    Returns
    -------
    list of (pyarrow.Table, list of int)
        Per run: the rows of its alerts' objects up to its last alert (the history of every
        packet), and its alert ids in order. Empty when there is no alert.

    Raises
    ------
    ValueError
        ``size`` is not positive.
    """
    if size < 1:
        msg = f"alert_parts: size must be >= 1, got {size}"
        raise ValueError(msg)
    rows = alerted_rows(detections, exposures)
    if not len(rows):
        return []
    objects = detections.column("object_id").to_numpy()
    alert_ids = detections.column("alert_id").to_numpy()
    index = np.arange(detections.num_rows)
    parts: list[AlertPart] = []
    for start in range(0, len(rows), size):
        run = rows[start : start + size]
        needed = np.isin(objects, objects[run]) & (index <= run[-1])
        parts.append((detections.filter(pa.array(needed)), [int(i) for i in alert_ids[run]]))
    return parts


def encode_alert_part(part: pa.Table, alert_ids: list[int], candidates: pa.Table, store_url: str, night: str,
                      gzip_mode: GzipMode, config: AlertsConfig, real_bogus_model: str | None = None,
                      ) -> tuple[list[EncodedAlert], list[int], int]:
    """
    Build, edge-filter and encode one run of alerts (from `alert_parts`): the body of the night
    run's packet tasks.

    Parameters
    ----------
    part : pyarrow.Table
        The run's detections (its alerts and their objects' earlier rows).
    alert_ids : list of int
        The alerts to build.
    candidates : pyarrow.Table
        The unit results the detections' ``row`` indexes (their stamps).
    store_url : str
        The night's store (each CCD's WCS for the cutouts).
    night : str
        Names the stream.
    gzip_mode : {"rle", "deflate", "stored"}
        The cutouts' compression (``alerts.cutout_gzip``).
    config : AlertsConfig
    real_bogus_model : str, optional
        The network that scored the detections (`skyblink.storage.alerts.AlertBuilder`).

    Returns
    -------
    encoded : list of EncodedAlert
        The alerts that pass the edge filter, in order.
    sent : list of int
        Their ids.
    filtered : int
        Alerts held back by the edge filter.

    Raises
    ------
    AlertEncodeError
        An alert does not fit the schema.
    """
    encoder = AlertEncoder(night, config=config)
    sent: list[int] = []
    alerts = build_alerts(part, candidates, NightStore(store_url), AlertBuilder(night, gzip_mode=gzip_mode, real_bogus_model=real_bogus_model), threads=1,
                          only=set(alert_ids))
    encoded = list(encoder.encode_kept(alerts, sent=sent))
    return encoded, sent, encoder.filtered
