"""
Time per stage of the per-tile program on one GPU, synchronous (no copy/compute overlap), then
the whole device program as it runs in the workers (two CUDA graphs around the detector).

    python benchmarks/tile_program_stages.py [--batch 16] [--size 1024] [--repeat 20] [--compare] [--baseline-root DIR]
                                             [--profile N]

Stages, each timed with CUDA events over ``repeat`` batches after a warm-up:

1. H2D: the raw 16-bit science tiles, from pinned and from pageable host memory;
   calibration (gain, saturation mask) and cosmic-ray / hot-pixel rejection (L.A.Cosmic);
2. warp: GridSample of the field's reference, resident on the device, onto each tile's grid;
3. triplet: two mesh backgrounds, PSF matching, difference, noise normalisation;
4. detector: the shipped detector, torch.compile + CUDA graphs, fp16, NHWC;
5. matched filter: the difference's S/N for a point source (PSF correlation);
6. peaks: 5x5 max-pool suppression, threshold, S/N gate and top-K on the new-source score;
7. stamps: the 63x63 triplet stamps of the night's ``top_k`` slots per tile, and the classifier on them
   (eager fp16, as the actors run it: every slot, valid or not, so that the shapes stay fixed);
8. the whole program (`make_device_program`, input on the device, stamps and classifier included).

Each stage runs as the device program runs it: its per-pixel steps compiled
(`skyblink.workers.fused`), the backgrounds with fixed histogram passes; launched eagerly here, so
a stage's time includes its launches (the program's CUDA graphs remove most of them).

``--compare`` also times the cosmic-ray and triplet stages with the previous algorithms (the
dense 5x5 cleaning at every pixel, the unpacked histogram passes: `stage_algorithms.py`), in the
same run, right after the current ones. ``--profile N`` runs the whole program N more times under
torch's profiler and prints its kernels by device time (those replayed from the CUDA graphs
included), writing the trace to ``$OUT/whole_program_trace.json`` when ``OUT`` is set. ``--baseline-root DIR`` times the detector of another release
(``DIR/detector``, for example an earlier version from git) and the whole program with it, in the same run.

Inputs are synthetic (sky, noise and stars, a slightly rotated sampling grid), made on the
device: the GPU machines have no astropy, and the work per pixel does not depend on content
except in the sigma-clipping iterations, which real skies need as many of. Prints a table;
writes JSON to ``$OUT/tile_program_stages.json`` when ``OUT`` is set.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from pathlib import Path

import torch
from torch.nn import functional as F

from skyblink.engines.backends import TorchRunner
from skyblink.engines.backends.select import torch_runner
from skyblink.engines.catalog import load_card, load_network
from skyblink.engines.manifest import IO_NAMES
from skyblink.workers import tile_program as tp
from skyblink.workers.calibration import calibrate_tensor
from skyblink.workers.cosmics import detect_cosmics_tensor
from skyblink.workers.device_program import BACKGROUND_PASSES, make_device_program
from skyblink.workers.matched_filter import matched_filter_snr_tensor, matched_filter_taps
from skyblink.workers.pipeline import extract_stamps, uint16_from_int16
from skyblink.workers.program_config import TileProgram


def synthetic_batch(batch: int, size: int, device: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator(device=device).manual_seed(0)
    yy, xx = torch.meshgrid(torch.arange(size, device=device), torch.arange(size, device=device), indexing="ij")
    stars = torch.zeros(batch, 1, size, size, device=device)
    idx = torch.randint(0, size, (batch, 2, 300), device=device, generator=gen)
    for b in range(batch):
        stars[b, 0, idx[b, 1], idx[b, 0]] = torch.rand(300, device=device, generator=gen) * 50000.0
    k = torch.arange(-6, 7, device=device, dtype=torch.float32)
    psf = torch.exp(-(k[:, None] ** 2 + k[None, :] ** 2) / 4.0)
    stars = F.conv2d(stars, (psf / psf.sum())[None, None], padding=6)[:, 0]
    sky = 1000.0 + 0.05 * xx + torch.randn(batch, size, size, device=device, generator=gen) * 30.0 + stars
    science = sky.clamp(0, 32767).to(torch.int16)  # 16 bits a pixel on the bus
    reference = (1000.0 + 0.05 * F.pad(xx.float()[None], (64, 64, 64, 64), mode="replicate")[0]
                 + torch.randn(size + 128, size + 128, device=device, generator=gen) * 12.0)
    theta = 0.002
    gx = 64 + torch.cos(torch.tensor(theta)) * xx - torch.sin(torch.tensor(theta)) * yy + 3.3
    gy = 64 + torch.sin(torch.tensor(theta)) * xx + torch.cos(torch.tensor(theta)) * yy - 2.1
    grid = torch.stack([gx, gy])[None].expand(batch, 2, size, size).contiguous().float()
    return science, reference, grid


def timed(fn, repeat: int) -> float:
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeat):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def profile_program(call, calls: int) -> None:
    """Print the kernels of ``calls`` calls of ``call`` by total device time (per call); save the trace."""
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            call()
        torch.cuda.synchronize()
    kernels: dict[str, list[float]] = {}
    for event in prof.events():
        if event.device_type == torch.autograd.DeviceType.CUDA:
            kernels.setdefault(event.name, []).append(event.device_time / 1000.0)
    total = sum(sum(t) for t in kernels.values()) / calls
    print(f"\nwhole program under the profiler, {calls} calls: {total:.3f} ms of kernels a call")
    print(f"{'ms/call':>8} {'share':>6} {'n/call':>6}  kernel")
    for name, times in sorted(kernels.items(), key=lambda kv: -sum(kv[1]))[:40]:
        print(f"{sum(times) / calls:>8.3f} {sum(times) / calls / total:>6.1%} {len(times) / calls:>6.1f}  {name[:110]}")
    if os.environ.get("OUT"):
        prof.export_chrome_trace(str(Path(os.environ["OUT"], "whole_program_trace.json")))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--compare", action="store_true", help="also time the previous cosmic-ray and background algorithms")
    parser.add_argument("--profile", type=int, default=0, metavar="N",
                        help="profile N more calls of the whole program: its kernels by device time")
    parser.add_argument("--baseline-root", type=Path,
                        help="a models folder whose detector/ is timed too (its stage and the whole program with it), as the baseline")
    args = parser.parse_args()
    device = "cuda"
    science, reference, grid = synthetic_batch(args.batch, args.size, device)
    pinned = science.cpu().pin_memory()
    pageable = science.cpu().clone()
    on_device = torch.empty_like(science)
    names = IO_NAMES["detector"]

    def detector_runner(root: Path | None = None) -> TorchRunner:
        return TorchRunner(load_network("detector", root), input_name=names.inputs[0], output_names=names.outputs,
                           device=device, precision="fp16", mode="compile+cuda-graphs", channels_last=True)

    detector = detector_runner()
    detector.activate()
    version = load_card("detector")["version"]
    top_k = TileProgram().top_k  # the night's candidate slots per tile (``night.top_k``)
    state: dict[str, torch.Tensor] = {}

    def calibrate_and_clean() -> None:
        calibrated = calibrate_tensor(uint16_from_int16(science), gain=1.5, saturate=30000.0)
        cosmics = detect_cosmics_tensor(calibrated.electrons, read_noise=5.0, mask=calibrated.mask)
        state["sci"], state["bad"] = cosmics.cleaned, calibrated.mask | cosmics.mask

    def warp() -> None:
        state["ref"] = tp.warp_reference(reference, grid)

    operators = tp.background_operators(args.size, args.size, 64, device)
    sci_taps, ref_taps, sci_factor, ref_factor = tp.psf_match_taps(3.0, 2.2, radius=8, device=device)
    filter_taps = matched_filter_taps(3.0, radius=16, device=device)

    def triplet() -> None:
        state["x"] = tp.gaussian_triplet(state["sci"], state["ref"], scale=1.5, science_mask=state["bad"],
                                         taps=(sci_taps, ref_taps), noise_factors=(sci_factor, ref_factor),
                                         passes=BACKGROUND_PASSES, operators=operators)

    def matched() -> None:
        state["snr"] = matched_filter_snr_tensor(state["x"][:, 2], 3.0, renormalize=True, taps=filter_taps)

    def detect() -> None:
        state["heat"], state["off"] = detector.infer_tensors(state["x"])

    def peaks() -> None:
        score = state["heat"][:, 1:3].amax(dim=1, keepdim=True).float()
        peak_snr = F.max_pool2d(state["snr"][:, None], 3, 1, 1)
        keep = (score == F.max_pool2d(score, 5, 1, 2)) & (score >= 0.3) & (peak_snr >= 5.0)
        state["top"] = torch.topk(torch.where(keep, score, 0.0).flatten(1), k=top_k, dim=1)

    def stamps() -> None:
        index = state["top"].indices.flatten()
        tile = torch.arange(args.batch, device=device).repeat_interleave(top_k)
        state["stamps"] = extract_stamps(state["x"], tile, index // args.size, index % args.size)

    def classify() -> None:
        state["rb"] = classifier.infer_tensors(state["stamps"])

    # As a GPU actor runs it without TensorRT (`torch_runner` compiles only the detector: the classifier is eager, NHWC, fp16).
    classifier = torch_runner("classifier", device=device, precision="fp16", compiled=True)
    classifier.activate()

    def whole_program(runner: TorchRunner):
        return make_device_program(runner, classifier, reference, grid, science_fwhm_px=3.0, reference_fwhm_px=2.2,
                                   gain=1.5, saturate=30000.0, read_noise=5.0)

    program = whole_program(detector)

    rows = [
        ("H2D 16-bit, pinned", timed(lambda: on_device.copy_(pinned, non_blocking=True), args.repeat)),
        ("H2D 16-bit, pageable", timed(lambda: on_device.copy_(pageable, non_blocking=False), args.repeat)),
        ("calibrate + cosmic rays (L.A.Cosmic)", timed(calibrate_and_clean, args.repeat)),
        ("warp (GridSample)", timed(warp, args.repeat)),
        ("triplet (2 backgrounds, PSF match, diff)", timed(triplet, args.repeat)),
        (f"detector {version} (compile+graphs fp16 NHWC)", timed(detect, args.repeat)),
        ("matched filter S/N", timed(matched, args.repeat)),
        ("peaks (max-pool, S/N gate, top-K)", timed(peaks, args.repeat)),
        (f"stamps ({top_k} slots a tile, 3x63x63)", timed(stamps, args.repeat)),
        (f"classifier (eager fp16 NHWC, {args.batch * top_k} stamps)", timed(classify, args.repeat)),
    ]
    if args.compare:
        from stage_algorithms import previous_algorithms  # this script's folder is on sys.path

        with previous_algorithms():
            rows.append(("  previous: calibrate + cosmic rays", timed(calibrate_and_clean, args.repeat)))
            rows.append(("  previous: triplet", timed(triplet, args.repeat)))
    whole = ("whole program, CUDA graphs (stamps, classifier)", timed(lambda: program(science, 0), args.repeat))
    if args.profile:
        profile_program(lambda: program(science, 0), args.profile)
    detector.deactivate()
    baseline_rows = []
    if args.baseline_root is not None:
        torch._dynamo.reset()
        old = detector_runner(args.baseline_root)
        old.activate()
        old_version = load_card("detector", args.baseline_root)["version"]
        baseline_rows.append((f"  baseline: detector {old_version}", timed(lambda: old.infer_tensors(state["x"]), args.repeat)))
        old_program = whole_program(old)
        baseline_rows.append((f"  baseline: whole program, detector {old_version}", timed(lambda: old_program(science, 0), args.repeat)))
        old.deactivate()
    classifier.deactivate()
    name = torch.cuda.get_device_name(0)
    print(f"\nper-tile program stages, batch {args.batch} of {args.size}x{args.size}, median of {args.repeat}, {name}, torch {torch.__version__}")
    print(f"{'stage':<44} {'ms/batch':>9} {'tiles/s':>9}")
    for stage, ms in rows:
        print(f"{stage:<44} {ms:>9.3f} {args.batch / ms * 1e3:>9.0f}")
    compute = sum(ms for stage, ms in rows[2:] if not stage.startswith("  previous"))
    print(f"{'sum of device stages (no overlap)':<44} {compute:>9.3f} {args.batch / compute * 1e3:>9.0f}")
    print(f"{whole[0]:<44} {whole[1]:>9.3f} {args.batch / whole[1] * 1e3:>9.0f}")
    for stage, ms in baseline_rows:
        print(f"{stage:<44} {ms:>9.3f} {args.batch / ms * 1e3:>9.0f}")
    rows += [whole, *baseline_rows]
    print(f"peak device memory {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "tile_program_stages.json").write_text(json.dumps({"device": name, "batch": args.batch, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
