"""
The background's histogram iterations and L.A.Cosmic's cleaning: the previous algorithm and the
current one side by side in one run, in milliseconds per batch and in operations per batch
(``torch.profiler``: aten operations on the CPU, a proxy for a GPU's kernel launches; on CUDA
the kernels themselves are counted too).

    python benchmarks/stage_algorithms.py [--batch 4] [--size 1024] [--repeat 5] [--device cpu] [--compare] [--fused]

Stages, each on a batch of synthetic 1024x1024 tiles (sky, noise, stars, and 2,000 cosmic-ray
hits of 1-3 pixels per tile, in electrons):

1. ``cosmics``: `detect_cosmics_tensor` (4 passes), as the device program calls it;
2. ``backgrounds``: `tile_program.background` of the science and reference tiles together with
   the device program's 24 fixed histogram passes;
3. ``histogram passes``: only the 24 passes of (2), on the histograms of (2);
4. ``kernel-grid PSF match``: `psf_match_tensor.kernel_match_tensor` on the batch (each window's
   kernel and one per 80-px cell, solved together and applied), as ``psf_match = "kernel"`` runs it
   (no previous form of it is kept here: BENCHMARKS.md times the previous and current kernel grids
   as two installed wheels side by side).

``--compare`` also runs the previous algorithm (kept here only for this comparison: the
histogram passes as they were before issue 23's second session, ~77 operations each, and every
L.A.Cosmic pass over the whole tile, as before 2026-12-08: `detect_cosmics_tensor` with
``dense_passes=4``), interleaved with the current one, and
checks that both give the same tensors bit for bit. Torch runs eagerly (``set_fusion(False)``)
unless ``--fused``, which compiles the fused steps on CUDA as the device program does. Prints a
table; writes JSON to ``$OUT/stage_algorithms.json`` when ``OUT`` is set.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch.nn import functional as F
from torch.profiler import DeviceType, ProfilerActivity, profile

from skyblink.workers import background as _bg
from skyblink.workers import cosmics as cr
from skyblink.workers import psf_match_tensor as pmt
from skyblink.workers import tile_program as tp
from skyblink.workers.fused import set_fusion

PASSES = 24  # skyblink.workers.device_program.BACKGROUND_PASSES
COSMICS_PASSES = 4  # detect_cosmics_tensor's niter in the device program
VIEWS = frozenset({
    "aten::view", "aten::reshape", "aten::expand", "aten::select", "aten::slice", "aten::unbind", "aten::unsqueeze",
    "aten::as_strided", "aten::squeeze", "aten::detach", "aten::alias", "aten::t", "aten::transpose", "aten::permute",
    "aten::_unsafe_view", "aten::lift_fresh", "aten::empty", "aten::empty_like", "aten::empty_strided",
    "aten::result_type", "aten::resolve_conj", "aten::resolve_neg", "aten::contiguous", "aten::to", "aten::_to_copy",
    "aten::item", "aten::_local_scalar_dense", "aten::is_nonzero", "aten::narrow", "aten::expand_as", "aten::split",
    "aten::chunk", "aten::scalar_tensor", "aten::lift_fresh_copy", "aten::zeros", "aten::full",
})


# ---------------------------------------------------------------- the previous algorithms (comparison only)


def previous_histogram_mode(histo: torch.Tensor, nlevels: torch.Tensor, mean: torch.Tensor, nsigma: float,
                            max_iters: int, passes: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """`tile_program._histogram_mode` as of 9852eff: a (rows, bins + 1, 3) float64 table, ~77 operations a pass."""
    n_rows, n_bins = histo.shape
    device = histo.device
    f64 = torch.float64
    bins = torch.arange(n_bins, device=device, dtype=f64)
    counts = histo.to(f64)
    zero = torch.zeros((n_rows, 1, 3), dtype=f64, device=device)
    table = torch.cat([zero, torch.stack([counts, counts * bins, counts * bins * bins], dim=-1).cumsum(1)], dim=1)
    c0 = table[:, :, 0]
    pair = (c0[:, :-1] + c0[:, 1:]).contiguous()
    top = nlevels - 1
    lo = torch.zeros_like(top)
    hi = top.clone()
    sig = 10.0 * top.to(f64)
    sig_prev = torch.ones_like(sig)
    mea = mean.to(f64)
    med = mea.clone()
    zero1 = torch.zeros_like(sig)
    for it in range(max_iters if passes is None else passes):
        active = (sig >= _bg.MIN_SIGMA_BINS) & ((sig / sig_prev - 1.0).abs() > _bg.CONVERGED)
        if passes is None and (device.type == "cpu" or (it > 0 and it % 8 == 0)) and not bool(active.any()):
            break
        nonempty = hi >= lo
        ends = torch.stack([lo, hi + 1], dim=1).clamp(0, n_bins)
        at_ends = table.gather(1, ends[:, :, None].expand(n_rows, 2, 3))
        sums = torch.where(nonempty[:, None], at_ends[:, 1] - at_ends[:, 0], 0.0)
        total, s1, s2 = sums.unbind(1)
        target = at_ends[:, 1, 0] + at_ends[:, 0, 0]
        p = torch.searchsorted(pair, target[:, None], side="left")[:, 0]
        p = torch.where(nonempty, torch.minimum(torch.maximum(p, lo), hi), lo)
        high_ptr = torch.where(nonempty, p - 1, hi)
        low_sum = torch.where(nonempty, c0.gather(1, p.clamp(0, n_bins)[:, None])[:, 0] - at_ends[:, 0, 0], 0.0)
        peak = counts.gather(1, torch.stack([p, high_ptr], dim=1).clamp(0, n_bins - 1)).amax(dim=1)
        new_med = torch.where(high_ptr >= 0, high_ptr.to(f64) + 0.5 + (total - 2.0 * low_sum) / (2.0 * peak), zero1)
        counted = total > 0
        new_mea = torch.where(counted, s1 / total, zero1)
        var = torch.where(counted, s2 / total - new_mea * new_mea, zero1)
        new_sig = var.clamp(min=0.0).sqrt()
        low = new_med - nsigma * new_sig
        high = new_med + nsigma * new_sig
        new_lo = torch.where(low > 0, torch.floor(low.clamp(0.0, n_bins) + 0.5), zero1).to(torch.int64)
        high_ok = high < top
        high_round = torch.where(high > 0, high + 0.5, high - 0.5).clamp(-1.0, n_bins)
        new_hi = torch.where(high_ok, torch.trunc(high_round).to(torch.int64), top)
        sig_prev = torch.where(active, sig, sig_prev)
        sig = torch.where(active, new_sig, sig)
        mea = torch.where(active, new_mea, mea)
        med = torch.where(active, new_med, med)
        lo = torch.where(active, new_lo, lo)
        hi = torch.where(active, new_hi, hi)
    skewed = ((mea - med) / sig).abs() >= _bg.SKEW_LIMIT
    mode = torch.where(sig > 0, torch.where(skewed, med, 2.5 * med - 1.5 * mea), mea)
    return mode, sig


@contextlib.contextmanager
def previous_algorithms() -> Iterator[None]:
    """Run the stages with the previous algorithms (module attributes swapped for the duration)."""
    saved = tp._histogram_mode, cr.DENSE_PASSES
    tp._histogram_mode, cr.DENSE_PASSES = previous_histogram_mode, COSMICS_PASSES
    try:
        yield
    finally:
        tp._histogram_mode, cr.DENSE_PASSES = saved


# ------------------------------------------------------------------------------------------- inputs


def synthetic_tiles(batch: int, size: int, device: str) -> dict[str, torch.Tensor]:
    """Science tiles in electrons with cosmic rays and a saturation mask, and reference tiles on the same grid."""
    gen = torch.Generator(device="cpu").manual_seed(0)
    stars = torch.zeros(batch, 1, size, size)
    for b in range(batch):
        yx = torch.randint(0, size, (2, 300), generator=gen)
        stars[b, 0, yx[0], yx[1]] = torch.rand(300, generator=gen) * 50000.0
    k = torch.arange(-6, 7, dtype=torch.float32)
    psf = torch.exp(-(k[:, None] ** 2 + k[None, :] ** 2) / 4.0)
    stars = F.conv2d(stars, (psf / psf.sum())[None, None], padding=6)[:, 0]
    x = torch.arange(size, dtype=torch.float32)
    sky = 1000.0 + 0.05 * x[None, None, :]
    science = sky + torch.randn(batch, size, size, generator=gen) * 30.0 + stars
    hits = max(1, 2000 * size * size // 1024**2)
    for b in range(batch):
        yx = torch.randint(1, size - 1, (2, hits), generator=gen)
        charge = 500.0 + torch.rand(hits, generator=gen) * 5000.0
        science[b, yx[0], yx[1]] += charge
        science[b, yx[0] + 1, yx[1]] += charge * (torch.rand(hits, generator=gen) < 0.5)  # some 2-3 pixel tracks
        science[b, yx[0], yx[1] + 1] += charge * (torch.rand(hits, generator=gen) < 0.3)
    saturated = science >= 45000.0
    reference = sky + torch.randn(batch, size, size, generator=gen) * 12.0 + stars * 0.9
    return {"science": science.to(device), "saturated": saturated.to(device), "reference": reference.to(device)}


# ------------------------------------------------------------------------------------------- timing


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed_once(fn: Callable[[], Any], device: str) -> float:
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return (time.perf_counter() - start) * 1e3


def operations(fn: Callable[[], Any], device: str) -> dict[str, int]:
    """aten operations of one call: all top-level ones, the leaf computations (no views), and CUDA kernels."""
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.startswith("cuda") else [])
    with profile(activities=activities) as prof:
        fn()
        _sync(device)
    events = prof.events()
    aten = [e for e in events if e.name.startswith("aten::")]
    top = [e for e in aten if e.cpu_parent is None or not e.cpu_parent.name.startswith("aten::")]
    leaves = [e for e in aten if e.name not in VIEWS
              and not any(c.name.startswith("aten::") and c.name not in VIEWS for c in e.cpu_children)]
    kernels = [e for e in events if e.device_type == DeviceType.CUDA]
    return {"aten_top": len(top), "aten_leaf": len(leaves), "cuda_kernels": len(kernels)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--compare", action="store_true", help="also run the previous algorithms, interleaved")
    parser.add_argument("--fused", action="store_true", help="compile the fused steps (CUDA only), as the device program")
    args = parser.parse_args()
    set_fusion(args.fused)
    device = args.device
    tiles = synthetic_tiles(args.batch, args.size, device)
    both = torch.cat([tiles["science"], tiles["reference"]])
    usable = torch.isfinite(both)
    operators = tp.background_operators(args.size, args.size, 64, device)
    histograms = tp._mesh_histograms(both, usable, (64, 64))
    histo, nlevels, mean = histograms[0], histograms[1].reshape(-1), histograms[2].to(torch.float32).reshape(-1)
    # The batch's science and reference, sky subtracted, for the kernel grid (`psf_match = "kernel"`).
    sky = 1000.0 + 0.05 * torch.arange(args.size, device=device, dtype=torch.float32)[None, None, :]
    noise = torch.ones_like(tiles["science"])
    match_inputs = (tiles["science"] - sky, 30.0 * noise, tiles["reference"] - sky, 12.0 * noise,
                    torch.ones_like(tiles["saturated"]), ~tiles["saturated"])

    stages: dict[str, Callable[[], Any]] = {
        "cosmics (L.A.Cosmic, 4 passes)": lambda: detect_cosmics(tiles),
        f"backgrounds (science + reference, {PASSES} passes)": lambda: tp.background(both, passes=PASSES, operators=operators),
        f"histogram passes alone ({PASSES})": lambda: tp._histogram_mode(histo, nlevels, mean, 3.0, 100, PASSES),
        "kernel-grid PSF match (the batch)": lambda: pmt.kernel_match_tensor(*match_inputs, 3.4, 3.3),
    }
    variants = {"current": contextlib.nullcontext}
    if args.compare:
        variants = {"previous": previous_algorithms, "current": contextlib.nullcontext}

    results: dict[str, dict[str, Any]] = {}
    for stage, fn in stages.items():
        outputs = {}
        for name, context in variants.items():
            with context():
                outputs[name] = fn()  # warm-up, and the output compared below
                results.setdefault(stage, {})[name] = {"ops": operations(fn, device), "ms": []}
        for _ in range(args.repeat):
            for name, context in variants.items():
                with context():
                    results[stage][name]["ms"].append(timed_once(fn, device))
        if args.compare:
            same = all(torch.equal(torch.nan_to_num(a, nan=-1.0), torch.nan_to_num(b, nan=-1.0))
                       for a, b in zip(_flat(outputs["previous"]), _flat(outputs["current"]), strict=True))
            results[stage]["same_output"] = same

    where = torch.cuda.get_device_name(0) if device.startswith("cuda") else f"{platform.processor() or 'cpu'}, {os.cpu_count()} cores"
    print(f"\nstage algorithms, batch {args.batch} of {args.size}x{args.size}, median of {args.repeat}, {device} ({where}), "
          f"torch {torch.__version__}, {'fused' if args.fused else 'eager'}; load {os.getloadavg()[0]:.1f}")
    print(f"{'stage':<46} {'variant':<9} {'ms/batch':>9} {'min ms':>8} {'aten ops':>9} {'leaf ops':>9} {'kernels':>8}  same")
    for stage, by_variant in results.items():
        for name in variants:
            r = by_variant[name]
            r["median_ms"], r["min_ms"] = statistics.median(r["ms"]), min(r["ms"])
            ops = r["ops"]
            print(f"{stage:<46} {name:<9} {r['median_ms']:>9.1f} {r['min_ms']:>8.1f} {ops['aten_top']:>9} "
                  f"{ops['aten_leaf']:>9} {ops['cuda_kernels']:>8}  {by_variant.get('same_output', '-')}")
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "stage_algorithms.json").write_text(
            json.dumps({"device": where, "batch": args.batch, "size": args.size, "results": results}, indent=1))


def detect_cosmics(tiles: dict[str, torch.Tensor]) -> cr.Cosmics:
    return cr.detect_cosmics_tensor(tiles["science"], read_noise=5.0, mask=tiles["saturated"])


def _flat(value: Any) -> list[torch.Tensor]:
    if isinstance(value, cr.Cosmics):
        return [value.mask, value.cleaned]
    return list(value) if isinstance(value, tuple | list) else [value]


if __name__ == "__main__":
    main()
