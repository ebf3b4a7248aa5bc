"""
Single-image source detection (`skyblink.workers.source_detection.detect_sources`) on the real
images of ``shared/data``, next to SExtractor's catalog and to SEP on the same pixels.

    python benchmarks/real_images_detection.py [--repeat 5] [--snr 5] [--append]

Images (read in place, never copied): sep's ESO NTT R image 256x256 with the SExtractor catalog
made from it (``sep/image.cat``, 65 sources), M13 300x300 (astropy), the Spitzer GLIMPSE 4.5 um
mosaic 513x1025 (photutils-datasets; its 3 NaN pixels masked for everyone) and the Hubble
eXtreme Deep Field JPEG 1000x872 (scikit-image; the RGB turned to 8-bit luma by Pillow, lossy).

Detectors, all with SEP's mesh background (64 px meshes, 3x3 median filter):

* ``ours``: `detect_sources` at ``--snr`` (5): FWHM measured from the image, matched-filter S/N
  of a Gaussian point source with the map's measured noise (``noise="measured"``), local maxima
  deblended when they rise ``--snr`` above the saddle, windowed centroids.
* ``sep-sex``: SExtractor's recipe that made ``image.cat``: ``sep.extract(image - back, 1.5,
  err=globalrms, filter_type="conv")`` with the default 3x3 kernel, ``minarea=5`` and
  ``deblend_cont=1.0`` (no deblending, as the catalog; on the NTT image it reproduces all 65
  catalog positions to 1e-3 px): a pixel is detected at 1.5 sigma of the per-pixel noise in the
  3x3-filtered image (4 sigma of the filtered noise), in islands of at least 5 pixels.
* ``sep-mf``: SEP on our threshold semantics: ``filter_type="matched"`` with the same Gaussian
  kernel (our FWHM, truncated at 4 sigma), ``err = rms x`` our measured noise factor, threshold
  ``--snr``, ``minarea=1``, SEP's default deblending (32 levels, contrast 0.005), no cleaning
  (``clean=False``: in matched mode SEP's cleaning drops 29 of the 69 NTT detections at S/N 5,
  most of them catalog sources, and leaves 41-42 whatever the threshold from 2 to 5).
  Its S/N per pixel is then the very S/N ours thresholds; it differs in what makes one source
  (islands and multi-threshold deblending against local maxima and saddle depth).

Matching: detections and references are paired one-to-one, closest pairs first, within
``--radius`` pixels (1.5 and 3); recall = matched references / references, precision =
matched detections / detections. Reference: the SExtractor catalog (NTT only; its 1-based
``X_IMAGE``/``Y_IMAGE`` minus 1), and ``sep-sex`` / ``sep-mf`` on every image.

Time: best of ``--repeat`` wall times, ms per megapixel: ours end to end (FWHM estimate
included) and with the FWHM given; SEP's background plus extraction. ``--append`` appends the
section to benchmarks/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import sep
from scipy.spatial import cKDTree

from skyblink.workers.difference import FWHM_PER_SIGMA
from skyblink.workers.source_detection import detect_sources

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
NTT = SHARED_DATA / "sep" / "image.fits"
NTT_CATALOG = SHARED_DATA / "sep" / "image.cat"
M13 = SHARED_DATA / "astropy" / "m13.fits"
SPITZER = SHARED_DATA / "photutils-datasets" / "spitzer_example_image.fits"
HDF = SHARED_DATA / "scikit-image" / "hubble_deep_field.jpg"
RADII = (1.5, 3.0)


@dataclass(frozen=True, slots=True)
class RealImage:
    """A real image and, where one exists, its reference catalog (0-based x, y)."""

    name: str
    pixels: np.ndarray
    mask: np.ndarray
    catalog: np.ndarray | None = None


def _fits(path: Path) -> np.ndarray:
    from astropy.io import fits

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the NTT header's ESO-LOG cards
        return np.ascontiguousarray(fits.getdata(path), dtype=np.float32)


def load_images() -> list[RealImage]:
    """The real images found under shared/data, with their masks of non-finite pixels."""
    images: list[RealImage] = []
    if NTT.exists() and NTT_CATALOG.exists():
        catalog = np.loadtxt(NTT_CATALOG, usecols=(1, 2)) - 1.0
        pixels = _fits(NTT)
        images.append(RealImage("NTT 256x256 (sep)", pixels, ~np.isfinite(pixels), catalog))
    for name, path in (("M13 300x300", M13), ("Spitzer 513x1025", SPITZER)):
        if path.exists():
            pixels = _fits(path)
            images.append(RealImage(name, pixels, ~np.isfinite(pixels)))
    if HDF.exists():
        try:
            from PIL import Image  # only for the JPEG
        except ImportError:
            print("Pillow is not installed: skipping the Hubble Deep Field JPEG", file=sys.stderr)
        else:
            with Image.open(HDF) as jpeg:
                pixels = np.ascontiguousarray(np.asarray(jpeg.convert("L")), dtype=np.float32)
            name = f"HDF JPEG {pixels.shape[1]}x{pixels.shape[0]}"
            images.append(RealImage(name, pixels, np.zeros(pixels.shape, dtype=bool)))
    return images


def match(det: np.ndarray, ref: np.ndarray, radius: float) -> int:
    """Number of one-to-one pairs within ``radius``, closest pairs first."""
    if len(det) == 0 or len(ref) == 0:
        return 0
    pairs = cKDTree(det).sparse_distance_matrix(cKDTree(ref), radius, output_type="ndarray")
    order = np.argsort(pairs["v"], kind="stable")
    used_det: set[int] = set()
    used_ref: set[int] = set()
    for i, j in zip(pairs["i"][order], pairs["j"][order], strict=True):
        if i not in used_det and j not in used_ref:
            used_det.add(int(i))
            used_ref.add(int(j))
    return len(used_det)


def gaussian_kernel(fwhm_px: float) -> np.ndarray:
    """The discrete Gaussian of our matched filter (truncated at 4 sigma), unit sum."""
    sigma = fwhm_px / FWHM_PER_SIGMA
    radius = int(4.0 * sigma + 0.5)
    k = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    kernel = np.outer(k, k)
    return (kernel / kernel.sum()).astype(np.float32)


def run_sep_sex(pixels: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """SExtractor's default recipe (the one that made image.cat), no deblending."""
    data = np.where(mask, np.float32(0.0), pixels)
    bkg = sep.Background(data, mask=mask, bw=64, bh=64, fw=3, fh=3)
    objects = sep.extract(data - bkg.back(), 1.5, err=bkg.globalrms, mask=mask, minarea=5, filter_type="conv",
                          deblend_cont=1.0)
    return np.column_stack([objects["x"], objects["y"]])


