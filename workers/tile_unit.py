"""
Work units (one tile of one CCD of one exposure) and their processing on the CPU.

The steps, the same on the GPU (`skyblink.workers.device_program`): calibrate the science
window to electrons (gain from the header, bias and flat where given; saturated pixels
masked), reject cosmic rays and hot pixels (L.A.Cosmic) and clean them, warp the reference,
build the normalised triplet, run the detector, keep the peaks whose matched-filter S/N in the
difference reaches ``snr_threshold`` and the difference's own significant point-like sources
(`skyblink.workers.peaks.difference_point_sources`), cut stamps and classify them.

A tile is read from the night's store with a margin on every side, so that sources near its
edge see their surroundings; the detector runs on the whole window and only the peaks inside the
tile's own core are reported, so a source in the overlap of two windows is reported once, by the
tile that owns its pixel.

Notes
-----
Pure CPU (numpy, ONNX Runtime through the runners passed in); the GPU path runs the same steps
with `skyblink.workers.device_program`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from skyblink.headers import HeaderFactError, HeadersConfig, psf_fwhm_px
from skyblink.stamps import STAMP_HALF

from .align import sampling_grid, warp
from .calibration import CalibrationSpec, calibrate
from .cosmics import detect_cosmics
from .difference import MatchedDifference, flux_scale, matched_difference
from .matched_filter import DEFAULT_SNR_THRESHOLD, matched_filter_snr
from .peaks import find_peaks

__all__ = ["CandidateRecord", "PreparedTile", "WorkUnit", "ccd_fwhm_px", "noise_pedestal", "plan_tiles", "prepare_tile",
           "process_tile", "read_window"]



@dataclass(frozen=True, slots=True)
class WorkUnit:
    """One tile to process: what crosses from the cluster to a worker. Stable."""

    store_url: str
    exposure: str  # store key, e.g. "exposures/F00-003"
    ccd: str  # "ccd000"
    y0: int  # first row of the tile's core in the CCD
    x0: int
    size: int  # core edge in pixels
    margin: int  # context read on every side (a multiple of 16)

    @property
    def key(self) -> str:
        """Unique, stable id of the unit (results are written under it, idempotently)."""
        return f"{self.exposure}/{self.ccd}/{self.y0}-{self.x0}"


@dataclass(frozen=True, slots=True)
class CandidateRecord:
    """One candidate found in a tile: what a worker returns. Stable."""

    unit: str
    exposure: str
    ccd: str
    x: float  # CCD pixel coordinates, 0-based
    y: float
    score: float  # detector new-source score
    snr: float  # matched-filter S/N of a point source in the difference (at least the tile's snr_threshold)
    real_bogus: float
    class_probs: tuple[float, ...]
    stamp: np.ndarray  # (3, 63, 63) float16: science, reference, difference in sigma units


#: Largest finite float16: stamps are stored in float16, saturated cores can exceed it in sigma units.
FLOAT16_MAX = float(np.finfo(np.float16).max)


def _to_float16(stamp: np.ndarray) -> np.ndarray:
    return np.clip(stamp, -FLOAT16_MAX, FLOAT16_MAX).astype(np.float16)


def plan_tiles(store: Any, exposure: str, *, size: int, margin: int = 32) -> list[WorkUnit]:
    """Return the work units covering every CCD of an exposure with cores of ``size`` pixels."""
    units = []
    for ccd in store.ccd_names(exposure):
        ny, nx = store.image(exposure, ccd).shape
        for y0 in range(0, ny, size):
            for x0 in range(0, nx, size):
                units.append(WorkUnit(store.url, exposure, ccd, y0, x0, size, margin))
    return units


def read_window(array: Any, y0: int, x0: int, h: int, w: int) -> np.ndarray:
    """Read [y0, y0+h) x [x0, x0+w) from a 2-D (Zarr or numpy) array as float32, NaN outside it."""
    ny, nx = array.shape
    out = np.full((h, w), np.nan, dtype=np.float32)
    ys, xs = max(0, y0), max(0, x0)
    ye, xe = min(ny, y0 + h), min(nx, x0 + w)
    if ye > ys and xe > xs:
        out[ys - y0 : ye - y0, xs - x0 : xe - x0] = array[ys:ye, xs:xe]
    return out


@dataclass(frozen=True, slots=True)
class PreparedTile:
    """
    One work unit's window after the image steps, before detection: what `process_tile` detects on.

    Attributes
    ----------
    origin : (int, int)
        CCD pixel (y, x) of the window's first pixel (the core starts ``margin`` further in).
    matched : MatchedDifference
        The triplet, the difference and its noise; difference and noise in electrons.
    gain : float
        Electrons per science ADU used (1 when the header has no gain).
    fwhm_px : (float, float)
        PSF FWHM of the science and the reference, pixels.
    """

    origin: tuple[int, int]
    matched: MatchedDifference
    gain: float
    fwhm_px: tuple[float, float]


def prepare_tile(unit: WorkUnit, store: Any, *, bias: float | Any | None = None, flat: Any | None = None,
                 reject_cosmics: bool = True, headers: HeadersConfig | None = None,
                 psf_match: Literal["gaussian", "kernel"] = "gaussian") -> PreparedTile:
    """
    Run the image steps of the per-tile program on one work unit: calibration, cosmic rays, warp
    of the reference by both WCS, background, PSF matching and difference.

    Parameters and notes as `process_tile`; ``headers`` names the header keywords (the
    ``[headers]`` configuration section); ``psf_match`` is `matched_difference`'s (a Gaussian of
    the FWHMs, or a kernel solved on the window's sources).

    Raises
    ------
    HeaderFactError
        No PSF size in a header and none measurable.
    """
    from astropy.wcs.utils import proj_plane_pixel_scales  # noqa: PLC0415 - astropy only where a tile is processed

    sci_header = store.header(unit.exposure, unit.ccd)
    reference_key = store.reference_of(unit.exposure, unit.ccd)
    ref_ccd = unit.ccd
    sci_wcs, ref_wcs = store.wcs(unit.exposure, unit.ccd), store.wcs(reference_key, ref_ccd)
    ref_header = store.header(reference_key, ref_ccd)
    edge = unit.size + 2 * unit.margin
    h = w = int(math.ceil(edge / 32) * 32)  # the detector takes multiples of 32
    oy, ox = unit.y0 - unit.margin, unit.x0 - unit.margin
    raw = read_window(store.image(unit.exposure, unit.ccd), oy, ox, h, w)
    beyond_ccd = ~np.isfinite(raw)
    spec = CalibrationSpec.from_header(sci_header, headers)
    calibrated = calibrate(raw, gain=spec.gain, saturate=spec.saturate,
                           bias=read_window(bias, oy, ox, h, w) if bias is not None and np.ndim(bias) == 2 else bias,
                           flat=None if flat is None else read_window(flat, oy, ox, h, w))
    science, bad = calibrated.electrons, calibrated.mask
    if reject_cosmics:
        pedestal = noise_pedestal(science, spec.read_noise, bad)
        cosmics = detect_cosmics(science + pedestal, read_noise=spec.read_noise, mask=bad | ~np.isfinite(science))
        science, bad = cosmics.cleaned - pedestal, bad | cosmics.mask
    grid = sampling_grid(sci_wcs, ref_wcs, (h, w), origin=(oy, ox))
    rx0, ry0 = int(np.floor(np.nanmin(grid[0]))) - 2, int(np.floor(np.nanmin(grid[1]))) - 2
    rx1, ry1 = int(np.ceil(np.nanmax(grid[0]))) + 3, int(np.ceil(np.nanmax(grid[1]))) + 3
    ref_image = store.image(reference_key, ref_ccd)
    ref_window = read_window(ref_image, ry0, rx0, ry1 - ry0, rx1 - rx0)
    shifted = np.stack([grid[0] - rx0, grid[1] - ry0])
    reference = warp(np.nan_to_num(ref_window, nan=np.nanmedian(ref_window)), shifted)
    reference[beyond_ccd] = np.nan  # no difference, and no background estimate, beyond the CCD
    rny, rnx = ref_image.shape  # nor where the reference does not reach (as `tile_program.warp_reference`)
    reference[(grid[0] < 0) | (grid[0] > rnx - 1) | (grid[1] < 0) | (grid[1] > rny - 1)] = np.nan
    scale_arcsec = float(proj_plane_pixel_scales(sci_wcs.celestial)[0] * 3600.0)
    fwhm = (ccd_fwhm_px(store, unit.exposure, unit.ccd, sci_header, scale_arcsec, headers),
            ccd_fwhm_px(store, reference_key, ref_ccd, ref_header, scale_arcsec, headers))
    scale = flux_scale(science_magzp=sci_header.get("MAGZP"), reference_magzp=ref_header.get("MAGZP"))
    scale *= spec.gain or 1.0  # reference ADU -> science electrons
    sci_filled = np.where(np.isfinite(science), science, np.nanmedian(science))
    matched = matched_difference(sci_filled, reference, science_fwhm_px=fwhm[0], reference_fwhm_px=fwhm[1], scale=scale,
                                 science_mask=bad & np.isfinite(science), psf_match=psf_match)
    return PreparedTile((oy, ox), matched, spec.gain or 1.0, fwhm)


def noise_pedestal(electrons: np.ndarray, read_noise: float, bad: np.ndarray | None = None) -> float:
    """
    The level (electrons) to add to a window so that Poisson statistics describe its noise.

    Raw frames carry their sky, so their variance is ``level + read_noise**2`` and this is 0.
    Survey products are often sky-subtracted (DECam's community pipeline) or stacked, so
    their measured sky variance exceeds that by the subtracted sky (or a stack's gain): the
    excess is returned, so that L.A.Cosmic's noise model does not take every noise peak of such a
    frame for a cosmic ray. 0 unless the excess is at least half the Poisson prediction.
    """
    usable = np.isfinite(electrons) if bad is None else (np.isfinite(electrons) & ~bad)
    values = electrons[usable][::7]
    if values.size < 100:
        return 0.0
    level = float(np.median(values))
    sigma = 1.4826 * float(np.median(np.abs(values - level)))
    predicted = max(level, 0.0) + read_noise * read_noise
    excess = sigma * sigma - predicted
    return excess if excess > 0.5 * max(predicted, 1.0) else 0.0


def ccd_fwhm_px(store: Any, key: str, ccd: str, header: Any, scale_arcsec: float, headers: HeadersConfig | None) -> float:
    """
    The PSF FWHM (px) of one stored CCD: from its header (`skyblink.headers.psf_fwhm_px`), else
    measured once on the whole CCD and remembered on the store object.

    Raises
    ------
    HeaderFactError
        No keyword gives it and ``headers.measure_fwhm`` is off.
    """
    cache = getattr(store, "_skyblink_fwhm_cache", None)
    if cache is None:
        cache = {}
        try:
            store._skyblink_fwhm_cache = cache
        except AttributeError:
            pass
    if (key, ccd) in cache:
        return cache[key, ccd]
    # Errors name the file where the store knows it (`PairStore`), else the store key and CCD.
    source = store.source_name(key, ccd) if hasattr(store, "source_name") else f"{key}/{ccd}"
    try:
        value = psf_fwhm_px(header, scale_arcsec, source=source, config=headers)
    except HeaderFactError:
        if headers is not None and not headers.measure_fwhm:
            raise
        from .source_detection import estimate_fwhm  # noqa: PLC0415 - astropy.table, only when measuring

        value = psf_fwhm_px(header, scale_arcsec, source=source, config=headers,
                            measure=lambda: estimate_fwhm(np.asarray(store.image(key, ccd)[...], dtype=np.float32)))
    cache[key, ccd] = value
    return value


def process_tile(unit: WorkUnit, store: Any, detector: Any, classifier: Any, *, threshold: float = 0.3,
                 top_k: int = 64, snr_threshold: float = DEFAULT_SNR_THRESHOLD, bias: float | Any | None = None,
                 flat: Any | None = None, reject_cosmics: bool = True, headers: HeadersConfig | None = None,
                 psf_match: Literal["gaussian", "kernel"] = "gaussian",
                 prepared: PreparedTile | None = None) -> list[CandidateRecord]:
    """
    Run the per-tile program on one work unit on the CPU and return its candidates.

    Parameters
    ----------
    unit : WorkUnit
    store : NightStore
        The night's store (opened by the worker once).
    detector, classifier : InferenceRunner
        Active runners (ONNX Runtime on the CPU, or any backend taking numpy).
    threshold, top_k : float, int
        New-source score threshold; most candidates per tile.
    snr_threshold : float
        Minimum matched-filter S/N of a candidate in the difference image.
    bias : float or 2-D array of the CCD's shape, optional
        Bias level or frame (ADU) of the unit's CCD; the tile's window is read from it.
    flat : 2-D array of the CCD's shape, optional
        Flat field of the unit's CCD, normalised to about 1.
    reject_cosmics : bool
        Flag and clean cosmic rays and hot pixels in the science window before the background.
    headers : HeadersConfig, optional
        Header keywords (PSF size); default: `skyblink.headers.HeadersConfig`'s defaults.
    psf_match : {"gaussian", "kernel"}
        PSF matching (`skyblink.workers.difference.matched_difference`).
    prepared : PreparedTile, optional
        The unit's `prepare_tile` result when the caller already has it (the image steps are skipped).

    Returns
    -------
    list of CandidateRecord
        Candidates whose pixel lies in the tile's core; empty when there are none.

    Notes
    -----
    The science window is calibrated with the header's ``GAIN`` and ``SATURATE`` (missing
    keywords: no gain conversion, no saturation mask), so the reference, left in ADU, is
    scaled by ``flux_scale * GAIN`` onto the science's electrons. The PSF FWHM comes from the
    header (``SEEING`` in arcsec or ``FWHM`` in pixels by default), else it is measured on the CCD.
    """
    if prepared is None:
        prepared = prepare_tile(unit, store, bias=bias, flat=flat, reject_cosmics=reject_cosmics, headers=headers,
                                psf_match=psf_match)
    oy, ox = prepared.origin
    triplet = prepared.matched.triplet
    fwhm = prepared.fwhm_px
    out = detector.infer({"tiles": triplet[None]})
    snr = matched_filter_snr(triplet[2], max(fwhm), renormalize=True)
    peaks = find_peaks(out["heatmaps"][0], threshold=threshold, offsets=out["offsets"][0], channels=(1, 2), top_k=top_k,
                       snr=snr, snr_threshold=snr_threshold, difference_fwhm_px=max(fwhm))
    core = (peaks.y >= unit.margin - 0.5) & (peaks.y < unit.margin + unit.size - 0.5) & \
           (peaks.x >= unit.margin - 0.5) & (peaks.x < unit.margin + unit.size - 0.5)
    px, py, score, peak_snr = peaks.x[core], peaks.y[core], peaks.score[core], peaks.snr[core]
    if not len(score):
        return []
    padded = np.pad(triplet, ((0, 0), (STAMP_HALF, STAMP_HALF), (STAMP_HALF, STAMP_HALF)))
    iy, ix = np.rint(py).astype(int) + STAMP_HALF, np.rint(px).astype(int) + STAMP_HALF
    stamps = np.stack([padded[:, y - STAMP_HALF : y + STAMP_HALF + 1, x - STAMP_HALF : x + STAMP_HALF + 1] for y, x in zip(iy, ix, strict=True)])
    scores = classifier.infer({"stamps": stamps.astype(np.float32)})
    return [
        CandidateRecord(unit.key, unit.exposure, unit.ccd, float(x + ox), float(y + oy), float(s), float(sn),
                        float(rb), tuple(float(p) for p in probs), _to_float16(stamp))
        for x, y, s, sn, rb, probs, stamp in zip(px, py, score, peak_snr, scores["real_bogus"][:, 0], scores["class_probs"],
                                                 stamps, strict=True)
    ]
