"""
The worker's transfer/compute pipeline on one GPU: a synchronous loop over pageable memory, the
copies alone, the program alone, and the pipelined run; tiles/s, overlap efficiency and the
fraction of the pinned-copy limit. Also checks that pipelined and synchronous candidates agree.

    python benchmarks/worker_pipeline.py [--batch 16] [--batches 24] [--size 1024] [--eager] [--dump FILE]
        [--baseline-root DIR] [--cosmics-dense-passes N]

Synthetic tiles (see benchmarks/tile_program_stages.py). Prints a table; JSON to $OUT when set.
``--eager`` runs the program as it ran before issue 23 in launch terms: no CUDA graphs and no
compiled steps (`skyblink.workers.fused.set_fusion(False)`, as ``night.compile_device_program = false``), to show what they buy on the same code; ``--dump`` saves the
pipelined candidates (npz) to compare programs; ``--baseline-root DIR`` runs the same program with the
detector of another release (``DIR/detector``) as well, side by side in one run;
``--cosmics-dense-passes 4`` runs every L.A.Cosmic pass over the whole tile, as before 2026-12-08
(`skyblink.workers.cosmics.DENSE_PASSES`; the captured graphs do not key on it, so compare it in a
second process, as ``--eager``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from tile_program_stages import synthetic_batch

from skyblink.engines.backends import TorchRunner
from skyblink.engines.backends.select import torch_runner
from skyblink.engines.catalog import load_card
from skyblink.workers import cosmics
from skyblink.workers.device_program import make_device_program
from skyblink.workers.pipeline import TilePipeline
from skyblink.workers.program_config import TileProgram


def runner(model: str, root: Path | None = None) -> TorchRunner:
    """The runner a GPU actor makes without TensorRT (``night.compile_device_program`` on, fp16)."""
    return torch_runner(model, device="cuda", precision="fp16", compiled=True, models_root=root)


def measure(program, host_batches: list[np.ndarray], batch: int, size: int) -> dict[str, Any]:
    """Warm ``program`` up, then time each mode over ``host_batches``; rates, candidates and the agreement check."""
    pipeline = TilePipeline(program, batch=batch, height=size, width=size, slots=3)
    t0 = time.perf_counter()
    list(pipeline.run(host_batches[:3], overlap=False))  # warm-up: compilation, autotuning, graph capture
    torch.cuda.synchronize()
    warmup = time.perf_counter() - t0
    print(f"warm-up (3 batches, compilation and capture included): {warmup:.1f} s", flush=True)
    tiles = batch * len(host_batches)

    def clock(fn) -> tuple[float, Any]:
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = fn()
        torch.cuda.synchronize()
        return time.perf_counter() - t0, out

    def pageable_loop() -> list:
        out = []
        for i, host in enumerate(host_batches):
            dev = torch.from_numpy(host).to("cuda")  # pageable, synchronous
            result = program(dev, i)
            out.append({k: v.cpu().numpy() for k, v in result.items()})
        return out

    def copies_only() -> None:
        dev = torch.empty_like(pipeline.dev[0])
        for i, host in enumerate(host_batches):
            pipeline.host[i % 3].numpy()[...] = host
            dev.copy_(pipeline.host[i % 3], non_blocking=True)
            torch.cuda.current_stream().synchronize()

    def program_only() -> None:
        dev = torch.from_numpy(host_batches[0]).to("cuda")
        for i in range(len(host_batches)):
            program(dev, i)

    t_page, _ = clock(pageable_loop)
    t_copy, _ = clock(copies_only)
    t_prog, _ = clock(program_only)
    t_sync, sync = clock(lambda: list(pipeline.run(host_batches, overlap=False)))
    t_pipe, piped = clock(lambda: list(pipeline.run(host_batches, overlap=True)))
    identical = len(sync) == len(piped) and all(
        a.batch == b.batch and a.columns.keys() == b.columns.keys()
        and all(np.array_equal(a.columns[k], b.columns[k]) for k in a.columns) for a, b in zip(sync, piped, strict=True))
    rate = {name: tiles / t for name, t in [("pageable sync loop", t_page), ("copies alone (pinned)", t_copy),
                                            ("program alone (on device)", t_prog), ("pinned ring, no overlap", t_sync),
                                            ("pipelined (copy/compute overlap)", t_pipe)]}
    return {"rates": rate, "identical": identical, "candidates": sum(len(c) for c in piped), "warmup_s": warmup,
            "piped": piped}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--batches", type=int, default=24)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--eager", action="store_true", help="no CUDA graphs, no compiled steps")
    parser.add_argument("--dump", type=Path, help="save the pipelined candidates here (npz)")
    parser.add_argument("--baseline-root", type=Path,
                        help="a models folder whose detector/ runs in the same program too, as the baseline (for example an earlier version from git)")
    parser.add_argument("--cosmics-dense-passes", type=int, default=cosmics.DENSE_PASSES,
                        help="L.A.Cosmic passes over the whole tile (4: every pass, as before 2026-12-08)")
    args = parser.parse_args()
    cosmics.DENSE_PASSES = args.cosmics_dense_passes
    print(f"L.A.Cosmic: {cosmics.DENSE_PASSES} dense passes, later ones by blocks", flush=True)
    science, reference, grid = synthetic_batch(args.batch, args.size, "cuda")
    rng = np.random.default_rng(1)
    base = science.cpu().numpy()
    host_batches = [np.roll(base, int(rng.integers(0, 64)), axis=2) for _ in range(args.batches)]
    classifier = runner("classifier")
    classifier.activate()
    detectors: dict[str, Path | None] = {f"detector {load_card('detector')['version']}": None}
    if args.baseline_root is not None:
        detectors[f"detector {load_card('detector', args.baseline_root)['version']} (baseline)"] = args.baseline_root
    results = {}
    for name, root in detectors.items():
        print(f"{name}:", flush=True)
        detector = runner("detector", root)
        detector.activate()
        # ``night.compile_device_program = false``: no compiled steps and no CUDA graphs.
        program = make_device_program(detector, classifier, reference, grid, TileProgram(compile_device_program=not args.eager),
                                      science_fwhm_px=3.0, reference_fwhm_px=2.2)
        results[name] = measure(program, host_batches, args.batch, args.size)
        detector.deactivate()
    print(f"\nworker pipeline, {args.batches} batches of {args.batch} x {args.size}^2 16-bit tiles, {torch.cuda.get_device_name(0)}")
    print(f"{'mode (tiles/s)':<36}" + "".join(f" {name:>26}" for name in results))
    for mode in next(iter(results.values()))["rates"]:
        print(f"{mode:<36}" + "".join(f" {r['rates'][mode]:>26.0f}" for r in results.values()))
    for name, r in results.items():
        rate = r["rates"]
        slowest = min(rate["copies alone (pinned)"], rate["program alone (on device)"])
        print(f"{name}: overlap efficiency (pipelined / slowest stage alone) {rate['pipelined (copy/compute overlap)'] / slowest:.3f}; "
              f"fraction of the pinned-copy limit {rate['pipelined (copy/compute overlap)'] / rate['copies alone (pinned)']:.3f}; "
              f"candidates {r['candidates']}; pipelined == synchronous: {r['identical']}; warm-up {r['warmup_s']:.1f} s")
    print(f"peak device memory {TilePipeline.peak_memory_gib():.2f} GiB")
    shipped = next(iter(results.values()))
    if args.dump:
        np.savez_compressed(args.dump, **{f"{c.batch}_{k}": v for c in shipped["piped"] for k, v in c.columns.items() if k != "stamps"})
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "worker_pipeline.json").write_text(json.dumps(
            {name: {k: v for k, v in r.items() if k != "piped"} for name, r in results.items()}, indent=1))
    if not all(r["identical"] for r in results.values()):
        raise SystemExit("pipelined and synchronous candidates differ")


if __name__ == "__main__":
    main()
