"""
skyblink's image subtraction next to SFFT's (Hu et al. 2022) on real DECam images, and the time per
pair of both, in one run.

    python benchmarks/subtraction_vs_sfft.py [--no-singles | --speed-only] [--big 4096] [--sfft-big] [--gpu]

Data: ``../shared/data/sfft-decam`` (SFFT's test images, read in place). Quality, on the stacks
(OBS04 science, OBS18 reference) against SFFT's own ``4check/FinalDifference.fits``, then per
single exposure (OBS04a..e against the OBS18 stack) against SFFT run here (numpy backend,
`Customized_Packet`, the reference convolved, kernel half-width 7 px, kernel and background
polynomials of degree 2, constant photometric ratio, no masks):

- robust sigma (MAD) of difference / expected noise: skyblink's NOISE map; for SFFT
  sqrt(sigma_sci^2 + sigma_ref^2 * sum(k^2)) with each image's SEP background rms and SFFT's
  matching kernel k at the image centre;
- residual RMS, in those sigma units, in apertures of radius 1.5 science FWHM on the 20 brightest
  stars of the science (SEP, away from the edges and the transient; found in the reference too:
  OBS04e alone holds a few compact sources of ~250 ADU that no other exposure has);
- S/N of the central transient in each difference: the PSF-weighted (Gaussian of the science
  FWHM) sum over the expected noise, best within 3 px of SFFT's peak;
- what skyblink does at the stars: candidates within 1.5 FWHM of a star, and how many reach
  real/bogus >= night.alert_min_real_bogus (would be alerted).

Time per pair: skyblink's whole per-tile program (`subtract_pair`, ONNX Runtime, this CPU) and
SFFT's subtraction alone (`Customized_Packet.CP`, numpy backend), each image pair timed in the same
run; then a simulated pair of ``--big`` pixels on a side (Gaussian stars, Poisson noise; SFFT on it
only with ``--sfft-big``: minutes and GiBs on a CPU). Prints tables; results go to
benchmarks/BENCHMARKS.md by hand.

With ``--gpu`` (a CUDA device, ``pip install cupy-cuda12x``): the simulated pair also goes through
the workers' device program (`skyblink.workers.device_program`: 16-bit pixels in, calibration,
cosmic rays, warp, background, PSF matching, difference, detector, peaks, stamps, classifier on
the device, torch runners), for both PSF matchings, and SFFT runs its cupy backend; the quality
pairs run SFFT on cupy too.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import sep
from astropy.io import fits
from astropy.stats import mad_std
from astropy.utils.exceptions import AstropyWarning
from astropy.wcs import WCS
from rich.console import Console
from rich.table import Table

from skyblink.config import load_config
from skyblink.engines.backends import select_runner
from skyblink.psf_units import FWHM_PER_SIGMA
from skyblink.workers.matched_filter import matched_filter_snr
from skyblink.workers.program_config import TileProgram, window_edge
from skyblink.workers.subtract_pair import PairImage, read_pair_image, subtract_pair

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "sfft-decam"
SFFT_OPTIONS = {"ForceConv": "REF", "GKerHW": 7, "KerPolyOrder": 2, "BGPolyOrder": 2, "ConstPhotRatio": True}


@dataclass
class Quality:
    robust: float
    star_rms_median: float
    star_rms_mean: float
    transient_snr: float


def sky_rms(image: np.ndarray) -> float:
    """SEP's global background rms of an image."""
    data = np.ascontiguousarray(np.nan_to_num(image, nan=float(np.nanmedian(image))), dtype=np.float32)
    return float(sep.Background(data, bw=64, bh=64, fw=3, fh=3).globalrms)


def _sep_sources(image: np.ndarray) -> np.ndarray:
    data = np.ascontiguousarray(image, dtype=np.float32)
    bkg = sep.Background(data, bw=64, bh=64, fw=3, fh=3)
    return sep.extract(data - bkg.back(), 5.0, err=bkg.globalrms, minarea=9)


def bright_stars(science: np.ndarray, reference: np.ndarray, fwhm: float, transient: tuple[float, float],
                 n: int = 20) -> np.ndarray:
    """
    (n, 2) x, y of the brightest sources of the science that the reference has too (within 0.5 FWHM:
    a star is in both epochs; a source of one exposure only, a cosmic ray or a glint, is not), away
    from the edges and the transient.
    """
    objects, in_reference = _sep_sources(science), _sep_sources(reference)
    edge = 2.0 * fwhm
    ny, nx = science.shape
    both = np.array([np.min(np.hypot(in_reference["x"] - x, in_reference["y"] - y), initial=np.inf) <= 0.5 * fwhm
                     for x, y in zip(objects["x"], objects["y"], strict=True)], dtype=bool)
    keep = (both & (objects["x"] > edge) & (objects["x"] < nx - 1 - edge) & (objects["y"] > edge) & (objects["y"] < ny - 1 - edge)
            & (np.hypot(objects["x"] - transient[0], objects["y"] - transient[1]) > 3.0 * fwhm))
    objects = objects[keep]
    order = np.argsort(objects["flux"])[::-1][:n]
    return np.column_stack([objects["x"][order], objects["y"][order]])


