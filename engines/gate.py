"""
The accuracy gate: an INT8 graph enters the registry only when it keeps the fp32 model's
accuracy on a held-out simulated validation set.

* Detector: completeness in every magnitude bin within ``completeness_pp`` percentage points of
  fp32 (the faintest bins included, which is where careless INT8 loses sources).
* Classifier: ROC AUC (real/bogus) within ``auc`` of fp32.

The metrics are the model cards' own (`skyblink.engines.training.train.evaluate_detector` and
``evaluate_classifier``), run on both graphs through ONNX Runtime, on the same simulated
exposures (fixed seeds, different from the training and the calibration seeds).

Statistical power. The simulator puts ~7 transients and movers on a 1024x1024 CCD, so 20
exposures hold 6-30 events in each faint bin, where one flipped source is 3-6 percentage points
and a 1-pp rule allows no flip at all: noise, not INT8, decides. The gate's validation set
therefore injects extra point-source transients (in the science exposure only, with their photon
noise, as survey pipelines inject fakes) into every exposure: one per ``injection_spacing_px``
square cell of a jittered grid (400 on a 1024x1024 CCD at 48 px), in ``injection_passes`` independent passes
over each exposure (4: 1,600 events an exposure, never closer than 24 px to each other), magnitudes uniform from
3 mag brighter to 1 mag fainter than the exposure's 5-sigma limit, as the simulator draws its own events.
A bin is judged only when it holds at least ``GateTolerances.min_events`` events (200: the 1-pp
rule then allows 2 flips); smaller bins are printed, marked "not judged". fp32's metrics are cached
by the fp32 graph's sha256 and the validation set's id, so a second gate run only evaluates the
candidate.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from skyblink.config import SimConfig
from skyblink.lazy_import import lazy_module

from .backends.onnxruntime_runner import OnnxRuntimeRunner

if TYPE_CHECKING:
    import torch
    from astropy import wcs as astropy_wcs

    from skyblink.sim import ccd_image, conditions
    from skyblink.workers import align, difference

    from .training import dataset, train
else:
    # Training (torch), the simulator and the workers' image steps load when a gate runs.
    torch = lazy_module("torch")
    astropy_wcs = lazy_module("astropy.wcs")
    ccd_image = lazy_module("skyblink.sim.ccd_image")
    conditions = lazy_module("skyblink.sim.conditions")
    align = lazy_module("skyblink.workers.align")
    difference = lazy_module("skyblink.workers.difference")
    dataset = lazy_module("skyblink.engines.training.dataset")
    train = lazy_module("skyblink.engines.training.train")

__all__ = [
    "AccuracyGateError", "GateResult", "GateTolerances", "ValidationSpec", "compare", "default_cache_dir", "evaluate",
    "reference_metrics", "run_gate", "validation_stamps",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class GateTolerances:
    """How far INT8 may fall behind fp32. Stable."""

    completeness_pp: float = 1.0
    auc: float = 0.005
    #: A magnitude bin with fewer events is reported but not judged (1 pp of 200 events is 2 flips).
    min_events: int = 200


@dataclass(frozen=True, slots=True)
class ValidationSpec:
    """
    The held-out simulated validation set. Stable.

    The detector is validated on the shipped model cards' validation night (training seed 1 +
    1000: ``exposures`` of ``image_size``, median r-band conditions) plus ``dark_deep_exposures``
    dark, deep exposures (g band, 120 s, references 20 deep: seed + 3000), where the faintest
    sources are; the classifier on the stamps of the validation night. Into every detector
    exposure the gate injects one point-source transient per ``injection_spacing_px`` square (a
    jittered grid, 400 on 1024x1024 at 48 px; 0: none, the simulator's events only), magnitudes
    uniform in [limit - 3, limit + 1], seeded by ``injection_seed``, the field, the exposure and
    the pass. Each exposure is run ``injection_passes`` times, each pass with its own injections
    (more events without crowding: at a 32 px spacing fp32's own completeness of bright events
    fell from 99 % to 87-91 %, the images no longer being those the detector sees).
    """

    exposures: int = 10
    exposures_per_field: int = 5
    image_size: int = 1024
    seed: int = 1
    workers: int = 2
    dark_deep_exposures: int = 10
    injection_spacing_px: int = 48
    injection_passes: int = 4
    injection_seed: int = 7000

    @property
    def id(self) -> str:
        """``val-<12 hex>``: sha256 of the specification (``workers`` excluded) and the format version."""
        data = {k: v for k, v in asdict(self).items() if k != "workers"} | {"format": _VALIDATION_FORMAT}
        return "val-" + hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:12]

    def render(self, sim: Any, field_index: int, exposure: int | tuple[int, int]) -> tuple[np.ndarray, dict[str, np.ndarray], float]:
        """(triplet, truth, 5-sigma limit) of one validation exposure (or (exposure, pass)), injected events included."""
        index, injection_pass = exposure if isinstance(exposure, tuple) else (exposure, 0)
        return _injected_triplet(sim, field_index, index, spacing=self.injection_spacing_px,
                                 seed=self.injection_seed + 100_000 * injection_pass)

    def detector_exposures(self) -> list[tuple[Any, int, int]]:
        """(simulator config, field, exposure) of every validation exposure of the detector, once each."""
        val = train.validation_data(self.training_config())
        sim = val.sim_config()
        out = [(sim, f, e) for f in range(val.fields) for e in range(val.exposures_per_field)]
        if self.dark_deep_exposures:
            per_field = min(self.exposures_per_field, self.dark_deep_exposures)
            fields = -(-self.dark_deep_exposures // per_field)
            dark = SimConfig(fields=fields, exposures_per_field=per_field, image_size=self.image_size,
                             seed=self.seed + 3000, band="g", exptime=120.0, reference_depth=20)
            out += [(dark, f, e) for f in range(fields) for e in range(per_field)][: self.dark_deep_exposures]
        return out

    def training_config(self) -> Any:
        """The `TrainingConfig` whose validation data is this set."""
        data = dataset.TrainingDataConfig(exposures_per_field=self.exposures_per_field, image_size=self.image_size,
                                  seed=self.seed, workers=self.workers)
        return train.TrainingConfig(data=data, validation_exposures=self.exposures)


#: Bumped whenever the rendering or the injection of the validation exposures changes.
_VALIDATION_FORMAT = 2


def _injection_sites(size: int, spacing: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A jittered grid: one site per ``spacing`` cell, >= spacing/2 px apart, 16 px in from the edges."""
    n = (size - 32) // spacing
    if n < 1:
        return np.zeros(0), np.zeros(0)
    centres = 16 + spacing * (np.arange(n) + 0.5) + ((size - 32) - n * spacing) / 2
    yy, xx = np.meshgrid(centres, centres, indexing="ij")
    jitter = rng.uniform(-spacing / 4, spacing / 4, (2, n * n))
    return xx.ravel() + jitter[0], yy.ravel() + jitter[1]


@functools.lru_cache(maxsize=1)  # the passes over one exposure are consecutive
def _rendered(sim: Any, field_index: int, exposure: int) -> tuple[Any, np.ndarray, Any, Any]:
    """(science CCD, reference warped onto its grid, science and reference conditions) of one exposure."""
    science = ccd_image.render_ccd(sim, field_index, 0, exposure=exposure)
    reference = ccd_image.render_ccd(sim, field_index, 0, exposure=None)
    grid = align.sampling_grid(astropy_wcs.WCS(science.wcs_header), astropy_wcs.WCS(reference.wcs_header), science.pixels.shape)
    ref_on_grid = align.warp(reference.pixels.astype(np.float32), grid)
    return science, ref_on_grid, conditions.exposure_conditions(sim, field_index, exposure), conditions.reference_conditions(sim, field_index)


def _injected_triplet(sim: Any, field_index: int, exposure: int, *, spacing: int,
                      seed: int) -> tuple[np.ndarray, dict[str, np.ndarray], float]:
    """
    `skyblink.engines.training.dataset.exposure_triplet` with point-source transients injected.

    The same steps as ``exposure_triplet`` (without realism), plus the injected sources' ADU (and
    their photon noise) added to the science pixels before normalization; their truth rows are
    ``type="transient"``. ``spacing=0`` gives ``exposure_triplet``'s own triplet.
    """
    science, ref_on_grid, sci_cond, ref_cond = _rendered(sim, field_index, exposure)
    truth = dataset.truth_columns(science.truth_parts)
    limit = float(sci_cond.limiting_mag)
    sci_pixels = science.pixels
    if spacing > 0:
        rng = np.random.default_rng([seed, sim.seed, field_index, exposure])
        x, y = _injection_sites(sci_pixels.shape[0], spacing, rng)
        mags = rng.uniform(limit - 3.0, limit + 1.0, x.size)
        electrons = np.asarray(sci_cond.electrons(mags), np.float64)
        sci_pixels = sci_pixels.astype(np.float32) + dataset.added_adu(sci_pixels.shape, x, y, electrons, sci_cond, rng)
        rows = {"type": np.full(x.size, "transient"),
                "x": x, "y": y, "mag": mags, "flux": electrons, "mean_mag": mags, "trailed": np.zeros(x.size, bool)}
        truth = {k: np.concatenate([truth[k], rows[k]]) if truth[k].size else rows[k] for k in truth}
    triplet = difference.normalized_triplet(
        sci_pixels, ref_on_grid,
        science_fwhm_px=sci_cond.fwhm_arcsec / sim.pixel_scale_arcsec,
        reference_fwhm_px=ref_cond.fwhm_arcsec / sim.pixel_scale_arcsec,
        scale=difference.flux_scale(science_magzp=sci_cond.magzp, reference_magzp=ref_cond.magzp), science_mask=science.mask > 0,
    )
    return triplet, truth, limit


class AccuracyGateError(RuntimeError):
    """The INT8 graph fell behind fp32; the message prints the failing bins. Not retryable as is."""

    def __init__(self, result: GateResult) -> None:
        super().__init__(f"{result.model}: INT8 refused by the accuracy gate:\n" + result.report(failures_only=True)
                         + (f"\n{result.unjudged_note()}" if result.model == "detector" else ""))
        self.result = result


@dataclass(slots=True)
class GateResult:
    """
    The gate's comparison of INT8 with fp32. Stable.

    Attributes
    ----------
    model : str
    rows : list of dict
        Detector: per magnitude bin ``mag_lo, mag_hi, n, fp32, int8, delta_pp, ok``; classifier:
        one row ``metric="roc_auc", fp32, int8, delta, ok``. A detector bin with fewer than
        ``tolerances.min_events`` events has ``judged`` False and ``ok`` True.
    passed : bool
    tolerances : GateTolerances
    fp32, int8 : dict
        The full validation metrics of both graphs.
    """

    model: str
    rows: list[dict[str, Any]]
    tolerances: GateTolerances
    fp32: dict[str, Any] = field(default_factory=dict)
    int8: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        """True when every row is within tolerance."""
        return all(r["ok"] for r in self.rows)

    @property
    def failures(self) -> list[dict[str, Any]]:
        """The rows outside tolerance."""
        return [r for r in self.rows if not r["ok"]]

    def unjudged_note(self) -> str:
        """Which detector bins were too small to judge (reported, not judged)."""
        small = [f"{r['mag_lo']:.1f}-{r['mag_hi']:.1f} ({r['n']})" for r in self.rows if not r.get("judged", True)]
        if not small:
            return f"every bin holds >= {self.tolerances.min_events} events and was judged"
        return f"bins with < {self.tolerances.min_events} events, reported but not judged: " + ", ".join(small)

    def report(self, *, failures_only: bool = False) -> str:
        """A plain-text table (one line per bin or metric)."""
        rows = self.failures if failures_only else self.rows
        if self.model == "detector":
            lines = [f"completeness per magnitude bin, tolerance {self.tolerances.completeness_pp:g} pp "
                     f"(bins of >= {self.tolerances.min_events} events judged):",
                     "  mag bin        n  found fp32->int8   fp32     int8     delta"]
            lines += [f"  {r['mag_lo']:.1f}-{r['mag_hi']:.1f}  {r['n']:5d}  {r['found_fp32']:5d} -> {r['found_int8']:5d}  "
                      f"{r['fp32']:6.1%}  {r['int8']:6.1%}  {r['delta_pp']:+6.2f} pp"
                      f"{'  not judged' if not r.get('judged', True) else '' if r['ok'] else '  FAIL'}" for r in rows]
            if not failures_only:
                lines.append(self.unjudged_note())
        else:
            lines = [f"classifier ROC AUC, tolerance {self.tolerances.auc:g}:"]
            lines += [f"  fp32 {r['fp32']:.4f}  int8 {r['int8']:.4f}  delta {r['delta']:+.4f}{'' if r['ok'] else '  FAIL'}" for r in rows]
        return "\n".join(lines)

    def summary(self) -> dict[str, Any]:
        """What goes into the manifest's ``validation``."""
        out: dict[str, Any] = {"gate": "int8-vs-fp32", "passed": self.passed, "tolerances": asdict(self.tolerances), "rows": self.rows}
        if self.model == "detector":
            out["completeness_fp32"] = self.fp32.get("completeness")
            out["completeness_int8"] = self.int8.get("completeness")
        return out


class _OnnxAsModule:
    """An ONNX graph under ONNX Runtime, called like the torch network (what the evaluators call)."""

    def __init__(self, path: Path, input_name: str, threads: int | None = None, batch: int = 256) -> None:
        self.runner = OnnxRuntimeRunner(path, threads=threads)
        self.runner.activate()
        self.input_name = input_name
        self.batch = batch

    def eval(self) -> _OnnxAsModule:
        return self

    def __call__(self, x: Any) -> tuple[Any, ...]:
        arr = x.numpy() if hasattr(x, "numpy") else np.asarray(x)
        parts = [self.runner.infer({self.input_name: np.ascontiguousarray(arr[i : i + self.batch], np.float32)})
                 for i in range(0, len(arr), self.batch)]
        names = self.runner.output_names
        return tuple(torch.from_numpy(np.concatenate([p[n] for p in parts])) for n in names)

    def close(self) -> None:
        self.runner.deactivate()


def _detector_rows(fp32: dict[str, Any], int8: dict[str, Any], tol: GateTolerances) -> list[dict[str, Any]]:
    ours = {(b["mag_lo"], b["mag_hi"]): b for b in int8["completeness_by_magnitude"]}
    rows = []
    for b in fp32["completeness_by_magnitude"]:
        q = ours[(b["mag_lo"], b["mag_hi"])]  # same truth events: the same bins are populated
        delta = 100.0 * (q["completeness"] - b["completeness"])
        judged = b["n"] >= tol.min_events
        rows.append({"mag_lo": b["mag_lo"], "mag_hi": b["mag_hi"], "n": b["n"], "fp32": b["completeness"],
                     "int8": q["completeness"], "found_fp32": b["found"], "found_int8": q["found"],
                     "delta_pp": round(delta, 3), "judged": judged,
                     "ok": (not judged) or abs(delta) <= tol.completeness_pp + 1e-9})
    return rows


def evaluate(model: Literal["detector", "classifier"], onnx: Path | str, validation: ValidationSpec,
             *, stamps: Any = None) -> dict[str, Any]:
    """The model card's validation metrics of one ONNX graph under ONNX Runtime."""
    cfg = validation.training_config()
    net = _OnnxAsModule(Path(onnx), "tiles" if model == "detector" else "stamps")
    try:
        if model == "detector":
            passes = max(1, validation.injection_passes) if validation.injection_spacing_px > 0 else 1
            runs = [(sim, f, (e, k)) for sim, f, e in validation.detector_exposures() for k in range(passes)]
            return train.evaluate_detector(net, cfg, exposures=runs, render=validation.render)
        if stamps is None:
            stamps = validation_stamps(validation)
        return train.evaluate_classifier(net, stamps)
    finally:
        net.close()


def validation_stamps(validation: ValidationSpec) -> Any:
    """The classifier's validation stamps of ``validation`` (the model card's, built once per call)."""
    return dataset.build_training_data(train.validation_data(validation.training_config())).stamps


def default_cache_dir() -> Path:
    """
    ``$XDG_CACHE_HOME/skyblink/gate`` (default ``~/.cache/skyblink/gate``): where fp32's validation metrics are kept.

    Not a ``SKYBLINK_*`` variable: those are the typed configuration's, which refuses unknown keys.
    """
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "skyblink" / "gate"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def reference_metrics(model: Literal["detector", "classifier"], fp32_onnx: Path | str, validation: ValidationSpec,
                      *, stamps: Any = None, cache_dir: Path | str | None = None) -> dict[str, Any]:
    """
    fp32's validation metrics, from the cache when this graph (sha256) met this validation set before.

    The cache file is ``<cache_dir>/<model>-<sha256 12>-<validation id>.json`` (default
    `default_cache_dir`); it records the full sha256 and is ignored when that differs.
    """
    sha = _sha256(Path(fp32_onnx))
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = cache / f"{model}-{sha[:12]}-{validation.id}.json"
    if path.is_file():
        with path.open() as fh:
            data = json.load(fh)
        if data.get("fp32_sha256") == sha and data.get("validation_id") == validation.id:
            log.info("fp32 %s metrics on %s from the cache %s", model, validation.id, path)
            return data["metrics"]
    metrics = evaluate(model, fp32_onnx, validation, stamps=stamps)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"fp32_sha256": sha, "validation_id": validation.id, "validation": asdict(validation),
                               "metrics": metrics}, allow_nan=True))
    tmp.replace(path)
    return metrics


