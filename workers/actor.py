"""
The worker actor: holds its engines for its whole life, warms up at start, processes work units
and returns candidates, and answers the health check the cluster polls.

Notes
-----
One actor per GPU (``TileWorker.options(num_gpus=1)``) or per CPU slot where there is no GPU.
The CPU path runs `process_tile`; the GPU's pipelined path is `skyblink.workers.pipeline`.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import ray

from .tile_unit import CandidateRecord, WorkUnit, process_tile

__all__ = ["TileWorker", "WorkerLostGpuError"]

log = logging.getLogger(__name__)


class WorkerLostGpuError(RuntimeError):
    """The actor's CUDA context is gone: the actor must be replaced, its units redone elsewhere."""


@ray.remote
class TileWorker:
    """
    Ray actor running the per-tile program. Experimental.

    Parameters
    ----------
    backend : {"auto", "tensorrt", "torch", "onnxruntime"}
        Inference backend (`skyblink.engines.backends.select_runner`).
    precision : {"fp32", "fp16"}
        Precision on GPU backends.
    """

    def __init__(self, backend: str = "auto", precision: str = "fp16") -> None:
        from skyblink.engines.backends import select_runner  # noqa: PLC0415 - imported in the actor's process

        self._choices = {name: select_runner(name, backend=backend, precision=precision) for name in ("detector", "classifier")}
        self._runners = {name: choice.runner for name, choice in self._choices.items()}
        for runner in self._runners.values():
            runner.activate()
        self._stores: dict[str, Any] = {}
        self._units_done = 0
        # Warm up once: sessions, kernels and allocators are ready before the first real tile.
        self._runners["detector"].infer({"tiles": np.zeros((1, 3, 64, 64), np.float32)})
        self._runners["classifier"].infer({"stamps": np.zeros((1, 3, 63, 63), np.float32)})
        log.info("TileWorker ready: %s", {n: c.reason for n, c in self._choices.items()})

    def _store(self, url: str) -> Any:
        if url not in self._stores:
            from skyblink.storage import NightStore  # noqa: PLC0415

            self._stores[url] = NightStore(url)
        return self._stores[url]

    def process(self, units: list[WorkUnit]) -> list[CandidateRecord]:
        """Run the program on each unit; return all their candidates (empty list when none)."""
        out: list[CandidateRecord] = []
        for unit in units:
            out.extend(process_tile(unit, self._store(unit.store_url), self._runners["detector"], self._runners["classifier"]))
            self._units_done += 1
        return out

    def check_health(self) -> dict[str, Any]:
        """
        Return the actor's state; raise `WorkerLostGpuError` when its GPU context is unusable.

        Plain Ray does not call this by itself: the cluster's supervisor polls it.
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
        return {"backends": backends, "active": all(r.is_active for r in self._runners.values()), "units_done": self._units_done}

    def shutdown(self) -> None:
        """Release the runners' resources."""
        for runner in self._runners.values():
            if runner.is_active:
                runner.deactivate()
