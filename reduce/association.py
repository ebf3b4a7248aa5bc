"""
Association on the sky: duplicate detections merged, detections matched with the static sources
of the field's reference image, and detections grouped into objects over the night.

* `reference_sources`: the static sky of a field, detected on its reference image in the store
  (`detect_static_sources`: SEP's background, the workers' matched-filter S/N, local maxima,
  windowed centroids, all vectorised over the sources, at about SEP's own extraction speed) and
  put on the sky with the reference's WCS; cached as Parquet beside the catalogs
  (``catalogs/reference-<field>.parquet``), once per field.
* `match_reference`: the nearest reference source of each detection
  (`~astropy.coordinates.SkyCoord.match_to_catalog_sky`).
* `merge_duplicates`: detections of one exposure closer than a radius (a source reported by two
  tiles, or several peaks along one trail) become the one with the highest S/N.
* `group_objects`: detections within a radius of each other, transitively, over the whole night
  (`~astropy.coordinates.search_around_sky` and connected components), are one object.

Notes
-----
Pure functions apart from `reference_sources`, which reads the store and writes its cache.
Thread-safe. Experimental.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pyarrow as pa
import sep
from astropy import units as u
from astropy.coordinates import SkyCoord, search_around_sky
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from skyblink.psf_filter import matched_filter_snr
from skyblink.psf_units import FWHM_PER_SIGMA
from skyblink.storage.night_store import NightStore
from skyblink.storage.schemas.tables import REFERENCE_SCHEMA

from .measurement import measure_ccd_fwhm, windowed_centroids

__all__ = [
    "EXTENDED_MAX_CONCENTRATION",
    "REFERENCE_SCHEMA",  # re-exported from skyblink.storage.schemas.tables, where it is declared
    "detect_static_sources",
    "group_objects",
    "match_reference",
    "merge_duplicates",
    "reference_catalog_path",
    "reference_ccd_sources",
    "reference_ccd_task",
    "reference_sources",
    "write_reference_catalog",
]


#: Columns of a field's reference source catalog. Stable.
#: A point source holds 39 % of its flux within one PSF sigma of its centre, 99 % within three;
#: a source whose ratio of the two is below this is extended (a galaxy).
EXTENDED_MAX_CONCENTRATION = 0.25
_CATALOG_VERSION = 3  # 3: SEP's background (sep.Background) instead of its numpy port
#: A source is the largest S/N of its (2 x this + 1)^2 pixels.
_PEAK_HALF = 2
#: A windowed centroid farther than this from its peak pixel gives way to the peak (pixels).
_MAX_CENTROID_SHIFT = 1.5
#: Sources measured at once (bounds the stamps' temporaries).
_CHUNK = 4096


def detect_static_sources(image: np.ndarray, fwhm_px: float, *, snr_threshold: float = 5.0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """
    Detect point-like sources on an image (a reference).

    SEP's background and noise (``sep.Background``: 64-pixel meshes, 3x3 filter) are subtracted
    and divided out; a source is a pixel of the matched-filter S/N map
    (`~skyblink.psf_filter.matched_filter_snr`) at or above ``snr_threshold`` and
    the largest of its 5x5 neighbourhood; its position is the windowed centroid
    (`~skyblink.reduce.measurement.windowed_centroids`, the peak pixel where it moves by more
    than 1.5 pixels). All of it is vectorised over the sources.

    Parameters
    ----------
    image : (ny, nx) ndarray
        Pixels (ADU); non-finite ones are ignored.
    fwhm_px : float
        PSF FWHM in pixels.
    snr_threshold : float
        Minimum matched-filter S/N of a source (positive).

    Returns
    -------
    x, y, snr : ndarray
        0-based pixel positions (windowed centroids) and S/N, in the row-major order of the peak
        pixels; empty when none.
    concentration : ndarray
        Flux within one PSF sigma of the centre over the flux within three (0.40 for a point
        source, less for an extended one; NaN where the latter is not positive).

    Raises
    ------
    ValueError
        If ``image`` is not 2-D or ``snr_threshold`` is not positive.
    """
    if np.ndim(image) != 2:
        msg = f"image must be 2-D, got shape {np.shape(image)}"
        raise ValueError(msg)
    if not snr_threshold > 0:
        msg = f"snr_threshold must be positive, got {snr_threshold!r}"
        raise ValueError(msg)
    sub = np.array(image, dtype=np.float32, order="C")  # a native copy: SEP subtracts in place
    unusable: np.ndarray | None = ~np.isfinite(sub)
    if unusable is not None and unusable.any():
        sub[unusable] = 0.0
        bkg = sep.Background(sub, mask=unusable)
    else:
        unusable = None
        bkg = sep.Background(sub)
    bkg.subfrom(sub)
    rms = bkg.rms()
    np.maximum(rms, np.float32(1e-12), out=rms)
    sub /= rms
    if unusable is not None:
        sub[unusable] = 0.0
    snr = matched_filter_snr(sub, fwhm_px)
    ys, xs = _local_maxima(snr, snr_threshold, _PEAK_HALF)
    sigma = fwhm_px / FWHM_PER_SIGMA
    n = len(xs)
    out_x, out_y, concentration = np.empty(n), np.empty(n), np.empty(n, np.float32)
    for start in range(0, n, _CHUNK):
        part = slice(start, start + _CHUNK)
        out_x[part], out_y[part] = _windowed_positions(sub, xs[part], ys[part], sigma)
        concentration[part] = _concentration(sub, out_x[part], out_y[part], xs[part], ys[part], sigma)
    return out_x, out_y, snr[ys, xs].astype(np.float32), concentration


def _stamps(image: np.ndarray, xs: np.ndarray, ys: np.ndarray, half: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(n, 2 half + 1, 2 half + 1) pixels about each (x, y) pixel, 0 beyond the image; and their rows and columns."""
    ny, nx = image.shape
    steps = np.arange(-half, half + 1)
    rows, cols = ys[:, None] + steps, xs[:, None] + steps
    inside = ((rows >= 0) & (rows < ny))[:, :, None] & ((cols >= 0) & (cols < nx))[:, None, :]
    pixels = image[np.clip(rows, 0, ny - 1)[:, :, None], np.clip(cols, 0, nx - 1)[:, None, :]]
    return np.where(inside, pixels, np.float32(0.0)), rows, cols


