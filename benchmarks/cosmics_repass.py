"""
L.A.Cosmic's later passes by blocks: how much of a tile each pass must look at again, and what
recomputing only that costs in torch next to recomputing every pixel, in one run.

    python benchmarks/cosmics_repass.py [--rates 1,10,20] [--repeat 3] [--threads 2]

Frames: `cosmics_vs_astroscrappy.make_frame`'s simulated 2048^2 science CCDs (exposure 0) with
``rate`` times the simulator's cosmic-ray rate, cut into four 1024^2 tiles as the device program
sees them, and the real SAAO raw frame of shared/data/ccdproc (bias from its overscan, gain 1.9 e/ADU,
read noise 5 e, one 512-column tile) when it is there.

Table 1, per pass after the first: the pixels the previous cleaning changed, the fraction of
the tile's 32x32 blocks within 6 pixels of one (the blocks `detect_cosmics_tensor` recomputes;
mean over tiles and the worst tile), and the most flagged pixels within 2 of the pass's new flags
in one block and the 2 px around it (what its window cleans again, `RECLEAN_SLOTS` at most), from
numpy's `detect_cosmics` loop. Table 2: the tiles in
torch on this CPU (eager) with every pass dense (``dense_passes=4``, as before 2026-12-08) and
with the shipped `DENSE_PASSES` / `REPASS_CAPACITY`, interleaved, median ms; whether each equals
numpy's mask and cleaned image bit for bit, and the tiles reported over capacity.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from astropy.io import fits
from cosmics_vs_astroscrappy import make_frame

from skyblink.config import SimConfig
from skyblink.sim.conditions import READ_NOISE
from skyblink.workers import cosmics as cr

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SAAO = SHARED_DATA / "ccdproc" / "a8280271.fits"
TILE = 1024


def tiles_of(image: np.ndarray, bad: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """The frame's ``size``-square tiles (or the frame itself if smaller), stacked."""
    if image.shape[0] < size or image.shape[1] < size:
        return image[None].copy(), bad[None].copy()
    cuts = [(slice(y, y + size), slice(x, x + size)) for y in range(0, image.shape[0], size)
            for x in range(0, image.shape[1], size)]
    return np.stack([image[c] for c in cuts]), np.stack([bad[c] for c in cuts])


def again_per_block(crmask: np.ndarray, new: np.ndarray) -> int:
    """The most flagged pixels within 2 of a new flag in one block and the 2 px around it (what a window cleans again)."""
    again = crmask & cr._grown(new, 2)
    block, (h, w) = cr._BLOCK, again.shape
    return max(int(again[max(0, y - 2) : y + block + 2, max(0, x - 2) : x + block + 2].sum())
               for y in range(0, h, block) for x in range(0, w, block))


