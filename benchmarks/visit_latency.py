"""
Latency of one visit from its FITS file landing in the night directory to its alerts in Redis,
the observatory case: `skyblink night run --watch` with its worker actors already warm.

    python benchmarks/visit_latency.py [--ccds 16] [--size 4096] [--rubin-visit] [--work DIR]

The visit (one exposure of ``--ccds`` CCDs, or ``--rubin-visit``: 189 CCDs of 4096x4096) and its
field's reference are simulated; the reference is put in the night directory, the watch is
started and, once it says its actors are ready, the visit's file is renamed into
``exposures/`` (as an observatory writes, then renames). The run stops after
``night.watch_idle_s`` without a new file; its JSON report gives the latency and the stages.
Prints a line and writes ``visit_latency.json`` to $OUT when set.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ccds", type=int, default=16)
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--rubin-visit", action="store_true", help="189 CCDs of 4096x4096 (overrides --ccds/--size)")
    parser.add_argument("--tiles-per-task", type=int, default=16)
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--idle-s", type=float, default=20.0)
    parser.add_argument("--work", type=Path, default=Path("/tmp/visit-latency"))
    args = parser.parse_args()
    shutil.rmtree(args.work, ignore_errors=True)
    sim, live = args.work / "sim", args.work / "live"
    env = {
        **os.environ,
        "SKYBLINK_STORE": str(args.work / "store.zarr"),
        "SKYBLINK_NIGHT__TILES_PER_TASK": str(args.tiles_per_task),
        "SKYBLINK_NIGHT__REDIS_DIR": str(args.work / "redis"),
        "SKYBLINK_NIGHT__WATCH_POLL_S": "0.5",
        "SKYBLINK_NIGHT__WATCH_IDLE_S": str(args.idle_s),
        "SKYBLINK_ALERTS__SPOOL_DIR": str(args.work / "spool"),
        "SKYBLINK_ENGINES__BACKEND": args.backend,
    }
    shape = ["--rubin-visit"] if args.rubin_visit else ["--fields", "1", "--exposures", "1", "--ccds", str(args.ccds),
                                                         "--size", str(args.size)]
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "skyblink.cli", "sim", "night", str(sim), *shape], env=env, check=True,  # noqa: S603
                   capture_output=True)
    t_sim = time.perf_counter() - t0
    (live / "exposures").mkdir(parents=True)
    shutil.copytree(sim / "references", live / "references")
    visit = next((sim / "exposures").glob("*.fits"))
    staged = live / "exposures" / f".{visit.name}.part"  # same file system: the rename is atomic
    shutil.copyfile(visit, staged)
    report_path = args.work / "report.json"
    run = subprocess.Popen([sys.executable, "-m", "skyblink.cli", "night", "run", str(live), "--watch",  # noqa: S603
                            "--report", str(report_path)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    ready = threading.Event()
    lines: list[str] = []

    def read() -> None:
        for line in run.stdout:  # type: ignore[union-attr]
            lines.append(line)
            if "worker actor(s) ready" in line:
                ready.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    if not ready.wait(timeout=600):
        run.kill()
        raise SystemExit("the worker actors did not get ready:\n" + "".join(lines[-40:]))
    time.sleep(2.0)  # a poll of the night directory with only the reference in it
    os.utime(staged)  # as if written just now: the run dates a file's appearance by its mtime
    staged.rename(live / "exposures" / visit.name)
    run.wait(timeout=3600)
    reader.join(timeout=10)
    if run.returncode not in (0, 3):
        raise SystemExit(f"night run exited {run.returncode}:\n" + "".join(lines[-40:]))
    report = json.loads(report_path.read_text())
    latency = report["latency_s"].get(visit.stem.split(".")[0])
    stages = ", ".join(f"{k} {v:.1f} s" for k, v in report["stage_seconds"].items())
    ccds, size = (189, 4096) if args.rubin_visit else (args.ccds, args.size)
    print(f"\nvisit of {ccds} CCDs of {size}^2 (sim {t_sim:.0f} s): latency from the file landing to its alerts in "
          f"Redis {latency:.1f} s; {report['tiles_processed']} tiles, {sum(report['alerts'].values())} alerts, "
          f"workers {report['workers']}; stages over the whole watch: {stages}")
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "visit_latency.json").write_text(json.dumps({"ccds": ccds, "size": size, "latency_s": latency,
                                                                              "report": report}, indent=1))


if __name__ == "__main__":
    main()
