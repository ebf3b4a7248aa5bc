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
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from skyblink.config import Backend, ConfigError, load_config
from skyblink.model_io import IO_NAMES

from .._trt import TensorRTUnavailableError, load_trt
from ..build import DEFAULT_PROFILES, EngineBuildError, build_engine
from ..catalog import MODEL_VERSIONS, load_network, onnx_path
from ..channels import CHANNELS_FILE, Channels, Release
from ..manifest import ProfileSpec
from ..registry import (
    DeviceInfo,
    EngineNotFoundError,
    EngineRegistry,
    EngineRequest,
    current_device,
)
from ._trt_probe import trt_runtime_available
from .base import InferenceRunner
from .onnxruntime_runner import OnnxRuntimeRunner
from .tensorrt_runner import TensorRTRunner
from .torch_runner import TorchMode, TorchRunner

__all__ = ["BackendChoice", "BackendName", "select_runner", "torch_runner"]

log = logging.getLogger(__name__)

BackendName = Literal["auto", "tensorrt", "torch", "onnxruntime"]
PrecisionName = Literal["fp32", "fp16", "int8"]


@dataclass(frozen=True, slots=True)
class BackendChoice:
    """The runner picked and why. Stable."""

    runner: InferenceRunner
    backend: str
    reason: str
    engine_file: str | None = None  # the TensorRT engine's file in the registry, with its sha256
    engine_sha256: str | None = None

    def describe(self) -> dict[str, str | None]:
        """The choice as a JSON-safe dict: backend, engine file and sha256, and the reason."""
        return {"backend": self.backend, "engine_file": self.engine_file, "engine_sha256": self.engine_sha256,
                "reason": self.reason}


def torch_runner(model: str, *, device: str, precision: Literal["fp32", "fp16"] = "fp32", compiled: bool = False,
                 models_root: Path | None = None) -> TorchRunner:
    """
    The (inactive) torch runner of ``model`` as a worker runs it without TensorRT.

    On a CUDA ``device`` both networks keep their activations in NHWC (the layout cuDNN's
    tensor-core convolutions read) and, when ``compiled`` (``night.compile_device_program``), the
    detector is compiled by Inductor for the program's one padded batch shape: at batch 8 of
    1024x1024 tiles on an H100 that is 2.9x the eager fp16 network (BENCHMARKS.md, "Engines:
    detector backends"). The classifier runs on a few stamps per tile and stays eager. On the
    CPU: eager, NCHW, fp32.

    Parameters
    ----------
    model : str
        ``detector`` or ``classifier``.
    device : str
        ``cuda``, ``cuda:N`` or ``cpu``.
    precision : {"fp32", "fp16"}
        The network's precision on a CUDA device (the CPU runs fp32).
    compiled : bool
        Compile the detector on a CUDA device.
    models_root : Path, optional
        Models folder (default: the shipped models).
    """
    names = IO_NAMES[model]
    gpu = device.startswith("cuda")
    mode: TorchMode = "compile" if gpu and compiled and model == "detector" else "eager"
    return TorchRunner(load_network(model, models_root), input_name=names.inputs[0], output_names=names.outputs,
                       device=device, precision=precision if gpu else "fp32", mode=mode, channels_last=gpu)


def select_runner(
    model: str,
    *,
    backend: Backend | BackendName = Backend.AUTO,
    precision: PrecisionName = "fp32",
    registry: EngineRegistry | None = None,
    models_root: Path | None = None,
    device: int = 0,
    shapes: Sequence[tuple[int, ...]] = (),
    cpu_threads: int | None = None,
    compiled: bool = False,
) -> BackendChoice:
    """
    Return an (inactive) runner for ``model`` on the best backend available, or the one asked for.

    Parameters
    ----------
    model : str
        ``detector`` or ``classifier``.
    backend : Backend or {"auto", "tensorrt", "torch", "onnxruntime"}
        Forced backend, or ``auto`` (``engines.backend``).
    precision : {"fp32", "fp16", "int8"}
        Precision on GPU backends; ONNX Runtime on the CPU runs fp32 (or the production release).
        A production release overrides it; ``int8`` needs an INT8 production release.
    registry : EngineRegistry, optional
        Where TensorRT engines are kept (needed for ``tensorrt``).
    models_root : Path, optional
        Models folder (default: the shipped models).
    device : int
        CUDA device ordinal.
    shapes : sequence of tuple of int
        Input shapes (NCHW, largest batch) the caller will run: a TensorRT engine must have an
        optimization profile covering each (one built here gets them).
    cpu_threads : int, optional
        Intra-op threads of an ONNX Runtime runner (the caller's share of the machine's cores);
        default: ONNX Runtime's choice, every physical core.
    compiled : bool
        With torch on a GPU, compile the detector (`torch_runner`; ``night.compile_device_program``).

    Raises
    ------
    RuntimeError
        The forced backend cannot run here; the message says why.
    """
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
        found = _tensorrt(model, precision, release, release_onnx, registry, gpu, device, models_root, shapes)
        if isinstance(found, BackendChoice):
            return found
        reasons.append(f"tensorrt: {found}")
        if backend == "tensorrt":
            raise RuntimeError("; ".join(reasons))
    if backend in ("auto", "torch") and (gpu is not None or backend == "torch"):
        target = f"cuda:{device}" if gpu is not None else "cpu"
        torch_precision = precision if gpu is not None and precision in ("fp32", "fp16") else "fp32"
        runner = torch_runner(model, device=target, precision=torch_precision, compiled=compiled, models_root=models_root)
        why = f"torch on {gpu.name}" if gpu is not None else "torch on the CPU (forced)"
        if release is not None and release.precision == "int8":
            why += " (runs the shipped weights in fp32/fp16: torch does not run the INT8 Q/DQ release)"
        return _chosen(runner, "torch", "; ".join([*reasons, why]))
    if backend == "torch":
        raise RuntimeError("torch backend asked for, but torch cannot run here")
    reasons.append("no CUDA device" if gpu is None else "onnxruntime forced")
    ort_onnx = release_onnx or onnx_path(model, "fp32", models_root)
    threads = f", {cpu_threads} thread(s)" if cpu_threads else ""
    return _chosen(OnnxRuntimeRunner(ort_onnx, threads=cpu_threads), "onnxruntime",
                   "; ".join(reasons) + f"; ONNX Runtime on the CPU{threads}")


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
    try:
        engines = load_config().engines
    except (ConfigError, OSError) as exc:
        log.warning("cannot read the configured engine registry for its channels: %s", exc)
        return None
    return EngineRegistry.from_config(engines.registry, engines.trusted_manifest)  # an unreadable trusted manifest raises


