"""
The detector on 1024x1024 tiles on one GPU: eager fp32, eager fp16, torch.compile fp16, CUDA
graphs fp16 and compile + CUDA graphs fp16, at several batch sizes, side by side in one run; and
the numerical check of the torch backend (fp16 and fp32 on CUDA) against ONNX Runtime (fp32, CPU).

    python benchmarks/detector_backends.py [--batches 1 8 32] [--size 1024] [--repeat 50]
        [--modes "eager fp32" "compile+cuda-graphs fp16 nhwc"] [--baseline-root DIR]

``--baseline-root DIR`` also times the detector of another release (``DIR/detector``: its card,
weights and ONNX graphs, for example an earlier version taken from git) in the same run, and
gives every variant's speed against the baseline's eager fp32 as well as its own.

Times come from CUDA events around ``repeat`` calls after a warm-up, over three rotating input
sets already on the device (what the worker's pipeline hands the network); the median per call
is shown. Prints a table; writes JSON to ``$OUT/detector_backends.json`` when ``OUT`` is set.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from skyblink.engines.backends import OnnxRuntimeRunner, TorchRunner
from skyblink.engines.catalog import load_card, load_network, onnx_path
from skyblink.engines.export import IO_NAMES

#: (mode, precision, channels_last)
MODES = [
    ("eager", "fp32", False),
    ("eager", "fp16", False),
    ("compile", "fp16", False),
    ("cuda-graphs", "fp16", False),
    ("compile+cuda-graphs", "fp16", False),
    ("eager", "fp16", True),
    ("compile", "fp16", True),
    ("compile+cuda-graphs", "fp16", True),
]


def realistic_tiles(batch: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """Noise in sigma units with point sources, a reference channel and their difference."""
    tiles = rng.normal(0.0, 1.0, (batch, 3, size, size)).astype(np.float32)
    yy, xx = np.mgrid[:size, :size]
    for b in range(batch):
        for _ in range(20):
            x0, y0, amp = rng.uniform(0, size), rng.uniform(0, size), rng.uniform(5, 500)
            r2 = (xx - x0) ** 2 + (yy - y0) ** 2
            mask = r2 < 100
            blob = amp * np.exp(-r2[mask] / 4.0)
            tiles[b, 0][mask] += blob
            if rng.uniform() < 0.8:
                tiles[b, 1][mask] += blob
    tiles[:, 2] = tiles[:, 0] - tiles[:, 1]
    return tiles


def mode_label(mode: str, precision: str, channels_last: bool) -> str:
    """The name of a variant on the command line and in the table: ``"compile+cuda-graphs fp16 nhwc"``."""
    return f"{mode} {precision}" + (" nhwc" if channels_last else "")


def time_mode(mode: str, precision: str, channels_last: bool, batch: int, size: int, repeat: int,
              root: Path | None = None) -> dict[str, Any]:
    # Every variant compiles the same Detector.forward: start each from a clean compiler cache, or
    # dynamo's recompile limit silently drops the later variants to eager.
    torch._dynamo.reset()
    names = IO_NAMES["detector"]
    runner = TorchRunner(load_network("detector", root), input_name=names.inputs[0], output_names=names.outputs,
                         device="cuda", precision=precision, mode=mode, channels_last=channels_last)
    dtype = torch.float16 if precision == "fp16" else torch.float32
    gen = torch.Generator(device="cuda").manual_seed(batch)
    inputs = [torch.randn(batch, 3, size, size, device="cuda", generator=gen).to(dtype) for _ in range(3)]
    if channels_last:
        inputs = [x.contiguous(memory_format=torch.channels_last) for x in inputs]
    torch.cuda.reset_peak_memory_stats()
    with runner:
        start = time.perf_counter()
        for x in inputs:  # warm-up: compilation, autotuning, graph capture
            runner.infer_tensors(x)
        torch.cuda.synchronize()
        warmup_s = time.perf_counter() - start
        times = []
        for i in range(repeat):
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record()
            runner.infer_tensors(inputs[i % 3])
            end.record()
            end.synchronize()
            times.append(begin.elapsed_time(end))
    ms = statistics.median(times)
    return {"mode": mode + (" nhwc" if channels_last else ""), "precision": precision, "batch": batch, "ms": ms, "tiles_per_s": batch / ms * 1e3,
            "spread_ms": max(times) - min(times), "warmup_s": warmup_s,
            "peak_gib": torch.cuda.max_memory_allocated() / 2**30}


def numerics(size: int, root: Path | None = None) -> list[dict[str, Any]]:
    """Relative L2 error of each torch CUDA variant against ONNX Runtime fp32 on the CPU."""
    rng = np.random.default_rng(0)
    x = realistic_tiles(2, size, rng)
    names = IO_NAMES["detector"]
    with OnnxRuntimeRunner(onnx_path("detector", "fp32", root)) as ort_runner:
        reference = ort_runner.infer({"tiles": x})
    rows = []
    for mode, precision, channels_last in [("eager", "fp32", False), ("eager", "fp16", False), ("compile+cuda-graphs", "fp16", True)]:
        runner = TorchRunner(load_network("detector", root), input_name=names.inputs[0], output_names=names.outputs,
                             device="cuda", precision=precision, mode=mode, channels_last=channels_last)
        torch._dynamo.reset()
        with runner:
            out = runner.infer({"tiles": x})
        for name in names.outputs:
            err = float(np.linalg.norm(out[name] - reference[name]) / np.linalg.norm(reference[name]))
            rows.append({"variant": f"torch {mode} {precision}{' nhwc' if channels_last else ''}", "output": name, "rel_l2_vs_onnxruntime": err,
                         "finite": bool(np.isfinite(out[name]).all())})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=50)
    labels = [mode_label(*m) for m in MODES]
    parser.add_argument("--modes", nargs="+", choices=labels, default=labels, metavar="MODE",
                        help=f"variants to time (eager fp32 always runs); of: {', '.join(labels)}")
    parser.add_argument("--baseline-root", type=Path, help="a models folder whose detector/ is timed too, as the baseline")
    args = parser.parse_args()
    torch.backends.cudnn.benchmark = True
    device = f"{torch.cuda.get_device_name(0)} (cc {'.'.join(map(str, torch.cuda.get_device_capability(0)))}), torch {torch.__version__}"
    print(f"device: {device}", flush=True)
    modes = [m for m in MODES if mode_label(*m) in args.modes or mode_label(*m) == "eager fp32"]
    detectors: dict[str, Path | None] = {f"shipped {load_card('detector')['version']}": None}
    if args.baseline_root is not None:
        detectors[f"baseline {load_card('detector', args.baseline_root)['version']}"] = args.baseline_root

    checks = []
    for name, root in detectors.items():
        rows = [dict(row, detector=name) for row in numerics(args.size, root)]
        checks += rows
        print(f"\nnumerics vs ONNX Runtime fp32 (CPU), 2 tiles, detector {name}:")
        for row in rows:
            print(f"  {row['variant']:<35} {row['output']:<9} rel L2 {row['rel_l2_vs_onnxruntime']:.2e}  finite={row['finite']}")

    results = []
    for batch in args.batches:
        for name, root in detectors.items():
            for mode, precision, channels_last in modes:
                row = time_mode(mode, precision, channels_last, batch, args.size, args.repeat, root) | {"detector": name}
                results.append(row)
                print(f"  done {name} {mode} {precision} batch {batch}: {row['tiles_per_s']:.0f} tiles/s", flush=True)
    baseline = list(detectors)[-1]
    print(f"\ndetector, {args.size}x{args.size} tiles, median of {args.repeat} calls (CUDA events), {device}")
    print(f"{'batch':>5} {'detector':<14} {'mode':<27} {'prec':<5} {'ms/call':>9} {'tiles/s':>9} {'x own eager fp32':>16} "
          f"{'x ' + baseline + ' eager fp32':>28} {'peak GiB':>9} {'warm-up s':>9}")
    eager = {(r["batch"], r["detector"]): r["tiles_per_s"] for r in results if r["mode"] == "eager" and r["precision"] == "fp32"}
    for row in results:
        row["x_own_eager_fp32"] = row["tiles_per_s"] / eager[row["batch"], row["detector"]]
        row["x_baseline_eager_fp32"] = row["tiles_per_s"] / eager[row["batch"], baseline]
        print(f"{row['batch']:>5} {row['detector']:<14} {row['mode']:<27} {row['precision']:<5} {row['ms']:>9.3f} {row['tiles_per_s']:>9.0f} "
              f"{row['x_own_eager_fp32']:>15.2f}x {row['x_baseline_eager_fp32']:>27.2f}x {row['peak_gib']:>9.2f} {row['warmup_s']:>9.1f}")
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "detector_backends.json").write_text(json.dumps({"device": device, "numerics": checks, "timings": results}, indent=1))


if __name__ == "__main__":
    main()
