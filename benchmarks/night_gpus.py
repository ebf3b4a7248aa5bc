"""
`skyblink night run` on one node with 1, 2, ... GPUs (one worker actor per GPU) on the same
simulated night, and the latency of one large visit from FITS to alerts in Redis.

    python benchmarks/night_gpus.py [--gpus 1 2] [--fields 4] [--exposures 6] [--ccds 1] [--size 4096]
                                    [--units-per-call 8] [--device-batch 8] [--prepare-calls N]
                                    [--reference-cache-gib auto 0] [--visit-ccds 16] [--work DIR] [--reuse-night]

The night is simulated and ingested once; each GPU count then reprocesses every tile (the unit
results and catalogs are removed between runs, the store is kept), so the runs differ only in
the number of actors. Throughput is tiles (and Mpix of tile cores) per second of the dispatch
stage, from each run's JSON report. The visit run is a fresh night of one exposure with
``--visit-ccds`` CCDs of ``--size`` pixels, timed end to end (ingest, tiles, reduce, publish) by the
command's own report. Prints a table; JSON to $OUT when set. ``--reuse-night`` takes the night and
its store from an earlier run in the same ``--work`` (to compare code or settings on one night in
separate calls). ``--reference-cache-gib`` runs each GPU count once per value of
``night.gpu_reference_cache_gib`` (``auto``: the actor's default; ``0``: only the reference in use
stays on the device, so every CCD of a revisited field reads its reference again), side by side.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path


def skyblink(*args: str, env: dict[str, str]) -> float:
    """Run a skyblink command, fail loudly on a non-zero exit; return its wall time."""
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "skyblink.cli", *args], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"skyblink {' '.join(args)} exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return time.perf_counter() - t0


#: Columns of the table -> keys of the actors' ``seconds`` in the report.
_ACTOR_SECONDS = {"host": "prepare", "launch": "launch", "slot_wait": "slot_wait", "finish": "finish", "wait": "device_wait",
                  "gpu": "gpu"}


def actor_seconds(report: dict, key: str) -> float:
    """One of the actors' ``seconds`` (`skyblink.workers.TileWorker.check_health`), summed over the actors."""
    return sum(a.get("seconds", {}).get(key, 0.0) for a in report["workers"].get("actors", []))


