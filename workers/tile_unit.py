"""
Work units (one tile of one CCD of one exposure) and their processing on the CPU.

The steps, the same on the GPU (`skyblink.workers.device_program`): calibrate the science
window to electrons (gain from the header, bias and flat where given; saturated pixels
masked), reject cosmic rays and hot pixels (L.A.Cosmic) and clean them, warp the reference,
build the normalised triplet, run the detector, keep the peaks whose matched-filter S/N in the
difference reaches ``snr_threshold`` and the difference's own significant point-like sources
(`skyblink.workers.peaks.difference_point_sources`), cut stamps and classify them. The parameters
are a `skyblink.workers.program_config.TileProgram`, built once from the configuration.

A tile is read from the night's store with a margin on every side, so that sources near its
edge see their surroundings; the detector runs on the whole window and only the peaks inside the
tile's own core are reported, so a source in the overlap of two windows is reported once, by the
tile that owns its pixel (`WorkUnit.owns`).

Notes
-----
Pure CPU (numpy, ONNX Runtime through the runners passed in); the GPU path runs the same steps
with `skyblink.workers.device_program`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from skyblink.headers import HeadersConfig
from skyblink.stamps import STAMP_HALF
from skyblink.storage.ccd_context import CcdStore

from .align import sampling_grid, warp
from .calibration import CalibrationSpec, calibrate
from .cosmics import detect_cosmics
from .difference import MatchedDifference, matched_difference
from .matched_filter import matched_filter_snr
from .peaks import find_peaks
from .program_config import TileProgram, window_edge
from .source_detection import estimate_fwhm

__all__ = ["CandidateRecord", "CcdSetup", "PreparedTile", "TileProgram", "WorkUnit", "ccd_setup",
           "noise_pedestal", "prepare_tile", "process_tile", "read_window"]



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

    @classmethod
    def tiling(cls, store_url: str, exposure: str, ccd: str, shape: tuple[int, ...], *, size: int,
               margin: int = 32) -> list[WorkUnit]:
        """
        Return the units whose cores of ``size`` pixels tile one CCD of ``shape`` (rows, columns).

        Row-major from the CCD's (0, 0) corner; the last row and column of cores may reach past
        the CCD's edge (the tile program reads NaN there, `read_window`). Which exposures
        and CCDs are planned is the driver's business (`skyblink.cluster.planning`).
        """
        ny, nx = shape[-2:]
        return [cls(store_url, exposure, ccd, y0, x0, size, margin) for y0 in range(0, ny, size) for x0 in range(0, nx, size)]

    @property
    def origin(self) -> tuple[int, int]:
        """CCD pixel (y, x) of the window's first pixel: the core's, ``margin`` further out (may be negative)."""
        return self.y0 - self.margin, self.x0 - self.margin

    @property
    def window_edge(self) -> int:
        """Edge of the window read for the unit (`skyblink.workers.program_config.window_edge`)."""
        return window_edge(self.size, self.margin)

    def owns(self, y: Any, x: Any) -> Any:
        """
        Whether window pixel (y, x) lies in the unit's core: the one rule of which unit reports a source.

        Windows overlap by their margins; a source found in a margin belongs to the neighbour whose
        core holds its pixel (rounded to the nearest), so each source is reported once. The CPU
        path, the GPU path and the SEP baseline keep what this says.

        Parameters
        ----------
        y, x : float or ndarray
            Positions in window pixels (0 at `origin`).

        Returns
        -------
        bool or ndarray of bool
        """
        lo, hi = self.margin - 0.5, self.margin + self.size - 0.5
        return (y >= lo) & (y < hi) & (x >= lo) & (x < hi)


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
    calibration_mask : (H, W) bool ndarray or None
        The science pixels the calibration flagged (saturated, unusable flat; not the cleaned
        cosmic rays): no candidate stands on them (`skyblink.workers.peaks.masked_cores`).
    """

    origin: tuple[int, int]
    matched: MatchedDifference
    gain: float
    fwhm_px: tuple[float, float]
    calibration_mask: np.ndarray | None = None


