"""
A GPU actor's path without Ray: stored CCDs through `GpuUnitProcessor` as the actor calls it,
next to the device program alone on the same windows, in one process on one GPU.

    python benchmarks/gpu_units_ccds.py [--ccds 16] [--size 4096] [--calls 1,4,8] [--rounds 2]
        [--profile 4] [--work DIR]

`benchmarks/worker_pipeline.py` times the device program on synthetic 1024^2 tiles, and
`benchmarks/visit_latency.py` a whole night run (Ray, ingest, reduce, publish). Between them a
visit's dispatch ran at a fraction of the program's rate with the GPU busy under half the wall.
This script isolates the actor's own path: a simulated exposure of ``--ccds`` CCDs and its
reference (written once into a store, as `benchmarks/host_prepare.py` does) go through
``prepare`` (threads), ``launch`` (one at a time, under a lock) and ``finish``, exactly as
`skyblink.workers.actor.TileWorker` runs a call of one CCD's units, with ``--calls`` calls at
once (``night.gpu_prepare_calls``). Per setting: CCDs and tiles a second, the actor's summed
seconds in each part, and the GPU's busy time (CUDA events around each batch on the compute
stream), each setting run as a first visit (no reference on the device) and then again (the
references held by the device's cache, `skyblink.workers.reference_cache`). The baseline, in the same run: the CCDs' own prepared windows re-submitted to the
device program alone (no reads, no launch lock), the GPU's pace on these windows.

``--profile N`` then runs N CCD calls in one thread under `torch.profiler` and prints where
the host and the device spend them (the CUDA kernels, copies and synchronisations). JSON to
$OUT when set. Needs a CUDA GPU; no Ray.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
from torch.profiler import ProfilerActivity

sys.path.insert(0, str(Path(__file__).parent))
from host_prepare import build_store, ccd_units, exposure_of

from skyblink.engines.backends.select import torch_runner
from skyblink.storage import NightStore, StoreLayout
from skyblink.workers.gpu_units import GpuUnitProcessor
from skyblink.workers.program_config import TileProgram
from skyblink.workers.reference_cache import ReferenceCache
from skyblink.workers.tile_unit import WorkUnit


def ccd_calls(store: NightStore) -> list[list[WorkUnit]]:
    """One call per CCD of the store's exposure: the units that tile it, as the planner sends them."""
    exposure = exposure_of(store)
    return [ccd_units(store, exposure, ccd) for ccd in store.ccd_names(exposure)]


def _rates(calls: list[list[WorkUnit]], wall: float) -> dict[str, float]:
    return {"wall_s": wall, "ccds_per_s": len(calls) / wall, "tiles_per_s": sum(len(units) for units in calls) / wall}


def actor_round(processor: GpuUnitProcessor, store: NightStore, calls: list[list[WorkUnit]], threads: int, *,
                revisit: bool = False) -> dict[str, Any]:
    """Every call through prepare / launch (locked) / finish in ``threads`` at once; the round's figures.
    A first visit (``revisit`` False) starts with no reference on the device; a revisit with those
    the previous round left in the cache."""
    if not revisit:
        processor.references = ReferenceCache(processor.references.budget_bytes)
    device_lock = threading.Lock()
    before = dict(processor.seconds)
    busy0 = processor.pipeline.compute_seconds

    def call(units: list[WorkUnit]) -> int:
        prepared = processor.prepare(units, store)
        with device_lock:
            launched = processor.launch(prepared, store)
        return sum(len(found) for found in processor.finish(launched).values())

    torch.cuda.synchronize()
    start = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        candidates = sum(pool.map(call, calls))
    torch.cuda.synchronize()
    return {"calls at once": threads, "visit": "again" if revisit else "first", **_rates(calls, time.perf_counter() - start),
            "gpu_busy_s": processor.pipeline.compute_seconds - busy0, "candidates": candidates,
            **{f"{k}_s": processor.seconds[k] - before[k] for k in before}}


def program_alone(processor: GpuUnitProcessor, store: NightStore, calls: list[list[WorkUnit]]) -> dict[str, Any]:
    """The same CCDs' windows, prepared once, re-submitted to the device program back to back (the GPU's pace)."""
    prepared = [ccd for units in calls for ccd in processor.prepare(units, store)]
    launched = processor.launch(prepared, store)  # references onto the device, programs warm
    processor.finish(launched)
    busy0 = processor.pipeline.compute_seconds
    torch.cuda.synchronize()
    start = time.perf_counter()
    launched = processor.launch(prepared, store)
    processor.finish(launched)
    torch.cuda.synchronize()
    return {"calls at once": "program alone", **_rates(calls, time.perf_counter() - start),
            "gpu_busy_s": processor.pipeline.compute_seconds - busy0}


def profile(processor: GpuUnitProcessor, store: NightStore, calls: list[list[WorkUnit]], rows: int = 18) -> None:
    """Run ``calls`` in one thread under torch.profiler; print the device's and the host's largest items."""
    with torch.profiler.profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for units in calls:
            processor.finish(processor.launch(processor.prepare(units, store), store))
        torch.cuda.synchronize()
    averages = prof.key_averages()
    print(averages.table(sort_by="self_device_time_total", row_limit=rows, max_name_column_width=70))
    print(averages.table(sort_by="self_cpu_time_total", row_limit=rows, max_name_column_width=70))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ccds", type=int, default=16)
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--calls", default="1,4,8", help="calls at once (night.gpu_prepare_calls), comma-separated")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batch", type=int, default=16, help="night.device_batch")
    parser.add_argument("--profile", type=int, default=0, metavar="N", help="then profile N CCD calls in one thread")
    parser.add_argument("--work", type=Path, default=Path("/tmp/gpu-units-ccds"))
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    store = NightStore(str(build_store(args.work, args.ccds, args.size, StoreLayout())))
    print(f"store ready in {time.perf_counter() - t0:.0f} s; {os.cpu_count()} CPUs; {torch.cuda.get_device_name()}", flush=True)
    program = TileProgram()
    calls = ccd_calls(store)
    with torch_runner("detector", device="cuda", precision="fp16", compiled=True) as detector, \
            torch_runner("classifier", device="cuda", precision="fp16", compiled=True) as classifier:
        t0 = time.perf_counter()
        processor = GpuUnitProcessor(detector, classifier, program, batch=args.batch)
        actor_round(processor, store, calls[:2], 1)  # the graphs of these CCDs' layouts, the allocator's blocks
        print(f"processor ready and warm in {time.perf_counter() - t0:.1f} s", flush=True)
        rows = [program_alone(processor, store, calls)]
        for threads in (int(t) for t in args.calls.split(",")):
            for _ in range(args.rounds):
                rows += [actor_round(processor, store, calls, threads), actor_round(processor, store, calls, threads, revisit=True)]
        rows.append(program_alone(processor, store, calls))  # the baseline again, after the rounds
        for r in rows:
            parts = ", ".join(f"{k[:-2]} {r[k]:.2f} s" for k in ("prepare_s", "launch_s", "finish_s") if k in r)
            print(f"{r['calls at once']!s:>14} {r.get('visit', ''):>5}: {r['wall_s']:6.2f} s, {r['ccds_per_s']:5.1f} CCDs/s, {r['tiles_per_s']:6.0f} tiles/s, "
                  f"GPU busy {r['gpu_busy_s']:5.2f} s ({r['gpu_busy_s'] / r['wall_s']:4.0%})"
                  + (f", {r['candidates']} candidates; summed: {parts}" if parts else ""), flush=True)
        if args.profile:
            profile(processor, store, calls[: args.profile])
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "gpu_units_ccds.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
