"""
Choose the inference backend: by flag or configuration, else automatically.

Automatic order: a TensorRT engine that the registry holds (or can build) for this GPU; torch on
CUDA; ONNX Runtime on the CPU. The choice and its reason are logged and returned.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ..build import EngineBuildError, build_engine
from ..catalog import MODEL_VERSIONS, load_network, onnx_path
from ..manifest import IO_NAMES
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
    precision: Literal["fp32", "fp16"] = "fp32",
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
    precision : {"fp32", "fp16"}
        Precision on GPU backends; ONNX Runtime on the CPU always runs fp32.
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
    if backend in ("auto", "tensorrt"):
        why = _tensorrt_unavailable(gpu, registry)
        if why is None and registry is not None and gpu is not None:
            from .._trt import load_trt  # noqa: PLC0415
            from .tensorrt_runner import TensorRTRunner  # noqa: PLC0415

            flavour = load_trt()
            request = EngineRequest(model, MODEL_VERSIONS[model], precision, gpu, flavour.name, flavour.version)
            build = functools.partial(build_engine, onnx_path(model, precision, models_root), registry.root,
                                      model=model, model_version=MODEL_VERSIONS[model], precision=precision,
                                      compute_capabilities=[gpu.compute_capability])
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
        runner = TorchRunner(load_network(model, models_root), input_name=names.inputs[0], output_names=names.outputs,
                             device=target, precision=precision if gpu is not None else "fp32")
        why = f"torch on {gpu.name}" if gpu is not None else "torch on the CPU (forced)"
        return _chosen(runner, "torch", "; ".join([*reasons, why]))
    if backend == "torch":
        raise RuntimeError("torch backend asked for, but torch cannot run here")
    reasons.append("no CUDA device" if gpu is None else "onnxruntime forced")
    from .onnxruntime_runner import OnnxRuntimeRunner  # noqa: PLC0415

    return _chosen(OnnxRuntimeRunner(onnx_path(model, "fp32", models_root)), "onnxruntime", "; ".join(reasons) + "; ONNX Runtime on the CPU")


def _tensorrt_unavailable(gpu: object, registry: EngineRegistry | None) -> str | None:
    if gpu is None:
        return "no CUDA device"
    if registry is None:
        return "no engine registry configured"
    return trt_runtime_available()


def _chosen(runner: InferenceRunner, backend: str, reason: str) -> BackendChoice:
    log.info("backend for %s: %s (%s)", runner.name, backend, reason)
    return BackendChoice(runner, backend, reason)
