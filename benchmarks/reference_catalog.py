"""
A field's reference catalog (`skyblink.reduce.association.detect_static_sources`, what each
reference CCD's Ray task runs) next to SEP's own extraction on the same dense reference image.

    python benchmarks/reference_catalog.py [--size 4096] [--field 0] [--repeat 3] [--old]

The image is the reference CCD of field ``--field`` of the simulator's default night with CCDs of
``--size`` pixels (a reference is larger by its margin: 4224x4224 for 4096; field 0 of the
default seed is the densest of its first eight fields). Timed, best of ``--repeat``, interleaved:

* new: `detect_static_sources` (SEP's background, matched-filter S/N, 5x5 local maxima,
  windowed centroids and concentrations vectorised over the sources);
* SEP: ``sep.Background`` + ``subfrom`` + ``sep.extract`` at 1.5 global rms (SEP's documented
  use, default 3x3 filter), and that plus ``sep.winpos`` on its objects;
* old (``--old``, once: minutes on a 4k image): the code as of 96c26a4, numpy background
  (`skyblink.workers.estimate_background`) and a Python loop over the sources, kept here as the
  baseline.

With ``--old`` it also prints how the two catalogs agree: the fraction of sources matched within
0.5 px both ways, the position differences, the S/N and concentration differences and the
extended (galaxy) flags that changed. Prints a table; JSON to $OUT when set. CPU only.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import sep
from rich.console import Console
from rich.table import Table
from scipy import ndimage
from scipy.spatial import cKDTree

from skyblink.config import SimConfig
from skyblink.psf_units import FWHM_PER_SIGMA
from skyblink.reduce.association import EXTENDED_MAX_CONCENTRATION, detect_static_sources
from skyblink.reduce.measurement import windowed_centroid
from skyblink.sim.ccd_image import render_ccd
from skyblink.sim.conditions import reference_conditions
from skyblink.workers.background import estimate_background
from skyblink.workers.matched_filter import matched_filter_snr


def old_detect_static_sources(image: np.ndarray, fwhm_px: float, snr_threshold: float = 5.0) -> tuple[np.ndarray, ...]:
    """`detect_static_sources` as of 96c26a4 (the baseline): numpy background, a loop over the sources."""
    data = np.asarray(image, dtype=np.float32)
    finite = np.isfinite(data)
    bkg = estimate_background(data, mask=~finite)
    sub = np.where(finite, (data - bkg.level) / np.maximum(bkg.rms, 1e-12), 0.0).astype(np.float32)
    snr = matched_filter_snr(sub, fwhm_px)
    peaks = (snr >= snr_threshold) & (snr == ndimage.maximum_filter(snr, size=5, mode="constant", cval=0.0))
    ys, xs = np.nonzero(peaks)
    sigma = fwhm_px / FWHM_PER_SIGMA
    out_x, out_y, concentration = np.empty(len(xs)), np.empty(len(ys)), np.empty(len(xs), np.float32)
    ny, nx = sub.shape
    half = int(math.ceil(3.0 * sigma)) + 1
    for k, (x, y) in enumerate(zip(xs, ys, strict=True)):
        out_x[k], out_y[k], _ = windowed_centroid(sub, float(x), float(y), sigma, max_shift=1.5)
        y0, y1, x0, x1 = max(y - half, 0), min(y + half + 1, ny), max(x - half, 0), min(x + half + 1, nx)
        gy, gx = np.mgrid[y0:y1, x0:x1]
        r = np.hypot(gx - out_x[k], gy - out_y[k])
        window = sub[y0:y1, x0:x1]
        outer = float(window[r <= 3.0 * sigma].sum())
        concentration[k] = float(window[r <= sigma].sum()) / outer if outer > 0 else np.nan
    return out_x, out_y, snr[ys, xs].astype(np.float32), concentration


def sep_extract(image: np.ndarray) -> np.ndarray:
    """SEP's documented extraction: background, subtracted in place, objects at 1.5 global rms."""
    data = np.array(image, dtype=np.float32, order="C")
    bkg = sep.Background(data)
    bkg.subfrom(data)
    return sep.extract(data, 1.5, err=bkg.globalrms)


def sep_extract_winpos(image: np.ndarray, fwhm_px: float) -> np.ndarray:
    """`sep_extract` and SEP's windowed positions of its objects."""
    data = np.array(image, dtype=np.float32, order="C")
    bkg = sep.Background(data)
    bkg.subfrom(data)
    objects = sep.extract(data, 1.5, err=bkg.globalrms)
    x, _, _ = sep.winpos(data, objects["x"], objects["y"], np.full(len(objects), fwhm_px / FWHM_PER_SIGMA))
    return x


