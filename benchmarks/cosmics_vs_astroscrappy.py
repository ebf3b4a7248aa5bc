"""
Cosmic-ray rejection: ours (numpy, torch on the CPU) next to astroscrappy on the same simulated frames.

    python benchmarks/cosmics_vs_astroscrappy.py [--frames 4] [--size 2048] [--inject-rate 10]

Frames: science CCDs of a simulated night (`skyblink.sim.ccd_image.render_ccd`, each exposure
with its own seeing, 1.3-3.3 px FWHM), with the simulator's own cosmic rays plus
``--inject-rate - 1`` times as many more drawn from the same model
(`skyblink.sim.artifacts.cosmic_rays`: compact hits and tracks) and added to the ADU before
scoring. Every method gets the same frame in electrons (ADU x GAIN), the read noise, and the
saturated pixels (raw >= SATURATE) as known bad pixels; the same sigclip 5, sigfrac 0.3,
objlim 8 (our defaults for this survey's undersampled PSFs), 4 iterations (astroscrappy's
defaults otherwise: separable median, meanmask cleaning); astroscrappy also runs with its own
defaults (sigclip 4.5, objlim 5).

Scores, from the simulator's truth:

* recall: flagged fraction of the cosmic-ray pixels whose deposited charge is at least 5 sigma
  of the pixel's noise, ``sqrt(sky + star light + read_noise**2)`` electrons from the
  noiseless expectation approximated by the 5x5 median of the frame with its cosmic rays
  removed by the truth (pixels also saturated are left out);
* hot: flagged fraction of the hot pixels at least 5 sigma above the sky (not saturated);
* star masking: flagged fraction of the pixels within 2 FWHM of every star, variable or
  transient with S/N >= 5 (truth positions and fluxes), leaving out pixels that hold or touch
  (8-neighbours) a cosmic ray, hot pixel, bad column, satellite or saturation, since growing a
  cosmic ray into its neighbours is the algorithm's design; the next column also counts the
  pixels that touch one;
* false positives: flagged pixels with no truth artifact, per Mpix;
* time per Mpix (wall, single process; torch with ``torch.set_num_threads`` = cores).

Prints a table.
"""

from __future__ import annotations

import argparse
import math
import os
import time
from dataclasses import dataclass

import astroscrappy
import numpy as np
import torch
from rich.console import Console
from rich.table import Table
from scipy.ndimage import binary_dilation, median_filter

from skyblink.config import SimConfig
from skyblink.sim.artifacts import cosmic_rays
from skyblink.sim.ccd_image import MaskBit, render_ccd
from skyblink.sim.conditions import GAIN, READ_NOISE, SATURATE_ADU, exposure_conditions
from skyblink.sim.seeds import Stream, rng_for
from skyblink.workers.cosmics import detect_cosmics, detect_cosmics_tensor

SIGCLIP, SIGFRAC, OBJLIM, NITER = 5.0, 0.3, 8.0, 4


@dataclass(frozen=True, slots=True)
class Frame:
    """One scored frame: electrons, known bad pixels and its truth."""

    electrons: np.ndarray
    saturated: np.ndarray
    truth_mask: np.ndarray  # MaskBit, with the injected cosmic rays
    cr_significant: np.ndarray  # cosmic-ray pixels >= 5 sigma
    hot_significant: np.ndarray
    star_core: np.ndarray  # not touching an artifact
    star_core_all: np.ndarray  # also the pixels next to one
    fwhm_px: float


