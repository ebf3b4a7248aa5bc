"""
The night's reduce step: candidates from the workers become detections on the sky, objects and
alerts.

1. `locate`: pixel to sky with each CCD's WCS (astropy), position errors from the PSF width and
   the S/N, PSF flux and AB magnitude from the S/N and the exposure's noise and zero point, the
   mid-exposure time in MJD (TAI).
2. `associate`: detections closer than ``night.match_radius_arcsec`` on the sky, in any
   exposure of the night, are one object (astropy's ``search_around_sky`` and connected
   components); the object's id derives from its earliest detection, so reruns keep it.
3. `decide`: a detection is alerted when its real/bogus reaches ``night.alert_min_real_bogus``;
   its type is the classifier's most probable of transient, variable and moving, or anomaly when
   no class reaches ``night.anomaly_max_class_probability``.
4. `build_alerts`: Avro alert packets with their cutouts and the object's earlier detections.

Notes
-----
Everything is a deterministic function of the unit results and the store, so a resumed night
gives the same detections, object ids and alert ids as an uninterrupted one.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from skyblink.config import NightConfig
from skyblink.engines.networks import CLASSIFIER_CLASSES
from skyblink.storage.alerts import (
    Alert,
    AlertBuilder,
    AlertType,
    Band,
    ClassProbabilities,
    Detection,
    DetectionFlag,
)
from skyblink.storage.alerts.packet import make_alert_id
from skyblink.workers.tile_unit import STAMP_HALF

from .results import stamps_of

__all__ = ["CcdContext", "alert_counts", "associate", "build_alerts", "ccd_context", "decide", "locate"]

#: AB magnitude of 1 nJy.
_AB_NJY_ZERO = 31.4
#: Floor of a position error (arcsec): WCS and centroiding systematics.
_POSITION_ERROR_FLOOR_ARCSEC = 0.01
_FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))
_ALERTABLE = ("transient", "variable", "moving")


@dataclass(frozen=True, slots=True)
class CcdContext:
    """What the reduce step needs to know of one CCD of one exposure."""

    wcs: Any  # astropy.wcs.WCS
    exposure_id: str
    field: str
    ccd: int
    band: Band
    mjd_tai: float  # mid-exposure
    pixel_scale_arcsec: float
    fwhm_px: float
    noise_adu: float  # per pixel, one sigma
    njy_per_adu: float | None  # None without a zero point


def ccd_context(store: Any, exposure: str, ccd: str) -> CcdContext:
    """
    Read one CCD's WCS, time, band, PSF width, noise and zero point from the store.

    Parameters
    ----------
    store : NightStore
    exposure : str
        Store key (``"exposures/F00-003"``).
    ccd : str

    Returns
    -------
    CcdContext

    Raises
    ------
    ValueError
        The exposure has no observation time, or its FILTER is not a known band.
    """
    from astropy.time import Time  # noqa: PLC0415 - astropy only where reducing
    from astropy.wcs.utils import proj_plane_pixel_scales  # noqa: PLC0415

    meta = store.ccd_metadata(exposure, ccd)
    header = store.header(exposure, ccd)
    wcs = store.wcs(exposure, ccd)
    if meta.get("mjd_obs") is None:
        msg = f"{exposure}/{ccd}: no MJD-OBS or DATE-OBS, an alert needs the observation time"
        raise ValueError(msg)
    exptime = float(meta.get("exptime") or header.get("EXPTIME") or 0.0)
    mjd_tai = float(Time(meta["mjd_obs"] + exptime / 2 / 86400.0, format="mjd", scale="utc").tai.mjd)
    band_name = str(meta.get("filter") or "").strip().lower()[:1]
    try:
        band = Band(band_name)
    except ValueError:
        msg = f"{exposure}/{ccd}: FILTER {meta.get('filter')!r} is not one of the bands {[b.value for b in Band]}"
        raise ValueError(msg) from None
    scale = float(proj_plane_pixel_scales(wcs.celestial)[0] * 3600.0)
    fwhm_px = float(header.get("SEEING", 1.0)) / scale
    gain = float(meta.get("gain") or header.get("GAIN") or 1.0)
    if "SKYLEVEL" in header:
        read_noise = float(meta.get("rdnoise") or header.get("RDNOISE") or 0.0)
        noise_adu = math.sqrt(max(float(header["SKYLEVEL"]), 0.0) * gain + read_noise**2) / gain
    else:  # robust estimate on the CCD's central window
        image = store.image(exposure, ccd)
        ny, nx = image.shape
        h = min(ny, 512) // 2
        w = min(nx, 512) // 2
        window = np.asarray(image[ny // 2 - h : ny // 2 + h, nx // 2 - w : nx // 2 + w], dtype=np.float64)
        window = window[np.isfinite(window)]
        noise_adu = float(1.4826 * np.median(np.abs(window - np.median(window))))
    magzp = header.get("MAGZP")
    njy_per_adu = None
    if magzp is not None and exptime > 0:
        # m = MAGZP - 2.5 log10(ADU / EXPTIME) and m = 31.4 - 2.5 log10(nJy).
        njy_per_adu = 10.0 ** (-0.4 * (float(magzp) - _AB_NJY_ZERO)) / exptime
    return CcdContext(
        wcs=wcs,
        exposure_id=exposure.rsplit("/", 1)[-1],
        field=str(meta.get("field") or ""),
        ccd=int(meta.get("ccdnum", 0)),
        band=band,
        mjd_tai=mjd_tai,
        pixel_scale_arcsec=scale,
        fwhm_px=fwhm_px,
        noise_adu=noise_adu,
        njy_per_adu=njy_per_adu,
    )


def locate(candidates: pa.Table, store: Any, night: str) -> pa.Table:
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
        The candidates' columns (stamps excluded) plus ``candidate_id`` (the detection's stable
        id), ``alert_id`` (the id of its packet, if alerted), ``exposure_id, field, ccd_num, band, mjd, ra, dec, ra_err, dec_err, flux, flux_err, mag, mag_err`` and one
        ``p_<class>`` column per classifier class; rows sorted by (mjd, exposure, ccd, y, x).
    """
    context = cache(lambda exposure, ccd: ccd_context(store, exposure, ccd))
    n = candidates.num_rows
    cols: dict[str, list[Any]] = {k: [] for k in (
        "candidate_id", "alert_id", "exposure_id", "field", "ccd_num", "band", "mjd", "ra", "dec", "ra_err", "dec_err",
        "flux", "flux_err", "mag", "mag_err")}
    exposures = candidates.column("exposure").to_pylist()
    ccds = candidates.column("ccd").to_pylist()
    xs = candidates.column("x").to_numpy()
    ys = candidates.column("y").to_numpy()
    snrs = candidates.column("snr").to_numpy().astype(np.float64)
    sky = np.zeros((n, 2))
    for key in sorted(set(zip(exposures, ccds, strict=True))):
        rows = np.array([i for i in range(n) if (exposures[i], ccds[i]) == key], dtype=int)
        world = context(*key).wcs.celestial.all_pix2world(np.column_stack([xs[rows], ys[rows]]), 0)
        sky[rows] = world
    for i in range(n):
        ctx = context(exposures[i], ccds[i])
        snr = float(snrs[i]) if math.isfinite(snrs[i]) and snrs[i] > 0 else float("nan")
        sigma_px = ctx.fwhm_px / _FWHM_PER_SIGMA
        pos_err = ctx.fwhm_px / (_FWHM_PER_SIGMA * snr) * ctx.pixel_scale_arcsec if snr == snr else 1.0
        pos_err = max(pos_err, _POSITION_ERROR_FLOOR_ARCSEC)
        # PSF-fit flux error of a Gaussian PSF: noise per pixel times sqrt(4 pi) sigma_psf.
        flux_err_adu = ctx.noise_adu * math.sqrt(4.0 * math.pi) * sigma_px
        njy = ctx.njy_per_adu if ctx.njy_per_adu is not None else float("nan")
        flux_err = flux_err_adu * njy
        flux = snr * flux_err
        mag = mag_err = None
        if flux > 0 and math.isfinite(flux):
            mag = _AB_NJY_ZERO - 2.5 * math.log10(flux)
            mag_err = 2.5 / math.log(10.0) / snr
        candidate_id = make_alert_id(night, ctx.exposure_id, ctx.ccd, (float(xs[i]), float(ys[i])))
        cols["candidate_id"].append(candidate_id)
        cols["alert_id"].append(make_alert_id(night, ctx.exposure_id, ctx.ccd, candidate_id))  # as AlertBuilder
        cols["exposure_id"].append(ctx.exposure_id)
        cols["field"].append(ctx.field)
        cols["ccd_num"].append(ctx.ccd)
        cols["band"].append(ctx.band.value)
        cols["mjd"].append(ctx.mjd_tai)
        cols["ra"].append(float(sky[i, 0]) % 360.0)
        cols["dec"].append(float(sky[i, 1]))
        cols["ra_err"].append(pos_err)
        cols["dec_err"].append(pos_err)
        cols["flux"].append(flux)
        cols["flux_err"].append(flux_err)
        cols["mag"].append(mag)
        cols["mag_err"].append(mag_err)
    table = candidates.drop_columns(["stamp", "class_probs"])
    probs = np.array(candidates.column("class_probs").to_pylist(), dtype=np.float32).reshape(n, len(CLASSIFIER_CLASSES))
    for j, name in enumerate(CLASSIFIER_CLASSES):
        table = table.append_column(f"p_{name}", pa.array(probs[:, j]))
    for name, values in cols.items():
        table = table.append_column(name, pa.array(values, type=pa.int64() if name in ("candidate_id", "alert_id", "ccd_num") else None))
    table = table.append_column("row", pa.array(np.arange(n)))
    return table.sort_by([("mjd", "ascending"), ("exposure", "ascending"), ("ccd", "ascending"),
                          ("y", "ascending"), ("x", "ascending")])