def blocks_per_pass(image: np.ndarray, bad: np.ndarray, read_noise: float) -> list[tuple[int, float, int]]:
    """
    For passes 2..4 of numpy's L.A.Cosmic on one tile: (pixels the last cleaning changed, fraction
    of blocks within reach of them, the most pixels a block's window cleans again after the pass).
    """
    p = cr._Params.make(gain=1.0, read_noise=read_noise, sigclip=5.0, sigfrac=0.3, objlim=8.0, niter=4)
    data, unusable, fallback = cr._filled(image, bad)
    guarded = cr._protected(unusable, 2)
    current, crmask = data, np.zeros(data.shape, dtype=bool)
    final = cr._pass(current, guarded, p)
    out: list[tuple[int, float, int]] = []
    block = cr._BLOCK
    for i in range(4):
        new = final & ~crmask
        crmask |= final
        if i:  # the cleaning after pass i + 1, in its windows
            out[-1] = (*out[-1][:2], again_per_block(crmask, new))
        if i == 3:
            break
        previous, current = current, cr._clean(data, crmask, crmask | unusable, fallback)
        changed = current != previous
        zone = cr._grown(changed, cr._REACH)
        h, w = -(-zone.shape[0] // block) * block, -(-zone.shape[1] // block) * block
        padded = np.zeros((h, w), dtype=bool)
        padded[: zone.shape[0], : zone.shape[1]] = zone
        touched = padded.reshape(h // block, block, w // block, block).any(axis=(1, 3))
        out.append((int(changed.sum()), float(touched.mean()), 0))
        final = cr._repass(current, previous, final, guarded, p)
    return out


def saao_frame() -> tuple[np.ndarray, np.ndarray] | None:
    """The SAAO raw frame in electrons (overscan bias, gain 1.9), or None where shared/data is absent."""
    if not SAAO.exists():
        return None
    raw = fits.getdata(SAAO).astype(np.float32)
    electrons = (raw[:, :512] - np.median(raw[:, 520:])) * np.float32(1.9)
    return electrons, np.zeros(electrons.shape, dtype=bool)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rates", default="1,10,20", help="cosmic-ray rates, times the simulator's")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    frames: dict[str, tuple[np.ndarray, np.ndarray, float]] = {}
    for rate in (float(r) for r in args.rates.split(",")):
        frame = make_frame(SimConfig(), 0, inject_rate=rate)
        frames[f"simulated, {rate:g}x cosmic rays"] = (frame.electrons, frame.saturated, READ_NOISE)
    saao = saao_frame()
    if saao is None:
        print(f"(no {SAAO}: the real frame is left out)")
    else:
        frames["SAAO raw a8280271 (real)"] = (*saao, 5.0)

    print(f"\nL.A.Cosmic's later passes: blocks of {cr._BLOCK}x{cr._BLOCK} within {cr._REACH} px of a changed pixel, "
          f"per {TILE}^2 tile (numpy)")
    print(f"{'frame':<32} {'tiles':>5} " + " ".join(f"{'pass ' + str(k) + ' changed px':>20} {'blocks mean / max':>18} "
                                                    f"{'clean again':>11}" for k in (2, 3, 4)))
    timings: dict[str, dict[str, list[float]]] = {}
    checks: dict[str, dict[str, str]] = {}
    for name, (image, bad, read_noise) in frames.items():
        tiles, masks = tiles_of(image, bad, TILE)
        per_tile = [blocks_per_pass(tiles[i], masks[i], read_noise) for i in range(len(tiles))]
        cells = []
        for k in range(3):
            changed = sum(t[k][0] for t in per_tile) / len(per_tile)
            fractions = [t[k][1] for t in per_tile]
            most = max(t[k][2] for t in per_tile)
            cells.append(f"{changed:>20.0f} {100 * np.mean(fractions):>8.1f} / {100 * max(fractions):>5.1f} % {most:>11}")
        print(f"{name:<32} {len(tiles):>5} " + " ".join(cells))

        want = [cr.detect_cosmics(tiles[i], read_noise=read_noise, mask=masks[i]) for i in range(len(tiles))]
        batch, known = torch.from_numpy(tiles), torch.from_numpy(masks)
        variants = {"every pass dense": {"dense_passes": 4}, "later passes by blocks": {}}
        timings[name], checks[name] = {v: [] for v in variants}, {}
        for variant, kwargs in variants.items():
            got = cr.detect_cosmics_tensor(batch, read_noise=read_noise, mask=known, **kwargs)
            same = all(np.array_equal(got.mask[i].numpy(), want[i].mask) and np.array_equal(got.cleaned[i].numpy(), want[i].cleaned)
                       for i in range(len(tiles)))
            checks[name][variant] = f"{'yes' if same else 'NO'}, {int(got.overflow.sum())} over"
        for _ in range(args.repeat):
            for variant, kwargs in variants.items():
                start = time.perf_counter()
                cr.detect_cosmics_tensor(batch, read_noise=read_noise, mask=known, **kwargs)
                timings[name][variant].append((time.perf_counter() - start) * 1e3)

    where = f"{platform.processor() or 'cpu'}, {os.cpu_count()} cores, {args.threads} torch threads"
    print(f"\ndetect_cosmics_tensor on the tiles, eager on the CPU ({where}), torch {torch.__version__}, median of "
          f"{args.repeat}; DENSE_PASSES {cr.DENSE_PASSES}, REPASS_CAPACITY {cr.REPASS_CAPACITY:g}; load {os.getloadavg()[0]:.1f}")
    print(f"{'frame':<32} {'every pass dense (ms)':>22} {'later by blocks (ms)':>21} {'ratio':>6}  {'= numpy, tiles over (dense)':>28}"
          f"  {'(blocks)':>12}")
    for name, by_variant in timings.items():
        dense, blocks = (statistics.median(v) for v in by_variant.values())
        print(f"{name:<32} {dense:>22.0f} {blocks:>21.0f} {dense / blocks:>6.2f}  {checks[name]['every pass dense']:>28}"
              f"  {checks[name]['later passes by blocks']:>12}")


if __name__ == "__main__":
    main()