def aperture_rms(z: np.ndarray, stars: np.ndarray, radius: float) -> np.ndarray:
    """RMS of ``z`` in a circle of ``radius`` around each star (NaN ignored)."""
    yy, xx = np.mgrid[: z.shape[0], : z.shape[1]]
    out = []
    for x, y in stars:
        inside = (np.hypot(xx - x, yy - y) <= radius) & np.isfinite(z)
        out.append(float(np.sqrt(np.mean(z[inside] ** 2))))
    return np.array(out)


def psf_snr(diff: np.ndarray, sigma: np.ndarray | float, x: float, y: float, fwhm: float, search: int = 3) -> float:
    """Best PSF-weighted S/N (Gaussian PSF of ``fwhm``) at integer pixels within ``search`` of (x, y)."""
    s = fwhm / FWHM_PER_SIGMA
    r = int(np.ceil(3 * s))
    d = np.arange(-r, r + 1)
    psf = np.exp(-0.5 * (d[:, None] ** 2 + d[None, :] ** 2) / s**2)
    psf /= psf.sum()
    var = np.broadcast_to(np.asarray(sigma, dtype=float) ** 2, diff.shape)
    best = -np.inf
    for cy in range(int(round(y)) - search, int(round(y)) + search + 1):
        for cx in range(int(round(x)) - search, int(round(x)) + search + 1):
            cut = diff[cy - r: cy + r + 1, cx - r: cx + r + 1]
            v = var[cy - r: cy + r + 1, cx - r: cx + r + 1]
            ok = np.isfinite(cut) & np.isfinite(v)
            best = max(best, float(np.sum((cut * psf)[ok]) / np.sqrt(np.sum((v * psf**2)[ok]))))
    return best


def quality(diff: np.ndarray, sigma: np.ndarray | float, stars: np.ndarray, fwhm: float,
            transient: tuple[float, float]) -> Quality:
    z = diff / sigma
    rms = aperture_rms(z, stars, 1.5 * fwhm)
    return Quality(float(mad_std(z, ignore_nan=True)), float(np.median(rms)), float(np.mean(rms)),
                   psf_snr(diff, sigma, *transient, fwhm))


def run_sfft(science: Path, reference: Path, tmp: Path, backend: str = "Numpy") -> tuple[np.ndarray, np.ndarray, float]:
    """SFFT's difference (science orientation), its matching kernel at the centre, and its wall time."""
    from sfft.CustomizedPacket import Customized_Packet
    from sfft.utils.SFFTSolutionReader import Realize_MatchingKernel

    out, solution = tmp / "sfft_diff.fits", tmp / "sfft_solution.fits"
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        Customized_Packet.CP(FITS_REF=str(reference), FITS_SCI=str(science), FITS_mREF=str(reference), FITS_mSCI=str(science),
                             FITS_DIFF=str(out), FITS_Solution=str(solution), BACKEND_4SUBTRACT=backend,
                             NUM_CPU_THREADS_4SUBTRACT=os.cpu_count() or 1, VERBOSE_LEVEL=0, **SFFT_OPTIONS)
    seconds = time.perf_counter() - start
    ny, nx = fits.getdata(science).shape
    kernel = Realize_MatchingKernel(np.array([[nx / 2 + 0.5, ny / 2 + 0.5]])).FromFITS(str(solution))[0]
    return fits.getdata(out).astype(float), kernel, seconds


def star_calls(records: list, stars: np.ndarray, fwhm: float, rb_min: float) -> tuple[int, int, float]:
    """Candidates within 1.5 FWHM of a star; those at real/bogus >= rb_min; the largest real/bogus there."""
    near = [r for r in records if np.min(np.hypot(stars[:, 0] - r.x, stars[:, 1] - r.y)) <= 1.5 * fwhm]
    return len(near), sum(r.real_bogus >= rb_min for r in near), max((r.real_bogus for r in near), default=float("nan"))


