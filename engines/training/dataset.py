"""
Training and validation samples from simulated nights with truth.

Each science exposure is rendered by `skyblink.sim`, its field's reference is warped onto it and
the noise-normalized (science, reference, difference) triplet is built by the same CPU functions
the workers run (`skyblink.workers.align`, `skyblink.workers.difference`), so the networks train
on exactly what they see in production. From each triplet come:

* detector crops (edge a multiple of 32) with target heatmaps for the classes in
  `DETECTOR_CLASSES` and sub-pixel offsets at the truth positions;
* classifier stamps (63x63) at truth positions, with a class and a real/bogus label.

A source is a positive only where it is detectable: expected S/N >= `min_snr` (events) from its
magnitude and the exposure's 5-sigma limit, so the networks are not taught to hallucinate
sources far below the noise.

Notes
-----
Deterministic for a given seed (process-parallel over exposures, results in a fixed order).
"""

from __future__ import annotations

import math
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from astropy.wcs import WCS

from skyblink.config import SimConfig
from skyblink.sim.ccd_image import render_ccd
from skyblink.sim.conditions import exposure_conditions, reference_conditions
from skyblink.workers.align import sampling_grid, warp
from skyblink.workers.difference import flux_scale, normalized_triplet

from ..networks import CLASSIFIER_CLASSES, DETECTOR_CLASSES, STAMP_SIZE

__all__ = ["DetectorSamples", "StampSamples", "TrainingData", "TrainingDataConfig", "build_training_data", "exposure_triplet"]

#: Truth types -> detector heatmap channel (None: not a point source to find).
DETECTOR_CLASS_OF_TYPE: dict[str, str | None] = {
    "star": "static", "galaxy": "static", "variable": "static", "transient": "transient",
    "moving": "moving", "cosmic_ray": "artifact", "hot_pixel": "artifact", "bad_column": None, "satellite": None,
}
#: Classes whose stamps are real astrophysical changes (real/bogus label 1).
REAL_CLASSES = frozenset({"transient", "variable", "moving"})


@dataclass(frozen=True, slots=True)
class TrainingDataConfig:
    """What to simulate for training. Stable."""

    fields: int = 8
    exposures_per_field: int = 5
    image_size: int = 1024
    crop: int = 128
    random_crops_per_exposure: int = 16
    event_crops_per_exposure: int = 64
    stamps_per_class_per_exposure: int = 60
    min_snr: float = 3.0
    seed: int = 1
    workers: int = 2

    def sim_config(self) -> SimConfig:
        """The simulator configuration of the training night."""
        return SimConfig(fields=self.fields, exposures_per_field=self.exposures_per_field,
                         image_size=self.image_size, seed=self.seed)


@dataclass(slots=True)
class DetectorSamples:
    """Detector crops: inputs (N,3,C,C), heatmaps (N,4,C,C), offsets (N,2,C,C), offset mask (N,1,C,C)."""

    inputs: np.ndarray
    heatmaps: np.ndarray
    offsets: np.ndarray
    offset_mask: np.ndarray
    truth: list[dict[str, Any]] = field(default_factory=list)  # per crop: events with x, y, type, mag, snr


@dataclass(slots=True)
class StampSamples:
    """Classifier stamps (N,3,63,63) with class index, real/bogus label, magnitude and S/N."""

    stamps: np.ndarray
    labels: np.ndarray
    real: np.ndarray
    mags: np.ndarray
    snrs: np.ndarray


@dataclass(slots=True)
class TrainingData:
    """Detector crops and classifier stamps of one simulated night."""

    detector: DetectorSamples
    stamps: StampSamples
    exposures: int


