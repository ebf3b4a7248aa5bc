"""
Association on the sky: duplicate detections merged, detections matched with the static sources
of the field's reference image, and detections grouped into objects over the night.

* `reference_sources`: the static sky of a field, detected on its reference image in the store
  with the workers' own CPU operations (SEP-like background, matched-filter S/N, local maxima,
  windowed centroids) and put on the sky with the reference's WCS; cached as Parquet beside the
  catalogs (``catalogs/reference-<field>.parquet``), once per field.
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
import pyarrow.parquet as pq
from astropy import units as u
from astropy.coordinates import SkyCoord, search_around_sky
from scipy import ndimage
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from skyblink.storage.atomic import write_atomic
from skyblink.workers.background import estimate_background
from skyblink.workers.matched_filter import matched_filter_snr

from .measurement import windowed_centroid

__all__ = [
    "EXTENDED_MAX_CONCENTRATION",
    "REFERENCE_SCHEMA",
    "detect_static_sources",
    "group_objects",
    "match_reference",
    "merge_duplicates",
    "reference_catalog_path",
    "reference_ccd_sources",
    "reference_sources",
    "write_reference_catalog",
]

_FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))

#: Columns of a field's reference source catalog. Stable.
REFERENCE_SCHEMA = pa.schema([("ra", pa.float64()), ("dec", pa.float64()), ("x", pa.float64()), ("y", pa.float64()),
                              ("snr", pa.float32()), ("concentration", pa.float32()), ("extended", pa.bool_()),
                              ("ccd", pa.string())])
#: A point source holds 39 % of its flux within one PSF sigma of its centre, 99 % within three;
#: a source whose ratio of the two is below this is extended (a galaxy).
EXTENDED_MAX_CONCENTRATION = 0.25
_CATALOG_VERSION = 2


def detect_static_sources(image: np.ndarray, fwhm_px: float, *, snr_threshold: float = 5.0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """
    Detect point-like sources on an image (a reference).

    Parameters
    ----------
    image : (ny, nx) ndarray
        Pixels (ADU); non-finite ones are ignored.
    fwhm_px : float
        PSF FWHM in pixels.
    snr_threshold : float
        Minimum matched-filter S/N of a source.

    Returns
    -------
    x, y, snr : ndarray
        0-based pixel positions (windowed centroids) and S/N; empty when none.
    concentration : ndarray
        Flux within one PSF sigma of the centre over the flux within three (0.40 for a point
        source, less for an extended one).
    """
    data = np.asarray(image, dtype=np.float32)
    finite = np.isfinite(data)
    bkg = estimate_background(data, mask=~finite)
    sub = np.where(finite, (data - bkg.level) / np.maximum(bkg.rms, 1e-12), 0.0).astype(np.float32)
    snr = matched_filter_snr(sub, fwhm_px)
    peaks = (snr >= snr_threshold) & (snr == ndimage.maximum_filter(snr, size=5, mode="constant", cval=0.0))
    ys, xs = np.nonzero(peaks)
    sigma = fwhm_px / _FWHM_PER_SIGMA
    out_x, out_y, concentration = np.empty(len(xs)), np.empty(len(ys)), np.empty(len(xs), np.float32)
    ny, nx = sub.shape
    half = int(math.ceil(3.0 * sigma)) + 1
    for k, (x, y) in enumerate(zip(xs, ys, strict=True)):
        out_x[k], out_y[k], _ = windowed_centroid(sub, float(x), float(y), sigma, max_shift=1.5)
        y0, y1, x0, x1 = max(y - half, 0), min(y + half + 1, ny), max(x - half, 0), min(x + half + 1, nx)
        gy, gx = np.mgrid[y0:y1, x0:x1]
        r = np.hypot(gx - out_x[k], gy - out_y[k])
        window = sub[y0:y1, x0:x1]
        outer = float(window[r <= 3.0 * sigma].sum())
        concentration[k] = float(window[r <= sigma].sum()) / outer if outer > 0 else np.nan
    return out_x, out_y, snr[ys, xs].astype(np.float32), concentration


def reference_catalog_path(store: Any, field: str, snr_threshold: float) -> tuple[Any, str]:
    """Return the file system and path of a field's cached reference catalog."""
    import fsspec  # noqa: PLC0415

    fs, root = fsspec.core.url_to_fs(store.url)
    return fs, f"{root.rstrip('/')}/catalogs/reference-{field}-snr{snr_threshold:g}-v{_CATALOG_VERSION}.parquet"


def reference_ccd_sources(store: Any, field: str, ccd: str, *, snr_threshold: float = 5.0) -> pa.Table:
    """
    Detect the static sources of one CCD of a field's reference image.

    The unit of parallel work: `skyblink.cluster.night` runs one Ray task per reference CCD
    while the worker actors process tiles, so the catalog is ready when the reduce step needs it.

    Returns
    -------
    pyarrow.Table
        Of `REFERENCE_SCHEMA`.
    """
    from astropy.wcs.utils import proj_plane_pixel_scales  # noqa: PLC0415

    key = f"references/{field}"
    wcs = store.wcs(key, ccd)
    header = store.header(key, ccd)
    scale = float(proj_plane_pixel_scales(wcs.celestial)[0] * 3600.0)
    x, y, snr, concentration = detect_static_sources(np.asarray(store.image(key, ccd)), float(header.get("SEEING", 1.0)) / scale,
                                                     snr_threshold=snr_threshold)
    ra, dec = wcs.celestial.all_pix2world(x, y, 0) if len(x) else (np.zeros(0), np.zeros(0))
    return pa.table({"ra": np.asarray(ra) % 360.0, "dec": np.asarray(dec), "x": x, "y": y, "snr": snr,
                     "concentration": concentration,
                     "extended": np.nan_to_num(concentration, nan=1.0) < EXTENDED_MAX_CONCENTRATION,
                     "ccd": [ccd] * len(x)}, schema=REFERENCE_SCHEMA)


def write_reference_catalog(store: Any, field: str, parts: list[pa.Table], *, snr_threshold: float = 5.0) -> pa.Table:
    """
    Join a field's per-CCD catalogs, cache them under ``<store>/catalogs`` (atomically) and return them.

    Raises
    ------
    skyblink.storage.StoreWriteError
        The store refused the write (disk full, read-only): one line naming the file.
    """
    fs, path = reference_catalog_path(store, field, snr_threshold)
    table = pa.concat_tables(parts) if parts else REFERENCE_SCHEMA.empty_table()
    write_atomic(fs, path, lambda fh: pq.write_table(table, fh, compression="zstd"))
    return table


def reference_sources(store: Any, field: str, *, snr_threshold: float = 5.0, refresh: bool = False) -> pa.Table:
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
    fs, path = reference_catalog_path(store, field, snr_threshold)
    if not refresh and fs.exists(path):
        with fs.open(path, "rb") as fh:
            return pq.read_table(fh).cast(REFERENCE_SCHEMA)
    key = f"references/{field}"
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
    if n < 2:  # noqa: PLR2004
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
