"""
Choose the inference backend: by flag or configuration, else automatically.

Automatic order: a TensorRT engine that the registry holds (or can build) for this GPU; torch on
CUDA; ONNX Runtime on the CPU. The choice and its reason are logged and returned.

Which model: the release in the production channel of the registry (`skyblink.engines.channels`)
when one is set, with its precision (an INT8 Q/DQ graph runs in ONNX Runtime on the CPU and is
built into an INT8 TensorRT engine); otherwise the model shipped in the package. The registry is
the one passed in, else the configured ``engines.registry`` (channels only).
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ..build import EngineBuildError, build_engine
from ..catalog import MODEL_VERSIONS, load_network, onnx_path
from ..channels import CHANNELS_FILE, Channels, Release
from ..model_io import IO_NAMES
from ..registry import EngineNotFoundError, EngineRegistry, EngineRequest, current_device
from ._trt_probe import trt_runtime_available
from .base import InferenceRunner

__all__ = ["BackendChoice", "BackendName", "select_runner"]

log = logging.getLogger(__name__)

BackendName = Literal["auto", "tensorrt", "torch", "onnxruntime"]


@dataclass(frozen=True, slots=True)
class BackendChoice:
    """The runner picked and why. Stable."""

    runner: InferenceRunner
    backend: str
    reason: str


def select_runner(
    model: str,
    *,
    backend: BackendName = "auto",
    precision: Literal["fp32", "fp16", "int8"] = "fp32",
    registry: EngineRegistry | None = None,
    models_root: Path | None = None,
    device: int = 0,
) -> BackendChoice:
    """
    Return an (inactive) runner for ``model`` on the best backend available, or the one asked for.

    Parameters
    ----------
    model : str
        ``detector`` or ``classifier``.
    backend : {"auto", "tensorrt", "torch", "onnxruntime"}
        Forced backend, or ``auto``.
    precision : {"fp32", "fp16", "int8"}
        Precision on GPU backends; ONNX Runtime on the CPU runs fp32 (or the production release).
        A production release overrides it; ``int8`` needs an INT8 production release.
    registry : EngineRegistry, optional
        Where TensorRT engines are kept (needed for ``tensorrt``).
    models_root : Path, optional
        Models folder (default: the shipped models).
    device : int
        CUDA device ordinal.

    Raises
    ------
    RuntimeError
        The forced backend cannot run here; the message says why.
    """
    names = IO_NAMES[model]
    gpu = current_device(device)
    reasons: list[str] = []
    release, release_onnx = _production_release(model, registry)
    if release is not None:
        precision = release.precision  # type: ignore[assignment]
        reasons.append(f"production release {release.label}")
    elif precision == "int8":
        msg = (f"{model}: int8 asked for, but the registry's production channel holds no INT8 release; "
               f"run `skyblink engines quantize {model}` and `skyblink engines promote {model} --store ...`")
        raise RuntimeError(msg)
    if backend in ("auto", "tensorrt"):
        why = _tensorrt_unavailable(gpu, registry)
        if why is None and registry is not None and gpu is not None:
            from .._trt import load_trt  # noqa: PLC0415
            from .tensorrt_runner import TensorRTRunner  # noqa: PLC0415

            flavour = load_trt()
            request = EngineRequest(model, release.model_version if release else MODEL_VERSIONS[model], precision, gpu,
                                    flavour.name, flavour.version, onnx_sha256=release.onnx_sha256 if release else None)
            build = functools.partial(build_engine, release_onnx or onnx_path(model, precision, models_root), registry.root,
                                      model=model, model_version=request.model_version, precision=precision,
                                      compute_capabilities=[gpu.compute_capability],
                                      calibration_set=release.calibration_set if release else None,
                                      calibration_strata=release.calibration_strata if release else None,
                                      validation=release.validation if release else None)
            try:
                path, manifest = registry.get_or_build(request, build)
            except (EngineNotFoundError, EngineBuildError) as exc:
                why = str(exc)
            else:
                return _chosen(TensorRTRunner(path, manifest, device=device), "tensorrt", f"engine {manifest.engine_file} matches {gpu.name}")
        reasons.append(f"tensorrt: {why}")
        if backend == "tensorrt":
            raise RuntimeError("; ".join(reasons))
    if backend in ("auto", "torch") and (gpu is not None or backend == "torch"):
        from .torch_runner import TorchRunner  # noqa: PLC0415

        target = f"cuda:{device}" if gpu is not None else "cpu"
        torch_precision = precision if gpu is not None and precision in ("fp32", "fp16") else "fp32"
        runner = TorchRunner(load_network(model, models_root), input_name=names.inputs[0], output_names=names.outputs,
                             device=target, precision=torch_precision)
        why = f"torch on {gpu.name}" if gpu is not None else "torch on the CPU (forced)"
        if release is not None and release.precision == "int8":
            why += " (runs the shipped weights in fp32/fp16: torch does not run the INT8 Q/DQ release)"
        return _chosen(runner, "torch", "; ".join([*reasons, why]))
    if backend == "torch":
        raise RuntimeError("torch backend asked for, but torch cannot run here")
    reasons.append("no CUDA device" if gpu is None else "onnxruntime forced")
    from .onnxruntime_runner import OnnxRuntimeRunner  # noqa: PLC0415

    ort_onnx = release_onnx or onnx_path(model, "fp32", models_root)
    return _chosen(OnnxRuntimeRunner(ort_onnx), "onnxruntime", "; ".join(reasons) + "; ONNX Runtime on the CPU")


def _production_release(model: str, registry: EngineRegistry | None) -> tuple[Release | None, Path | None]:
    """
    The production release of ``model`` and its ONNX file (sha256 checked, and listed in the
    trusted manifest when one is configured), from ``registry`` or the configured one.
    """
    registry = registry if registry is not None else _configured_registry()
    if registry is None or not (registry.root / CHANNELS_FILE).is_file():
        return None, None
    channels = Channels(registry.root, trusted=registry.trusted)
    release = channels.get(model, "production")
    if release is None:
        return None, None
    return release, channels.onnx_path(release)


def _configured_registry() -> EngineRegistry | None:
    from skyblink.config import ConfigError, load_config  # noqa: PLC0415

    try:
        engines = load_config().engines
    except (ConfigError, OSError) as exc:
        log.warning("cannot read the configured engine registry for its channels: %s", exc)
        return None
    return EngineRegistry.from_config(engines.registry, engines.trusted_manifest)  # an unreadable trusted manifest raises


def _tensorrt_unavailable(gpu: object, registry: EngineRegistry | None) -> str | None:
    if gpu is None:
        return "no CUDA device"
    if registry is None:
        return "no engine registry configured"
    return trt_runtime_available()


def _chosen(runner: InferenceRunner, backend: str, reason: str) -> BackendChoice:
    log.info("backend for %s: %s (%s)", runner.name, backend, reason)
    return BackendChoice(runner, backend, reason)
