"""
Ingest throughput next to a plain astropy read of the same files.

    python benchmarks/ingest_throughput.py [NIGHT_DIR] [--repeat N] [--num-cpus N]

Without NIGHT_DIR, the default simulated night is written to a temporary folder first. Three
figures per run, side by side in one process:

* ``astropy read``: open each file with astropy and read every image HDU into memory (serial);
* ``ingest (1 task)``: `skyblink.cluster.ingest_night` on a local Ray with one CPU;
* ``ingest (N tasks)``: the same with N CPUs (default: all cores).

Ray's start-up is excluded from the ingest rows (it is paid once per night, not per file) and
printed on its own. Each ingest goes into a fresh store. Prints a table; the figures go into
benchmarks/BENCHMARKS.md by hand with the machine, date and command.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import ray
from astropy.io import fits
from rich.console import Console
from rich.table import Table

from skyblink.cluster import discover_night, ingest_night
from skyblink.config import SimConfig, load_config


def astropy_read(night: Path) -> tuple[int, int]:
    """Read every image HDU of every file with astropy; return (file bytes, pixels)."""
    nbytes = pixels = 0
    for rel, _, _ in discover_night(night):
        path = night / rel
        nbytes += path.stat().st_size
        with fits.open(path, memmap=False) as hdul:
            for hdu in hdul:
                if hdu.is_image and hdu.header.get("NAXIS", 0) == 2:
                    data = np.asarray(hdu.data)
                    pixels += data.size
    return nbytes, pixels


def timed_ingest(night: Path, workdir: Path, tag: str) -> tuple[float, int, int]:
    store = workdir / f"store-{tag}-{time.monotonic_ns()}.zarr"
    config = load_config(overrides={"store": str(store)}, environ={})
    start = time.perf_counter()
    report = ingest_night(night, config)
    wall = time.perf_counter() - start
    if not report.ok or not report.ingested:
        msg = f"ingest of {night} was not clean: {len(report.quarantined)} quarantined, {len(report.failed)} failed"
        raise RuntimeError(msg)
    return wall, report.file_bytes, report.pixels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("night", nargs="?", type=Path, help="night directory (default: simulate the default night)")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each method; the median is shown")
    parser.add_argument("--num-cpus", type=int, default=os.cpu_count(), help="CPUs of the parallel ingest")
    args = parser.parse_args()
    console = Console()

    with tempfile.TemporaryDirectory(prefix="skyblink-bench-") as tmp:
        workdir = Path(tmp)
        night = args.night
        if night is None:
            from skyblink.sim import simulate_night

            night = workdir / "night"
            console.print("simulating the default night ...")
            simulate_night(night, SimConfig())

        rows = []
        walls = []
        for _ in range(args.repeat):
            start = time.perf_counter()
            nbytes, pixels = astropy_read(night)
            walls.append(time.perf_counter() - start)
        rows.append(("astropy read (serial, in memory)", statistics.median(walls), nbytes, pixels))

        for cpus in sorted({1, args.num_cpus}):
            start = time.perf_counter()
            ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
            startup = time.perf_counter() - start
            try:
                timed_ingest(night, workdir, "warmup")  # imports and zarr codecs warm in the workers
                results = [timed_ingest(night, workdir, str(i)) for i in range(args.repeat)]
            finally:
                ray.shutdown()
            wall = statistics.median(r[0] for r in results)
            rows.append((f"skyblink ingest, local Ray of {cpus} CPU(s)", wall, results[0][1], results[0][2]))
            console.print(f"Ray start-up with {cpus} CPU(s): {startup:.1f} s (not in the table)")

        base = rows[0][1]
        table = Table(title=f"ingest throughput: {night} (median of {args.repeat})")
        for column in ("method", "files MB", "Mpix", "wall s", "MB/s", "Mpix/s", "time / astropy read"):
            table.add_column(column, justify="right")
        for name, wall, nbytes, pixels in rows:
            table.add_row(name, f"{nbytes / 1e6:.1f}", f"{pixels / 1e6:.1f}", f"{wall:.2f}",
                          f"{nbytes / 1e6 / wall:.1f}", f"{pixels / 1e6 / wall:.1f}", f"{wall / base:.2f}x")
        console.print(table)


if __name__ == "__main__":
    main()