def _tensorrt(model: str, precision: str, release: Release | None, release_onnx: Path | None,
              registry: EngineRegistry | None, gpu: DeviceInfo | None, device: int, models_root: Path | None,
              shapes: Sequence[tuple[int, ...]]) -> BackendChoice | str:
    """A TensorRT runner from ``registry`` for the GPU in hand, or why there is none (naming the registry)."""
    if registry is None:
        return "no CUDA device, and no engine registry configured" if gpu is None else "no engine registry configured"
    where = f"registry {registry.root}"
    try:
        flavour = load_trt()
    except TensorRTUnavailableError as exc:
        return f"{where}: {exc}"
    request = EngineRequest(model, release.model_version if release else MODEL_VERSIONS[model], precision, gpu,
                            flavour.name, flavour.version, onnx_sha256=release.onnx_sha256 if release else None,
                            shapes=tuple(tuple(s) for s in shapes))
    runtime = "no CUDA device" if gpu is None else trt_runtime_available()
    if runtime is not None:
        # No runtime here; still say what the registry holds for this request, so that a missing or
        # tampered engine is seen (and named) before a GPU needs it.
        try:
            _, manifest = registry.find(request)
        except EngineNotFoundError as exc:
            return f"{where}: {exc}; runtime: {runtime}"
        return f"{where}: {manifest.engine_file} (sha256 {manifest.engine_sha256}) matches, but runtime: {runtime}"
    build = functools.partial(build_engine, release_onnx or onnx_path(model, precision, models_root), registry.root,
                              model=model, model_version=request.model_version, precision=precision,
                              profiles=_profiles_covering(model, request.shapes),
                              compute_capabilities=[gpu.compute_capability],  # type: ignore[union-attr]
                              calibration_set=release.calibration_set if release else None,
                              calibration_strata=release.calibration_strata if release else None,
                              validation=release.validation if release else None)
    try:
        path, manifest = registry.get_or_build(request, build)
    except (EngineNotFoundError, EngineBuildError) as exc:
        return f"{where}: {exc}"
    return _chosen(TensorRTRunner(path, manifest, device=device), "tensorrt",
                   f"{where}: engine {manifest.engine_file} matches {gpu.name} "  # type: ignore[union-attr]
                   f"(compute capability {gpu.compute_capability})",  # type: ignore[union-attr]
                   engine_file=manifest.engine_file, engine_sha256=manifest.engine_sha256)


def _profiles_covering(model: str, shapes: Sequence[tuple[int, ...]]) -> list[ProfileSpec]:
    """The model's default profiles, plus one (batch 1 up to the shape's) for each shape none covers."""
    profiles = [ProfileSpec.parse(p) for p in DEFAULT_PROFILES[model]]
    for shape in shapes:
        if not any(p.covers(shape) for p in profiles):
            profiles.append(ProfileSpec(f"run{'x'.join(map(str, shape))}", (1, *shape[1:]), shape, shape))
    return profiles


def _chosen(runner: InferenceRunner, backend: str, reason: str, *, engine_file: str | None = None,
            engine_sha256: str | None = None) -> BackendChoice:
    log.info("backend for %s: %s (%s)", runner.name, backend, reason)
    return BackendChoice(runner, backend, reason, engine_file, engine_sha256)