def associate(detections: pa.Table, radius_arcsec: float) -> pa.Table:
    """
    Group detections into objects: those within ``radius_arcsec`` of each other, transitively.

    Returns
    -------
    pyarrow.Table
        ``detections`` with an ``object_id`` column (int64): the candidate id of the object's
        earliest detection (``detections`` is sorted by time first, so the first row of a group).
    """
    n = detections.num_rows
    if n == 0:
        return detections.append_column("object_id", pa.array([], pa.int64()))
    from astropy import units as u  # noqa: PLC0415
    from astropy.coordinates import SkyCoord, search_around_sky  # noqa: PLC0415
    from scipy.sparse import coo_matrix  # noqa: PLC0415
    from scipy.sparse.csgraph import connected_components  # noqa: PLC0415

    coords = SkyCoord(detections.column("ra").to_numpy() * u.deg, detections.column("dec").to_numpy() * u.deg)
    left, right, _, _ = search_around_sky(coords, coords, radius_arcsec * u.arcsec)
    graph = coo_matrix((np.ones(len(left)), (left, right)), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    first = {}
    candidate_ids = detections.column("candidate_id").to_numpy()
    for i, label in enumerate(labels):
        first.setdefault(label, int(candidate_ids[i]))
    return detections.append_column("object_id", pa.array([first[label] for label in labels], pa.int64()))


def decide(detections: pa.Table, config: NightConfig) -> pa.Table:
    """
    Decide which detections are alerted and why.

    Returns
    -------
    pyarrow.Table
        ``detections`` with an ``alert_type`` column: ``"transient" | "variable" | "moving" |
        "anomaly"``, or null for a detection that is catalogued but not alerted.
    """
    rb = detections.column("real_bogus").to_numpy()
    probs = np.column_stack([detections.column(f"p_{c}").to_numpy() for c in _ALERTABLE]) if detections.num_rows else np.zeros((0, 3))
    top = np.column_stack([detections.column(f"p_{c}").to_numpy() for c in CLASSIFIER_CLASSES]).max(axis=1) if detections.num_rows else np.zeros(0)
    types: list[str | None] = []
    for i in range(detections.num_rows):
        if rb[i] < config.alert_min_real_bogus:
            types.append(None)
        elif top[i] < config.anomaly_max_class_probability:
            types.append(AlertType.ANOMALY.value)
        else:
            types.append(_ALERTABLE[int(np.argmax(probs[i]))])
    return detections.append_column("alert_type", pa.array(types, pa.string()))


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


def build_alerts(
    detections: pa.Table,
    candidates: pa.Table,
    store: Any,
    builder: AlertBuilder,
    *,
    exposures: Iterable[str] | None = None,
) -> Iterator[Alert]:
    """
    Build the alert packets of the alerted detections, in time order.

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

    Yields
    ------
    Alert
    """
    wanted = None if exposures is None else set(exposures)
    stamps = stamps_of(candidates)
    rows = detections.to_pylist()
    history: dict[int, list[Detection]] = {}
    wcs_of = cache(lambda exposure, ccd: store.wcs(exposure, ccd))
    for row in rows:
        detection = _detection(row, row["alert_type"])
        earlier = history.setdefault(int(row["object_id"]), [])
        if row["alert_type"] is not None and (wanted is None or row["exposure_id"] in wanted):
            stamp = stamps[int(row["row"])]
            origin = (round(row["x"]) - STAMP_HALF, round(row["y"]) - STAMP_HALF)
            yield builder.build(
                detection,
                object_id=int(row["object_id"]),
                science=stamp[0],
                template=stamp[1],
                difference=stamp[2],
                wcs=wcs_of(row["exposure"], row["ccd"]),
                origin=origin,
                prv_detections=tuple(earlier),
            )
        earlier.append(detection)


def alert_counts(detections: pa.Table) -> dict[str, int]:
    """Return the number of alerts of each type in a `decide` table."""
    types = detections.column("alert_type")
    counts = pc.value_counts(pc.drop_null(types)).to_pylist() if detections.num_rows else []
    return {item["values"]: int(item["counts"]) for item in counts}
