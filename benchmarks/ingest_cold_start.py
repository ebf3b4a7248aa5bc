"""
The ingest of a small night on a fresh local Ray: cold task workers next to warmed ones.

    python benchmarks/ingest_cold_start.py [NIGHT_DIR] [--repeat N] [--num-cpus N]

Without NIGHT_DIR a small simulated night (1 field x 3 exposures of 512x512) is written to a
temporary folder first. Each measurement runs in a fresh process (as ``skyblink night run`` does)
that starts a local Ray with ``--num-cpus`` CPUs and times `skyblink.cluster.ingest_night` into a
fresh store:

* ``cold``: the ingest tasks land on Ray's fresh worker processes, which import skyblink first;
* ``warm``: one task per CPU imported the ingest into the workers before (the floor: the ingest
  itself).

Also printed: what an ingest task's worker imports (``import skyblink.cluster.ingest`` in a fresh
process: seconds, and whether torch came with it). Cold and warm are interleaved. Prints a
table; the figures go into benchmarks/BENCHMARKS.md by hand with the machine, date and command.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

_IMPORTS = """
import sys, time
t = time.perf_counter()
import skyblink.cluster.ingest
print(time.perf_counter() - t, "torch" in sys.modules)
"""


def _child(mode: str, night: str, store: str, num_cpus: int) -> None:
    """Start Ray, warm the workers when asked, time the ingest; print one JSON line."""
    import ray

    from skyblink.cluster import ingest as ingest_module
    from skyblink.cluster.ray_runtime import ray_session
    from skyblink.config import load_config

    config = load_config(overrides={"store": store, "ingest.tile_size": 256, "ray.num_cpus": num_cpus}, environ={})
    t0 = time.perf_counter()
    with ray_session(config.ray):
        out = {"ray_init_s": time.perf_counter() - t0, "warm_s": 0.0}
        if mode == "warm":
            t0 = time.perf_counter()
            # A function of the ingest module: unpickling it imports what an ingest task imports.
            task = ray.remote(num_cpus=1)(ingest_module.discover_night)
            for ref in [task.remote(Path(night)) for _ in range(num_cpus)]:
                ray.get(ref)
            out["warm_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        report = ingest_module.ingest_night(night, config)
        out["ingest_s"] = time.perf_counter() - t0
        out["files"] = len(report.ingested)
    print(json.dumps(out))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("night", nargs="?", type=Path)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--num-cpus", type=int, default=2)
    parser.add_argument("--child", nargs=3, metavar=("MODE", "NIGHT", "STORE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(*args.child, args.num_cpus)
        return
    with tempfile.TemporaryDirectory() as tmp:
        night = args.night
        if night is None:
            from skyblink.config import SimConfig
            from skyblink.sim import simulate_night

            night = Path(tmp) / "night"
            simulate_night(night, SimConfig(fields=1, exposures_per_field=3, image_size=512, seed=11), max_workers=1)
        imports = subprocess.run([sys.executable, "-c", _IMPORTS], capture_output=True, text=True, check=True)
        import_s, torch = imports.stdout.split()
        runs: dict[str, list[dict[str, float]]] = {"cold": [], "warm": []}
        for i in range(args.repeat):
            for mode in runs:
                store = str(Path(tmp) / f"store-{mode}-{i}.zarr")
                child = subprocess.run([sys.executable, __file__, "--child", mode, str(night), store, "--num-cpus",
                                        str(args.num_cpus)], capture_output=True, text=True, check=True)
                runs[mode].append(json.loads(child.stdout.strip().splitlines()[-1]))
    table = Table(title=f"ingest on a fresh local Ray ({args.num_cpus} CPUs, {runs['cold'][0]['files']} files, "
                        f"median of {args.repeat})")
    for column in ("workers", "ray.init s", "warm-up s", "ingest s"):
        table.add_column(column, justify="right")
    for mode, values in runs.items():
        table.add_row(mode, *(f"{statistics.median(v[key] for v in values):.2f}"
                              for key in ("ray_init_s", "warm_s", "ingest_s")))
    console = Console()
    console.print(table)
    console.print(f"an ingest task's imports in a fresh process: {float(import_s):.2f} s, torch imported: {torch}")
    console.print("ingest s, each run: " + "; ".join(f"{mode} " + ", ".join(f"{v['ingest_s']:.2f}" for v in values)
                                                     for mode, values in runs.items()))


if __name__ == "__main__":
    main()
