"""
The classic baseline: SEP (SExtractor as a library) on the same difference images as the tile
program, turned into a detections catalog that the reduce and scoring code take like ours.

The store keeps no difference images, so each work unit's difference is made again by the tile
program's own preparation (`skyblink.workers.tile_unit.prepare_tile`, which
`skyblink.workers.tile_unit.process_tile` runs before its detector). SEP then extracts at
``thresh`` (per-pixel sigma, default 1.5 with 5 connected pixels, SExtractor's default
detection) with its default 3x3 filter; each source gets SEP's windowed position
(``sep.winpos``), its aperture S/N in a radius of 0.68 FWHM (the optimal aperture of a Gaussian),
and a trail from its second moments (as ours). Sources of S/N below the tile program's
``snr_threshold`` or outside the unit's core (`WorkUnit.owns`, the tile program's rule) are dropped.

Notes
-----
Single process. Experimental.
"""

from __future__ import annotations

import math
from functools import cache
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import sep
from astropy import units as u
from astropy.coordinates import SkyCoord

from skyblink.psf_units import FWHM_PER_SIGMA
from skyblink.reduce.steps import (
    associate,
    ccd_context,
    link_moving,
    match_static,
    merge_tile_duplicates,
)
from skyblink.workers.program_config import TileProgram
from skyblink.workers.tile_unit import WorkUnit, prepare_tile

if TYPE_CHECKING:
    from skyblink.storage import NightStore

__all__ = ["difference_window", "sep_detections"]


def difference_window(unit: WorkUnit, store: NightStore,
                      program: TileProgram | None = None) -> tuple[np.ndarray, float, tuple[int, int]]:
    """
    Return a work unit's difference image (sigma units) as the tile program makes it.

    The window is the tile program's own (`skyblink.workers.tile_unit.prepare_tile`: calibration,
    cosmic rays, warp, beyond-CCD masking, background, PSF matching, difference), so the SEP
    baseline measures exactly what the detector sees and cannot drift from it.

    Parameters
    ----------
    unit : WorkUnit
    store : NightStore
    program : TileProgram, optional
        The night's program (its ``[headers]`` keywords, ``psf_match``, cosmic-ray rejection);
        default: the configuration's defaults.

    Returns
    -------
    difference : (h, w) ndarray of float32
        The unit's window (core plus margin, rounded up to a multiple of 32).
    fwhm_px : float
        PSF FWHM of the difference (the broader of science and reference).
    origin : (int, int)
        (y, x) of the window's first pixel in the CCD.
    """
    prepared = prepare_tile(unit, store, program)
    return prepared.matched.triplet[2], max(prepared.fwhm_px), prepared.origin


def sep_detections(units: list[WorkUnit], store: NightStore, program: TileProgram | None = None, *, thresh: float = 1.5,
                   minarea: int = 5) -> pa.Table:
    """
    Run SEP on the difference image of every unit and return its sources as candidates.

    Parameters
    ----------
    units : list of WorkUnit
    store : NightStore
    program : TileProgram, optional
        The night's program: its difference images, and its ``snr_threshold`` as the minimum
        aperture S/N kept; default: the configuration's defaults.
    thresh : float
        SEP's detection threshold in units of the per-pixel noise.
    minarea : int
        Connected pixels a source needs.

    Returns
    -------
    pyarrow.Table
        Columns ``exposure, ccd, x, y, snr, trail_length_px, trail_angle_deg`` (CCD pixels,
        0-based; trail 0 and angle NaN for untrailed sources).

    Raises
    ------
    ImportError
        ``sep`` is not installed (``pip install sep``).
    """
    program = program or TileProgram()
    rows: dict[str, list[Any]] = {k: [] for k in ("exposure", "ccd", "x", "y", "snr", "trail_length_px", "trail_angle_deg")}
    for unit in units:
        diff, fwhm, (oy, ox) = difference_window(unit, store, program)
        data = np.ascontiguousarray(diff, dtype=np.float32)
        objects = sep.extract(data, thresh, err=1.0, minarea=minarea)
        if len(objects) == 0:
            continue
        sigma = fwhm / FWHM_PER_SIGMA
        x, y, _ = sep.winpos(data, objects["x"], objects["y"], np.full(len(objects), sigma))
        flux, flux_err, _ = sep.sum_circle(data, x, y, 0.68 * fwhm, err=1.0)
        snr = flux / np.maximum(flux_err, 1e-12)
        a2, b2 = objects["a"].astype(float) ** 2, objects["b"].astype(float) ** 2
        # SEP's a, b are the footprint's moments: the same trail rule as ours.
        length = np.sqrt(np.maximum(12.0 * (a2 - b2), 0.0))
        trailed = length > 1.5 * fwhm
        core = unit.owns(y, x) & (snr >= program.snr_threshold) & np.isfinite(x) & np.isfinite(y)
        for k in np.flatnonzero(core):
            rows["exposure"].append(unit.exposure)
            rows["ccd"].append(unit.ccd)
            rows["x"].append(float(x[k] + ox))
            rows["y"].append(float(y[k] + oy))
            rows["snr"].append(float(snr[k]))
            rows["trail_length_px"].append(float(length[k]) if trailed[k] else 0.0)
            rows["trail_angle_deg"].append(float(np.degrees(objects["theta"][k]) % 180.0) if trailed[k] else float("nan"))
    return pa.table(rows, schema=pa.schema([("exposure", pa.string()), ("ccd", pa.string()), ("x", pa.float64()),
                                            ("y", pa.float64()), ("snr", pa.float64()), ("trail_length_px", pa.float64()),
                                            ("trail_angle_deg", pa.float64())]))


