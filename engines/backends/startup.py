"""
A network's runner made ready for a worker: selected, activated and warmed up before the first tile.

`start_runner` is what a worker actor is handed by the driver (`skyblink.cluster.WorkerPool`) to
start its detector and classifier: the worker side's tile program (`skyblink.workers`) knows the
inputs it will run, the engines know how to pick, build and load a runner for them. Keeping the
choice here, and handing it to the actor, is what keeps `skyblink.workers` free of
`skyblink.engines` (the engines' training and gates run the workers' image steps, not the reverse).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

from skyblink.config import Backend
from skyblink.model_io import IO_NAMES, STAMP_SIZE

from ..registry import EngineRegistry
from .base import InferenceRunner
from .select import BackendChoice, PrecisionName, select_runner

__all__ = ["start_runner", "warm_up"]

log = logging.getLogger(__name__)


def warm_up(model: str, runner: InferenceRunner, shapes: Sequence[tuple[int, ...]] = ()) -> None:
    """
    Activate ``runner`` and run it once on zeros, so that sessions, kernels and allocators are ready.

    Parameters
    ----------
    model : str
        ``detector`` or ``classifier`` (names the input tensor, `skyblink.model_io.IO_NAMES`).
    runner : InferenceRunner
        An inactive or active runner.
    shapes : sequence of tuple of int
        Input shapes the caller will run (NCHW, largest batch first); the warm-up runs batch 1 of
        the first, or the whole first shape for a compiled torch runner (it compiles once per
        shape, and a batch-1 compile would be spent for nothing). Without them: a 64x64 detector
        tile or one classifier stamp.

    Raises
    ------
    Exception
        Whatever the runner raises when it activates or infers (a TensorRT engine the runtime
        refuses, a missing ONNX file).
    """
    runner.activate()
    if shapes:
        compiled = getattr(runner, "mode", "eager").startswith("compile")
        shape = tuple(shapes[0]) if compiled else (1, *shapes[0][1:])
    else:
        shape = (1, 3, 64, 64) if model == "detector" else (1, 3, STAMP_SIZE, STAMP_SIZE)
    runner.infer({IO_NAMES[model].inputs[0]: np.zeros(shape, np.float32)})


def start_runner(
    model: str,
    *,
    backend: Backend,
    precision: PrecisionName,
    registry: str | None = None,
    trusted_manifest: Path | None = None,
    shapes: Sequence[tuple[int, ...]] = (),
    cpu_threads: int | None = None,
    compiled: bool = False,
) -> BackendChoice:
    """
    Select, activate and warm up ``model``'s runner for the inputs a worker will run.

    A TensorRT engine that the runtime refuses at warm-up gives way to torch when the backend was
    chosen automatically, with the runtime's answer in the choice's reason; a forced backend fails.

    Parameters
    ----------
    model : str
        ``detector`` or ``classifier``.
    backend : Backend
        ``engines.backend``: forced, or `Backend.AUTO`.
    precision : {"fp32", "fp16", "int8"}
        The networks' precision on GPU backends.
    registry : str, optional
        The engine registry folder (``engines.registry``); None: the shipped models only.
    trusted_manifest : Path, optional
        Hashes of the promoted releases and engines (``engines.trusted_manifest``): an engine or
        ONNX file that differs from them is refused.
    shapes : sequence of tuple of int
        Input shapes (NCHW, largest batch) the worker will run; a TensorRT engine must cover them.
    cpu_threads : int, optional
        Intra-op threads of an ONNX Runtime runner: the worker's share of its machine's cores
        (`WorkerConfig.cpu_threads`); default: ONNX Runtime's choice.
    compiled : bool
        With torch on a GPU, compile the detector (``night.compile_device_program``); its warm-up
        then runs the first of ``shapes`` whole, the one shape the worker's padded batches have.

    Returns
    -------
    BackendChoice
        The active, warmed runner and why it was chosen.

    Raises
    ------
    RuntimeError
        The forced backend cannot run here (`select_runner`'s message says why).
    Exception
        The runner failed its warm-up and no fallback applies.
    """
    engines = EngineRegistry.from_config(registry, trusted_manifest) if registry else None
    choice = select_runner(model, backend=backend, precision=precision, registry=engines, shapes=shapes,
                           cpu_threads=cpu_threads, compiled=compiled)
    try:
        warm_up(model, choice.runner, shapes)
    except Exception as exc:
        if choice.backend != Backend.TENSORRT or backend == Backend.TENSORRT:
            raise
        if choice.runner.is_active:
            choice.runner.deactivate()
        refused = f"tensorrt: engine {choice.engine_file} refused by the runtime ({type(exc).__name__}: {exc})"
        log.warning("%s; falling back to torch", refused)
        fallback = select_runner(model, backend=Backend.TORCH, precision=precision, compiled=compiled)
        warm_up(model, fallback.runner, shapes)
        choice = replace(fallback, reason=f"{refused}; {fallback.reason}", engine_file=choice.engine_file,
                         engine_sha256=choice.engine_sha256)
    return choice