def reference_hits(report: dict) -> str:
    """The actors' reference CCDs found on the device / sent to it (`skyblink.workers.reference_cache`)."""
    held = [a.get("references", {}) for a in report["workers"].get("actors", [])]
    return f"{sum(r.get('hits', 0) for r in held)}/{sum(r.get('misses', 0) for r in held)}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gpus", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--fields", type=int, default=4)
    parser.add_argument("--exposures", type=int, default=6)
    parser.add_argument("--ccds", type=int, default=1, help="CCDs of each exposure")
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--tile-size", type=int, default=1024)
    parser.add_argument("--units-per-call", type=int, default=8, help="night.units_per_call (was --tiles-per-task)")
    parser.add_argument("--device-batch", type=int, default=8, help="night.device_batch (was --tiles-per-task)")
    parser.add_argument("--prepare-calls", type=int, help="night.gpu_prepare_calls of the actors (default: the configuration's)")
    parser.add_argument("--reference-cache-gib", nargs="+", default=["auto"],
                        help="night.gpu_reference_cache_gib values to run each GPU count with (auto: the default)")
    parser.add_argument("--visit-ccds", type=int, default=16)
    parser.add_argument("--backend", default="torch", help="engines.backend of the worker actors")
    parser.add_argument("--work", type=Path, default=Path("/tmp/night-gpus"))
    parser.add_argument("--reuse-night", action="store_true", help="keep WORK's night and store from an earlier run")
    args = parser.parse_args()
    night, store = args.work / "night", args.work / "store.zarr"
    reuse = args.reuse_night and store.exists()
    if not reuse:
        shutil.rmtree(args.work, ignore_errors=True)
        args.work.mkdir(parents=True)
    env = {
        **os.environ,
        "SKYBLINK_INGEST__TILE_SIZE": str(args.tile_size),
        "SKYBLINK_NIGHT__UNITS_PER_CALL": str(args.units_per_call),
        "SKYBLINK_NIGHT__DEVICE_BATCH": str(args.device_batch),
        "SKYBLINK_NIGHT__REDIS_DIR": str(args.work / "redis"),
        "SKYBLINK_ALERTS__SPOOL_DIR": str(args.work / "spool"),
        "SKYBLINK_ENGINES__BACKEND": args.backend,
        # Throughput at the actors' pace: compiled whatever the night's size (auto leaves small nights eager).
        "SKYBLINK_NIGHT__COMPILE_DEVICE_PROGRAM": "true",
    }
    if args.prepare_calls is not None:
        env["SKYBLINK_NIGHT__GPU_PREPARE_CALLS"] = str(args.prepare_calls)
    t_sim = t_ingest = 0.0
    if not reuse:
        t_sim = skyblink("sim", "night", str(night), "--fields", str(args.fields), "--exposures", str(args.exposures),
                         "--ccds", str(args.ccds), "--size", str(args.size), env=env)
        t_ingest = skyblink("ingest", str(night), "--store", str(store), env=env)
    rows = []
    for gpus, cache in ((g, c) for g in args.gpus for c in args.reference_cache_gib):
        run_env = {**env, **({} if cache == "auto" else {"SKYBLINK_NIGHT__GPU_REFERENCE_CACHE_GIB": cache})}
        shutil.rmtree(store / "results", ignore_errors=True)
        shutil.rmtree(store / "catalogs", ignore_errors=True)
        shutil.rmtree(args.work / "redis", ignore_errors=True)
        report_path = args.work / f"report-{gpus}-{cache}.json"
        wall = skyblink("night", "run", str(night), "--store", str(store), "--workers", str(gpus),
                        "--report", str(report_path), env=run_env)
        report = json.loads(report_path.read_text())
        dispatch = report["stage_seconds"]["dispatch"]
        rows.append({"gpus": gpus, "reference_cache_gib": cache, "tiles": report["tiles_processed"], "dispatch_s": dispatch,
                     "tiles_per_s": report["tiles_processed"] / dispatch, "mpix_per_s": report["megapixels"] / dispatch,
                     "candidates": report["candidates"], "alerts": sum(report["alerts"].values()), "wall_s": wall,
                     "stages": report["stage_seconds"], "workers": report["workers"],
                     # Each actor's seconds, summed over the actors: preparing calls on the host
                     # (reads, control points), holding the device to launch them, reading results
                     # back (of which waiting for the device), and the GPU's own busy time; of the
                     # launch, the wait for a ring slot (the device behind). References held / sent.
                     "references": reference_hits(report),
                     **{f"{name}_s": actor_seconds(report, key) for name, key in _ACTOR_SECONDS.items()}})
        print(f"{gpus} GPU(s), reference cache {cache}: {rows[-1]['tiles_per_s']:.1f} tiles/s, stages {report['stage_seconds']}", flush=True)
        # Per actor and model: the backend (TensorRT with engines.registry set), its engine and why.
        for actor, engines in report["workers"].get("engines", {}).items():
            for model, c in engines.items():
                engine = f" {c['engine_file']} sha256 {c['engine_sha256'][:12]}" if c.get("engine_file") else ""
                print(f"  {actor} {model}: {c['backend']}{engine} ({c['reason']})", flush=True)
    base = rows[0]["tiles_per_s"]
    print(f"\nnight: {args.fields} fields x {args.exposures} exposures x {args.ccds} CCDs of {args.size}^2, tiles {args.tile_size}^2 "
          f"({'reused' if reuse else f'sim {t_sim:.0f} s, ingest {t_ingest:.0f} s'})")
    print(f"{'GPUs':>4} {'ref cache GiB':>13} {'tiles':>6} {'dispatch s':>10} {'tiles/s':>8} {'Mpix/s':>8} {'vs row 1':>8} {'host s':>7} "
          f"{'launch s':>8} {'slot wait':>9} {'finish s':>8} {'wait s':>6} {'GPU s':>6} {'GPU busy':>8} {'refs held/sent':>14} "
          f"{'cands':>6} {'alerts':>6}  stages")
    for row in rows:
        row["scaling"] = row["tiles_per_s"] / base
        # Fraction of the dispatch stage each GPU's compute stream was busy (CUDA events, mean over GPUs).
        row["gpu_busy"] = row["gpu_s"] / (row["gpus"] * row["dispatch_s"])
        stages = ", ".join(f"{k} {v:.1f}" for k, v in row["stages"].items())
        print(f"{row['gpus']:>4} {row['reference_cache_gib']:>13} {row['tiles']:>6} {row['dispatch_s']:>10.1f} {row['tiles_per_s']:>8.1f} "
              f"{row['mpix_per_s']:>8.1f} {row['scaling']:>8.2f} {row['host_s']:>7.1f} {row['launch_s']:>8.1f} "
              f"{row['slot_wait_s']:>9.1f} {row['finish_s']:>8.1f} {row['wait_s']:>6.1f} {row['gpu_s']:>6.1f} "
              f"{row['gpu_busy']:>8.2f} {row['references']:>14} {row['candidates']:>6} {row['alerts']:>6}  {stages}")
    visit = {}
    if args.visit_ccds:
        vnight, vstore = args.work / "visit", args.work / "visit.zarr"
        skyblink("sim", "night", str(vnight), "--fields", "1", "--exposures", "1", "--size", str(args.size),
                 "--ccds", str(args.visit_ccds), env=env)
        shutil.rmtree(args.work / "redis", ignore_errors=True)
        report_path = args.work / "report-visit.json"
        wall = skyblink("night", "run", str(vnight), "--store", str(vstore), "--report", str(report_path), env=env)
        report = json.loads(report_path.read_text())
        visit = {"ccds": args.visit_ccds, "wall_s": wall, "run_s": report["wall_seconds"], "stages": report["stage_seconds"],
                 "tiles": report["tiles_processed"], "alerts": sum(report["alerts"].values()), "workers": report["workers"]}
        stages = ", ".join(f"{k} {v:.1f} s" for k, v in report["stage_seconds"].items())
        print(f"\nvisit of {args.visit_ccds} CCDs of {args.size}^2 (+ its reference), FITS to alerts in Redis: "
              f"{report['wall_seconds']:.1f} s in the run ({wall:.1f} s with process and Ray start); {stages}; "
              f"{report['tiles_processed']} tiles, {visit['alerts']} alerts, workers {report['workers']}")
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "night_gpus.json").write_text(json.dumps({"runs": rows, "visit": visit}, indent=1))


if __name__ == "__main__":
    main()
