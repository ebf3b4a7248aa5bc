"""
Start-up cost of the driver side: wall time of fresh Python processes that run ``skyblink --help``
or import a driver module, for this checkout and a baseline checkout, interleaved in one run.

Usage::

    python benchmarks/import_time.py --baseline /path/to/baseline-tree [--runs 15]

``--baseline`` is a folder holding a ``skyblink`` package laid out as installed (the top-level
folders linked under ``skyblink/``, as ``scripts/typecheck.py`` builds ``build/typecheck``); it is
put first on ``PYTHONPATH`` for the baseline's runs. This checkout runs through its editable
install. Every process runs from a temporary folder so that the repository root does not shadow
the package. Prints a table of the median and the minimum of each, and which modules each
imports among torch, onnxruntime, ray and astropy.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

#: (label, Python code) of what is timed; ``skyblink --help`` as its console script runs it.
CASES = (
    ("skyblink --help", "import sys; sys.argv = ['skyblink', '--help']; from skyblink.cli import main; main()"),
    ("import skyblink.cluster.night", "import skyblink.cluster.night"),
    ("import skyblink.cluster", "import skyblink.cluster"),
    ("import skyblink.workers.tile_unit", "import skyblink.workers.tile_unit"),
)
_PROBE = "; import sys; print(' '.join(m for m in ('torch', 'onnxruntime', 'ray', 'astropy') if m in sys.modules), file=sys.stderr)"


def _env(pythonpath: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    return env


def _once(code: str, env: dict[str, str], cwd: str) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], env=env, cwd=cwd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def _loaded(code: str, env: dict[str, str], cwd: str) -> str:
    done = subprocess.run([sys.executable, "-c", code + _PROBE], env=env, cwd=cwd, check=True,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    return done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "-"


def main() -> None:
    """Time each case for both checkouts, interleaved, and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", required=True, help="folder holding the baseline's skyblink package")
    parser.add_argument("--runs", type=int, default=15, help="fresh processes per case and checkout")
    args = parser.parse_args()
    sides = {"baseline": _env(args.baseline), "this checkout": _env(None)}
    with tempfile.TemporaryDirectory() as cwd:
        rows = []
        for label, code in CASES:
            for env in sides.values():
                _once(code, env, cwd)  # warm the file cache
            times: dict[str, list[float]] = {side: [] for side in sides}
            for _ in range(args.runs):
                for side, env in sides.items():
                    times[side].append(_once(code, env, cwd))
            for side, env in sides.items():
                rows.append((label, side, statistics.median(times[side]), min(times[side]), _loaded(code, env, cwd)))
    print(f"| what | checkout | median s | min s | heavy packages loaded |  ({args.runs} runs each, interleaved)")
    print("| --- | --- | ---: | ---: | --- |")
    for label, side, median, best, loaded in rows:
        print(f"| `{label}` | {side} | {median:.3f} | {best:.3f} | {loaded or '-'} |")


if __name__ == "__main__":
    main()
