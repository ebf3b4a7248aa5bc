"""
The night's reduce step: candidates from the workers become detections on the sky, objects and
alerts.

`reduce_detections` chains the steps:

1. `locate`: windowed centroids and trails measured on each difference stamp
   (`skyblink.reduce.measurement`), pixel to sky with each CCD's WCS (astropy), position errors
   from the PSF width (and trail) and the S/N, PSF flux and AB magnitude from the S/N and the
   exposure's noise and zero point, the mid-exposure time in MJD (TAI).
2. `merge_tile_duplicates`: detections of one exposure closer than ``night.match_radius_arcsec``
   (or on one trail) are one, the one with the highest S/N.
3. `match_static`: each detection against the static sources of its field's reference image
   (`skyblink.reduce.association.reference_sources`, detected once per field and cached).
4. `link_moving`: detections of no reference source (and real/bogus of at least
   ``night.link_min_real_bogus``) linked across the field's exposures into tracklets
   (`skyblink.reduce.linking`), with rate, direction and the position predicted
   ``night.predict_ahead_hours`` after the last detection, with its error ellipse.
5. `associate`: a tracklet is one object; other detections closer than
   ``night.match_radius_arcsec`` on the sky, in any exposure of the night, are one object
   (``search_around_sky`` and connected components); the object's id is its earliest
   detection's candidate id, so reruns keep it.
6. `decide`: a detection is alerted when its real/bogus reaches ``night.alert_min_real_bogus``;
   moving when linked; anomaly when no class reaches ``night.anomaly_max_class_probability``;
   variable when it sits on a point-like reference source and its difference S/N reaches
   ``night.variable_min_snr``; moving when trailed; otherwise (new, or on a galaxy) transient.
7. `build_alerts`: Avro alert packets with their cutouts, the object's earlier detections and,
   for linked moving objects, the motion and predicted position (`MovingObject`).

Steps 1-3 (`static_detections`) look at one exposure at a time and steps 4-6
(`night_detections`) at the whole night: in ``--watch`` the driver keeps each exposure's
static table and, as an exposure lands, runs steps 1-3 on it alone.

Notes
-----
Everything is a deterministic function of the unit results and the store, so a resumed night
gives the same detections, object ids and alert ids as an uninterrupted one.
"""

from __future__ import annotations

import math
import os
from collections.abc import Collection, Iterable, Iterator
from functools import cache
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from astropy import units as u
from astropy.coordinates import SkyCoord

from skyblink.config import NightConfig
from skyblink.model_io import CLASSIFIER_CLASSES
from skyblink.psf_units import FWHM_PER_SIGMA
from skyblink.stamps import STAMP_HALF
from skyblink.storage.alerts import (
    Alert,
    AlertBuilder,
    AlertType,
    Band,
    ClassProbabilities,
    Detection,
    DetectionFlag,
)
from skyblink.storage.alerts.packet import MovingObject, make_alert_id
from skyblink.storage.ccd_context import AB_NJY_ZERO, CcdContext
from skyblink.storage.night_store import NightStore
from skyblink.threads import ordered_map

from .association import (
    EXTENDED_MAX_CONCENTRATION,
    group_objects,
    match_reference,
    merge_duplicates,
    reference_sources,
)
from .linking import LinkingParameters, Tracklet, link_tracklets, predict
from .measurement import measure_ccd_fwhm, measure_stamps

__all__ = [
    "DETECTION_ORDER",
    "alert_counts",
    "alerted_rows",
    "associate",
    "build_alerts",
    "ccd_context",
    "decide",
    "link_moving",
    "linking_parameters",
    "locate",
    "match_static",
    "merge_tile_duplicates",
    "night_detections",
    "reduce_detections",
    "split_by_exposure",
    "stamps_of",
    "static_detections",
]

#: AB magnitude of 1 nJy.
_AB_NJY_ZERO = AB_NJY_ZERO
#: Floor of a position error (arcsec): WCS and centroiding systematics.
_POSITION_ERROR_FLOOR_ARCSEC = 0.01
_ALERTABLE = ("transient", "variable", "moving")
_STAMP_SHAPE = (3, 2 * STAMP_HALF + 1, 2 * STAMP_HALF + 1)


