"""
Build TensorRT engines from the ONNX models through TensorRT's Python API.

Strongly typed networks only: precision comes from the ONNX graph's types (fp16 engines are built
from the fp16 export, INT8 from a Q/DQ graph), never from builder flags. With TensorRT-RTX the
engine is built ahead of time on any machine, GPU or not, for the target compute capabilities;
with full TensorRT it is built for the GPU in hand, with a timing cache.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from skyblink.model_io import IO_NAMES

from ._trt import TrtFlavour, load_trt
from .manifest import EngineManifest, ProfileSpec, file_sha256
from .registry import current_device

__all__ = ["DEFAULT_PROFILES", "DEFAULT_RTX_TARGETS", "EngineBuildError", "build_engine", "engine_file_name",
           "inspect_engine"]

log = logging.getLogger(__name__)

#: Optimization profiles built when none are given: tiles of 512, 1024 and 2048 with batch
#: ranges for the detector; fixed 63x63 stamps in two batch buckets for the classifiers.
DEFAULT_PROFILES: dict[str, tuple[str, ...]] = {
    "detector": ("tile512:1-16-32@512x512", "tile1024:1-8-16@1024x1024", "tile2048:1-2-4@2048x2048"),
    "classifier": ("stamps64:1-32-64@63x63", "stamps1024:65-512-1024@63x63"),
    "braai": ("stamps64:1-32-64@63x63", "stamps1024:65-512-1024@63x63"),
}
#: GPU architectures a TensorRT-RTX engine is built for by default (A100, A10, L4/L40S, RTX 50xx).
DEFAULT_RTX_TARGETS = ("8.0", "8.6", "8.9", "12.0")


class EngineBuildError(RuntimeError):
    """The builder refused the network or the configuration; the message carries its errors."""


def engine_file_name(model: str, precision: str, flavour: TrtFlavour, targets: list[str], profiles: list[ProfileSpec]) -> str:
    """
    Return the engine file name: model, precision, builder and version, architectures, profile hash.

    ``detector-fp16-tensorrt_rtx1.7.1.116-sm89_sm120-3f2a9c1d.engine``
    """
    profile_text = json.dumps([[p.name, p.min, p.opt, p.max] for p in profiles])
    digest = hashlib.sha256(profile_text.encode()).hexdigest()[:8]
    arch = "_".join("sm" + t.replace(".", "") for t in targets)
    return f"{model}-{precision}-{flavour.name}{flavour.version}-{arch}-{digest}.engine"


def _set_targets(trt: Any, config: Any, flavour: TrtFlavour, targets: list[str]) -> list[str]:
    if not flavour.is_rtx:
        # Full TensorRT builds for the GPU it runs on: record that GPU's compute capability, which
        # is what the registry matches a worker's device against.
        device = current_device()
        if device is None:
            msg = "full TensorRT builds only on a CUDA device, and none is visible; build with tensorrt_rtx instead"
            raise EngineBuildError(msg)
        return [device.compute_capability]
    members = trt.ComputeCapability.__members__
    chosen = []
    for target in targets:
        name = "SM" + target.replace(".", "")
        if name not in members:
            supported = sorted(m for m in members if m.startswith("SM"))
            msg = f"compute capability {target} is not a target of {flavour.name} {flavour.version} (it supports {supported})"
            raise EngineBuildError(msg)
        chosen.append(members[name])
    config.num_compute_capabilities = len(chosen)
    for index, value in enumerate(chosen):
        config.set_compute_capability(value, index)
    return list(targets)


def build_engine(
    onnx_path: Path | str,
    out_dir: Path | str,
    *,
    model: str,
    model_version: str,
    precision: str,
    profiles: list[ProfileSpec] | None = None,
    compute_capabilities: list[str] | None = None,
    timing_cache: Path | None = None,
    calibration_set: str | None = None,
    calibration_strata: dict[str, Any] | None = None,
    validation: dict[str, Any] | None = None,
    builder: str | None = None,
) -> EngineManifest:
    """
    Build a serialized engine and write it with its manifest into ``out_dir``.

    Parameters
    ----------
    onnx_path : Path or str
        The ONNX graph (its tensor types set the precision).
    out_dir : Path or str
        Folder for the ``.engine`` file and its ``.engine.manifest.json``.
    model, model_version : str
        Network name (``detector``, ``classifier``, ``braai``) and version from its model card.
    precision : str
        ``fp32``, ``fp16`` or ``int8``: recorded in the manifest; must agree with the graph.
    profiles : list of ProfileSpec, optional
        Optimization profiles (default `DEFAULT_PROFILES` of the model).
    compute_capabilities : list of str, optional
        TensorRT-RTX targets such as ``["8.9", "12.0"]`` (default `DEFAULT_RTX_TARGETS`);
        ignored by full TensorRT, which builds for the GPU in hand.
    timing_cache : Path, optional
        Timing cache file read before and written after the build (full TensorRT only;
        TensorRT-RTX has none).
    calibration_set, calibration_strata : optional
        INT8 calibration provenance, recorded in the manifest.
    validation : dict, optional
        Metrics the engine passed, recorded in the manifest.
    builder : {"tensorrt", "tensorrt_rtx"}, optional
        Force a builder (default: full TensorRT if installed, else TensorRT-RTX).

    Returns
    -------
    EngineManifest
        The manifest written next to the engine (``out_dir / manifest.engine_file``).

    Raises
    ------
    TensorRTUnavailableError
        No TensorRT is installed.
    EngineBuildError
        The parser or builder refused; the message carries the parser's errors.
    """
    flavour = load_trt(builder)
    trt = flavour.module
    onnx_path = Path(onnx_path)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if model not in IO_NAMES:
        msg = f"unknown model {model!r}; expected one of {sorted(IO_NAMES)}"
        raise EngineBuildError(msg)
    input_name = IO_NAMES[model].inputs[0]
    specs = profiles or [ProfileSpec.parse(p) for p in DEFAULT_PROFILES[model]]

    logger = trt.Logger(trt.Logger.WARNING)
    builder_obj = trt.Builder(logger)
    flags = 0
    if "STRONGLY_TYPED" in trt.NetworkDefinitionCreationFlag.__members__:
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder_obj.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_path.read_bytes()):
        errors = "; ".join(str(parser.get_error(i).desc()) for i in range(parser.num_errors))
        msg = f"{flavour.name} {flavour.version} could not parse {onnx_path}: {errors}"
        raise EngineBuildError(msg)
    config = builder_obj.create_builder_config()
    if "DETAILED" in trt.ProfilingVerbosity.__members__:  # layer names, types and formats for the inspector
        config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    targets = _set_targets(trt, config, flavour, list(compute_capabilities or DEFAULT_RTX_TARGETS))
    for spec in specs:
        profile = builder_obj.create_optimization_profile()
        profile.set_shape(input_name, spec.min, spec.opt, spec.max)
        config.add_optimization_profile(profile)
    cache = None
    if timing_cache is not None and not flavour.is_rtx:
        cache = config.create_timing_cache(timing_cache.read_bytes() if timing_cache.exists() else b"")
        config.set_timing_cache(cache, ignore_mismatch=False)

    start = time.perf_counter()
    serialized = builder_obj.build_serialized_network(network, config)
    seconds = time.perf_counter() - start
    if serialized is None:
        msg = f"{flavour.name} {flavour.version} refused to build {onnx_path} for {targets} (see its log above)"
        raise EngineBuildError(msg)
    if cache is not None and timing_cache is not None:
        timing_cache.write_bytes(bytes(cache.serialize()))

    name = engine_file_name(model, precision, flavour, targets, specs)
    engine_path = out_dir / name
    engine_path.write_bytes(bytes(serialized))
    cuda = getattr(trt, "get_cuda_version", None)
    manifest = EngineManifest(
        model=model,
        model_version=model_version,
        onnx_sha256=file_sha256(onnx_path),
        precision=precision,
        builder=flavour.name,
        builder_version=flavour.version,
        cuda_version=str(cuda()) if callable(cuda) else None,
        compute_capabilities=targets,
        profiles=specs,
        input_name=input_name,
        built_at=datetime.now(UTC).isoformat(timespec="seconds"),
        build_seconds=round(seconds, 3),
        engine_file=name,
        engine_sha256=file_sha256(engine_path),
        engine_bytes=engine_path.stat().st_size,
        calibration_set=calibration_set,
        calibration_strata=dict(calibration_strata or {}),
        validation=dict(validation or {}),
        inspection=inspect_engine(bytes(serialized), flavour),
    )
    manifest.write(out_dir)
    log.info("built %s in %.2f s (%s %s, targets %s)", name, seconds, flavour.name, flavour.version, targets)
    return manifest


def _layer_precision(layer: dict[str, Any]) -> str:
    """A layer's precision from its outputs' format/datatype text (``Half``, ``Int8``, ``Float``...)."""
    formats = " ".join(str(out.get("Format/Datatype", "")) for out in layer.get("Outputs", []))
    for words, name in ((("Int8", "INT8"), "int8"), (("Half", "FP16"), "fp16"), (("BFloat16", "BF16"), "bf16"),
                        (("Float", "FP32"), "fp32"), (("Int32", "INT32"), "int32"), (("Bool",), "bool")):
        if any(word in formats for word in words):
            return name
    return "unknown"


def inspect_engine(serialized: bytes, flavour: TrtFlavour) -> dict[str, Any]:
    """
    Summarise an engine's layers with the builder's engine inspector.

    Returns
    -------
    dict
        ``layers`` (count after fusion), ``precisions`` (layers per output precision) and
        ``per_layer`` (name, type, precision, in execution order); or ``{"unavailable": reason}``
        when the runtime cannot deserialize the engine here (no GPU, or a GPU it refuses).
    """
    trt = flavour.module
    try:
        runtime = trt.Runtime(trt.Logger(trt.Logger.INTERNAL_ERROR))  # a refusal is the answer, not an error
        engine = runtime.deserialize_cuda_engine(serialized)
    except Exception as exc:  # noqa: BLE001 - the runtime's refusal is the answer recorded
        return {"unavailable": f"{flavour.name} {flavour.version} runtime: {type(exc).__name__}: {exc}"}
    if engine is None:
        device = current_device()
        where = f"on {device.name} (compute capability {device.compute_capability})" if device else "without a CUDA device"
        return {"unavailable": f"{flavour.name} {flavour.version} could not deserialize the engine {where}: "
                               "the layer summary is recorded where an engine is built on its GPU"}
    inspector = engine.create_engine_inspector()
    info = json.loads(inspector.get_engine_information(trt.LayerInformationFormat.JSON))
    per_layer = []
    for layer in info.get("Layers", []):
        if isinstance(layer, str):  # profiling verbosity below DETAILED: names only
            per_layer.append({"name": layer, "type": "unknown", "precision": "unknown"})
        else:
            per_layer.append({"name": str(layer.get("Name", "")), "type": str(layer.get("LayerType", "")),
                              "precision": _layer_precision(layer)})
    precisions: dict[str, int] = {}
    for layer in per_layer:
        precisions[layer["precision"]] = precisions.get(layer["precision"], 0) + 1
    return {"layers": len(per_layer), "precisions": precisions, "per_layer": per_layer}