def make_frame(config: SimConfig, exposure: int, *, inject_rate: float) -> Frame:
    """Render one science CCD, inject extra cosmic rays, and derive the scoring truth."""
    ccd = render_ccd(config, 0, 0, exposure=exposure)
    cond = exposure_conditions(config, 0, exposure)
    shape = ccd.pixels.shape
    charge = np.zeros(shape)
    own = cosmic_rays(rng_for(config.seed, Stream.COSMIC_RAYS, 0, exposure, 0), shape, config.exptime)
    np.add.at(charge, (own.iy, own.ix), own.charge)
    truth = ccd.mask.copy()
    adu = ccd.pixels.astype(np.float64)
    if inject_rate > 1:
        extra = cosmic_rays(np.random.default_rng([config.seed, exposure, 99]), shape, config.exptime * (inject_rate - 1))
        np.add.at(charge, (extra.iy, extra.ix), extra.charge)
        np.add.at(adu, (extra.iy, extra.ix), extra.charge / cond.gain)
        truth[extra.iy, extra.ix] |= np.uint8(MaskBit.COSMIC_RAY)
        adu = np.minimum(np.rint(adu), SATURATE_ADU)
    saturated = adu >= SATURATE_ADU
    electrons = (adu * cond.gain).astype(np.float32)
    # Noise of each pixel from its expectation without cosmic rays: the frame less the truth's charge.
    expected = median_filter(electrons - charge.astype(np.float32), size=5, mode="mirror")
    sigma = np.sqrt(np.maximum(expected, 0.0) + READ_NOISE**2)
    cr = (truth & MaskBit.COSMIC_RAY) > 0
    cr_significant = cr & (charge >= 5 * sigma) & ~saturated
    sky_sigma = math.sqrt(cond.sky_e + READ_NOISE**2)
    hot = (truth & MaskBit.HOT_PIXEL) > 0
    hot_significant = hot & (electrons - cond.sky_e >= 5 * sky_sigma) & ~saturated
    star_core = np.zeros(shape, dtype=bool)
    nea = 4 * math.pi * (cond.fwhm_px / 2.3548) ** 2
    radius = 2 * cond.fwhm_px
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    r = math.ceil(radius)
    for part in ccd.truth_parts:
        if part["type"] not in ("star", "variable", "transient"):
            continue
        snr = np.asarray(part["flux"]) / np.sqrt(nea * sky_sigma**2 + np.asarray(part["flux"]))
        for x, y in zip(np.asarray(part["x"])[snr >= 5], np.asarray(part["y"])[snr >= 5], strict=True):
            y0, y1 = max(0, int(y) - r), min(shape[0], int(y) + r + 2)
            x0, x1 = max(0, int(x) - r), min(shape[1], int(x) + r + 2)
            star_core[y0:y1, x0:x1] |= np.hypot(xx[y0:y1, x0:x1] - x, yy[y0:y1, x0:x1] - y) <= radius
    star_core_all = star_core & (truth == 0)
    star_core = star_core_all & ~binary_dilation(truth > 0, np.ones((3, 3), dtype=bool))
    return Frame(electrons, saturated, truth, cr_significant, hot_significant, star_core, star_core_all, cond.fwhm_px)


@dataclass
class Score:
    """Sums over frames of one method."""

    cr_hit: int = 0
    cr_total: int = 0
    hot_hit: int = 0
    hot_total: int = 0
    star_hit: int = 0
    star_total: int = 0
    star_all_hit: int = 0
    star_all_total: int = 0
    false_positive: int = 0
    pixels: int = 0
    seconds: float = 0.0

    def add(self, frame: Frame, mask: np.ndarray, seconds: float) -> None:
        """Score one frame's mask."""
        self.cr_hit += int((mask & frame.cr_significant).sum())
        self.cr_total += int(frame.cr_significant.sum())
        self.hot_hit += int((mask & frame.hot_significant).sum())
        self.hot_total += int(frame.hot_significant.sum())
        self.star_hit += int((mask & frame.star_core).sum())
        self.star_total += int(frame.star_core.sum())
        self.star_all_hit += int((mask & frame.star_core_all).sum())
        self.star_all_total += int(frame.star_core_all.sum())
        self.false_positive += int((mask & (frame.truth_mask == 0)).sum())
        self.pixels += mask.size
        self.seconds += seconds


def run_ours_numpy(frame: Frame) -> np.ndarray:
    """Our numpy/scipy L.A.Cosmic."""
    return detect_cosmics(frame.electrons, read_noise=READ_NOISE, mask=frame.saturated, sigclip=SIGCLIP, sigfrac=SIGFRAC,
                          objlim=OBJLIM, niter=NITER).mask