def run_sep_mf(pixels: np.ndarray, mask: np.ndarray, fwhm_px: float, noise_factor: float, snr: float) -> np.ndarray:
    """SEP thresholding the same matched-filter S/N as ours."""
    data = np.where(mask, np.float32(0.0), pixels)
    bkg = sep.Background(data, mask=mask, bw=64, bh=64, fw=3, fh=3)
    err = (bkg.rms() * noise_factor).astype(np.float32)
    objects = sep.extract(data - bkg.back(), snr, err=err, mask=mask, minarea=1, filter_kernel=gaussian_kernel(fwhm_px),
                          filter_type="matched", clean=False)
    return np.column_stack([objects["x"], objects["y"]])


def best_ms_per_mpix(fn: Callable[[], object], repeat: int, n_pixels: int) -> float:
    """Best wall time of ``repeat`` calls, in ms per megapixel."""
    best = np.inf
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return 1e3 * best / (n_pixels / 1e6)


def recall_precision(det: np.ndarray, ref: np.ndarray, radius: float) -> str:
    """``recall / precision`` of ``det`` against ``ref`` as a table cell."""
    n = match(det, ref, radius)
    recall = n / len(ref) if len(ref) else float("nan")
    precision = n / len(det) if len(det) else float("nan")
    return f"{recall:.3f} / {precision:.3f}"


