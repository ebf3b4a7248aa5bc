"""
The INT8 calibration set: simulated detector tiles and classifier stamps, stratified by sky
background, source density, seeing and depth, dark deep fields included.

Careless INT8 calibrates on whatever images are at hand (often bright, crowded fields, where
every activation is large) and then loses the faint sources of dark, deep fields, whose
activations fall between two quantization steps. So the set is assembled on purpose: every
combination of the strata below gets the same number of exposures.

=========  ===============================  ===============================================
stratum    levels                           simulator knob
=========  ===============================  ===============================================
sky        dark, bright                     band (g: 22.1 mag/arcsec^2, z: 19.6)
density    sparse, crowded                  the field's star-density factor (screened seeds)
seeing     good, poor                       the exposure's FWHM (screened exposure indices)
depth      shallow, deep                    exposure time and reference depth
=========  ===============================  ===============================================

Each exposure is rendered by `skyblink.sim` and turned into the same normalized (science,
reference, difference) triplet the workers build (`skyblink.engines.training.dataset.exposure_triplet`):
the detector calibrates on whole triplets, the classifier on 63x63 stamps at the positions of
true sources of every kind and of empty sky.

The set's id is a hash of its specification (strata, sizes, seed), so the same specification
always gives the same id and, the simulator being deterministic, the same pixels. The id and the
strata go into the manifest of every engine calibrated on it.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from skyblink.config import SimConfig
from skyblink.lazy_import import lazy_module

if TYPE_CHECKING:
    from skyblink.sim import conditions, sky

    from .training import dataset
else:
    # The simulator (astropy.modeling, scipy) loads when a calibration set is built, not with the module.
    conditions = lazy_module("skyblink.sim.conditions")
    sky = lazy_module("skyblink.sim.sky")
    dataset = lazy_module("skyblink.engines.training.dataset")

__all__ = [
    "DEPTHS",
    "SKY_BANDS",
    "CalibrationSet",
    "CalibrationSpec",
    "Stratum",
    "bright_crowded_spec",
    "build_calibration_set",
    "stratified_spec",
]

log = logging.getLogger(__name__)

SkyLevel = Literal["dark", "bright"]
Density = Literal["sparse", "crowded"]
Seeing = Literal["good", "poor"]
Depth = Literal["shallow", "deep"]

#: Band of each sky level: the darkest and the brightest sky of the simulator's bands.
SKY_BANDS: dict[str, str] = {"dark": "g", "bright": "z"}
#: (exposure time s, reference depth in exposures) of each depth level.
DEPTHS: dict[str, tuple[float, int]] = {"shallow": (15.0, 4), "deep": (120.0, 20)}
#: Star-density factor (field's density / the nominal 25,700 per deg^2) of each density level.
DENSITY_RANGES: dict[str, tuple[float, float]] = {"sparse": (0.0, 0.85), "crowded": (1.2, math.inf)}
#: FWHM range (arcsec) of each seeing level.
SEEING_RANGES: dict[str, tuple[float, float]] = {"good": (0.0, 0.95), "poor": (1.2, math.inf)}
#: Calibration set format; part of the id.
FORMAT_VERSION = 1


@dataclass(frozen=True, slots=True, order=True)
class Stratum:
    """One cell of the calibration set: sky background x source density x seeing x depth. Stable."""

    sky: SkyLevel
    density: Density
    seeing: Seeing
    depth: Depth

    @property
    def label(self) -> str:
        """``dark-sparse-good-deep``."""
        return f"{self.sky}-{self.density}-{self.seeing}-{self.depth}"


@dataclass(frozen=True, slots=True)
class CalibrationSpec:
    """
    What the calibration set holds. Stable.

    Parameters
    ----------
    strata : tuple of Stratum
    exposures_per_stratum : int
    image_size : int
        Edge of each simulated CCD (and detector calibration tile), a multiple of 32.
    stamps_per_exposure : int
        Classifier stamps cut from each exposure (true sources of every kind, and empty sky).
    seed : int
        Base seed of the simulated nights.
    name : str
        Human label (``stratified``, ``bright-crowded``); not part of the id.
    """

    strata: tuple[Stratum, ...]
    exposures_per_stratum: int = 1
    image_size: int = 512
    stamps_per_exposure: int = 64
    seed: int = 5000
    name: str = "stratified"

    def to_json(self) -> dict[str, Any]:
        """The specification as JSON (what the id hashes, plus the name)."""
        data = asdict(self)
        data["strata"] = [asdict(s) for s in self.strata]
        return data

    @property
    def id(self) -> str:
        """``cal-<12 hex>``: sha256 of the specification (name excluded) and the format version."""
        data = self.to_json()
        data.pop("name")
        data["format"] = FORMAT_VERSION
        return "cal-" + hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:12]

    def strata_summary(self) -> dict[str, Any]:
        """What goes into an engine manifest's ``calibration_strata``."""
        return {
            "name": self.name,
            "axes": {
                "sky": {k: f"band {v}" for k, v in SKY_BANDS.items()},
                "density": {k: f"star density factor in [{lo}, {hi})" for k, (lo, hi) in DENSITY_RANGES.items()},
                "seeing": {k: f"FWHM arcsec in [{lo}, {hi})" for k, (lo, hi) in SEEING_RANGES.items()},
                "depth": {k: f"exptime {t:g} s, reference depth {d}" for k, (t, d) in DEPTHS.items()},
            },
            "strata": [s.label for s in self.strata],
            "exposures_per_stratum": self.exposures_per_stratum,
            "image_size": self.image_size,
            "stamps_per_exposure": self.stamps_per_exposure,
            "seed": self.seed,
        }