def compare(model: Literal["detector", "classifier"], fp32: dict[str, Any], int8: dict[str, Any],
            tolerances: GateTolerances | None = None) -> GateResult:
    """The gate's verdict from the validation metrics of both graphs (see `evaluate`)."""
    tol = tolerances or GateTolerances()
    if model == "detector":
        rows = _detector_rows(fp32, int8, tol)
    else:
        delta = int8["roc_auc"] - fp32["roc_auc"]
        rows = [{"metric": "roc_auc", "fp32": fp32["roc_auc"], "int8": int8["roc_auc"], "delta": round(delta, 6),
                 "ok": bool(math.isfinite(delta) and abs(delta) <= tol.auc + 1e-12)}]
    return GateResult(model, rows, tol, fp32, int8)


def run_gate(
    model: Literal["detector", "classifier"],
    fp32_onnx: Path | str,
    int8_onnx: Path | str,
    *,
    validation: ValidationSpec | None = None,
    tolerances: GateTolerances | None = None,
    raise_on_failure: bool = True,
    cache_dir: Path | str | None = None,
) -> GateResult:
    """
    Compare the INT8 graph with fp32 on the held-out validation set.

    Parameters
    ----------
    model : {"detector", "classifier"}
    fp32_onnx, int8_onnx : Path
    validation : ValidationSpec, optional
        Default: the model cards' validation night.
    tolerances : GateTolerances, optional
    raise_on_failure : bool
        Raise `AccuracyGateError` (printing the failing bins) instead of returning a failed result.
    cache_dir : Path, optional
        Where fp32's metrics are cached (default `default_cache_dir`); see `reference_metrics`.

    Raises
    ------
    AccuracyGateError
        INT8 is outside a tolerance, and ``raise_on_failure``.
    """
    validation = validation or ValidationSpec()
    stamps = validation_stamps(validation) if model == "classifier" else None
    start = time.perf_counter()
    fp32 = reference_metrics(model, fp32_onnx, validation, stamps=stamps, cache_dir=cache_dir)
    int8 = evaluate(model, int8_onnx, validation, stamps=stamps)
    result = compare(model, fp32, int8, tolerances)
    log.info("accuracy gate for %s on %s (%.0f s): %s\n%s", model, validation.id, time.perf_counter() - start,
             "passed" if result.passed else "FAILED", result.report())
    if not result.passed and raise_on_failure:
        raise AccuracyGateError(result)
    return result