def stamps_of(candidates: pa.Table) -> np.ndarray:
    """
    Return the candidates' ``stamp`` column as an (n, 3, 63, 63) float16 array, read from the
    column's Arrow buffers (a view where the table holds one chunk, else one copy): a Rubin-size
    visit's 12,000 stamps were 3.5 s as Python bytes and float32, most of the reduce's locate.

    Callers convert what they use: `locate` measures the difference planes in float64 chunks.
    `build_alerts` reads each alert's planes in place, chunk by chunk, without this function's
    copy, and hands them to the cutout writer, which writes them as float32 in its builder thread.

    Raises
    ------
    ValueError
        A stamp is null or not 3 x 63 x 63 float16 values.
    """
    parts = _stamp_chunks(candidates)
    if not parts:
        return np.zeros((0, *_STAMP_SHAPE), np.float16)
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


class _StampRows:
    """The stamps of a candidates table by row, read in place from its chunks (no concatenation)."""

    def __init__(self, candidates: pa.Table) -> None:
        self.chunks = _stamp_chunks(candidates)
        self.starts = np.cumsum([0] + [len(c) for c in self.chunks])

    def __getitem__(self, row: int) -> np.ndarray:
        i = int(np.searchsorted(self.starts, row, side="right")) - 1
        if not 0 <= row < self.starts[-1]:
            msg = f"stamp row {row} is outside the {int(self.starts[-1])} candidates"
            raise IndexError(msg)
        return self.chunks[i][row - self.starts[i]]


def _stamp_chunks(candidates: pa.Table) -> list[np.ndarray]:
    """Each non-empty chunk of the ``stamp`` column as an (n, 3, 63, 63) float16 view (see `stamps_of`)."""
    size = int(np.prod(_STAMP_SHAPE)) * 2
    parts = []
    for chunk in candidates.column("stamp").chunks:
        if len(chunk) == 0:
            continue
        if chunk.null_count:
            msg = f"{chunk.null_count} candidate(s) have no stamp"
            raise ValueError(msg)
        offsets = np.frombuffer(chunk.buffers()[1], np.int32, len(chunk) + 1, offset=chunk.offset * 4)
        lengths = np.diff(offsets)
        if (lengths != size).any():
            bad = int(lengths[lengths != size][0])
            msg = f"a candidate's stamp has {bad} bytes, not {size} (3 x 63 x 63 float16)"
            raise ValueError(msg)
        data = np.frombuffer(chunk.buffers()[2], np.uint8)[offsets[0] : offsets[-1]]
        parts.append(data.view(np.float16).reshape(-1, *_STAMP_SHAPE))
    return parts


def ccd_context(store: NightStore, exposure: str, ccd: str) -> CcdContext:
    """
    Return one CCD's facts as the reduce step reads them: `NightStore.ccd_context` with the PSF
    FWHM measured on the CCD where no header keyword gives it (as the workers do).

    Raises
    ------
    KeyError
        The exposure is absent or incomplete, or has no such CCD.
    """
    return store.ccd_context(exposure, ccd, measure_fwhm=measure_ccd_fwhm)


#: The order of the night's detections (time first): `locate` sorts by it.
DETECTION_ORDER = [("mjd", "ascending"), ("exposure", "ascending"), ("ccd", "ascending"), ("y", "ascending"),
                   ("x", "ascending")]


