"""
The worker actor: holds its engines for its whole life, warms up at start, processes work units
and returns candidates, and answers the health check the cluster polls.

Notes
-----
One actor per GPU (``TileWorker.options(num_gpus=1)``) or per CPU slot where there is no GPU.
The CPU path runs `process_tile` per unit; on a GPU the actor holds a `GpuUnitProcessor`
(`skyblink.workers.pipeline` with the device program) for its whole life.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

import ray
from ray.util.metrics import Counter, Histogram

from skyblink.config import Backend
from skyblink.stamps import STAMP_SIZE

from .program_config import TileProgram, WorkerConfig
from .tile_unit import CandidateRecord, WorkUnit, process_tile

__all__ = ["RunnerChoice", "RunnerStarter", "TileWorker", "UnitOutcome", "WorkerLostGpuError"]

log = logging.getLogger(__name__)


class RunnerChoice(Protocol):
    """A network's started runner and why it was chosen (`skyblink.engines.backends.BackendChoice`)."""

    runner: Any
    backend: str
    reason: str

    def describe(self) -> dict[str, str | None]:
        """The choice as a JSON-safe dict: backend, engine file and sha256, and the reason."""
        ...


class RunnerStarter(Protocol):
    """
    Starts a network's runner for the actor: `skyblink.engines.backends.start_runner`.

    The driver hands it to the actor, so that the worker side's tile program does not import the
    engines (whose training and gates run the workers' image steps).
    """

    def __call__(self, model: str, *, backend: Backend, precision: Any, registry: str | None,
                 trusted_manifest: Path | None, shapes: Sequence[tuple[int, ...]],
                 cpu_threads: int | None, compiled: bool) -> RunnerChoice:
        """
        Select, activate and warm up ``model``'s runner for inputs of ``shapes`` (CPU runners on
        ``cpu_threads``; a torch detector on a GPU compiled when ``compiled``).
        """
        ...


class WorkerLostGpuError(RuntimeError):
    """The actor's CUDA context is gone: the actor must be replaced, its units redone elsewhere."""


@dataclass(frozen=True, slots=True)
class UnitOutcome:
    """
    What a worker returns for one work unit. Stable.

    Attributes
    ----------
    unit : WorkUnit
    candidates : tuple of CandidateRecord
        Empty when the tile holds none, when it failed, or when the actor stored them itself
        (its ``result_sink``).
    error : str or None
        Why the unit failed (exception type, message and the innermost frame); None on success.
    seconds : float
        Wall time the unit took on the worker.
    n_candidates : int
        How many candidates the unit gave (also when they were stored rather than returned).
    """

    unit: WorkUnit
    candidates: tuple[CandidateRecord, ...] = ()
    error: str | None = None
    seconds: float = 0.0
    n_candidates: int = 0


_TILE_SECONDS_BOUNDARIES = [0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0]