def main() -> None:
    """Run every detector on every real image, print the tables, append them when asked."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5, help="timing repeats (best of)")
    parser.add_argument("--snr", type=float, default=5.0, help="S/N threshold of ours and sep-mf")
    parser.add_argument("--append", action="store_true", help="append the section to benchmarks/BENCHMARKS.md")
    args = parser.parse_args()
    sep.set_sub_object_limit(4096)

    images = load_images()
    if not images:
        sys.exit(f"no real images under {SHARED_DATA}")
    radii = " | ".join(f"R / P @ {r} px" for r in RADII)
    quality = [f"| image | reference | n ref | detector | n det | {radii} |", "|---|---|---:|---|---:|" + "---:|" * len(RADII)]
    timing = ["| image | Mpix | FWHM (px) | noise factor | ours ms/Mpix | ours, FWHM given | sep-sex ms/Mpix "
              "| sep-mf ms/Mpix |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for image in images:
        sep.set_extract_pixstack(max(300_000, image.pixels.size))  # SEP's default or one image: allocated per call
        table = detect_sources(image.pixels, mask=image.mask, snr_threshold=args.snr)
        fwhm, factor = table.meta["fwhm_px"], table.meta["noise_factor"]
        ours = np.column_stack([table["x"], table["y"]])
        sex = run_sep_sex(image.pixels, image.mask)
        mf = run_sep_mf(image.pixels, image.mask, fwhm, factor, args.snr)
        refs = [("sep-sex", sex), ("sep-mf", mf)]
        if image.catalog is not None:
            refs.insert(0, ("SExtractor catalog", image.catalog))
        for ref_name, ref in refs:
            for det_name, det in (("ours", ours), ("sep-sex", sex), ("sep-mf", mf)):
                if det_name == ref_name:
                    continue
                cells = " | ".join(recall_precision(det, ref, r) for r in RADII)
                quality.append(f"| {image.name} | {ref_name} | {len(ref)} | {det_name} | {len(det)} | {cells} |")
        n_pixels = image.pixels.size
        t_ours = best_ms_per_mpix(lambda im=image: detect_sources(im.pixels, mask=im.mask, snr_threshold=args.snr),
                                  args.repeat, n_pixels)
        t_given = best_ms_per_mpix(
            lambda im=image, f=fwhm: detect_sources(im.pixels, mask=im.mask, snr_threshold=args.snr, fwhm_px=f),
            args.repeat, n_pixels)
        t_sex = best_ms_per_mpix(lambda im=image: run_sep_sex(im.pixels, im.mask), args.repeat, n_pixels)
        t_mf = best_ms_per_mpix(lambda im=image, f=fwhm, n=factor: run_sep_mf(im.pixels, im.mask, f, n, args.snr),
                                args.repeat, n_pixels)
        timing.append(f"| {image.name} | {n_pixels / 1e6:.3f} | {fwhm:.2f} | {factor:.2f} | {t_ours:.1f} "
                      f"| {t_given:.1f} | {t_sex:.1f} | {t_mf:.1f} |")

    stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    load = os.getloadavg()
    command = " ".join([".venv/bin/python", "benchmarks/real_images_detection.py", *sys.argv[1:]])
    header = (f"Command: `{command}`, python-svc, 2-core, no GPU, {stamp} (sep {sep.__version__}, load average "
              f"{load[0]:.1f} {load[1]:.1f} {load[2]:.1f}); ours and sep-mf at S/N {args.snr:g}.")
    text = "\n".join([header, "", *quality, "", *timing, ""])
    print(text)
    if args.append:
        with (ROOT / "benchmarks" / "BENCHMARKS.md").open("a", encoding="utf-8") as out:
            out.write("\n### Single-image source detection on real images (real survey data, part 3)\n\n" + text)


if __name__ == "__main__":
    main()