def locate(candidates: pa.Table, store: NightStore, night: str) -> pa.Table:
    """
    Put candidates on the sky and measure them.

    Parameters
    ----------
    candidates : pyarrow.Table
        Rows of `skyblink.cluster.results.CANDIDATE_SCHEMA`.
    store : NightStore
    night : str
        Part of every alert id.

    Returns
    -------
    pyarrow.Table
        The candidates' columns (stamps excluded; ``x, y`` refined on the difference stamp, the
        worker's peak kept as ``x_peak, y_peak``) plus ``candidate_id`` (the detection's stable
        id), ``alert_id`` (the id of its packet, if alerted), ``exposure_id, field, ccd_num, band,
        mjd, exptime, fwhm_arcsec, ra, dec, ra_err, dec_err, flux, flux_err, mag, mag_err,
        trailed, trail_length_arcsec, trail_pa`` (degrees east of north modulo 180, NaN when not
        trailed) and one ``p_<class>`` column per classifier class; rows sorted by (mjd,
        exposure, ccd, y, x).
    """
    context = cache(lambda exposure, ccd: ccd_context(store, exposure, ccd))
    n = candidates.num_rows
    cols: dict[str, list[Any]] = {k: [] for k in (
        "candidate_id", "alert_id", "exposure_id", "field", "ccd_num", "band", "mjd", "exptime", "fwhm_arcsec", "ra",
        "dec", "ra_err", "dec_err", "flux", "flux_err", "mag", "mag_err", "trail_length_arcsec", "trail_pa")}
    exposures = candidates.column("exposure").to_pylist()
    ccds = candidates.column("ccd").to_pylist()
    x_peak = candidates.column("x").to_numpy()
    y_peak = candidates.column("y").to_numpy()
    snrs = candidates.column("snr").to_numpy().astype(np.float64)
    fwhm = np.array([context(e, c).difference_fwhm_px or context(e, c).fwhm_px for e, c in zip(exposures, ccds, strict=True)])
    stamps = stamps_of(candidates)
    base_x, base_y = np.round(x_peak), np.round(y_peak)
    shapes = measure_stamps(stamps[:, 2], np.column_stack([x_peak - base_x, y_peak - base_y]), fwhm)
    xs, ys = base_x + shapes.dx, base_y + shapes.dy
    sky = np.zeros((n, 2))
    trail_pa = np.full(n, np.nan)
    rows_of = _rows_by_value(list(zip(exposures, ccds, strict=True)))
    for key in sorted(rows_of):
        rows = np.array(rows_of[key], dtype=int)
        wcs = context(*key).wcs.celestial
        sky[rows] = wcs.all_pix2world(np.column_stack([xs[rows], ys[rows]]), 0)
        trailed = rows[shapes.trailed[rows]]
        if len(trailed):
            angle = np.radians(shapes.trail_angle_deg[trailed])
            ahead = wcs.all_pix2world(np.column_stack([xs[trailed] + np.cos(angle), ys[trailed] + np.sin(angle)]), 0)
            here = SkyCoord(sky[trailed, 0] * u.deg, sky[trailed, 1] * u.deg)
            trail_pa[trailed] = here.position_angle(SkyCoord(ahead[:, 0] * u.deg, ahead[:, 1] * u.deg)).deg % 180.0
    noise = cache(lambda exposure, ccd: store.sky_noise_adu(exposure, ccd))
    for i in range(n):
        ctx = context(exposures[i], ccds[i])
        noise_adu = noise(exposures[i], ccds[i])
        snr = float(snrs[i]) if math.isfinite(snrs[i]) and snrs[i] > 0 else float("nan")
        sigma_px = ctx.fwhm_px / FWHM_PER_SIGMA
        # Centroid error of a Gaussian PSF of the difference (background-limited): sqrt(2)
        # sigma / (S/N) per axis; along a trail, the trail's length adds L^2 / 12 to sigma^2.
        spread = math.hypot(fwhm[i] / FWHM_PER_SIGMA, shapes.trail_length_px[i] / math.sqrt(12.0))
        pos_err = math.sqrt(2.0) * spread / snr * ctx.pixel_scale_arcsec if snr == snr else 1.0
        pos_err = max(pos_err, _POSITION_ERROR_FLOOR_ARCSEC)
        # PSF-fit flux error of a Gaussian PSF: noise per pixel times sqrt(4 pi) sigma_psf.
        flux_err_adu = noise_adu * math.sqrt(4.0 * math.pi) * sigma_px
        njy = ctx.njy_per_adu if ctx.njy_per_adu is not None else float("nan")
        flux_err = flux_err_adu * njy
        flux = snr * flux_err
        mag = mag_err = None
        if flux > 0 and math.isfinite(flux):
            mag = _AB_NJY_ZERO - 2.5 * math.log10(flux)
            mag_err = 2.5 / math.log(10.0) / snr
        candidate_id = make_alert_id(night, ctx.exposure_id, ctx.ccd, (float(x_peak[i]), float(y_peak[i])))
        cols["candidate_id"].append(candidate_id)
        cols["alert_id"].append(make_alert_id(night, ctx.exposure_id, ctx.ccd, candidate_id))  # as AlertBuilder
        cols["exposure_id"].append(ctx.exposure_id)
        cols["field"].append(ctx.field)
        cols["ccd_num"].append(ctx.ccd)
        cols["band"].append(ctx.band.value)
        cols["mjd"].append(ctx.mjd_tai)
        cols["exptime"].append(ctx.exptime)
        cols["fwhm_arcsec"].append(float(fwhm[i]) * ctx.pixel_scale_arcsec)
        cols["ra"].append(float(sky[i, 0]) % 360.0)
        cols["dec"].append(float(sky[i, 1]))
        cols["ra_err"].append(pos_err)
        cols["dec_err"].append(pos_err)
        cols["flux"].append(flux)
        cols["flux_err"].append(flux_err)
        cols["mag"].append(mag)
        cols["mag_err"].append(mag_err)
        cols["trail_length_arcsec"].append(float(shapes.trail_length_px[i]) * ctx.pixel_scale_arcsec)
        cols["trail_pa"].append(float(trail_pa[i]))
    table = candidates.drop_columns(["stamp", "class_probs", "x", "y"])
    table = table.append_column("x", pa.array(xs, pa.float64())).append_column("y", pa.array(ys, pa.float64()))
    table = table.append_column("x_peak", pa.array(x_peak, pa.float64())).append_column("y_peak", pa.array(y_peak, pa.float64()))
    table = table.append_column("trailed", pa.array(shapes.trailed, pa.bool_()))
    probs = np.array(candidates.column("class_probs").to_pylist(), dtype=np.float32).reshape(n, len(CLASSIFIER_CLASSES))
    for j, name in enumerate(CLASSIFIER_CLASSES):
        table = table.append_column(f"p_{name}", pa.array(probs[:, j]))
    for name, values in cols.items():
        kind = pa.int64() if name in ("candidate_id", "alert_id", "ccd_num") else (pa.float64() if name in ("trail_pa", "exptime", "fwhm_arcsec", "trail_length_arcsec") else None)
        table = table.append_column(name, pa.array(values, type=kind))
    table = table.append_column("row", pa.array(np.arange(n)))
    return table.sort_by(DETECTION_ORDER)