@ray.remote
class TileWorker:
    """
    Ray actor running the per-tile program. Stable.

    Parameters
    ----------
    config : WorkerConfig
        Built once by the driver from the configuration (`WorkerConfig.from_config`):
        ``config.program`` is the per-tile program (`TileProgram`: thresholds, top-K, PSF
        matching, header keywords, the networks' precision); ``config.backend`` the inference
        backend (`skyblink.engines.backends.select_runner`). With torch or TensorRT on a GPU the
        actor holds a `GpuUnitProcessor` for units of the program's ``tile_size`` and ``margin``
        (pinned ring and device buffers of ``config.device_batch`` windows, allocated here once,
        with copy/compute overlap); otherwise each unit runs `process_tile`.
        ``config.registry`` is the engine registry folder (configuration ``engines.registry``): on a GPU the
        actor asks it for the TensorRT engine of each model, precision, builder and compute
        capability, with profiles covering the device program's inputs (building one where a
        builder is installed), and runs it on the program's compute stream; where the runtime
        refuses the engine, or none matches, torch runs instead. `check_health` names, per model,
        the backend, the engine file and its sha256, and why. ``config.trusted_manifest`` holds
        the hashes of promoted releases and engines, mounted where workers cannot write
        (configuration ``engines.trusted_manifest``): an engine or ONNX file that differs from
        them is refused, even when its own manifest was rewritten to match.
    start_runner : RunnerStarter
        Starts each network's runner in the actor's process: `skyblink.engines.backends.start_runner`,
        handed over by the driver (`skyblink.cluster.WorkerPool`). It selects the backend, builds or
        loads the TensorRT engine, activates the runner and warms it up on the program's inputs.
    result_sink : callable, optional
        ``result_sink(unit, candidates)`` stores a unit's candidates where the night keeps them
        (`skyblink.cluster.results.store_unit_results`); the actor then calls it for every unit
        that succeeded and returns outcomes without the candidates, so that results go from the
        actors to the store in parallel and not through the driver. A unit whose results could
        not be stored is reported failed.

    Notes
    -----
    Calls may run concurrently (``max_concurrency`` > 1, as `skyblink.cluster.WorkerPool` starts
    GPU actors): on a GPU each call prepares its units on the host in its own thread, launches
    them on the device in turn and reads its results back while the next call launches, so the
    device runs one call while the next is launched and later ones are read from the store.
    """

    def __init__(self, config: WorkerConfig, start_runner: RunnerStarter,
                 result_sink: Callable[[WorkUnit, Sequence[CandidateRecord]], None] | None = None) -> None:
        began = time.time()
        self._config = config
        self._program = config.program
        if config.program.compile_device_program and config.compile_cache is not None:
            _keep_compile_cache(config.compile_cache)
        shapes = _program_shapes(config.program, config.device_batch)
        # Where the actor's start goes, for the night's report (`startup` in `check_health`).
        self._startup: dict[str, float] = {"began_at": began}
        self._choices = {}
        # The program's two roles; the classifier's network is the night's choice (``night.classifier``).
        self._networks = {"detector": "detector", "classifier": config.program.classifier}
        for name, model in self._networks.items():
            t0 = time.perf_counter()
            self._choices[name] = start_runner(model, backend=config.backend, precision=config.program.precision,
                                               registry=config.registry, trusted_manifest=config.trusted_manifest,
                                               shapes=shapes[name], cpu_threads=config.cpu_threads,
                                               compiled=config.program.compile_device_program)
            self._startup[f"{name}_s"] = time.perf_counter() - t0
        self._runners = {name: choice.runner for name, choice in self._choices.items()}
        self._stores: dict[str, Any] = {}
        self._result_sink = result_sink
        self._units_done = 0
        self._device = threading.Lock()  # one call on the device at a time; others prepare meanwhile
        self._count = threading.Lock()
        # Exported to Prometheus through Ray's metrics agent (the dashboard's /metrics).
        self._m_tiles = Counter("skyblink_tiles", "Work units processed by worker actors.", tag_keys=("outcome",))
        self._m_candidates = Counter("skyblink_candidates", "Candidates found by worker actors.")
        self._m_seconds = Histogram("skyblink_tile_seconds", "Wall time of one work unit on a worker actor.",
                                    boundaries=_TILE_SECONDS_BOUNDARIES)
        self._gpu = None
        if self._on_gpu():
            from .gpu_units import GpuUnitProcessor  # noqa: PLC0415 - torch with CUDA only here

            t0 = time.perf_counter()
            self._gpu = GpuUnitProcessor(self._runners["detector"], self._runners["classifier"], config.program,
                                         batch=config.device_batch, reference_cache_gib=config.reference_cache_gib)
            self._startup["device_program_s"] = time.perf_counter() - t0
        self._startup["ready_at"] = time.time()
        log.info("TileWorker ready (%s): %s", "GPU pipeline" if self._gpu else "per tile",
                 {n: c.reason for n, c in self._choices.items()})

    def _on_gpu(self) -> bool:
        if any(choice.backend not in (Backend.TORCH, Backend.TENSORRT) for choice in self._choices.values()):
            return False
        import torch  # noqa: PLC0415

        return torch.cuda.is_available()

    def _store(self, url: str) -> Any:
        if url not in self._stores:
            from skyblink.storage import NightStore  # noqa: PLC0415

            self._stores[url] = NightStore(url)
        return self._stores[url]

    def process(self, units: list[WorkUnit]) -> list[UnitOutcome]:
        """
        Run the per-tile program on each unit and return one outcome per unit, in order.

        A unit whose data make the program fail gets an outcome with ``error`` set and the others
        go on. A lost CUDA context is not such a failure: the actor process exits, Ray restarts it
        and retries the call, so the units are redone and none is lost. With a ``result_sink``
        each successful unit's candidates are stored (idempotently: a redone unit stores the same
        rows) and left out of its outcome.
        """
        outcomes = self._run_units(units)
        if self._result_sink is None:
            return outcomes
        return [self._stored(outcome) for outcome in outcomes]

    def _stored(self, outcome: UnitOutcome) -> UnitOutcome:
        if outcome.error is not None:
            return outcome
        try:
            self._result_sink(outcome.unit, outcome.candidates)  # type: ignore[misc]
        except Exception as exc:  # noqa: BLE001 - reported as the unit's failure, the others go on
            return replace(outcome, candidates=(), error=f"results not stored: {type(exc).__name__}: {exc}")
        return replace(outcome, candidates=())

    def _run_units(self, units: list[WorkUnit]) -> list[UnitOutcome]:
        out: list[UnitOutcome] = []
        if self._gpu is not None and units:
            try:
                store = self._store(units[0].store_url)
                start = time.perf_counter()
                prepared = self._gpu.prepare(units, store)  # host side: concurrent with the other calls
                with self._device:
                    launched = self._gpu.launch(prepared, store)  # queued on the device, not waited for
                found = self._gpu.finish(launched)  # while the next call launches
            except Exception as exc:  # noqa: BLE001 - isolate the failing unit below
                self._exit_if_context_lost(exc)
                log.warning("GPU batch failed (%s); running its units one by one", exc)
            else:
                seconds = (time.perf_counter() - start) / len(units)
                for unit in units:
                    out.append(self._record(UnitOutcome(unit, tuple(found[unit.key]), seconds=seconds,
                                                        n_candidates=len(found[unit.key]))))
                return out
        for unit in units:
            start = time.perf_counter()
            try:
                if self._gpu is not None:
                    with self._device:
                        records = self._gpu.process([unit], self._store(unit.store_url))[unit.key]
                else:
                    records = process_tile(unit, self._store(unit.store_url), self._runners["detector"],
                                           self._runners["classifier"], self._program)
            except Exception as exc:  # noqa: BLE001 - one bad tile is reported, the batch goes on
                self._exit_if_context_lost(exc)
                frame = traceback.extract_tb(exc.__traceback__)[-1]
                error = f"{type(exc).__name__}: {exc} (at {frame.filename.rsplit('/', 1)[-1]}:{frame.lineno})"
                outcome = UnitOutcome(unit, error=error, seconds=time.perf_counter() - start)
            else:
                outcome = UnitOutcome(unit, tuple(records), seconds=time.perf_counter() - start, n_candidates=len(records))
            out.append(self._record(outcome))
        return out

    @staticmethod
    def _exit_if_context_lost(exc: Exception) -> None:
        if _is_cuda_context_error(exc):
            log.error("TileWorker lost its CUDA context (%s); exiting so that Ray restarts it", exc)
            os._exit(1)

    def _record(self, outcome: UnitOutcome) -> UnitOutcome:
        self._m_tiles.inc(1, tags={"outcome": "failed" if outcome.error else "ok"})
        if outcome.n_candidates:
            self._m_candidates.inc(outcome.n_candidates)
        self._m_seconds.observe(outcome.seconds)
        with self._count:
            self._units_done += 1
        return outcome

    def check_health(self) -> dict[str, Any]:
        """
        Return the actor's state; raise `WorkerLostGpuError` when its GPU context is unusable.

        Plain Ray does not call this by itself: the cluster's supervisor polls it. ``startup``
        says where the actor's start went: ``began_at`` and ``ready_at`` (epoch seconds: its
        constructor's start, after the process and its imports, and its end), ``detector_s`` and
        ``classifier_s`` (each runner started and warmed up; the first also imports the backend
        and creates the CUDA context), ``device_program_s`` (the GPU pipeline's buffers and one
        batch through the device program: kernels, compilation, CUDA graphs).
        """
        backends = {name: choice.backend for name, choice in self._choices.items()}
        if "torch" in backends.values():
            import torch  # noqa: PLC0415

            if torch.cuda.is_available():
                try:
                    torch.cuda.synchronize()
                    torch.zeros(1, device="cuda").add_(1).item()
                except RuntimeError as exc:
                    msg = f"CUDA context lost: {exc}"
                    raise WorkerLostGpuError(msg) from exc
        health = {"backends": backends, "active": all(r.is_active for r in self._runners.values()),
                  "units_done": self._units_done,
                  "engines": {name: {**choice.describe(), "network": self._networks[name]}
                              for name, choice in self._choices.items()},
                  "startup": dict(self._startup)}
        if self._gpu is not None:
            import torch  # noqa: PLC0415

            health["peak_device_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 3)
            pipeline = self._gpu.pipeline
            seconds = {**self._gpu.seconds, "slot_wait": pipeline.slot_wait_seconds, "device_wait": pipeline.wait_seconds,
                       "gpu": pipeline.compute_seconds}
            health["seconds"] = {name: round(value, 3) for name, value in seconds.items()}
            health["references"] = self._gpu.reference_stats()
        return health

    def shutdown(self) -> None:
        """Release the runners' resources."""
        for runner in self._runners.values():
            if runner.is_active:
                runner.deactivate()


def _program_shapes(program: TileProgram, batch: int) -> dict[str, tuple[tuple[int, ...], ...]]:
    """
    The largest inputs of the device program (`skyblink.workers.gpu_units`): ``batch`` windows
    of the program's core and margins rounded up to the detector's stride, and ``top_k`` stamps
    per window.
    """
    edge = program.window_edge
    return {"detector": ((batch, 3, edge, edge),), "classifier": ((batch * program.top_k, 3, STAMP_SIZE, STAMP_SIZE),)}


def _keep_compile_cache(folder: Path) -> None:
    """
    Point torch.compile's caches (Inductor's graphs and Triton kernels) at ``folder`` for this
    process, before anything compiles, so that the next actor started with the same code, torch
    and GPU loads the compiled device program instead of compiling it again (on an H100 the demo
    night's actor start went from 91 s to 24 s with a warm cache). An operator's own
    ``TORCHINDUCTOR_CACHE_DIR`` wins; a folder that cannot be written leaves torch's default.
    """
    if os.environ.get("TORCHINDUCTOR_CACHE_DIR"):
        return
    try:
        folder.mkdir(parents=True, exist_ok=True)
        writable = os.access(folder, os.W_OK | os.X_OK)
    except OSError as exc:
        log.warning("compile cache %s not usable (%s); torch.compile keeps its default cache", folder, exc)
        return
    if not writable:
        log.warning("compile cache %s is not writable; torch.compile keeps its default cache", folder)
        return
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(folder)


def _is_cuda_context_error(exc: BaseException) -> bool:
    text = str(exc)
    return isinstance(exc, RuntimeError) and ("CUDA error" in text or "cudaError" in text) and (
        "illegal" in text or "context" in text or "launch failure" in text or "device-side assert" in text
    )