def simulated_pair(size: int, seed: int = 4) -> tuple[PairImage, PairImage]:
    """A science (FWHM 4 px) and reference (FWHM 3 px) of the same Gaussian stars, sky 1000 ADU, Poisson noise."""
    rng = np.random.default_rng(seed)
    n = size * size // 4000
    x, y = rng.uniform(0, size, n), rng.uniform(0, size, n)
    flux = 10 ** rng.uniform(2.5, 5.5, n)

    def render(fwhm: float) -> np.ndarray:
        s = fwhm / FWHM_PER_SIGMA
        image = np.full((size, size), 1000.0)
        r = int(4 * s) + 1
        d = np.arange(-r, r + 1)
        for xi, yi, fi in zip(x, y, flux, strict=True):
            ix, iy = int(xi), int(yi)
            gx = np.exp(-0.5 * ((ix + d - xi) / s) ** 2)
            gy = np.exp(-0.5 * ((iy + d - yi) / s) ** 2)
            y0, y1, x0, x1 = max(0, iy - r), min(size, iy + r + 1), max(0, ix - r), min(size, ix + r + 1)
            stamp = fi * np.outer(gy, gx) / (2 * np.pi * s * s)
            image[y0:y1, x0:x1] += stamp[y0 - (iy - r): y1 - (iy - r), x0 - (ix - r): x1 - (ix - r)]
        return rng.poisson(image).astype(np.float32) - 1000.0

    header = fits.Header({"CTYPE1": "RA---TAN", "CTYPE2": "DEC--TAN", "CRPIX1": size / 2, "CRPIX2": size / 2,
                          "CRVAL1": 150.0, "CRVAL2": 2.0, "CDELT1": -0.26 / 3600, "CDELT2": 0.26 / 3600,
                          "GAIN": 1.0, "SATURATE": 1e9})
    wcs_text = WCS(header).to_header_string(relax=True)
    sci = PairImage(render(4.0), fits.Header({**header, "FWHM": 4.0}), wcs_text, Path("sim-science.fits"))
    ref = PairImage(render(3.0), fits.Header({**header, "FWHM": 3.0}), wcs_text, Path("sim-reference.fits"))
    return sci, ref