def stratified_spec(*, exposures_per_stratum: int = 1, image_size: int = 512, seed: int = 5000) -> CalibrationSpec:
    """Every combination of the four strata (16 cells), dark deep fields included."""
    skies: tuple[SkyLevel, ...] = ("dark", "bright")
    densities: tuple[Density, ...] = ("sparse", "crowded")
    seeings: tuple[Seeing, ...] = ("good", "poor")
    depths: tuple[Depth, ...] = ("shallow", "deep")
    strata = tuple(Stratum(*combo) for combo in itertools.product(skies, densities, seeings, depths))
    return CalibrationSpec(strata, exposures_per_stratum, image_size, seed=seed, name="stratified")


def bright_crowded_spec(*, exposures_per_stratum: int = 4, image_size: int = 512, seed: int = 5000) -> CalibrationSpec:
    """
    Bright sky and crowded fields only, at the same total size as `stratified_spec`: the careless
    calibration set that the accuracy gate has to catch.
    """
    strata = tuple(Stratum("bright", "crowded", seeing, depth) for seeing in ("good", "poor") for depth in ("shallow", "deep"))
    return CalibrationSpec(strata, exposures_per_stratum, image_size, seed=seed, name="bright-crowded")


@dataclass(slots=True)
class CalibrationSet:
    """
    The calibration samples. Stable.

    Attributes
    ----------
    spec : CalibrationSpec
    tiles : ndarray
        (N, 3, S, S) float32 detector inputs, one per exposure.
    stamps : ndarray
        (M, 3, 63, 63) float32 classifier inputs.
    exposures : list of dict
        Per exposure: stratum, seed, exposure index, band, exptime, reference depth, FWHM,
        density factor, sky electrons per pixel, 5-sigma limiting magnitude.
    """

    spec: CalibrationSpec
    tiles: np.ndarray
    stamps: np.ndarray
    exposures: list[dict[str, Any]] = field(default_factory=list)

    @property
    def id(self) -> str:
        """The specification's id."""
        return self.spec.id

    def manifest_strata(self) -> dict[str, Any]:
        """The strata summary plus the conditions of every exposure, for an engine manifest."""
        return {**self.spec.strata_summary(), "exposures": self.exposures}


def _density_factor(sim: Any, field_index: int) -> float:
    """Stars of the field over the nominal star density (the simulator's per-field factor)."""
    hw, hh = sky.field_extent(sim)
    area_deg2 = 4 * hw * hh * sim.pixel_scale_arcsec**2 / 3600.0**2
    return len(sky.stars_for_field(sim, field_index).mag) / (sky.STAR_DENSITY * area_deg2)


def _within(value: float, bounds: tuple[float, float]) -> bool:
    return bounds[0] <= value < bounds[1]


