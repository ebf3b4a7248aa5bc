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

`StampRealism` (on in the classifier's training, off by default) adds what real surveys'
difference images hold and the simulated night leaves out: transients on galaxies of every
brightness, off and on their cores; stars of every brightness that brighten or fade; transients
that fade (in the reference, fainter in the science: a negative difference, labelled real as
ZTF's drb labels fading sources real); and imperfect subtraction of the static sky (the reference
misregistered by a fraction of a pixel, the matching kernel built from a slightly wrong science
FWHM), whose dipoles and rings on stars and galaxy cores stay labelled static (bogus).

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
from skyblink.model_io import CLASSIFIER_CLASSES, DETECTOR_CLASSES, STAMP_SIZE
from skyblink.sim.ccd_image import render_ccd
from skyblink.sim.conditions import GAIN, Conditions, exposure_conditions, reference_conditions
from skyblink.sim.psf import render_point_sources
from skyblink.workers.align import sampling_grid, warp
from skyblink.workers.difference import flux_scale, normalized_triplet

__all__ = ["DetectorSamples", "StampRealism", "StampSamples", "TrainingData", "TrainingDataConfig", "build_training_data",
           "added_adu", "exposure_triplet", "truth_columns"]

#: Truth types -> detector heatmap channel (None: not a point source to find).
DETECTOR_CLASS_OF_TYPE: dict[str, str | None] = {
    "star": "static", "galaxy": "static", "variable": "static", "transient": "transient",
    "moving": "moving", "cosmic_ray": "artifact", "hot_pixel": "artifact", "bad_column": None, "satellite": None,
}
#: Classes whose stamps are real astrophysical changes (real/bogus label 1).
REAL_CLASSES = frozenset({"transient", "variable", "moving"})


@dataclass(frozen=True, slots=True)
class StampRealism:
    """
    Real-survey effects added to each simulated exposure for training (module notes). Experimental.

    Counts are per exposure; magnitudes of the added changes are uniform from 3.5 mag brighter to
    0.5 mag fainter than the exposure's 5-sigma limit (the faint ones fall below ``min_snr`` and
    are not used as stamps). Hosts and stars are drawn half from all detectable ones, half from
    the brightest fifth, so bright hosts and stars are well represented.
    """

    host_transients: int = 12
    star_variables: int = 16
    fading_transients: int = 6
    fading_fraction: float = 0.5
    max_host_offset_px: float = 5.0
    misregistration_px: float = 0.3
    fwhm_error: float = 0.08
    clear_radius_px: float = 6.0


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
    realism: StampRealism | None = None

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


def truth_columns(parts: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    """The truth tables of an image's parts (sky, events, artefacts) as one set of columns."""
    columns: dict[str, list[np.ndarray]] = {k: [] for k in ("type", "x", "y", "mag", "flux", "mean_mag", "trailed")}
    fills = {"type": "", "trailed": False}
    for part in parts:
        n = len(np.atleast_1d(part["x"]))
        for key in columns:
            value = part.get(key, fills.get(key, np.nan))
            columns[key].append(np.broadcast_to(np.asarray(value), (n,)))
    return {k: np.concatenate(v) if v else np.array([]) for k, v in columns.items()}


def added_adu(shape: tuple[int, ...], x: np.ndarray, y: np.ndarray, electrons: np.ndarray, cond: Conditions,
               rng: np.random.Generator) -> np.ndarray:
    """ADU of point sources (of ``electrons`` per exposure, negative to remove light) with their photon noise."""
    image = np.zeros(shape, np.float64)
    if len(x):
        render_point_sources(image, x, y, electrons, fwhm_px=cond.fwhm_px, beta=cond.beta)
        image += rng.standard_normal(shape) * np.sqrt(np.clip(image, 0.0, None) / cond.depth)
    return (image / GAIN).astype(np.float32)


def _pick(rng: np.random.Generator, candidates: np.ndarray, mags: np.ndarray, n: int) -> np.ndarray:
    """``n`` of ``candidates``: half from all, half from the brightest fifth (repeats allowed)."""
    if candidates.size == 0 or n <= 0:
        return np.zeros(0, np.int64)
    bright = candidates[np.argsort(mags[candidates])][: max(1, candidates.size // 5)]
    half = n // 2
    return np.concatenate([rng.choice(candidates, n - half), rng.choice(bright, half)])


def _realism_changes(truth: dict[str, np.ndarray], realism: StampRealism, sci: Conditions, ref: Conditions,
                     size: int, rng: np.random.Generator) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict[str, np.ndarray]]:
    """
    Return (science electrons, reference electrons, truth rows) of the added changes.

    The electron blocks are dicts of x, y, e (per exposure, reference electrons on the science
    grid); the truth rows carry type, x, y, mag (of the change), flux, mean_mag and trailed.
    """
    limit = sci.limiting_mag
    margin = STAMP_SIZE // 2 + 2
    inside = (truth["x"] > margin) & (truth["x"] < size - margin) & (truth["y"] > margin) & (truth["y"] < size - margin)
    snr = _snr(truth["mag"].astype(float), limit)
    kinds = truth["type"].astype(str)
    science: dict[str, list[float]] = {"x": [], "y": [], "e": []}
    reference: dict[str, list[float]] = {"x": [], "y": [], "e": []}
    rows: dict[str, list[Any]] = {k: [] for k in ("type", "x", "y", "mag", "flux", "mean_mag", "trailed")}

    def add(block: dict[str, list[float]], x: float, y: float, electrons: float | np.ndarray) -> None:
        block["x"].append(float(x))
        block["y"].append(float(y))
        block["e"].append(float(electrons))

    def row(kind: str, x: float, y: float, mag: float, mean_mag: float) -> None:
        for key, value in zip(rows, (kind, x, y, mag, 0.0, mean_mag, False), strict=True):
            rows[key].append(value)

    def change_mag(n: int) -> np.ndarray:
        return rng.uniform(limit - 3.5, limit + 0.5, n)

    # Transients on galaxies of every brightness, from the core out to max_host_offset_px.
    galaxies = np.flatnonzero((kinds == "galaxy") & inside & (snr >= 5.0))
    hosts = _pick(rng, galaxies, truth["mag"], realism.host_transients)
    mags = change_mag(hosts.size)
    radius = realism.max_host_offset_px * rng.uniform(0.0, 1.0, hosts.size)
    angle = rng.uniform(0.0, 2 * np.pi, hosts.size)
    for h, m, r, a in zip(hosts, mags, radius, angle, strict=True):
        x, y = truth["x"][h] + r * np.cos(a), truth["y"][h] + r * np.sin(a)
        add(science, x, y, sci.electrons(m))
        row("transient", x, y, m, np.nan)
    # Stars of every brightness that brighten or fade (the star stays in the reference).
    stars = np.flatnonzero((kinds == "star") & inside & (snr >= 5.0))
    chosen = _pick(rng, stars, truth["mag"], realism.star_variables)
    for s in chosen:
        star_e = float(sci.electrons(truth["mag"][s]))
        delta = float(sci.electrons(change_mag(1)[0]))
        if rng.uniform() < realism.fading_fraction:
            delta = -min(delta, 0.9 * star_e)
        now = -2.5 * math.log10((star_e + delta) / star_e) + float(truth["mag"][s])
        add(science, truth["x"][s], truth["y"][s], delta)
        row("variable", float(truth["x"][s]), float(truth["y"][s]), now, float(truth["mag"][s]))
    # Fading transients: in the reference, 0-70 % as bright in the science; half on galaxies.
    hosted = _pick(rng, galaxies, truth["mag"], realism.fading_transients // 2)
    n_free = realism.fading_transients - hosted.size
    xs = np.concatenate([truth["x"][hosted] + rng.uniform(-3, 3, hosted.size), rng.uniform(margin, size - margin, n_free)])
    ys = np.concatenate([truth["y"][hosted] + rng.uniform(-3, 3, hosted.size), rng.uniform(margin, size - margin, n_free)])
    for x, y, m in zip(xs, ys, change_mag(xs.size), strict=True):
        change = float(sci.electrons(m))  # the fade, in science electrons, has magnitude m
        kept = rng.uniform(0.0, 0.7)
        total = change / (1.0 - kept)
        add(reference, x, y, ref.electrons(-2.5 * math.log10(total / sci.electrons(0.0))))
        if kept > 0:
            add(science, x, y, kept * total)
        row("transient", float(x), float(y), m, np.nan)
    truth_rows = {k: np.array(v, dtype=object if k == "type" else (bool if k == "trailed" else float)) for k, v in rows.items()}
    return ({k: np.array(v, float) for k, v in science.items()}, {k: np.array(v, float) for k, v in reference.items()},
            truth_rows)


def exposure_triplet(config: SimConfig, field_index: int, exposure: int, *, realism: StampRealism | None = None,
                     rng: np.random.Generator | None = None) -> tuple[np.ndarray, dict[str, np.ndarray], float]:
    """
    Render one exposure and its reference and return (triplet (3,H,W), truth columns, 5-sigma limit).

    The truth columns are type, x, y, mag, flux and mean_mag of everything on the CCD. With
    ``realism`` (and its ``rng``), the `StampRealism` changes are added to the images and to the
    truth, and the reference is misregistered and PSF-matched with a slightly wrong FWHM.
    """
    science = render_ccd(config, field_index, 0, exposure=exposure)
    reference = render_ccd(config, field_index, 0, exposure=None)
    sci_cond = exposure_conditions(config, field_index, exposure)
    ref_cond = reference_conditions(config, field_index)
    grid = sampling_grid(WCS(science.wcs_header), WCS(reference.wcs_header), science.pixels.shape)
    truth = truth_columns(science.truth_parts)
    sci_pixels = science.pixels
    fwhm_factor = 1.0
    if realism is not None:
        realism_rng = rng if rng is not None else np.random.default_rng([config.seed, field_index, exposure])
        shift = realism.misregistration_px * math.sqrt(realism_rng.uniform())
        angle = realism_rng.uniform(0.0, 2 * math.pi)
        grid = grid + np.array([shift * math.cos(angle), shift * math.sin(angle)], np.float32)[:, None, None]
        fwhm_factor = 1.0 + realism_rng.uniform(-realism.fwhm_error, realism.fwhm_error)
        add_sci, add_ref, rows = _realism_changes(truth, realism, sci_cond, ref_cond, sci_pixels.shape[0], realism_rng)
        sci_pixels = sci_pixels.astype(np.float32) + added_adu(sci_pixels.shape, add_sci["x"], add_sci["y"], add_sci["e"], sci_cond, realism_rng)
        truth = {k: np.concatenate([truth[k].astype(rows[k].dtype) if k == "type" else truth[k], rows[k]]) for k in truth}
    ref_on_grid = warp(reference.pixels.astype(np.float32), grid)
    if realism is not None:
        ref_on_grid = ref_on_grid + added_adu(ref_on_grid.shape, add_ref["x"], add_ref["y"], add_ref["e"], ref_cond, realism_rng)
    scale = flux_scale(science_magzp=sci_cond.magzp, reference_magzp=ref_cond.magzp)
    triplet = normalized_triplet(
        sci_pixels, ref_on_grid,
        science_fwhm_px=fwhm_factor * sci_cond.fwhm_arcsec / config.pixel_scale_arcsec,
        reference_fwhm_px=ref_cond.fwhm_arcsec / config.pixel_scale_arcsec,
        scale=scale, science_mask=science.mask > 0,
    )
    return triplet, truth, float(sci_cond.limiting_mag)


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
    rng = np.random.default_rng([cfg.seed, field_index, exposure])
    realism_rng = np.random.default_rng([cfg.seed, field_index, exposure, 1])
    triplet, truth, limit = exposure_triplet(sim, field_index, exposure, realism=cfg.realism, rng=realism_rng)
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
    classes = [_stamp_class(str(t), float(m), float(mm), limit, cfg.min_snr) for t, m, mm in zip(truth["type"], truth["mag"], truth["mean_mag"], strict=True)]
    changes = np.array([c in REAL_CLASSES for c in classes], bool)
    order = rng.permutation(len(truth["type"]))
    if cfg.realism is not None:  # bright stars and galaxies (and their subtraction residuals) first, half the time
        bright = np.zeros(len(order), bool)
        for kind in ("star", "galaxy"):
            idx = np.flatnonzero(truth["type"].astype(str) == kind)
            bright[idx[np.argsort(truth["mag"][idx])][: max(1, idx.size // 5)]] = True
        order = order[np.argsort(rng.uniform(size=len(order))[order] - 0.5 * (bright[order] & (rng.uniform(size=len(order)) < 0.5)), kind="stable")]
    for i in order:
        cls = classes[i]
        if cls is None or per_class.get(cls, 0) >= cfg.stamps_per_class_per_exposure:
            continue
        if cfg.realism is not None and cls in ("star", "galaxy") and changes.any() and np.min(
                np.hypot(truth["x"][changes] - truth["x"][i], truth["y"][changes] - truth["y"][i])) < cfg.realism.clear_radius_px:
            continue  # a change sits on this static source: its stamp is not static
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
