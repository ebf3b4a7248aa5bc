"""Time the sky simulator (`skyblink.sim.simulate_night`) on a few night sizes.

Usage::

    .venv/bin/python benchmarks/sim_night.py                 # small, default, large
    .venv/bin/python benchmarks/sim_night.py --nights default --workers 2
    .venv/bin/python benchmarks/sim_night.py --nights rubin  # one Rubin visit (~13 GB, minutes)

Prints one row per night: configuration, files written, megapixels (exposures and references),
wall seconds, megapixels per second, CPU seconds of this process and its workers (independent of
other load on the machine) and the 1-minute load average before the run. Output goes to a
temporary directory that is removed afterwards unless ``--keep DIR`` is given.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import shutil
import sys
import tempfile
from pathlib import Path

from skyblink.config import SimConfig
from skyblink.sim import rubin_visit_config, simulate_night

NIGHTS: dict[str, tuple[str, SimConfig]] = {
    "small": (
        "1 field x 3 exp, 1x1024^2, uint16",
        SimConfig(fields=1, exposures_per_field=3, image_size=1024),
    ),
    "default": ("2 fields x 5 exp, 1x2048^2, uint16 (default)", SimConfig()),
    "float32": ("2 fields x 5 exp, 1x2048^2, float32", SimConfig(pixel_dtype="float32")),
    "large": (
        "1 field x 2 exp, 4x4096^2, uint16",
        SimConfig(fields=1, exposures_per_field=2, ccds=4, image_size=4096),
    ),
    "raft": (
        "Rubin raft: 1 exp, 9x4096^2 at 0.2\"/px, uint16",
        rubin_visit_config().model_copy(update={"ccds": 9}),
    ),
    "rubin": ("Rubin visit: 1 exp, 189x4096^2, uint16", rubin_visit_config()),
}


def _cpu_seconds() -> float:
    """User + system CPU seconds of this process and its reaped children (the pool workers)."""
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        total += usage.ru_utime + usage.ru_stime
    return total


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; returns the process exit status."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--nights", nargs="+", choices=sorted(NIGHTS), default=["small", "default", "large"]
    )
    parser.add_argument("--workers", type=int, default=None, help="processes (default: CPU count)")
    parser.add_argument(
        "--keep", type=Path, default=None, help="keep the nights under this directory"
    )
    args = parser.parse_args(argv)

    print(f"# python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} CPUs")
    header = (
        f"| {'night':<46} | {'files':>5} | {'Mpix':>8} | {'wall s':>7} | {'Mpix/s':>6} "
        f"| {'CPU s':>6} | {'load':>4} |"
    )
    print(header)
    print("|" + "|".join("-" * (len(c)) for c in header.split("|")[1:-1]) + "|")
    for name in args.nights:
        label, config = NIGHTS[name]
        root = (
            Path(tempfile.mkdtemp(prefix=f"sim-{name}-")) if args.keep is None else args.keep / name
        )
        load = os.getloadavg()[0]
        cpu_before = _cpu_seconds()
        try:
            summary = simulate_night(root, config, max_workers=args.workers)
            cpu = _cpu_seconds() - cpu_before
            files = sum(1 for p in root.rglob("*") if p.is_file())
            print(
                f"| {label:<46} | {files:>5} | {summary.megapixels:>8.1f} | "
                f"{summary.wall_s:>7.2f} | {summary.megapixels / summary.wall_s:>6.1f} "
                f"| {cpu:>6.1f} | {load:>4.1f} |",
                flush=True,
            )
        finally:
            if args.keep is None:
                shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
