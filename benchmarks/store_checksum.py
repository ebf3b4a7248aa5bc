"""
The cost of the store's per-chunk crc32c: writing and reading tiles with and without it.

    python benchmarks/store_checksum.py [--size PX] [--tile PX] [--repeat N]

One simulated-sky CCD (uint16, noise and stars) is written into two fresh stores that differ only
in ``StoreLayout.checksum`` ("crc32c", the default, and "none"), for each compressor; then every
tile is read back through `NightStore.image` (as the workers read them). Each figure is the
median of ``--repeat`` passes, the two stores alternating, side by side in one process; times are
the process's CPU seconds (``time.process_time``, all threads), so that a shared machine's other
jobs do not count, with the wall seconds beside them. Prints a table; the figures go into
benchmarks/BENCHMARKS.md by hand with the machine, date and command.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from skyblink.storage import NightStore, StoreLayout


def sky(size: int, seed: int = 0) -> np.ndarray:
    """Return a uint16 CCD: Poisson-like noise around 1000 ADU and a few hundred stars."""
    rng = np.random.default_rng(seed)
    image = rng.normal(1000.0, 30.0, (size, size))
    ys, xs = rng.uniform(0, size, (2, 300))
    yy, xx = np.mgrid[-6:7, -6:7]
    psf = np.exp(-(yy**2 + xx**2) / 4.5)
    for y, x, flux in zip(ys.astype(int), xs.astype(int), rng.uniform(500, 30000, 300), strict=True):
        y0, x0 = max(0, y - 6), max(0, x - 6)
        cut = psf[y0 - (y - 6) : 13 - max(0, y + 7 - size), x0 - (x - 6) : 13 - max(0, x + 7 - size)]
        image[y0 : y0 + cut.shape[0], x0 : x0 + cut.shape[1]] += flux * cut
    return np.clip(image, 0, 65535).astype(np.uint16)


def write(root: Path, layout: StoreLayout, data: np.ndarray) -> tuple[NightStore, float]:
    """Write ``data`` as one CCD array in a fresh store (as ingest does); return the store and CPU seconds."""
    store = NightStore(str(root), mode="a", layout=layout)
    group = store.root.create_group("exposures/bench", overwrite=True)
    t0 = time.process_time()
    array: Any = group.create_group("ccd000").create_array(
        "image", shape=data.shape, dtype=data.dtype, chunks=(layout.tile_size,) * 2, shards=(layout.shard_size,) * 2,
        compressors=layout.compressors(data.dtype), fill_value=0)
    array[...] = data
    seconds = time.process_time() - t0
    group.attrs.update({"ccds": ["ccd000"], "complete": True})
    return store, seconds


def read_tiles(store: NightStore, size: int, tile: int) -> tuple[float, float]:
    """Read every tile through `NightStore.image`; return CPU and wall seconds."""
    image = store.image("exposures/bench", "ccd000")
    t0, w0 = time.process_time(), time.perf_counter()
    for y in range(0, size, tile):
        for x in range(0, size, tile):
            image[y : y + tile, x : x + tile]
    return time.process_time() - t0, time.perf_counter() - w0


def main() -> None:
    """Run the benchmark and print its table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=4096, help="CCD edge in pixels")
    parser.add_argument("--tile", type=int, default=1024, help="tile (chunk) edge in pixels")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    data = sky(args.size)
    mb = data.nbytes / 1e6
    table = Table(title=f"store checksum cost: one {args.size}x{args.size} uint16 CCD ({mb:.0f} MB), {args.tile}-px "
                        f"tiles, median of {args.repeat}")
    for column in ("compressor", "checksum", "write CPU s", "read CPU s", "read MB/CPU-s", "read CPU vs none",
                   "read wall s"):
        table.add_column(column, justify="right")
    with tempfile.TemporaryDirectory() as tmp:
        for compressor in ("blosc-zstd", "zstd", "none"):
            figures: dict[str, dict[str, list[float]]] = {c: {"write": [], "read": [], "wall": []}
                                                           for c in ("none", "crc32c")}
            for _ in range(args.repeat):
                for checksum in ("none", "crc32c"):
                    layout = StoreLayout(tile_size=args.tile, compressor=compressor, checksum=checksum)  # type: ignore[arg-type]
                    store, seconds = write(Path(tmp) / f"{compressor}-{checksum}.zarr", layout, data)
                    cpu, wall = read_tiles(store, args.size, args.tile)
                    figures[checksum]["write"].append(seconds)
                    figures[checksum]["read"].append(cpu)
                    figures[checksum]["wall"].append(wall)
            med = {c: {k: statistics.median(v) for k, v in f.items()} for c, f in figures.items()}
            for checksum in ("none", "crc32c"):
                m = med[checksum]
                table.add_row(compressor, checksum, f"{m['write']:.2f}", f"{m['read']:.3f}", f"{mb / m['read']:.0f}",
                              f"{m['read'] / med['none']['read']:.2f}x", f"{m['wall']:.3f}")
    Console().print(table)


if __name__ == "__main__":
    main()