def _find_exposures(stratum: Stratum, spec: CalibrationSpec, offset: int) -> list[tuple[Any, int]]:
    """Screen seeds and exposure indices until ``exposures_per_stratum`` fit the stratum."""
    exptime, ref_depth = DEPTHS[stratum.depth]
    found: list[tuple[Any, int]] = []
    for attempt in range(400):
        seed = spec.seed + 1000 * offset + attempt
        sim = SimConfig(fields=1, exposures_per_field=8, image_size=spec.image_size, seed=seed,
                        band=SKY_BANDS[stratum.sky], exptime=exptime, reference_depth=ref_depth)
        # Seeing first: it costs nothing, the density needs the field's catalogue.
        fitting = [e for e in range(sim.exposures_per_field)
                   if _within(conditions.exposure_conditions(sim, 0, e).fwhm_arcsec, SEEING_RANGES[stratum.seeing])]
        if not fitting or not _within(_density_factor(sim, 0), DENSITY_RANGES[stratum.density]):
            continue
        found.append((sim, fitting[0]))
        if len(found) == spec.exposures_per_stratum:
            return found
    msg = f"no simulated exposure fits stratum {stratum.label} after 400 seeds from {spec.seed + 1000 * offset}"
    raise RuntimeError(msg)


def _stamps(triplet: np.ndarray, truth: dict[str, np.ndarray], rng: np.random.Generator, count: int) -> np.ndarray:
    """Stamps at true sources (round-robin over kinds, so faint events are not crowded out) and at random sky."""
    half = 31
    size = triplet.shape[1]
    inside = np.isfinite(truth["x"]) & (truth["x"] >= half) & (truth["x"] < size - half - 1) & \
        (truth["y"] >= half) & (truth["y"] < size - half - 1)
    kinds = sorted({str(k) for k in truth["type"][inside]})
    queues = {k: list(rng.permutation(np.flatnonzero(inside & (truth["type"].astype(str) == k)))) for k in kinds}
    n_sky = count // 4
    picks: list[tuple[int, int]] = []
    while len(picks) < count - n_sky and any(queues.values()):
        for kind in kinds:
            if queues[kind] and len(picks) < count - n_sky:
                i = queues[kind].pop()
                picks.append((int(round(float(truth["y"][i]))), int(round(float(truth["x"][i])))))
    while len(picks) < count:
        picks.append(tuple(int(v) for v in rng.integers(half, size - half - 1, 2)))  # type: ignore[arg-type]
    return np.stack([triplet[:, y - half : y + half + 1, x - half : x + half + 1] for y, x in picks]).astype(np.float32)


def build_calibration_set(spec: CalibrationSpec | None = None, *, cache_dir: Path | str | None = None) -> CalibrationSet:
    """
    Simulate the calibration set of ``spec`` (default `stratified_spec`).

    Parameters
    ----------
    spec : CalibrationSpec, optional
    cache_dir : Path, optional
        Keep the samples as ``<id>.npz`` there and read them back next time.

    Returns
    -------
    CalibrationSet
        Deterministic for a given specification.
    """
    spec = spec or stratified_spec()
    cache = Path(cache_dir) / f"{spec.id}.npz" if cache_dir is not None else None
    if cache is not None and cache.is_file():
        with np.load(cache, allow_pickle=False) as data:
            exposures = json.loads(str(data["exposures"]))
            return CalibrationSet(spec, data["tiles"], data["stamps"], exposures)
    tiles, stamps, exposures = [], [], []
    for offset, stratum in enumerate(spec.strata):
        for sim, exposure in _find_exposures(stratum, spec, offset):
            triplet, truth, limit = dataset.exposure_triplet(sim, 0, exposure)
            rng = np.random.default_rng([sim.seed, exposure])
            tiles.append(np.nan_to_num(triplet).astype(np.float32))
            stamps.append(_stamps(tiles[-1], truth, rng, spec.stamps_per_exposure))
            cond = conditions.exposure_conditions(sim, 0, exposure)
            exposures.append({
                "stratum": stratum.label, "seed": sim.seed, "exposure": exposure, "band": sim.band,
                "exptime": sim.exptime, "reference_depth": sim.reference_depth, "fwhm_arcsec": round(cond.fwhm_arcsec, 3),
                "density_factor": round(_density_factor(sim, 0), 3), "sky_e_per_px": round(cond.sky_e, 1),
                "limiting_mag": round(limit, 2),
            })
    result = CalibrationSet(spec, np.stack(tiles), np.concatenate(stamps), exposures)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(".tmp.npz")
        np.savez(tmp, tiles=result.tiles, stamps=result.stamps, exposures=json.dumps(exposures))
        tmp.replace(cache)
    log.info("calibration set %s (%s): %d tiles, %d stamps", spec.id, spec.name, len(result.tiles), len(result.stamps))
    return result