def run_ours_torch(frame: Frame) -> np.ndarray:
    """Our torch L.A.Cosmic on the CPU."""
    out = detect_cosmics_tensor(torch.from_numpy(frame.electrons), read_noise=READ_NOISE, mask=torch.from_numpy(frame.saturated),
                                sigclip=SIGCLIP, sigfrac=SIGFRAC, objlim=OBJLIM, niter=NITER)
    return out.mask.numpy()


def run_astroscrappy(frame: Frame) -> np.ndarray:
    """astroscrappy.detect_cosmics with the same parameters."""
    mask, _ = astroscrappy.detect_cosmics(frame.electrons, inmask=frame.saturated, sigclip=SIGCLIP, sigfrac=SIGFRAC,
                                          objlim=OBJLIM, niter=NITER, gain=1.0, readnoise=READ_NOISE,
                                          satlevel=float(SATURATE_ADU * GAIN))
    return mask & ~frame.saturated


def run_astroscrappy_defaults(frame: Frame) -> np.ndarray:
    """astroscrappy.detect_cosmics with its default sigclip 4.5, sigfrac 0.3, objlim 5."""
    mask, _ = astroscrappy.detect_cosmics(frame.electrons, inmask=frame.saturated, niter=NITER, gain=1.0,
                                          readnoise=READ_NOISE, satlevel=float(SATURATE_ADU * GAIN))
    return mask & ~frame.saturated


METHODS = {"ours, numpy/scipy": run_ours_numpy, "ours, torch (CPU)": run_ours_torch,
           "astroscrappy 1.3, same parameters": run_astroscrappy,
           "astroscrappy 1.3, its defaults": run_astroscrappy_defaults}


def main() -> None:
    """Render the frames, run every method on each, print the table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=4)
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--inject-rate", type=float, default=10.0, help="cosmic rays relative to the simulator's rate")
    parser.add_argument("--seed", type=int, default=20261125)
    parser.add_argument("--skip-torch", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    config = SimConfig(fields=1, exposures_per_field=args.frames, image_size=args.size, seed=args.seed)
    scores = {name: Score() for name in METHODS if not (args.skip_torch and "torch" in name)}
    equal = True
    fwhms = []
    for exposure in range(args.frames):
        frame = make_frame(config, exposure, inject_rate=args.inject_rate)
        fwhms.append(frame.fwhm_px)
        masks = {}
        for name in scores:
            start = time.perf_counter()
            masks[name] = METHODS[name](frame)
            scores[name].add(frame, masks[name], time.perf_counter() - start)
        if "ours, torch (CPU)" in masks:
            equal &= bool(np.array_equal(masks["ours, numpy/scipy"], masks["ours, torch (CPU)"]))
    table = Table(title=f"{args.frames} frames of {args.size}x{args.size}, FWHM {', '.join(f'{f:.2f}' for f in fwhms)} px, "
                        f"cosmic rays x{args.inject_rate:g}")
    for column in ("method", "CR recall (px >= 5 sigma)", "hot px recall", "star cores masked", "... incl. next to artifacts", "false-positive px / Mpix", "s / Mpix"):
        table.add_column(column, justify="left" if column == "method" else "right")
    for name, s in scores.items():
        table.add_row(name, f"{s.cr_hit / s.cr_total:.2%} ({s.cr_hit}/{s.cr_total})", f"{s.hot_hit}/{s.hot_total}",
                      f"{s.star_hit / s.star_total:.3%} ({s.star_hit}/{s.star_total})",
                      f"{s.star_all_hit / s.star_all_total:.3%}",
                      f"{s.false_positive / (s.pixels / 1e6):.1f}", f"{s.seconds / (s.pixels / 1e6):.3f}")
    Console(width=220).print(table)
    if "ours, torch (CPU)" in scores:
        Console().print(f"numpy and torch masks identical on every frame: {equal}")


if __name__ == "__main__":
    main()