def agreement(old: tuple[np.ndarray, ...], new: tuple[np.ndarray, ...]) -> dict[str, Any]:
    """How two catalogs (x, y, snr, concentration) agree: sources matched within 0.5 px both ways and their differences."""
    out: dict[str, Any] = {"old_sources": len(old[0]), "new_sources": len(new[0])}
    if not len(old[0]) or not len(new[0]):
        return out
    d_old, i_old = cKDTree(np.column_stack(new[:2])).query(np.column_stack(old[:2]))
    d_new, _ = cKDTree(np.column_stack(old[:2])).query(np.column_stack(new[:2]))
    m = d_old <= 0.5
    ext_old = np.nan_to_num(old[3][m], nan=1.0) < EXTENDED_MAX_CONCENTRATION
    ext_new = np.nan_to_num(new[3][i_old[m]], nan=1.0) < EXTENDED_MAX_CONCENTRATION
    both = np.isfinite(old[3][m]) & np.isfinite(new[3][i_old[m]])
    out.update({
        "old_matched": float(m.mean()), "new_matched": float((d_new <= 0.5).mean()),
        "position_diff_px_median": float(np.median(d_old[m])), "position_diff_px_p99": float(np.percentile(d_old[m], 99)),
        "position_diff_px_max": float(d_old[m].max()),
        "snr_rel_diff_max": float(np.max(np.abs(new[2][i_old[m]] / old[2][m] - 1.0))),
        "concentration_diff_max": float(np.max(np.abs(new[3][i_old[m]][both] - old[3][m][both]), initial=0.0)),
        "extended_old": int(ext_old.sum()), "extended_new": int(ext_new.sum()), "extended_changed": int((ext_old != ext_new).sum()),
    })
    return out


def best(repeat: int, fns: dict[str, Callable[[], Any]]) -> tuple[dict[str, float], dict[str, Any]]:
    """Run each of ``fns`` ``repeat`` times, interleaved; return each one's best seconds and last result."""
    seconds = {name: math.inf for name in fns}
    results: dict[str, Any] = {}
    for _ in range(repeat):
        for name, fn in fns.items():
            start = time.perf_counter()
            results[name] = fn()
            seconds[name] = min(seconds[name], time.perf_counter() - start)
    return seconds, results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=4096, help="CCD edge of the simulated night (the reference adds its margin)")
    parser.add_argument("--field", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--old", action="store_true", help="also time the 96c26a4 code once (minutes on a 4k image)")
    args = parser.parse_args()
    config = SimConfig(fields=args.field + 1, exposures_per_field=1, image_size=args.size)
    image = np.ascontiguousarray(render_ccd(config, args.field, 0, exposure=None).pixels.astype(np.float32))
    fwhm = reference_conditions(config, args.field).fwhm_arcsec / config.pixel_scale_arcsec
    seconds, results = best(args.repeat, {
        "new": lambda: detect_static_sources(image, fwhm),
        "sep": lambda: sep_extract(image),
        "sep_winpos": lambda: sep_extract_winpos(image, fwhm),
    })
    counts = {"new": len(results["new"][0]), "sep": len(results["sep"]), "sep_winpos": len(results["sep_winpos"])}
    compared: dict[str, Any] = {}
    if args.old:
        start = time.perf_counter()
        old = old_detect_static_sources(image, fwhm)
        seconds["old"] = time.perf_counter() - start
        counts["old"] = len(old[0])
        compared = agreement(old, results["new"])

    table = Table(title=f"reference catalog of a {image.shape[1]}x{image.shape[0]} simulated reference "
                        f"(field {args.field}, FWHM {fwhm:.2f} px), best of {args.repeat}")
    for column in ("code", "sources", "seconds", "ms / source", "x SEP extract"):
        table.add_column(column, justify="right" if column != "code" else "left")
    labels = {"old": "old (96c26a4, once)", "new": "detect_static_sources", "sep": "SEP Background + extract",
              "sep_winpos": "SEP + winpos"}
    for name in ("old", "new", "sep", "sep_winpos"):
        if name in seconds:
            table.add_row(labels[name], str(counts[name]), f"{seconds[name]:.3f}",
                          f"{1e3 * seconds[name] / max(counts[name], 1):.3f}", f"{seconds[name] / seconds['sep']:.2f}")
    console = Console()
    console.print(table)
    if compared:
        console.print("old vs new: " + ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in compared.items()))
    if os.environ.get("OUT"):
        record = {"shape": list(image.shape), "fwhm_px": fwhm, "seconds": seconds, "sources": counts, "old_vs_new": compared}
        (Path(os.environ["OUT"]) / "reference_catalog.json").write_text(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