def merge_tile_duplicates(detections: pa.Table, radius_arcsec: float) -> pa.Table:
    """
    Drop duplicate detections of one source in one exposure (tile overlaps, peaks along a trail).

    Parameters
    ----------
    detections : pyarrow.Table
        From `locate`.
    radius_arcsec : float
        Detections of one exposure and CCD closer than this, or than half a trail's length plus
        this from a trailed one, are one source; the one with the highest S/N stays.

    Returns
    -------
    pyarrow.Table
        ``detections`` without the duplicates, in the same order.
    """
    if detections.num_rows < 2:
        return detections
    group = np.array([f"{e}/{c}" for e, c in zip(detections.column("exposure_id").to_pylist(),
                                                 detections.column("ccd_num").to_pylist(), strict=True)])
    radius = radius_arcsec + 0.5 * detections.column("trail_length_arcsec").to_numpy()
    keep = merge_duplicates(group, detections.column("ra").to_numpy(), detections.column("dec").to_numpy(),
                            detections.column("snr").to_numpy(), radius)
    return detections.filter(pa.array(keep))


def match_static(detections: pa.Table, store: NightStore, radius_arcsec: float, *, snr_threshold: float = 5.0) -> pa.Table:
    """
    Match detections with the static sources of their field's reference image.

    Parameters
    ----------
    detections : pyarrow.Table
        From `locate` (``field``, ``ra``, ``dec``).
    store : NightStore
    radius_arcsec : float
        Farther than this a detection is new against the reference.
    snr_threshold : float
        Detection threshold of the reference sources (S/N).

    Returns
    -------
    pyarrow.Table
        ``detections`` with ``reference_index`` (row of the field's reference catalog, -1 when
        new), ``reference_separation`` (arcsec to the nearest reference source) and
        ``reference_extended`` (the matched source is a galaxy).
    """
    n = detections.num_rows
    index = np.full(n, -1, dtype=np.int64)
    separation = np.full(n, np.inf)
    extended = np.zeros(n, bool)
    fields = np.array(detections.column("field").to_pylist(), dtype=object)
    ra, dec = detections.column("ra").to_numpy(), detections.column("dec").to_numpy()
    for field in sorted(set(fields.tolist())):
        rows = np.flatnonzero(fields == field)
        catalog = reference_sources(store, field, snr_threshold=snr_threshold)
        index[rows], separation[rows] = match_reference(ra[rows], dec[rows], catalog, radius_arcsec)
        matched = rows[index[rows] >= 0]
        if len(matched):
            concentration = np.nan_to_num(catalog.column("concentration").to_numpy(zero_copy_only=False), nan=1.0)
            extended[matched] = concentration[index[matched]] < EXTENDED_MAX_CONCENTRATION
    return detections.append_column("reference_index", pa.array(index)).append_column(
        "reference_separation", pa.array(separation)).append_column("reference_extended", pa.array(extended))


#: Columns `link_moving` adds (null where a detection is not in a tracklet).
TRACKLET_COLUMNS = {
    "tracklet_id": pa.int64(), "tracklet_n": pa.int32(), "rate": pa.float64(), "rate_err": pa.float64(),
    "position_angle": pa.float64(), "position_angle_err": pa.float64(), "predicted_mjd": pa.float64(),
    "predicted_ra": pa.float64(), "predicted_dec": pa.float64(), "predicted_err_major": pa.float64(),
    "predicted_err_minor": pa.float64(), "predicted_err_pa": pa.float64(),
}


