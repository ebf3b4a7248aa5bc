"""
The science figures of the default simulated night, ours next to the SEP baseline.

    python benchmarks/science_vs_sep.py [--workdir DIR] [--keep]

Simulates the default night (`skyblink sim night` defaults: 2 fields x 5 exposures of 2048x2048),
runs `skyblink night run` on it (local Ray, a private redis-server in the work directory) and
`skyblink night score` (SEP on the same difference images, scored by the same code), printing the
score tables; score.json and the PNG plots land in <workdir>/score. Each step is the CLI, so the
figures are what a user gets.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SKYBLINK = [sys.executable, "-m", "skyblink.cli"]


def _run(args: list[str], env: dict[str, str]) -> float:
    print("$", " ".join(["skyblink", *args[len(SKYBLINK):]]), flush=True)
    start = time.perf_counter()
    subprocess.run(args, check=True, env=env)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=None, help="Keep everything here (default: a temporary directory).")
    args = parser.parse_args()
    root = args.workdir or Path(tempfile.mkdtemp(prefix="skyblink-science-"))
    root.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "SKYBLINK_NIGHT__REDIS_DIR": str(root / "redis"), "SKYBLINK_ALERTS__SPOOL_DIR": str(root / "spool")}
    try:
        t_sim = _run([*SKYBLINK, "sim", "night", str(root / "night")], env)
        t_run = _run([*SKYBLINK, "night", "run", str(root / "night"), "--store", str(root / "store.zarr")], env)
        t_score = _run([*SKYBLINK, "night", "score", str(root / "night"), "--store", str(root / "store.zarr"),
                        "--out", str(root / "score")], env)
        print(f"wall: sim {t_sim:.1f} s, night run {t_run:.1f} s, score (with SEP) {t_score:.1f} s; outputs in {root}")
    finally:
        if args.workdir is None:
            shutil.rmtree(root / "store.zarr", ignore_errors=True)


if __name__ == "__main__":
    main()