@dataclass(frozen=True, slots=True)
class CcdSetup:
    """
    What the per-tile program needs of one science CCD and its reference, the same for all its
    units: the one CCD preparation of the CPU path, the GPU path and the SEP baseline.

    Attributes
    ----------
    reference_key : str
        Store key of the field's reference (`NightStore.reference_of`); same CCD name.
    science_wcs, reference_wcs : astropy.wcs.WCS
    calibration : CalibrationSpec
        Gain, saturation and read noise of the science CCD, from its header.
    fwhm_px : (float, float)
        PSF FWHM of the science and the reference, pixels (the store's `CcdContext`).
    flux_scale : float
        Reference-to-science flux factor in ADU (the store's `CcdContext`, of the MAGZP);
        `electron_scale` is it in science electrons.
    """

    reference_key: str
    science_wcs: Any
    reference_wcs: Any
    calibration: CalibrationSpec
    fwhm_px: tuple[float, float]
    flux_scale: float

    @property
    def gain(self) -> float:
        """Electrons per science ADU used (1 when the header has no gain)."""
        return self.calibration.gain or 1.0

    @property
    def electron_scale(self) -> float:
        """Reference ADU to science electrons: `flux_scale` times the science gain."""
        return self.flux_scale * self.gain


def ccd_setup(store: CcdStore, exposure: str, ccd: str, headers: HeadersConfig | None = None) -> CcdSetup:
    """
    Read one science CCD's reference, WCS, calibration, PSF sizes and flux scale from the store
    (`NightStore.ccd_context`, which answers the CCD's facts once for every caller).

    Parameters
    ----------
    store : NightStore
    exposure, ccd : str
        The science exposure's store key and the CCD name (the reference's CCD has the same name).
    headers : HeadersConfig, optional
        Header keywords (the ``[headers]`` section).

    Returns
    -------
    CcdSetup

    Raises
    ------
    HeaderFactError
        No PSF size in a header and none measurable.
    """
    context = store.ccd_context(exposure, ccd, headers=headers, measure_fwhm=estimate_fwhm)
    reference_key = context.reference()
    return CcdSetup(reference_key, context.wcs, store.wcs(reference_key, ccd), CalibrationSpec.of(context),
                    (context.fwhm_px, context.reference_fwhm_px), context.flux_scale)


def prepare_tile(unit: WorkUnit, store: CcdStore, program: TileProgram | None = None, *, bias: float | Any | None = None,
                 flat: Any | None = None, setup: CcdSetup | None = None) -> PreparedTile:
    """
    Run the image steps of the per-tile program on one work unit: calibration, cosmic rays, warp
    of the reference by both WCS, background, PSF matching and difference.

    Parameters and notes as `process_tile`; the program's ``reject_cosmics``, ``headers`` and
    ``psf_match`` (`matched_difference`'s: a Gaussian of the FWHMs, or a kernel solved on the
    window's sources) apply. ``setup`` is the unit's CCD's `ccd_setup` where the caller has it.

    Raises
    ------
    HeaderFactError
        No PSF size in a header and none measurable.
    """
    program = program or TileProgram()
    setup = setup or ccd_setup(store, unit.exposure, unit.ccd, program.headers)
    spec = setup.calibration
    h = w = unit.window_edge  # the detector takes multiples of 32
    oy, ox = unit.origin
    raw = read_window(store.image(unit.exposure, unit.ccd), oy, ox, h, w)
    beyond_ccd = ~np.isfinite(raw)
    calibrated = calibrate(raw, gain=spec.gain, saturate=spec.saturate,
                           bias=read_window(bias, oy, ox, h, w) if bias is not None and np.ndim(bias) == 2 else bias,
                           flat=None if flat is None else read_window(flat, oy, ox, h, w))
    science, bad = calibrated.electrons, calibrated.mask
    if program.reject_cosmics:
        pedestal = noise_pedestal(science, spec.read_noise, bad)
        cosmics = detect_cosmics(science + pedestal, read_noise=spec.read_noise, mask=bad | ~np.isfinite(science))
        science, bad = cosmics.cleaned - pedestal, bad | cosmics.mask
    grid = sampling_grid(setup.science_wcs, setup.reference_wcs, (h, w), origin=(oy, ox))
    rx0, ry0 = int(np.floor(np.nanmin(grid[0]))) - 2, int(np.floor(np.nanmin(grid[1]))) - 2
    rx1, ry1 = int(np.ceil(np.nanmax(grid[0]))) + 3, int(np.ceil(np.nanmax(grid[1]))) + 3
    ref_image = store.image(setup.reference_key, unit.ccd)
    ref_window = read_window(ref_image, ry0, rx0, ry1 - ry0, rx1 - rx0)
    shifted = np.stack([grid[0] - rx0, grid[1] - ry0])
    reference = warp(np.nan_to_num(ref_window, nan=np.nanmedian(ref_window)), shifted)
    reference[beyond_ccd] = np.nan  # no difference, and no background estimate, beyond the CCD
    rny, rnx = ref_image.shape  # nor where the reference does not reach (as `tile_program.warp_reference`)
    reference[(grid[0] < 0) | (grid[0] > rnx - 1) | (grid[1] < 0) | (grid[1] > rny - 1)] = np.nan
    fwhm = setup.fwhm_px
    sci_filled = np.where(np.isfinite(science), science, np.nanmedian(science))
    matched = matched_difference(sci_filled, reference, science_fwhm_px=fwhm[0], reference_fwhm_px=fwhm[1],
                                 scale=setup.electron_scale, science_mask=bad & np.isfinite(science),
                                 psf_match=program.psf_match)
    return PreparedTile((oy, ox), matched, setup.gain, fwhm, calibrated.mask)


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