def linking_parameters(config: NightConfig) -> LinkingParameters:
    """Return the linking parameters of a night configuration."""
    return LinkingParameters(
        min_detections=config.link_min_detections,
        max_rate=config.link_max_rate_arcsec_per_hour,
        min_motion_arcsec=config.link_min_motion_arcsec,
        n_sigma=config.link_n_sigma,
        tolerance_arcsec=config.link_tolerance_arcsec,
        max_reduced_chi2=config.link_max_reduced_chi2,
        seed_epochs=config.link_seed_epochs,
        trail_angle_tolerance_deg=config.link_trail_angle_tolerance_deg,
    )


def link_moving(detections: pa.Table, config: NightConfig) -> tuple[pa.Table, list[Tracklet]]:
    """
    Link the night's new detections of each field into tracklets and predict their positions.

    Parameters
    ----------
    detections : pyarrow.Table
        From `match_static`.
    config : NightConfig
        ``link_*`` keys and ``predict_ahead_hours``.

    Returns
    -------
    table : pyarrow.Table
        ``detections`` with `TRACKLET_COLUMNS`: the tracklet's id (its earliest detection's
        candidate id), its number of detections, rate and position angle with their errors
        (arcsec/hour, degrees east of north), and the position predicted
        ``predict_ahead_hours`` after its last detection with the 1-sigma error ellipse.
    tracklets : list of Tracklet
        Whose ``members`` index rows of ``table``.
    """
    n = detections.num_rows
    values: dict[str, list[Any]] = {name: [None] * n for name in TRACKLET_COLUMNS}
    tracklets: list[Tracklet] = []
    if n:
        new = (detections.column("reference_index").to_numpy() < 0) &               (detections.column("real_bogus").to_numpy() >= config.link_min_real_bogus)
        fields = np.array(detections.column("field").to_pylist(), dtype=object)
        get = {name: detections.column(name).to_numpy(zero_copy_only=False) for name in (
            "mjd", "ra", "dec", "ra_err", "exptime", "fwhm_arcsec", "trail_length_arcsec", "trail_pa", "candidate_id")}
        epochs = np.array([f"{e}/{c}" for e, c in zip(detections.column("exposure_id").to_pylist(),
                                                      detections.column("ccd_num").to_pylist(), strict=True)])
        params = linking_parameters(config)
        for field in sorted(set(fields[new].tolist())):
            rows = np.flatnonzero(new & (fields == field))
            _, epoch = np.unique([e.split("/")[0] for e in epochs[rows]], return_inverse=True)
            found = link_tracklets(get["mjd"][rows], get["ra"][rows], get["dec"][rows], get["ra_err"][rows], epoch,
                                   trail_length_arcsec=get["trail_length_arcsec"][rows], trail_pa_deg=get["trail_pa"][rows],
                                   exptime_s=get["exptime"][rows], fwhm_arcsec=get["fwhm_arcsec"][rows], params=params)
            for tracklet in found:
                members = rows[tracklet.members]
                tracklets.append(_reindexed(tracklet, members))
                last = float(get["mjd"][members].max())
                guess = predict(tracklet, last + config.predict_ahead_hours / 24.0)
                first = members[int(np.argmin(get["mjd"][members]))]
                for i in members:
                    row = {"tracklet_id": int(get["candidate_id"][first]), "tracklet_n": len(members),
                           "rate": tracklet.rate, "rate_err": tracklet.rate_err, "position_angle": tracklet.position_angle,
                           "position_angle_err": tracklet.position_angle_err, "predicted_mjd": guess.mjd,
                           "predicted_ra": guess.ra, "predicted_dec": guess.dec, "predicted_err_major": guess.err_major,
                           "predicted_err_minor": guess.err_minor, "predicted_err_pa": guess.err_pa}
                    for name, value in row.items():
                        values[name][i] = value
    table = detections
    for name, kind in TRACKLET_COLUMNS.items():
        table = table.append_column(name, pa.array(values[name], kind))
    return table, tracklets


def _reindexed(tracklet: Tracklet, members: np.ndarray) -> Tracklet:
    return Tracklet(members, tracklet.ref_mjd, tracklet.ra, tracklet.dec, tracklet.rate, tracklet.rate_err,
                    tracklet.position_angle, tracklet.position_angle_err, tracklet.chi2, tracklet.covariance)