def _local_maxima(snr: np.ndarray, threshold: float, half: int) -> tuple[np.ndarray, np.ndarray]:
    """
    (rows, columns), in row-major order, of the pixels at or above ``threshold`` (positive)
    that are the largest of their ``2 half + 1`` square (ties are all kept), as
    ``snr == maximum_filter(snr, 2 half + 1, mode="constant", cval=0)``, looking only at the
    pixels above the threshold.
    """
    ny, nx = snr.shape
    ys, xs = np.divmod(np.flatnonzero(snr >= threshold), nx)
    values = snr[ys, xs]
    keep = np.ones(len(ys), bool)
    for dy in range(-half, half + 1):
        yy = ys + dy
        row_inside = (yy >= 0) & (yy < ny)
        yy = np.clip(yy, 0, ny - 1)
        for dx in range(-half, half + 1):
            if dy or dx:
                xx = xs + dx
                inside = row_inside & (xx >= 0) & (xx < nx)
                keep &= ~inside | (values >= snr[yy, np.clip(xx, 0, nx - 1)])
    return ys[keep], xs[keep]


def _windowed_positions(sub: np.ndarray, xs: np.ndarray, ys: np.ndarray, sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """Windowed centroids (x, y) started on the peak pixels, the peak pixel where one moves more than 1.5 pixels."""
    # The window is read within ceil(4 sigma) + 1 pixels of the rounded position, which stays
    # within 2 pixels of the peak: stamps 2 pixels wider hold every pixel it reads.
    half = int(math.ceil(4.0 * sigma)) + 1 + 2
    stamps, _, _ = _stamps(sub, xs, ys, half)
    centre = np.full(len(xs), float(half))
    x, y, _ = windowed_centroids(stamps, centre, centre, sigma, max_shift=_MAX_CENTROID_SHIFT)
    return x - half + xs, y - half + ys


def _concentration(sub: np.ndarray, x: np.ndarray, y: np.ndarray, xs: np.ndarray, ys: np.ndarray, sigma: float) -> np.ndarray:
    """Sum of the pixels (centres) within sigma of (x, y) over the sum within 3 sigma; NaN where that is not positive."""
    stamps, rows, cols = _stamps(sub, xs, ys, int(math.ceil(3.0 * sigma)) + 1)
    r = np.hypot(cols[:, None, :] - x[:, None, None], rows[:, :, None] - y[:, None, None])
    outer = np.where(r <= 3.0 * sigma, stamps, np.float32(0.0)).sum(axis=(1, 2), dtype=np.float64)
    inner = np.where(r <= sigma, stamps, np.float32(0.0)).sum(axis=(1, 2), dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(outer > 0, inner / np.where(outer > 0, outer, 1.0), np.nan).astype(np.float32)


def reference_catalog_path(store: NightStore, field: str, snr_threshold: float) -> tuple[Any, str]:
    """Return the file system and path of a field's cached reference catalog (`NightStore.files`)."""
    return store.files.fs, store.files.reference_catalog_path(field, snr_threshold, _CATALOG_VERSION)


def reference_ccd_sources(store: NightStore, field: str, ccd: str, *, snr_threshold: float = 5.0) -> pa.Table:
    """
    Detect the static sources of one CCD of a field's reference image.

    The unit of parallel work: `skyblink.cluster.night` runs one Ray task per reference CCD
    while the worker actors process tiles, so the catalog is ready when the reduce step needs it.

    Returns
    -------
    pyarrow.Table
        Of `REFERENCE_SCHEMA`.
    """
    key = store.reference_key(field)
    context = store.ccd_context(key, ccd, measure_fwhm=measure_ccd_fwhm)  # the reference's own PSF
    wcs = context.wcs
    x, y, snr, concentration = detect_static_sources(np.asarray(store.image(key, ccd)), context.fwhm_px,
                                                     snr_threshold=snr_threshold)
    ra, dec = wcs.celestial.all_pix2world(x, y, 0) if len(x) else (np.zeros(0), np.zeros(0))
    return pa.table({"ra": np.asarray(ra) % 360.0, "dec": np.asarray(dec), "x": x, "y": y, "snr": snr,
                     "concentration": concentration,
                     "extended": np.nan_to_num(concentration, nan=1.0) < EXTENDED_MAX_CONCENTRATION,
                     "ccd": [ccd] * len(x)}, schema=REFERENCE_SCHEMA)


def reference_ccd_task(store_url: str, field: str, ccd: str, snr_threshold: float) -> pa.Table:
    """
    `reference_ccd_sources` on the store at ``store_url``: the body of the night run's Ray task.

    It lives here, in a module that imports neither the night run nor the worker side, so that a
    Ray worker unpickling it imports the catalog code only (no torch).
    """
    return reference_ccd_sources(NightStore(store_url), field, ccd, snr_threshold=snr_threshold)


def write_reference_catalog(store: NightStore, field: str, parts: list[pa.Table], *, snr_threshold: float = 5.0) -> pa.Table:
    """
    Join a field's per-CCD catalogs, cache them under ``<store>/catalogs`` (atomically) and return them.

    Raises
    ------
    skyblink.storage.StoreWriteError
        The store refused the write (disk full, read-only): one line naming the file.
    """
    _, path = reference_catalog_path(store, field, snr_threshold)
    table = pa.concat_tables(parts) if parts else REFERENCE_SCHEMA.empty_table()
    store.files.write(path, table, REFERENCE_SCHEMA)
    return table


def reference_sources(store: NightStore, field: str, *, snr_threshold: float = 5.0, refresh: bool = False) -> pa.Table:
    """
    Return the static sources of a field's reference image, detecting them on first use.

    Parameters
    ----------
    store : NightStore
        Holds ``references/<field>``; the catalog is cached under ``<store>/catalogs``.
    field : str
    snr_threshold : float
        Minimum matched-filter S/N of a reference source.
    refresh : bool
        Detect again even when a cached catalog exists.

    Returns
    -------
    pyarrow.Table
        Of `REFERENCE_SCHEMA` (``extended``: a galaxy by its concentration); empty when the
        store has no reference of the field.
    """
    _, path = reference_catalog_path(store, field, snr_threshold)
    if not refresh and store.files.exists(path):
        return store.files.read(path, REFERENCE_SCHEMA)
    key = store.reference_key(field)
    if key not in store.exposure_keys("reference"):
        return REFERENCE_SCHEMA.empty_table()
    parts = [reference_ccd_sources(store, field, ccd, snr_threshold=snr_threshold) for ccd in store.ccd_names(key)]
    return write_reference_catalog(store, field, parts, snr_threshold=snr_threshold)


def match_reference(ra: np.ndarray, dec: np.ndarray, reference: pa.Table, radius_arcsec: float) -> tuple[np.ndarray, np.ndarray]:
    """
    Match positions with a reference source catalog.

    Parameters
    ----------
    ra, dec : ndarray
        Degrees.
    reference : pyarrow.Table
        With ``ra`` and ``dec`` columns (degrees).
    radius_arcsec : float
        Farther matches do not count.

    Returns
    -------
    index : ndarray of int
        Row of the nearest reference source within the radius, -1 where none.
    separation : ndarray
        Distance to the nearest reference source, arcsec (inf when the catalog is empty).
    """
    ra, dec = np.asarray(ra, float), np.asarray(dec, float)
    if len(ra) == 0 or reference.num_rows == 0:
        return np.full(len(ra), -1, int), np.full(len(ra), np.inf)
    coords = SkyCoord(ra * u.deg, dec * u.deg)
    catalog = SkyCoord(reference.column("ra").to_numpy() * u.deg, reference.column("dec").to_numpy() * u.deg)
    index, sep2d, _ = coords.match_to_catalog_sky(catalog)
    separation = sep2d.to_value(u.arcsec)
    return np.where(separation <= radius_arcsec, index, -1).astype(int), separation


def merge_duplicates(group: np.ndarray, ra: np.ndarray, dec: np.ndarray, snr: np.ndarray, radius_arcsec: np.ndarray | float) -> np.ndarray:
    """
    Keep one detection of each cluster of detections of one exposure.

    Parameters
    ----------
    group : ndarray
        Exposure (and CCD) of each detection: only detections of one group merge.
    ra, dec : ndarray
        Degrees.
    snr : ndarray
        The detection with the highest S/N of a cluster is kept.
    radius_arcsec : float or ndarray
        Detections closer than this (per detection: the larger of the pair's) are one source.

    Returns
    -------
    ndarray of bool
        True for the detections kept.
    """
    n = len(ra)
    keep = np.ones(n, bool)
    if n < 2:
        return keep
    radius = np.broadcast_to(np.asarray(radius_arcsec, float), (n,))
    coords = SkyCoord(np.asarray(ra) * u.deg, np.asarray(dec) * u.deg)
    left, right, sep2d, _ = search_around_sky(coords, coords, float(radius.max()) * u.arcsec)
    group = np.asarray(group)
    close = (left != right) & (group[left] == group[right]) & (sep2d.to_value(u.arcsec) <= np.maximum(radius[left], radius[right]))
    if not close.any():
        return keep
    graph = coo_matrix((np.ones(int(close.sum())), (left[close], right[close])), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    order = np.lexsort((np.arange(n), -np.asarray(snr, float)))
    seen: set[int] = set()
    for i in order:
        if labels[i] in seen:
            keep[i] = False
        seen.add(int(labels[i]))
    return keep


def group_objects(ra: np.ndarray, dec: np.ndarray, radius_arcsec: float) -> np.ndarray:
    """
    Label detections within ``radius_arcsec`` of each other, transitively, as one object.

    Parameters
    ----------
    ra, dec : ndarray
        Degrees.
    radius_arcsec : float

    Returns
    -------
    ndarray of int
        A label per detection; the labels of a group are equal, labels count from 0 in order of
        each group's first detection.
    """
    n = len(ra)
    if n == 0:
        return np.zeros(0, int)
    coords = SkyCoord(np.asarray(ra) * u.deg, np.asarray(dec) * u.deg)
    left, right, _, _ = search_around_sky(coords, coords, radius_arcsec * u.arcsec)
    graph = coo_matrix((np.ones(len(left)), (left, right)), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    first: dict[int, int] = {}
    for label in labels:
        first.setdefault(int(label), len(first))
    return np.array([first[int(label)] for label in labels], dtype=int)