def process_tile(unit: WorkUnit, store: CcdStore, detector: Any, classifier: Any, program: TileProgram | None = None, *,
                 bias: float | Any | None = None, flat: Any | None = None,
                 prepared: PreparedTile | None = None) -> list[CandidateRecord]:
    """
    Run the per-tile program on one work unit on the CPU and return its candidates.

    Parameters
    ----------
    unit : WorkUnit
    store : CcdStore
        The night's store (opened by the worker once), or a pair of files (`PairStore`).
    detector, classifier : InferenceRunner
        Active runners (ONNX Runtime on the CPU, or any backend taking numpy).
    program : TileProgram, optional
        The program's parameters (``detector_threshold``, ``top_k``, ``snr_threshold``,
        ``reject_cosmics``, ``headers``, ``psf_match``); default: the configuration's defaults.
        The unit's own ``size`` and ``margin`` give its window.
    bias : float or 2-D array of the CCD's shape, optional
        Bias level or frame (ADU) of the unit's CCD; the tile's window is read from it.
    flat : 2-D array of the CCD's shape, optional
        Flat field of the unit's CCD, normalised to about 1.
    prepared : PreparedTile, optional
        The unit's `prepare_tile` result when the caller already has it (the image steps are skipped).

    Returns
    -------
    list of CandidateRecord
        Candidates whose pixel lies in the tile's core (`WorkUnit.owns`); empty when there are none.

    Notes
    -----
    The science window is calibrated with the header's ``GAIN`` and ``SATURATE`` (missing
    keywords: no gain conversion, no saturation mask), so the reference, left in ADU, is
    scaled by ``flux_scale * GAIN`` onto the science's electrons. The PSF FWHM comes from the
    header (``SEEING`` in arcsec or ``FWHM`` in pixels by default), else it is measured on the CCD.
    """
    program = program or TileProgram()
    if prepared is None:
        prepared = prepare_tile(unit, store, program, bias=bias, flat=flat)
    oy, ox = prepared.origin
    triplet = prepared.matched.triplet
    fwhm = prepared.fwhm_px
    out = detector.infer({"tiles": triplet[None]})
    snr = matched_filter_snr(triplet[2], max(fwhm), renormalize=True)
    peaks = find_peaks(out["heatmaps"][0], threshold=program.detector_threshold, offsets=out["offsets"][0], channels=(1, 2),
                       top_k=program.top_k, snr=snr, snr_threshold=program.snr_threshold, difference_fwhm_px=max(fwhm),
                       masked=prepared.calibration_mask)
    core = unit.owns(peaks.y, peaks.x)
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