def associate(detections: pa.Table, radius_arcsec: float) -> pa.Table:
    """
    Group detections into objects: a tracklet is one; other detections within ``radius_arcsec``
    of each other, transitively, are one.

    Parameters
    ----------
    detections : pyarrow.Table
        Sorted by time first; with a ``tracklet_id`` column (`link_moving`) tracklets are kept
        whole and apart from the static grouping.
    radius_arcsec : float

    Returns
    -------
    pyarrow.Table
        ``detections`` with an ``object_id`` column (int64): the candidate id of the object's
        earliest detection (the first row of a group).
    """
    n = detections.num_rows
    if n == 0:
        return detections.append_column("object_id", pa.array([], pa.int64()))
    candidate_ids = detections.column("candidate_id").to_numpy()
    tracklet = detections.column("tracklet_id").to_numpy(zero_copy_only=False) if "tracklet_id" in detections.column_names else np.full(n, None)
    linked = np.array([t is not None and t == t for t in tracklet], dtype=bool)
    object_id = np.zeros(n, dtype=np.int64)
    object_id[linked] = np.asarray(tracklet[linked], dtype=np.int64)
    rest = np.flatnonzero(~linked)
    labels = group_objects(detections.column("ra").to_numpy()[rest], detections.column("dec").to_numpy()[rest], radius_arcsec)
    first: dict[int, int] = {}
    for i, label in zip(rest, labels, strict=True):
        first.setdefault(int(label), int(candidate_ids[i]))
        object_id[i] = first[int(label)]
    return detections.append_column("object_id", pa.array(object_id, pa.int64()))


def reduce_detections(candidates: pa.Table, store: NightStore, night: str, config: NightConfig) -> pa.Table:
    """
    Run the reduce steps on the night's candidates: locate, merge duplicates, match the
    reference, link moving objects, associate objects, decide alerts.

    Parameters
    ----------
    candidates : pyarrow.Table
        Rows of `skyblink.cluster.results.CANDIDATE_SCHEMA`.
    store : NightStore
    night : str
        Part of every alert id.
    config : NightConfig

    Returns
    -------
    pyarrow.Table
        The detections catalog (one row per detection, ``row`` indexing ``candidates``) with
        ``object_id`` and ``alert_type``.
    """
    return night_detections(static_detections(candidates, store, night, config), config)


def static_detections(candidates: pa.Table, store: NightStore, night: str, config: NightConfig) -> pa.Table:
    """
    Run the reduce steps that look at one exposure at a time: locate, merge tile duplicates,
    match the reference.

    No row of one exposure changes another's, so the night's table is the concatenation of its
    exposures' tables sorted by `DETECTION_ORDER`: `skyblink.cluster.night` keeps each
    exposure's table and, as exposures land, runs this on the new ones only.

    Parameters
    ----------
    candidates, store, night, config
        As `reduce_detections`.

    Returns
    -------
    pyarrow.Table
        Detections (``row`` indexing ``candidates``), sorted by `DETECTION_ORDER`.
    """
    located = merge_tile_duplicates(locate(candidates, store, night), config.match_radius_arcsec)
    return match_static(located, store, config.match_radius_arcsec, snr_threshold=config.reference_snr_threshold)


def split_by_exposure(detections: pa.Table) -> dict[str, pa.Table]:
    """Return each exposure's rows of a detections table (keyed by ``exposure``), in their order."""
    rows = _rows_by_value(detections.column("exposure").to_pylist())
    return {key: detections.take(index) for key, index in rows.items()}


def _rows_by_value(values: list[Any]) -> dict[Any, list[int]]:
    rows: dict[Any, list[int]] = {}
    for i, value in enumerate(values):
        rows.setdefault(value, []).append(i)
    return rows


def night_detections(static: pa.Table, config: NightConfig) -> pa.Table:
    """
    Run the reduce steps over the whole night: link moving objects, associate objects, decide.

    Parameters
    ----------
    static : pyarrow.Table
        The night's `static_detections`, sorted by `DETECTION_ORDER`.
    config : NightConfig

    Returns
    -------
    pyarrow.Table
        As `reduce_detections`.
    """
    linked, _ = link_moving(static, config)
    return decide(associate(linked, config.match_radius_arcsec), config)


