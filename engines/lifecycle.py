"""
From a trained model to a registry candidate: quantize to INT8 on the stratified calibration set,
pass the accuracy gate, register the Q/DQ graph as the model's candidate, and build its
TensorRT-RTX engine (on the CPU, ahead of time) with the calibration set and the gate's numbers
in the manifest.

    train -> export -> `quantize_candidate` (CI) -> `skyblink.engines.canary.promote` (canary)
          -> `promote` (production)          `Channels.rollback` undoes the last promotion
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ._trt import TensorRTUnavailableError
from .build import EngineBuildError, build_engine
from .calibration_set import CalibrationSpec, build_calibration_set, stratified_spec
from .catalog import MODEL_VERSIONS, onnx_path
from .channels import Channels, Release, register_release
from .gate import GateResult, GateTolerances, ValidationSpec, run_gate
from .manifest import EngineManifest
from .quantize import CalibrationMethod, quantize_int8

__all__ = ["CandidateResult", "quantize_candidate"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class CandidateResult:
    """What `quantize_candidate` made. Stable."""

    release: Release
    gate: GateResult
    engine: EngineManifest | None
    engine_error: str | None


def quantize_candidate(
    model: Literal["detector", "classifier"],
    registry_root: Path | str,
    *,
    calibration: CalibrationSpec | None = None,
    method: CalibrationMethod = "percentile",
    validation: ValidationSpec | None = None,
    tolerances: GateTolerances | None = None,
    models_root: Path | None = None,
    cache_dir: Path | None = None,
    build: bool = True,
    compute_capabilities: list[str] | None = None,
) -> CandidateResult:
    """
    Quantize ``model`` to INT8, gate it against fp32, and make it the registry's candidate.

    Parameters
    ----------
    model : {"detector", "classifier"}
    registry_root : Path
        The engine registry folder (gets the Q/DQ graph, ``channels.json`` and the engine).
    calibration : CalibrationSpec, optional
        Default `stratified_spec`.
    method : {"minmax", "percentile", "entropy"}
    validation, tolerances : optional
        The gate's validation set and tolerances (defaults: `ValidationSpec`, `GateTolerances`).
    models_root : Path, optional
        Where the fp32 export is (default: the shipped models).
    cache_dir : Path, optional
        Where calibration sets are cached.
    build : bool
        Also build the TensorRT(-RTX) engine from the Q/DQ graph.
    compute_capabilities : list of str, optional
        Engine targets (default: the builder's defaults).

    Raises
    ------
    AccuracyGateError
        INT8 fell behind fp32; nothing was registered, the failing bins are in the message.
    """
    spec = calibration or stratified_spec()
    calib = build_calibration_set(spec, cache_dir=cache_dir)
    fp32 = onnx_path(model, "fp32", models_root)
    with tempfile.TemporaryDirectory(prefix="skyblink-int8-") as tmp:
        qdq = Path(tmp) / f"{model}.int8.onnx"
        with contextlib.redirect_stdout(io.StringIO()):  # ONNX Runtime's calibrators print progress
            quantize_int8(model, fp32, qdq, calib, method=method)
        gate = run_gate(model, fp32, qdq, validation=validation, tolerances=tolerances)
        validation_record = {**gate.summary(), "calibration_method": method}
        release = register_release(registry_root, model, qdq, model_version=MODEL_VERSIONS[model], precision="int8",
                                   calibration_set=calib.id, calibration_strata=calib.manifest_strata(),
                                   validation=validation_record)
    Channels(registry_root).set_candidate(release)
    engine, error = None, None
    if build:
        engine, error = _build(release, registry_root, compute_capabilities)
    return CandidateResult(release, gate, engine, error)


def _build(release: Release, registry_root: Path | str, targets: list[str] | None) -> tuple[EngineManifest | None, str | None]:
    try:
        manifest = build_engine(Path(registry_root) / release.onnx_file, registry_root, model=release.model,
                                model_version=release.model_version, precision=release.precision,
                                compute_capabilities=targets, calibration_set=release.calibration_set,
                                calibration_strata=release.calibration_strata, validation=release.validation)
    except (TensorRTUnavailableError, EngineBuildError) as exc:
        log.warning("no engine built for %s: %s", release.label, exc)
        return None, str(exc)
    return manifest, None


def describe(result: CandidateResult) -> dict[str, Any]:
    """A JSON-safe summary of a candidate (for the CLI)."""
    return {
        "release": result.release.label,
        "onnx_file": result.release.onnx_file,
        "calibration_set": result.release.calibration_set,
        "gate_passed": result.gate.passed,
        "engine": result.engine.engine_file if result.engine else None,
        "engine_error": result.engine_error,
    }
