"""
The worker's transfer/compute pipeline on one GPU: a synchronous loop over pageable memory, the
copies alone, the program alone, and the pipelined run; tiles/s, overlap efficiency and the
fraction of the pinned-copy limit. Also checks that pipelined and synchronous candidates agree.

    python benchmarks/worker_pipeline.py [--batch 16] [--batches 24] [--size 1024] [--eager] [--dump FILE]

Synthetic tiles (see benchmarks/tile_program_stages.py). Prints a table; JSON to $OUT when set.
``--eager`` runs the program as it ran before issue 23 in launch terms: no CUDA graphs and no
compiled steps (`skyblink.workers.fused.set_fusion(False)`, as ``night.compile_device_program = false``), to show what they buy on the same code; ``--dump`` saves the
pipelined candidates (npz) to compare programs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from tile_program_stages import synthetic_batch

from skyblink.engines.backends import TorchRunner
from skyblink.engines.catalog import load_network
from skyblink.engines.manifest import IO_NAMES
from skyblink.workers.device_program import make_device_program
from skyblink.workers.pipeline import TilePipeline
from skyblink.workers.program_config import TileProgram


def runner(model: str) -> TorchRunner:
    names = IO_NAMES[model]
    return TorchRunner(load_network(model), input_name=names.inputs[0], output_names=names.outputs, device="cuda",
                       precision="fp16", mode="compile" if model == "detector" else "eager", channels_last=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--batches", type=int, default=24)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--eager", action="store_true", help="no CUDA graphs, no compiled steps")
    parser.add_argument("--dump", type=Path, help="save the pipelined candidates here (npz)")
    args = parser.parse_args()
    science, reference, grid = synthetic_batch(args.batch, args.size, "cuda")
    rng = np.random.default_rng(1)
    base = science.cpu().numpy()
    host_batches = [np.roll(base, int(rng.integers(0, 64)), axis=2) for _ in range(args.batches)]
    detector, classifier = runner("detector"), runner("classifier")
    detector.activate()
    classifier.activate()
    # ``night.compile_device_program = false``: no compiled steps and no CUDA graphs.
    program = make_device_program(detector, classifier, reference, grid, TileProgram(compile_device_program=not args.eager),
                                  science_fwhm_px=3.0, reference_fwhm_px=2.2)
    pipeline = TilePipeline(program, batch=args.batch, height=args.size, width=args.size, slots=3)
    t0 = time.perf_counter()
    list(pipeline.run(host_batches[:3], overlap=False))  # warm-up: compilation, autotuning, graph capture
    torch.cuda.synchronize()
    print(f"warm-up (3 batches, compilation and capture included): {time.perf_counter() - t0:.1f} s")
    torch.cuda.synchronize()
    tiles = args.batch * args.batches

    def clock(fn) -> float:
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = fn()
        torch.cuda.synchronize()
        return time.perf_counter() - t0, out

    def pageable_loop() -> list:
        out = []
        for i, batch in enumerate(host_batches):
            dev = torch.from_numpy(batch).to("cuda")  # pageable, synchronous
            result = program(dev, i)
            out.append({k: v.cpu().numpy() for k, v in result.items()})
        return out

    def copies_only() -> None:
        dev = torch.empty_like(pipeline.dev[0])
        for i, batch in enumerate(host_batches):
            pipeline.host[i % 3].numpy()[...] = batch
            dev.copy_(pipeline.host[i % 3], non_blocking=True)
            torch.cuda.current_stream().synchronize()

    def program_only() -> None:
        dev = torch.from_numpy(host_batches[0]).to("cuda")
        for i in range(args.batches):
            program(dev, i)

    t_page, _ = clock(pageable_loop)
    t_copy, _ = clock(copies_only)
    t_prog, _ = clock(program_only)
    t_sync, sync = clock(lambda: list(pipeline.run(host_batches, overlap=False)))
    t_pipe, piped = clock(lambda: list(pipeline.run(host_batches, overlap=True)))
    identical = len(sync) == len(piped) and all(
        a.batch == b.batch and a.columns.keys() == b.columns.keys()
        and all(np.array_equal(a.columns[k], b.columns[k]) for k in a.columns) for a, b in zip(sync, piped, strict=True))
    n_candidates = sum(len(c) for c in piped)
    rate = {name: tiles / t for name, t in [("pageable sync loop", t_page), ("copies alone (pinned)", t_copy),
                                            ("program alone (on device)", t_prog), ("pinned ring, no overlap", t_sync),
                                            ("pipelined (copy/compute overlap)", t_pipe)]}
    slowest = min(rate["copies alone (pinned)"], rate["program alone (on device)"])
    print(f"\nworker pipeline, {args.batches} batches of {args.batch} x {args.size}^2 16-bit tiles, {torch.cuda.get_device_name(0)}")
    print(f"{'mode':<36} {'tiles/s':>9}")
    for name, value in rate.items():
        print(f"{name:<36} {value:>9.0f}")
    print(f"overlap efficiency (pipelined / slowest stage alone): {rate['pipelined (copy/compute overlap)'] / slowest:.3f}")
    print(f"fraction of the pinned-copy limit: {rate['pipelined (copy/compute overlap)'] / rate['copies alone (pinned)']:.3f}")
    print(f"candidates: {n_candidates}; pipelined == synchronous: {identical}")
    print(f"peak device memory {TilePipeline.peak_memory_gib():.2f} GiB")
    if args.dump:
        np.savez_compressed(args.dump, **{f"{c.batch}_{k}": v for c in piped for k, v in c.columns.items() if k != "stamps"})
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "worker_pipeline.json").write_text(json.dumps({"rates": rate, "identical": identical, "candidates": n_candidates}, indent=1))
    if not identical:
        raise SystemExit("pipelined and synchronous candidates differ")


if __name__ == "__main__":
    main()