def decide(detections: pa.Table, config: NightConfig) -> pa.Table:
    """
    Decide which detections are alerted and why.

    Parameters
    ----------
    detections : pyarrow.Table
        From `associate`. Without the ``reference_index`` / ``tracklet_id`` columns of
        `match_static` / `link_moving` the type is the classifier's alone.
    config : NightConfig
        ``alert_min_real_bogus``, ``anomaly_max_class_probability``, ``variable_min_snr``.

    Returns
    -------
    pyarrow.Table
        ``detections`` with an ``alert_type`` column: ``"transient" | "variable" | "moving" |
        "anomaly"``, or null for a detection that is catalogued but not alerted.

    Notes
    -----
    In order: real/bogus below ``alert_min_real_bogus``: not alerted; in a tracklet: moving;
    no class reaching ``anomaly_max_class_probability``: anomaly; on a point-like reference
    source with a difference S/N of at least ``variable_min_snr``: variable; trailed: moving
    (unlinked, so without a prediction); otherwise (new, or on a galaxy) transient. Without the
    reference match columns the classifier's most probable alertable class is the type.
    """
    n = detections.num_rows
    rb = detections.column("real_bogus").to_numpy()
    probs = np.column_stack([detections.column(f"p_{c}").to_numpy() for c in _ALERTABLE]) if n else np.zeros((0, 3))
    top = np.column_stack([detections.column(f"p_{c}").to_numpy() for c in CLASSIFIER_CLASSES]).max(axis=1) if n else np.zeros(0)
    names = detections.column_names
    linked = (pc.is_valid(detections.column("tracklet_id")).to_numpy(zero_copy_only=False) if "tracklet_id" in names
              else np.zeros(n, bool))
    known = detections.column("reference_index").to_numpy() >= 0 if "reference_index" in names else None
    if known is not None and "reference_extended" in names:  # a change on a galaxy is a transient
        known &= ~detections.column("reference_extended").to_numpy(zero_copy_only=False)
    trailed = detections.column("trailed").to_numpy(zero_copy_only=False) if "trailed" in names else np.zeros(n, bool)
    snr = detections.column("snr").to_numpy()
    types: list[str | None] = []
    for i in range(n):
        best = _ALERTABLE[int(np.argmax(probs[i]))]
        if rb[i] < config.alert_min_real_bogus:
            types.append(None)
        elif linked[i]:
            types.append(AlertType.MOVING.value)
        elif top[i] < config.anomaly_max_class_probability:
            types.append(AlertType.ANOMALY.value)
        elif known is None:
            types.append(best)
        elif known[i] and snr[i] >= config.variable_min_snr:
            types.append(AlertType.VARIABLE.value)
        elif trailed[i]:
            types.append(AlertType.MOVING.value)
        else:
            types.append(AlertType.TRANSIENT.value)
    return detections.append_column("alert_type", pa.array(types, pa.string()))


def _moving_object(row: dict[str, Any]) -> MovingObject | None:
    if row.get("tracklet_id") is None:
        return None
    return MovingObject(
        rate=float(row["rate"]),
        rate_err=float(row["rate_err"]),
        position_angle=float(row["position_angle"]),
        position_angle_err=float(row["position_angle_err"]),
        n_detections=int(row["tracklet_n"]),
        predicted_mjd=float(row["predicted_mjd"]),
        predicted_ra=float(row["predicted_ra"]),
        predicted_dec=float(row["predicted_dec"]),
        predicted_err_major=float(row["predicted_err_major"]),
        predicted_err_minor=float(row["predicted_err_minor"]),
        predicted_err_pa=float(row["predicted_err_pa"]),
    )


def _class_probabilities(row: dict[str, Any]) -> ClassProbabilities:
    values = {name: float(row[f"p_{name}"]) for name in CLASSIFIER_CLASSES}
    values["artifact"] += values.pop("cosmic_ray")  # the packet has one artifact class
    total = sum(values.values())
    return ClassProbabilities(**{k: v / total for k, v in values.items()})


def _detection(row: dict[str, Any], alert_type: str | None) -> Detection:
    mag = row["mag"]
    return Detection(
        candidate_id=int(row["candidate_id"]),
        mjd=float(row["mjd"]),
        ra=float(row["ra"]),
        dec=float(row["dec"]),
        ra_err=float(row["ra_err"]),
        dec_err=float(row["dec_err"]),
        x=float(row["x"]),
        y=float(row["y"]),
        exposure_id=row["exposure_id"],
        field=row["field"],
        ccd=int(row["ccd_num"]),
        band=Band(row["band"]),
        flux=float(row["flux"]),
        flux_err=float(row["flux_err"]),
        snr=float(row["snr"]),
        mag=None if mag is None else float(mag),
        mag_err=None if row["mag_err"] is None else float(row["mag_err"]),
        real_bogus=min(1.0, max(0.0, float(row["real_bogus"]))),
        class_probabilities=_class_probabilities(row),
        alert_type=AlertType(alert_type or AlertType.TRANSIENT.value),
        flags=DetectionFlag.NONE,
    )


