"""
The mesh background (`skyblink.workers.estimate_background`, numpy, and its torch port
`skyblink.workers.tile_program.background` on the CPU) next to ``sep.Background`` on the same
frames.

    python benchmarks/background_vs_sep.py [--repeat 5] [--threads 2]

Frames: simulated science CCDs (`skyblink.sim.ccd_image.render_ccd`) of 1024x1024, 1000x1030 and
2048x2048 pixels, and the real images of ``shared/data`` when present (Spitzer 513x1025,
M13 300x300). Each with SEP's defaults (64 px meshes, 3x3 filter) and a 32 px / 5x5 variant.
For each: the largest and the RMS difference from SEP of the background and of the noise map in
units of SEP's global noise (SEP's noise map floored at 1e-6, as ours is), and the time per
megapixel of each implementation to make both maps (best of ``--repeat``). Prints a table.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import sep
from rich.console import Console
from rich.table import Table

from skyblink.config import SimConfig
from skyblink.sim.ccd_image import render_ccd
from skyblink.workers import estimate_background

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
REAL = {
    "Spitzer (real)": SHARED_DATA / "photutils-datasets" / "spitzer_example_image.fits",
    "M13 (real)": SHARED_DATA / "astropy" / "m13.fits",
}


def frames() -> Iterator[tuple[str, np.ndarray]]:
    """Yield (name, float32 image) pairs: simulated CCDs, then the real images found."""
    for size, crop in ((1024, None), (1030, (1000, 1030)), (2048, None)):
        ccd = render_ccd(SimConfig(fields=1, exposures_per_field=1, image_size=size, seed=7), 0, 0, exposure=0)
        pixels = ccd.pixels.astype(np.float32)
        if crop is not None:
            pixels = pixels[: crop[0], : crop[1]]
        yield f"simulated {pixels.shape[0]}x{pixels.shape[1]}", np.ascontiguousarray(pixels)
    for name, path in REAL.items():
        if path.exists():
            from astropy.io import fits

            yield name, np.ascontiguousarray(fits.getdata(path).astype(np.float32))


def sep_maps(image: np.ndarray, mesh: int, filt: int) -> tuple[np.ndarray, np.ndarray]:
    """SEP's background and noise maps (ours makes both too)."""
    bkg = sep.Background(image, bw=mesh, bh=mesh, fw=filt, fh=filt)
    return bkg.back(), bkg.rms()


def best_time(fn: Callable[[], object], repeat: int) -> float:
    """Best wall time of ``repeat`` calls after one warm-up call."""
    fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    args = parser.parse_args()
    try:
        import torch

        from skyblink.workers import tile_program as tp

        torch.set_num_threads(args.threads)
    except ImportError:
        torch = None
    table = Table(title="Background: ours vs sep.Background (differences in units of SEP's global noise)")
    for column in ("frame", "mesh / filter", "level max", "level rms", "noise max", "noise rms",
                   "ours numpy ms/Mpix", "ours torch CPU ms/Mpix", "sep ms/Mpix"):
        table.add_column(column, justify="left" if column in {"frame", "mesh / filter"} else "right")
    for name, image in frames():
        mpix = image.size / 1e6
        for mesh, filt in ((64, 3), (32, 5)):
            ref = sep.Background(image, bw=mesh, bh=mesh, fw=filt, fh=filt)
            ours = estimate_background(image, mesh=mesh, filter_size=filt)
            d_level = (ours.level - ref.back()) / ref.globalrms
            d_rms = (ours.rms - np.maximum(ref.rms(), 1e-6)) / ref.globalrms
            t_np = best_time(lambda i=image, m=mesh, f=filt: estimate_background(i, mesh=m, filter_size=f), args.repeat)
            t_sep = best_time(lambda i=image, m=mesh, f=filt: sep_maps(i, m, f), args.repeat)
            t_torch = "-"
            if torch is not None:
                tensor = torch.from_numpy(image)[None]
                seconds = best_time(lambda t=tensor, m=mesh, f=filt: tp.background(t, mesh=m, filter_size=f),
                                    args.repeat)
                t_torch = f"{seconds * 1e3 / mpix:.1f}"
            table.add_row(
                f"{name}", f"{mesh} px / {filt}x{filt}",
                f"{np.abs(d_level).max():.1e}", f"{np.sqrt(np.mean(d_level**2)):.1e}",
                f"{np.abs(d_rms).max():.1e}", f"{np.sqrt(np.mean(d_rms**2)):.1e}",
                f"{t_np * 1e3 / mpix:.1f}", t_torch, f"{t_sep * 1e3 / mpix:.1f}",
            )
    Console(width=200).print(table)


if __name__ == "__main__":
    main()