def _truth_columns(parts: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    columns: dict[str, list[np.ndarray]] = {k: [] for k in ("type", "x", "y", "mag", "flux", "mean_mag", "trailed")}
    fills = {"type": "", "trailed": False}
    for part in parts:
        n = len(np.atleast_1d(part["x"]))
        for key in columns:
            value = part.get(key, fills.get(key, np.nan))
            columns[key].append(np.broadcast_to(np.asarray(value), (n,)))
    return {k: np.concatenate(v) if v else np.array([]) for k, v in columns.items()}


def exposure_triplet(config: SimConfig, field_index: int, exposure: int) -> tuple[np.ndarray, dict[str, np.ndarray], float]:
    """
    Render one exposure and its reference and return (triplet (3,H,W), truth columns, 5-sigma limit).

    The truth columns are type, x, y, mag, flux and mean_mag of everything on the CCD.
    """
    science = render_ccd(config, field_index, 0, exposure=exposure)
    reference = render_ccd(config, field_index, 0, exposure=None)
    sci_cond = exposure_conditions(config, field_index, exposure)
    ref_cond = reference_conditions(config, field_index)
    grid = sampling_grid(WCS(science.wcs_header), WCS(reference.wcs_header), science.pixels.shape)
    ref_on_grid = warp(reference.pixels.astype(np.float32), grid)
    scale = flux_scale(science_magzp=sci_cond.magzp, reference_magzp=ref_cond.magzp)
    triplet = normalized_triplet(
        science.pixels, ref_on_grid,
        science_fwhm_px=sci_cond.fwhm_arcsec / config.pixel_scale_arcsec,
        reference_fwhm_px=ref_cond.fwhm_arcsec / config.pixel_scale_arcsec,
        scale=scale, science_mask=science.mask > 0,
    )
    return triplet, _truth_columns(science.truth_parts), float(sci_cond.limiting_mag)


def _snr(mag: np.ndarray, limit: float) -> np.ndarray:
    with np.errstate(invalid="ignore", over="ignore"):
        return 5.0 * 10.0 ** (-0.4 * (mag - limit))


def _positives(truth: dict[str, np.ndarray], limit: float, min_snr: float) -> list[tuple[float, float, str, float, float]]:
    """
    (x, y, detector class, mag, snr) of the detectable point sources.

    A mover that is not trailed looks exactly like a transient in one exposure, so it is a
    transient here; only trailed movers show their motion. Linking across exposures tells the
    untrailed movers from transients.
    """
    out = []
    snr = _snr(truth["mag"], limit)
    for i, kind in enumerate(truth["type"]):
        cls = DETECTOR_CLASS_OF_TYPE.get(str(kind))
        if cls == "moving" and not bool(truth["trailed"][i]):
            cls = "transient"
        if cls is None:
            continue
        needed = 5.0 if cls == "static" else min_snr
        if cls != "artifact" and not snr[i] >= needed:
            continue
        out.append((float(truth["x"][i]), float(truth["y"][i]), cls, float(truth["mag"][i]), float(snr[i]) if cls != "artifact" else math.inf))
    return out


def _crop_targets(positives: list[tuple[float, float, str, float, float]], x0: int, y0: int, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[dict[str, Any]]]:
    heat = np.zeros((len(DETECTOR_CLASSES), size, size), np.float32)
    offsets = np.zeros((2, size, size), np.float32)
    mask = np.zeros((1, size, size), np.float32)
    yy, xx = np.mgrid[:size, :size]
    events = []
    for x, y, cls, mag, snr in positives:
        lx, ly = x - x0, y - y0
        if not (-0.5 <= lx < size - 0.5 and -0.5 <= ly < size - 0.5):
            continue
        c = DETECTOR_CLASSES.index(cls)
        heat[c] = np.maximum(heat[c], np.exp(-((xx - lx) ** 2 + (yy - ly) ** 2) / 2.0))
        px, py = int(round(lx)), int(round(ly))
        heat[c, py, px] = 1.0  # the peak pixel is the positive of the focal loss
        offsets[:, py, px] = (lx - px, ly - py)
        mask[0, py, px] = 1.0
        if cls in ("transient", "moving"):
            events.append({"x": lx, "y": ly, "cls": cls, "mag": mag, "snr": snr})
    return heat, offsets, mask, events


def _stamp(triplet: np.ndarray, x: float, y: float) -> np.ndarray | None:
    half = STAMP_SIZE // 2
    px, py = int(round(x)), int(round(y))
    if py - half < 0 or px - half < 0 or py + half + 1 > triplet.shape[1] or px + half + 1 > triplet.shape[2]:
        return None
    return triplet[:, py - half : py + half + 1, px - half : px + half + 1]


def _stamp_class(kind: str, mag: float, mean_mag: float, limit: float, min_snr: float) -> str | None:
    snr = float(_snr(np.array([mag]), limit)[0])
    if kind in ("star", "galaxy"):
        return kind if snr >= 5.0 else None
    if kind == "variable":
        change = abs(float(_snr(np.array([mag]), limit)[0] - _snr(np.array([mean_mag]), limit)[0]))
        return "variable" if change >= min_snr else ("star" if snr >= 5.0 else None)
    if kind in ("transient", "moving"):
        return kind if snr >= min_snr else None
    if kind == "cosmic_ray":
        return "cosmic_ray"
    if kind == "hot_pixel":
        return "artifact"
    return None


def _samples_for_exposure(args: tuple[TrainingDataConfig, int, int]) -> tuple[DetectorSamples, StampSamples]:
    cfg, field_index, exposure = args
    sim = cfg.sim_config()
    triplet, truth, limit = exposure_triplet(sim, field_index, exposure)
    rng = np.random.default_rng([cfg.seed, field_index, exposure])
    positives = _positives(truth, limit, cfg.min_snr)
    size, n = cfg.crop, triplet.shape[1]
    events = [p for p in positives if p[2] in ("transient", "moving", "artifact")]
    corners = [tuple(rng.integers(0, n - size, 2)) for _ in range(cfg.random_crops_per_exposure)]
    for k in rng.permutation(len(events))[: cfg.event_crops_per_exposure]:
        x, y = events[k][0], events[k][1]
        cx = int(np.clip(x - size / 2 + rng.integers(-size // 3, size // 3 + 1), 0, n - size))
        cy = int(np.clip(y - size / 2 + rng.integers(-size // 3, size // 3 + 1), 0, n - size))
        corners.append((cy, cx))
    inputs, heats, offs, masks, crop_truth = [], [], [], [], []
    for cy, cx in corners:
        heat, off, mask, ev = _crop_targets(positives, cx, cy, size)
        inputs.append(triplet[:, cy : cy + size, cx : cx + size])
        heats.append(heat)
        offs.append(off)
        masks.append(mask)
        crop_truth.append({"events": ev})
    detector = DetectorSamples(np.stack(inputs), np.stack(heats), np.stack(offs), np.stack(masks), crop_truth)

    stamps, labels, real, mags, snrs = [], [], [], [], []
    per_class: dict[str, int] = {}
    for i in rng.permutation(len(truth["type"])):
        cls = _stamp_class(str(truth["type"][i]), float(truth["mag"][i]), float(truth["mean_mag"][i]), limit, cfg.min_snr)
        if cls is None or per_class.get(cls, 0) >= cfg.stamps_per_class_per_exposure:
            continue
        stamp = _stamp(triplet, float(truth["x"][i]), float(truth["y"][i]))
        if stamp is None:
            continue
        per_class[cls] = per_class.get(cls, 0) + 1
        stamps.append(stamp)
        labels.append(CLASSIFIER_CLASSES.index(cls))
        real.append(cls in REAL_CLASSES)
        mags.append(float(truth["mag"][i]))
        snrs.append(float(_snr(np.array([truth["mag"][i]]), limit)[0]))
    stamp_samples = StampSamples(
        np.stack(stamps).astype(np.float32) if stamps else np.zeros((0, 3, STAMP_SIZE, STAMP_SIZE), np.float32),
        np.array(labels, np.int64), np.array(real, bool), np.array(mags, np.float32), np.array(snrs, np.float32),
    )
    return detector, stamp_samples


def build_training_data(cfg: TrainingDataConfig) -> TrainingData:
    """
    Simulate the training night and cut detector crops and classifier stamps from every exposure.

    Parameters
    ----------
    cfg : TrainingDataConfig
        Size of the night, crops per exposure, detectability threshold, seed, processes.

    Returns
    -------
    TrainingData
        Samples in a fixed order (by field, then exposure) whatever the number of processes.
    """
    jobs = [(cfg, f, e) for f in range(cfg.fields) for e in range(cfg.exposures_per_field)]
    if cfg.workers > 1:
        with ProcessPoolExecutor(max_workers=cfg.workers) as pool:
            results = list(pool.map(_samples_for_exposure, jobs))
    else:
        results = [_samples_for_exposure(job) for job in jobs]
    det = DetectorSamples(
        np.concatenate([r[0].inputs for r in results]),
        np.concatenate([r[0].heatmaps for r in results]),
        np.concatenate([r[0].offsets for r in results]),
        np.concatenate([r[0].offset_mask for r in results]),
        [t for r in results for t in r[0].truth],
    )
    st = StampSamples(*(np.concatenate([getattr(r[1], k) for r in results]) for k in ("stamps", "labels", "real", "mags", "snrs")))
    return TrainingData(det, st, len(jobs))
