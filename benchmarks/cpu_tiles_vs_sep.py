"""
The per-tile program on this machine's CPU (numpy + ONNX Runtime) next to SEP detection on the
same tiles.

    python benchmarks/cpu_tiles_vs_sep.py [--tiles 16]

Both start from the tiles of the default simulated night's store (1024x1024 cores, 32 px
margin). skyblink: read, warp the reference, triplet, detector, peaks, stamps, classifier
(`skyblink.workers.process_tile`). SEP: read the same science window, background (64 px
meshes, 3x3 filter), subtract, and extract at 1.5 sigma (SExtractor's classic detection on the
science image; it does no reference subtraction or classification). Single process; ONNX
Runtime uses its default threads. Prints a table.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import sep
from rich.console import Console
from rich.table import Table

from skyblink.cluster import ingest_night
from skyblink.cluster.planning import plan_tiles
from skyblink.config import SimConfig, load_config
from skyblink.engines.backends import OnnxRuntimeRunner
from skyblink.engines.catalog import onnx_path
from skyblink.sim import simulate_night
from skyblink.storage import NightStore
from skyblink.workers.tile_unit import process_tile, read_window


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiles", type=int, default=16)
    args = parser.parse_args()
    console = Console()
    with tempfile.TemporaryDirectory(prefix="skyblink-cpu-") as tmp:
        root = Path(tmp)
        simulate_night(root / "night", SimConfig())
        config = load_config(overrides={"store": str(root / "store.zarr")}, environ={})
        ingest_night(root / "night", config)
        store = NightStore(str(root / "store.zarr"))
        units = [u for key in store.exposure_keys() for u in plan_tiles(store, key, size=1024)][: args.tiles]
        with OnnxRuntimeRunner(onnx_path("detector")) as det, OnnxRuntimeRunner(onnx_path("classifier")) as cls:
            process_tile(units[0], store, det, cls)  # warm-up
            start = time.perf_counter()
            n_ours = sum(len(process_tile(u, store, det, cls)) for u in units)
            t_ours = time.perf_counter() - start
        start = time.perf_counter()
        n_sep = 0
        for u in units:
            window = read_window(store.image(u.exposure, u.ccd), u.y0 - u.margin, u.x0 - u.margin, u.size + 2 * u.margin, u.size + 2 * u.margin)
            data = np.ascontiguousarray(np.nan_to_num(window, nan=float(np.nanmedian(window))), dtype=np.float32)
            bkg = sep.Background(data, bw=64, bh=64, fw=3, fh=3)
            n_sep += len(sep.extract(data - bkg.back(), 1.5, err=bkg.globalrms))
        t_sep = time.perf_counter() - start
    table = Table(title=f"{len(units)} tiles of 1024x1024 (+32 px margin), default simulated night, single process")
    for column in ("method", "wall s", "tiles/s", "Mpix/s", "sources or candidates"):
        table.add_column(column, justify="right")
    mpix = len(units) * 1088 * 1088 / 1e6
    table.add_row("skyblink tile program (numpy + ONNX Runtime)", f"{t_ours:.2f}", f"{len(units) / t_ours:.2f}", f"{mpix / t_ours:.2f}", str(n_ours))
    table.add_row("SEP background + extract (science only)", f"{t_sep:.2f}", f"{len(units) / t_sep:.2f}", f"{mpix / t_sep:.2f}", str(n_sep))
    console.print(table)
    console.print(f"time ratio skyblink / SEP: {t_ours / t_sep:.1f}x")


if __name__ == "__main__":
    main()