def device_program_seconds(sci: PairImage, ref: PairImage, *, device: str, psf_match: str, core: int = 1024,
                           margin: int = 32, batch: int = 4, repeats: int = 2) -> tuple[float, int]:
    """
    Seconds per pair of the workers' device program on ``device`` (best of ``repeats``), and its
    candidates: the science as 16-bit ADU (sky 1000), cut into tiles of ``core`` + margins, the
    reference resident, ``batch`` tiles per call, each call's tiles copied from pinned host memory
    (as the workers' pipeline holds them) within the time.
    """
    import torch

    from skyblink.engines.backends import torch_runner
    from skyblink.workers.device_program import make_device_program
    from skyblink.workers.tile_unit import read_window

    raw = np.clip(np.rint(np.asarray(sci.data) + 1000.0), 0, 65535).astype(np.uint16)
    size = raw.shape[0]
    edge = window_edge(core, margin)
    origins = [(y0 - margin, x0 - margin) for y0 in range(0, size, core) for x0 in range(0, size, core)]
    windows = [np.nan_to_num(read_window(raw, oy, ox, edge, edge), nan=1000.0).astype(np.uint16) for oy, ox in origins]
    # The networks as the GPU actors run them without TensorRT (`torch_runner`): the configured precision, NHWC,
    # the detector compiled with the device program (fp32, eager on the CPU).
    configured = TileProgram().precision
    precision = configured if device.startswith("cuda") and configured in ("fp32", "fp16") else "fp32"
    runners = [torch_runner(m, device=device, precision=precision, compiled=TileProgram().compile_device_program)
               for m in ("detector", "classifier")]
    reference = torch.from_numpy(np.asarray(ref.data, dtype=np.float32) + 1000.0).to(device)
    yy, xx = torch.meshgrid(torch.arange(edge, device=device), torch.arange(edge, device=device), indexing="ij")
    # The batches as the workers hold them: pinned host buffers on a GPU (`skyblink.workers.pipeline`),
    # filled before the clock starts; each call's copy to the device is timed.
    batches = [torch.from_numpy(np.stack(windows[i:i + batch]).view(np.int16)) for i in range(0, len(windows), batch)]
    if device.startswith("cuda"):
        batches = [b.pin_memory() for b in batches]
    best, found = float("inf"), 0
    with runners[0], runners[1]:
        for _ in range(repeats):
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            start = time.perf_counter()
            found = 0
            for i in range(0, len(windows), batch):
                chunk = origins[i:i + batch]
                grid = torch.stack([torch.stack([xx + ox, yy + oy]) for oy, ox in chunk]).float()
                program = make_device_program(runners[0], runners[1], reference, grid, TileProgram(psf_match=psf_match),
                                              science_fwhm_px=4.0, reference_fwhm_px=3.0, gain=1.0, read_noise=5.0)
                science = batches[i // batch].to(device, non_blocking=True)
                out = program(science, i)
                found += int(out["valid"].sum())
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            best = min(best, time.perf_counter() - start)
    return best, found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--no-singles", action="store_true", help="Only the stacks.")
    parser.add_argument("--speed-only", action="store_true",
                        help="Only the --big pair's device program against SFFT: no DECam pairs, no CPU program on the big pair.")
    parser.add_argument("--big", type=int, default=4096, help="Edge of the simulated pair timed (0: none).")
    parser.add_argument("--sfft-big", action="store_true", help="Also time SFFT on the simulated pair.")
    parser.add_argument("--gpu", action="store_true", help="Device program on CUDA; SFFT on cupy.")
    parser.add_argument("--data", type=Path, default=DATA, help="The sfft-decam folder (default: ../shared/data/sfft-decam).")
    args = parser.parse_args()
    data = args.data
    warnings.simplefilter("ignore", AstropyWarning)
    console = Console()
    config = load_config(environ={})
    rb_min = config.night.alert_min_real_bogus
    backend = "auto" if args.gpu else "onnxruntime"  # the GPU: TensorRT or torch, as the workers choose
    det = select_runner("detector", backend=backend).runner
    cls = select_runner("classifier", backend=backend).runner
    quality_table = Table(title=f"Subtraction quality on DECam (sigma units; alert at real/bogus >= {rb_min})")
    for column in ("pair", "method", "robust sigma", "star RMS median", "star RMS mean", "transient S/N",
                   "transient candidate S/N (rb)", "cands at stars", "would alert", "max rb at stars"):
        quality_table.add_column(column, justify="right")
    time_table = Table(title=f"Time per pair (s), {'GPU' if args.gpu else 'this CPU'}")
    for column in ("pair", "pixels", "skyblink whole program", "SFFT subtraction", "SFFT / skyblink"):
        time_table.add_column(column, justify="right")
    reference_stack = data / "4check" / "Stack-DEC-OBS18.fits"
    pairs = [] if args.speed_only else [("stacks", data / "4check" / "Stack-DEC-OBS04.fits")]
    if not (args.no_singles or args.speed_only):
        pairs += [(f"OBS04{c}", data / "input_data" / f"DEC-OBS04{c}.mini.fits") for c in "abcde"]
    ratios: dict[str, list[float]] = {"star": [], "snr": [], "candidate": []}
    with det, cls, tempfile.TemporaryDirectory(prefix="skyblink-sfft-") as tmp:
        reference = read_pair_image(reference_stack) if pairs else None
        if pairs:
            subtract_pair(read_pair_image(pairs[0][1]), reference, det, cls)  # warm-up (sessions, numba in SFFT below)
        for name, path in pairs:
            science = read_pair_image(path)
            start = time.perf_counter()
            ours = subtract_pair(science, reference, det, cls)
            t_ours = time.perf_counter() - start
            sfft_diff, kernel, t_sfft = run_sfft(path, reference_stack, Path(tmp), "Cupy" if args.gpu else "Numpy")
            if name == "stacks":  # the published answer, on the same pixels
                sfft_diff = fits.getdata(data / "4check" / "FinalDifference.fits").astype(float)
                kernel = fits.getdata(data / "input_data" / "FinalMatchKernel.fits").astype(float)
            fwhm = ours.fwhm_px[0]
            sci_px = np.asarray(science.data, dtype=float)
            sigma_sfft = float(np.hypot(sky_rms(sci_px), sky_rms(reference.data) * np.sqrt(np.sum(kernel**2))))
            peak = np.unravel_index(np.nanargmax(sfft_diff[118:139, 118:139]), (21, 21))
            transient = (118.0 + peak[1], 118.0 + peak[0])
            stars = bright_stars(sci_px, np.asarray(reference.data, dtype=float), fwhm, transient)
            q_ours = quality(ours.difference, ours.noise, stars, fwhm, transient)
            q_sfft = quality(sfft_diff, sigma_sfft, stars, fwhm, transient)
            n_near, n_alert, rb_max = star_calls(ours.candidates, stars, fwhm, rb_min)
            ratios["star"].append(q_ours.star_rms_median / q_sfft.star_rms_median)
            ratios["snr"].append(q_ours.transient_snr / q_sfft.transient_snr)
            label = "SFFT FinalDifference" if name == "stacks" else "SFFT (run here)"
            transient_cands = [r for r in ours.candidates if np.hypot(r.x - transient[0], r.y - transient[1]) <= 3]
            found = max(transient_cands, key=lambda r: r.snr, default=None)
            # The candidates' S/N (the matched filter over its map's robust rms) applied to SFFT's difference.
            sfft_mf = matched_filter_snr(np.nan_to_num(sfft_diff / mad_std(sfft_diff, ignore_nan=True)), max(ours.fwhm_px),
                                         renormalize=True)
            sfft_mf_best = float(sfft_mf[int(transient[1]) - 3: int(transient[1]) + 4, int(transient[0]) - 3: int(transient[0]) + 4].max())
            ratios["candidate"].append(found.snr / sfft_mf_best if found else float("nan"))
            quality_table.add_row(name, "skyblink", f"{q_ours.robust:.2f}", f"{q_ours.star_rms_median:.2f}", f"{q_ours.star_rms_mean:.2f}",
                                  f"{q_ours.transient_snr:.1f}", f"{found.snr:.1f} ({found.real_bogus:.2f})" if found else "not found",
                                  str(n_near), str(n_alert), f"{rb_max:.2f}")
            quality_table.add_row("", label, f"{q_sfft.robust:.2f}", f"{q_sfft.star_rms_median:.2f}", f"{q_sfft.star_rms_mean:.2f}",
                                  f"{q_sfft.transient_snr:.1f}", f"{sfft_mf_best:.1f} (same filter)", "", "", "")
            time_table.add_row(name, "256x256", f"{t_ours:.2f}", f"{t_sfft:.2f}", f"{t_sfft / t_ours:.1f}x")
            console.print(f"{name}: transient at ({transient[0]:.0f}, {transient[1]:.0f}); skyblink candidates there: "
                          f"{[(round(r.snr, 1), round(r.real_bogus, 2)) for r in transient_cands]}; "
                          f"all candidates: {len(ours.candidates)}; FWHM {ours.fwhm_px[0]:.2f}/{ours.fwhm_px[1]:.2f} px", markup=False)
        if pairs:
            console.print(quality_table)
            console.print(f"skyblink/SFFT star-aperture RMS (median over pairs): {np.median(ratios['star']):.2f}; "
                          f"transient S/N ratio: {np.median(ratios['snr']):.2f}; transient candidate's S/N / SFFT's (same filter): "
                          f"{np.nanmedian(ratios['candidate']):.2f}", markup=False)
        if args.big:
            sci, ref = simulated_pair(args.big)
            big, t_ours = None, float("nan")
            if not args.speed_only:
                start = time.perf_counter()
                big = subtract_pair(sci, ref, det, cls)
                t_ours = time.perf_counter() - start
            t_sfft = float("nan")
            if args.sfft_big:
                hdr = fits.Header.fromstring(sci.wcs_header)
                paths = [Path(tmp) / "big_sci.fits", Path(tmp) / "big_ref.fits"]
                for p, image in zip(paths, (sci, ref), strict=True):
                    fits.PrimaryHDU(image.data.astype(np.float64), header=hdr).writeto(p, overwrite=True)
                # Twice: the first call also compiles SFFT's kernels (cupy); the table takes the faster.
                calls = [run_sfft(paths[0], paths[1], Path(tmp), "Cupy" if args.gpu else "Numpy")[2] for _ in range(2)]
                t_sfft = min(calls)
                console.print(f"SFFT on the {args.big}x{args.big} pair: {calls[0]:.2f} s, then {calls[1]:.2f} s", markup=False)
            if big is not None:
                time_table.add_row("simulated", f"{args.big}x{args.big}", f"{t_ours:.1f} ({len(big.candidates)} cands)",
                                   f"{t_sfft:.1f}" if np.isfinite(t_sfft) else "not run (--sfft-big)",
                                   f"{t_sfft / t_ours:.1f}x" if np.isfinite(t_sfft) else "-")
            device = "cuda" if args.gpu else "cpu"
            for mode in ("gaussian", "kernel"):
                t_dev, n_dev = device_program_seconds(sci, ref, device=device, psf_match=mode)
                time_table.add_row("simulated", f"{args.big}x{args.big}", f"{t_dev:.2f} (device program on {device}, {mode} match, "
                                   f"{n_dev} cands)", f"{t_sfft:.2f}" if np.isfinite(t_sfft) else "-",
                                   f"{t_sfft / t_dev:.1f}x" if np.isfinite(t_sfft) else "-")
        console.print(time_table)


if __name__ == "__main__":
    main()