def alerted_rows(detections: pa.Table, exposures: Collection[str] | None) -> np.ndarray:
    """
    Return the indices of the rows of ``detections`` whose alerts are built (`build_alerts`'s
    choice): an alert type, and of one of ``exposures`` when given.
    """
    if not detections.num_rows:
        return np.zeros(0, np.int64)
    alerted = pc.is_valid(detections.column("alert_type"))
    if exposures is not None:
        alerted = pc.and_(alerted, pc.is_in(detections.column("exposure_id"), pa.array(sorted(exposures), pa.string())))
    return np.flatnonzero(alerted.to_numpy(zero_copy_only=False))


def build_alerts(
    detections: pa.Table,
    candidates: pa.Table,
    store: NightStore,
    builder: AlertBuilder,
    *,
    exposures: Iterable[str] | None = None,
    threads: int | None = None,
    ahead: int | None = None,
    only: Collection[int] | None = None,
) -> Iterator[Alert]:
    """
    Build the alert packets of the alerted detections, in time order.

    The packets (their cutouts' FITS and gzip, most of the cost) are built by ``threads`` threads
    (default: up to 8, one per CPU), up to ``ahead`` of them before the consumer takes them, and
    yielded in order.

    Parameters
    ----------
    detections : pyarrow.Table
        From `decide` (with ``object_id`` and ``alert_type``; ``row`` indexes ``candidates``).
    candidates : pyarrow.Table
        The unit results the detections came from (their stamps).
    store : NightStore
        For each CCD's WCS (the cutouts carry it).
    builder : AlertBuilder
    exposures : iterable of str, optional
        Only alerts of these exposure ids (e.g. those new in watch mode); default all.
    threads : int, optional
        Threads building packets; 1 builds them in this thread.
    ahead : int, optional
        Packets built and not yet taken, at most (default 4 x ``threads``). A consumer that sends
        them in batches (`AlertProducer.publish`) wants more than a batch: the threads then build
        the next batch while it sends one (a Rubin-size visit's 10,582 packets took 9.3 s to build
        and publish on an H100 node when they did not).
    only : collection of int, optional
        Only the alerts of these alert ids (of the exposures asked for); the other rows still
        give the history (``prv_detections``) of the packets built. Default all.

    Yields
    ------
    Alert
    """
    wanted = None if exposures is None else set(exposures)
    if wanted is not None and detections.num_rows:  # only these exposures' objects need their history
        objects = pc.unique(detections.column("object_id").take(pa.array(alerted_rows(detections, wanted))))
        detections = detections.filter(pc.is_in(detections.column("object_id"), objects))
    stamps = _StampRows(candidates)  # a packet's stamps in place: no copy of every candidate's (300 MB for a Rubin visit)
    rows = detections.to_pylist()
    history: dict[int, list[Detection]] = {}
    wcs_of = cache(lambda exposure, ccd: ccd_context(store, exposure, ccd).wcs)

    def packets() -> Iterator[dict[str, Any]]:
        for row in rows:
            detection = _detection(row, row["alert_type"])
            earlier = history.setdefault(int(row["object_id"]), [])
            if (row["alert_type"] is not None and (wanted is None or row["exposure_id"] in wanted)
                    and (only is None or row["alert_id"] in only)):
                stamp = stamps[int(row["row"])]  # float16: the cutout writer makes it float32 in the builder's thread
                x_peak, y_peak = row.get("x_peak", row["x"]), row.get("y_peak", row["y"])
                wcs = wcs_of(row["exposure"], row["ccd"])
                builder.writer_for(wcs)  # here, in one thread: the builders then share it read-only
                yield {"detection": detection, "object_id": int(row["object_id"]), "science": stamp[0],
                       "template": stamp[1], "difference": stamp[2], "wcs": wcs,
                       "origin": (round(x_peak) - STAMP_HALF, round(y_peak) - STAMP_HALF),
                       "prv_detections": tuple(earlier), "moving_object": _moving_object(row)}
            earlier.append(detection)

    def build(packet: dict[str, Any]) -> Alert:
        return builder.build(packet.pop("detection"), **packet)

    threads = threads or min(8, os.cpu_count() or 1)
    # zlib and numpy release the GIL: the packets' cutouts compress in parallel.
    yield from ordered_map(build, packets(), threads=threads, ahead=ahead or 4 * threads, name="alert-builder")


def alert_counts(detections: pa.Table) -> dict[str, int]:
    """Return the number of alerts of each type in a `decide` table."""
    types = detections.column("alert_type")
    counts = pc.value_counts(pc.drop_null(types)).to_pylist() if detections.num_rows else []
    return {item["values"]: int(item["counts"]) for item in counts}