def sep_catalog(sources: pa.Table, store: NightStore, config: Any) -> pa.Table:
    """
    Reduce SEP's sources like the night's candidates: sky positions, duplicates merged, reference
    matched, moving objects linked, objects associated; every source is an alert.

    Parameters
    ----------
    sources : pyarrow.Table
        From `sep_detections`.
    store : NightStore
    config : NightConfig

    Returns
    -------
    pyarrow.Table
        The columns of the night's detections catalog that scoring reads (``exposure_id,
        ccd_num, field, mjd, x, y, ra, dec, ra_err, snr, real_bogus`` (the S/N, SEP's only
        score), ``trailed``, the tracklet columns, ``object_id`` and ``alert_type``).
    """

    context = cache(lambda exposure, ccd: ccd_context(store, exposure, ccd))
    n = sources.num_rows
    exposures, ccds = sources.column("exposure").to_pylist(), sources.column("ccd").to_pylist()
    xs, ys = sources.column("x").to_numpy(), sources.column("y").to_numpy()
    snr = sources.column("snr").to_numpy()
    length_px = sources.column("trail_length_px").to_numpy()
    angle = sources.column("trail_angle_deg").to_numpy()
    cols: dict[str, list[Any]] = {k: [] for k in ("exposure_id", "field", "ccd_num", "mjd", "exptime", "fwhm_arcsec", "ra",
                                                   "dec", "ra_err", "trail_length_arcsec", "trail_pa", "candidate_id")}
    for i in range(n):
        ctx = context(exposures[i], ccds[i])
        wcs = ctx.wcs.celestial
        ra, dec = (float(v) for v in wcs.all_pix2world(xs[i], ys[i], 0))
        pa_deg = float("nan")
        if length_px[i] > 0:
            a = math.radians(angle[i])
            ra1, dec1 = (float(v) for v in wcs.all_pix2world(xs[i] + math.cos(a), ys[i] + math.sin(a), 0))
            pa_deg = SkyCoord(ra * u.deg, dec * u.deg).position_angle(SkyCoord(ra1 * u.deg, dec1 * u.deg)).deg % 180.0
        fwhm = ctx.difference_fwhm_px or ctx.fwhm_px
        spread = math.hypot(fwhm / FWHM_PER_SIGMA, length_px[i] / math.sqrt(12.0))
        cols["exposure_id"].append(ctx.exposure_id)
        cols["field"].append(ctx.field)
        cols["ccd_num"].append(ctx.ccd)
        cols["mjd"].append(ctx.mjd_tai)
        cols["exptime"].append(ctx.exptime)
        cols["fwhm_arcsec"].append(fwhm * ctx.pixel_scale_arcsec)
        cols["ra"].append(ra % 360.0)
        cols["dec"].append(dec)
        cols["ra_err"].append(max(math.sqrt(2.0) * spread / snr[i] * ctx.pixel_scale_arcsec, 0.01))
        cols["trail_length_arcsec"].append(float(length_px[i]) * ctx.pixel_scale_arcsec)
        cols["trail_pa"].append(pa_deg)
        cols["candidate_id"].append(i)
    table = pa.table({**cols, "x": xs, "y": ys, "snr": snr, "real_bogus": snr, "trailed": length_px > 0})
    table = table.sort_by([("mjd", "ascending"), ("exposure_id", "ascending"), ("y", "ascending"), ("x", "ascending")])
    table = merge_tile_duplicates(table, config.match_radius_arcsec)
    table = match_static(table, store, config.match_radius_arcsec, snr_threshold=config.reference_snr_threshold)
    table, _ = link_moving(table, config.model_copy(update={"link_min_real_bogus": 0.0}))
    table = associate(table, config.match_radius_arcsec)
    linked = table.column("tracklet_id").is_valid().to_numpy(zero_copy_only=False)
    known = (table.column("reference_index").to_numpy() >= 0) & ~table.column("reference_extended").to_numpy(zero_copy_only=False)
    trailed = table.column("trailed").to_numpy(zero_copy_only=False)
    types = np.where(linked | trailed, "moving", np.where(known, "variable", "transient"))
    return table.append_column("alert_type", pa.array(types.tolist(), pa.string()))
