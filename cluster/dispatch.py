"""
Dispatch work units to a pool of worker actors with Ray's own machinery.

One `TileWorker` per GPU (``num_gpus=1``), or per CPU where the cluster has no GPU, in a
`ray.util.ActorPool`. Each actor holds a few calls (a CPU actor's mailbox queues the second while
the first runs; a GPU actor prepares the next calls on the host in threads while one runs on the
device), so it never waits for the driver; further calls wait in the pool, which submits one
whenever an actor frees a slot: the queue is bounded by the actors' slots, backpressure comes
from the pool, and nothing here schedules by hand.

Faults: the actors are created with ``max_restarts=-1`` and ``max_task_retries=-1``. An actor
that dies (killed, out of memory, its process gone, or its CUDA context lost, on which it exits
on purpose) is restarted by Ray and the calls it held are retried, so its units are redone and
every unit's outcome arrives exactly once. The driver polls every actor's health check and
restarts one that reports a lost GPU.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace

import ray
from ray.util.actor_pool import ActorPool

from skyblink.config import Backend
from skyblink.engines.backends import start_runner
from skyblink.workers.actor import TileWorker, UnitOutcome, WorkerLostGpuError
from skyblink.workers.program_config import WorkerConfig
from skyblink.workers.tile_unit import WorkUnit

from .results import store_unit_results

__all__ = ["WorkerPool", "WorkerSpec", "worker_spec"]

log = logging.getLogger(__name__)

#: Calls a CPU actor holds at once: one running, one queued in its mailbox. A GPU actor runs
#: its calls in threads: one launching on the device while ``WorkerConfig.prepare_calls`` are read
#: and prepared on the host (and earlier ones read back), so that the device never waits for the
#: store or the host between calls.
_CPU_SLOTS = 2


@dataclass(frozen=True, slots=True)
class WorkerSpec:
    """How many worker actors, and what each asks Ray for."""

    count: int
    num_gpus: float
    num_cpus: float
    #: Inference threads of each CPU actor (None on GPUs): the cluster's CPUs shared among them.
    #: ONNX Runtime's default, every core per session, made two actors on 2 cores 1.4x slower
    #: per detector call than one thread each (BENCHMARKS, "CPU actors").
    cpu_threads: int | None = None

    @property
    def kind(self) -> str:
        """``"gpu"`` or ``"cpu"``."""
        return "gpu" if self.num_gpus else "cpu"


def worker_spec(config: WorkerConfig) -> WorkerSpec:
    """
    Decide the actor pool from the running cluster's resources and ``config.actors`` (``night.workers``).

    Returns
    -------
    WorkerSpec
        One actor per GPU with ``num_gpus=1`` and ``num_cpus=1``. With no GPU (or the
        onnxruntime backend), CPU actors that together leave one of Ray's CPUs free, so that
        ingest tasks (the actors start before the ingest, and ``--watch`` ingests while they
        live) can always be scheduled: by default one actor per CPU, sharing ``cpus - 1`` of
        Ray's CPUs (so that every core runs tiles once the night is ingested: on 2 cores, 2
        actors of half a CPU took the demo night's tiles in 41.5 s against 54.4 s for one
        actor); ``night.workers`` actors share them likewise. On a one-CPU cluster, one actor
        of half a CPU. CPU actors run their inference on ``cpus // count`` threads each.
    """
    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0))
    if gpus and config.backend != Backend.ONNXRUNTIME:
        count = min(gpus, config.actors or gpus)
        return WorkerSpec(count, 1.0, 1.0)
    cpus = float(resources.get("CPU", 1.0))
    available = cpus - 1.0 if cpus > 1.0 else cpus / 2.0
    count = config.actors or max(1, int(cpus))
    return WorkerSpec(count, 0.0, min(1.0, available / count), cpu_threads=max(1, int(cpus) // count))


class WorkerPool:
    """
    The night's worker actors. Use as a context manager; `run` yields outcomes as they arrive.

    Parameters
    ----------
    config : WorkerConfig
        What every actor is given (`WorkerConfig.from_config`: the backend, the registry, the
        per-tile program), the units per call, the health-check period and the number of actors.
    spec : WorkerSpec, optional
        Default: `worker_spec` of the running cluster.
    """

    def __init__(self, config: WorkerConfig, spec: WorkerSpec | None = None) -> None:
        self.config = config
        self.spec = spec or worker_spec(config)
        #: Calls each actor holds at once.
        self.slots = config.prepare_calls + 1 if self.spec.kind == "gpu" else _CPU_SLOTS
        options = {
            "num_gpus": self.spec.num_gpus,
            "num_cpus": self.spec.num_cpus,
            "max_restarts": -1,
            "max_task_retries": -1,
            # GPU calls run in threads (prepare on the host, then the device in turn); one more
            # thread answers the health check while the calls run.
            "max_concurrency": self.slots + 1 if self.spec.kind == "gpu" else 1,
        }
        # Named, so that the dashboard and `ray.util.list_named_actors` show whose they are.
        self.name = f"skyblink-worker-{uuid.uuid4().hex[:8]}"
        self.actors = [
            TileWorker.options(**options, name=f"{self.name}-{i}").remote(  # type: ignore[attr-defined]  # ray.remote's class is untyped
                replace(config, cpu_threads=self.spec.cpu_threads), start_runner, result_sink=store_unit_results
            )
            for i in range(self.spec.count)
        ]
        self.restarts = 0
        #: Every actor answered its first health check (engines loaded, warmed up).
        self.ready = False
        self._last_health = time.monotonic()

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    def wait_ready(self) -> list[dict[str, object]]:
        """Block until every actor has loaded its engines and warmed up; return their health."""
        health = ray.get([actor.check_health.remote() for actor in self.actors])
        self.ready = True
        return health

    def run(
        self,
        units: Sequence[WorkUnit],
        *,
        on_health: Callable[[list[dict[str, object]]], None] | None = None,
        more: Callable[[float], Sequence[WorkUnit] | None] | None = None,
    ) -> Iterator[UnitOutcome]:
        """
        Process every unit; yield each unit's outcome once, in completion order.

        Parameters
        ----------
        units : sequence of WorkUnit
        on_health : callable, optional
            Called with the actors' health answers each time they are polled.
        more : callable, optional
            A feed of units that arrive while these run (exposures landing in the store):
            called with the seconds it may block, it returns the new units (possibly none) or
            None once the feed has ended. The run ends when the feed has ended and every unit
            submitted is done.
        """
        per_call = self.config.units_per_call
        # Slots interleaved across the actors (ActorPool hands out the last idle entry first), so
        # that a second call goes to another actor rather than to the mailbox of a busy one.
        pool = ActorPool([actor for _ in range(self.slots) for actor in self.actors])
        # A call of fewer than ``per_call`` units goes out only while something could run it at
        # once (a CPU actor with nothing to do, a GPU actor's free slot) or when nothing more
        # is coming; otherwise the units wait to fill a call. Units streamed CCD by CCD (a
        # CCD's tiles fewer than a call) thus still go in full calls while the actors are busy:
        # a CPU actor's call of 16 tiles took a 16-CCD visit 35-44 s, 16 calls of one tile
        # each 46-53 s (2 loaded cores; BENCHMARKS, "Per-CCD streaming").
        capacity = len(self.actors) * (self.slots if self.spec.kind == "gpu" else 1)
        waiting: list[WorkUnit] = []
        in_flight = 0

        def submit(batch: Sequence[WorkUnit], *, flush: bool) -> None:
            nonlocal in_flight
            waiting.extend(batch)
            while waiting and (len(waiting) >= per_call or flush or in_flight < capacity):
                # Whole calls: what waits goes to one actor, up to a call, not shared out in small
                # calls (a GPU actor batches a call's tiles on the device; on 2 loaded cores a
                # 16-CCD visit's tiles shared 8 and 8 between two CPU actors took 49.6 and 105.9 s,
                # in one call 35-56 s at like loads: no gain shown for the smaller calls).
                call = waiting[:per_call]
                del waiting[:per_call]
                pool.submit(lambda actor, calls: actor.process.remote(calls), call)
                in_flight += 1

        submit(units, flush=more is None)
        period = self.config.health_check_s
        feeding = more is not None
        while feeding or pool.has_next() or waiting:
            if feeding and more is not None:
                # Block on the feed only while no call is out; otherwise look and go on.
                arrived = more(0.0 if pool.has_next() else min(period, 0.5))
                if arrived is None:
                    feeding = False
                    submit([], flush=True)
                else:
                    submit(arrived, flush=False)
            if pool.has_next():
                try:
                    outcomes = pool.get_next_unordered(timeout=min(period, 0.2) if feeding else period)
                except TimeoutError:
                    pass
                else:
                    in_flight -= 1
                    submit([], flush=not feeding)  # the freed actor takes what waits
                    yield from outcomes
            elif waiting:  # nothing out (a feed that has not ended): what waits goes now
                submit([], flush=True)
            if time.monotonic() - self._last_health >= period:
                health = self.poll_health()
                if on_health is not None:
                    on_health(health)

    def poll_health(self) -> list[dict[str, object]]:
        """
        Ask every actor for its health; restart one whose GPU context is lost.

        Returns
        -------
        list of dict
            Each actor's answer (``{"error": ...}`` for one that did not answer in time or failed).
        """
        self._last_health = time.monotonic()
        refs = [actor.check_health.remote() for actor in self.actors]
        answers: list[dict[str, object]] = []
        for actor, ref in zip(self.actors, refs, strict=True):
            try:
                answers.append(ray.get(ref, timeout=self.config.health_check_s))
            except WorkerLostGpuError as exc:
                log.error("worker actor lost its GPU (%s); restarting it, its units will be redone", exc)
                ray.kill(actor, no_restart=False)
                self.restarts += 1
                answers.append({"error": str(exc)})
            except ray.exceptions.RayTaskError as exc:
                cause = exc.cause if isinstance(exc.cause, Exception) else exc
                if isinstance(cause, WorkerLostGpuError):
                    log.error("worker actor lost its GPU (%s); restarting it, its units will be redone", cause)
                    ray.kill(actor, no_restart=False)
                    self.restarts += 1
                answers.append({"error": str(cause)})
            except (ray.exceptions.GetTimeoutError, ray.exceptions.RayActorError) as exc:
                answers.append({"error": f"{type(exc).__name__}: {exc}".splitlines()[0]})
        return answers

    def shutdown(self) -> None:
        """Release the actors' engines and end the actors."""
        for actor in self.actors:
            try:
                ray.get(actor.shutdown.remote(), timeout=30)
            except ray.exceptions.RayError:
                pass
            ray.kill(actor, no_restart=True)
        self.actors = []
