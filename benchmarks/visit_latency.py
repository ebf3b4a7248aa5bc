"""
Latency of one visit from its FITS file landing in the night directory to its alerts in Redis,
the observatory case: `skyblink night run --watch` with its worker actors already warm.

    python benchmarks/visit_latency.py [--ccds 16] [--size 4096] [--rubin-visit] [--work DIR]
                                       [--sim-only | --reuse-sim] [--ingest-only [--repeat N]]

The visit (one exposure of ``--ccds`` CCDs, or ``--rubin-visit``: 189 CCDs of 4096x4096) and its
field's reference are simulated; the reference is put in the night directory, the watch is
started and, once it says that its actors are warm and the reference's source catalog is ready (at an
observatory the template is in place long before the visit), the visit's file is renamed into
``exposures/`` (as an observatory writes, then renames). The run stops after
``night.watch_idle_s`` without a new file; its JSON report gives the latency and the stages.
Prints a line and writes ``visit_latency.json`` to $OUT when set. ``--sim-only`` then
``--reuse-sim`` split the simulation (minutes for a Rubin-size visit) from the measurement.

``--ingest-only`` times the visit's ingest alone, CCD by CCD, in this process (a local Ray, the
reference ingested first, then the visit ``--repeat`` times into fresh stores): when each CCD was
in the store (`skyblink.cluster.CcdLanded`: a night run hands its tiles to the actors then) and
when the whole file was (what a run waited for before the per-CCD streaming). Writes
``visit_ingest.json`` to $OUT when set.
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
    parser.add_argument("--units-per-call", type=int, default=16, help="night.units_per_call (was --tiles-per-task)")
    parser.add_argument("--device-batch", type=int, default=16, help="night.device_batch (was --tiles-per-task)")
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--idle-s", type=float, default=20.0)
    parser.add_argument("--work", type=Path, default=Path("/tmp/visit-latency"))
    parser.add_argument("--sim-only", action="store_true", help="simulate the visit into WORK/sim and stop")
    parser.add_argument("--reuse-sim", action="store_true", help="take the visit from an earlier --sim-only run")
    parser.add_argument("--ingest-only", action="store_true", help="time the visit's ingest CCD by CCD, no night run")
    parser.add_argument("--repeat", type=int, default=3, help="--ingest-only: ingests of the visit")
    parser.add_argument("--max-wait", type=float, default=3600.0,
                        help="seconds to wait for the watch to end after the visit lands; then it is stopped")
    args = parser.parse_args()
    sim, live = args.work / "sim", args.work / "live"
    reuse = args.reuse_sim and (sim / "night.json").exists()
    for path in args.work.iterdir() if args.work.exists() else []:
        if not (reuse and path == sim):
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    env = {
        **os.environ,
        "SKYBLINK_STORE": str(args.work / "store.zarr"),
        "SKYBLINK_NIGHT__UNITS_PER_CALL": str(args.units_per_call),
        "SKYBLINK_NIGHT__DEVICE_BATCH": str(args.device_batch),
        "SKYBLINK_NIGHT__REDIS_DIR": str(args.work / "redis"),
        "SKYBLINK_NIGHT__WATCH_POLL_S": "0.5",
        "SKYBLINK_NIGHT__WATCH_IDLE_S": str(args.idle_s),
        "SKYBLINK_ALERTS__SPOOL_DIR": str(args.work / "spool"),
        "SKYBLINK_ENGINES__BACKEND": args.backend,
    }
    shape = ["--rubin-visit"] if args.rubin_visit else ["--fields", "1", "--exposures", "1", "--ccds", str(args.ccds),
                                                         "--size", str(args.size)]
    t0 = time.perf_counter()
    if not reuse:
        subprocess.run([sys.executable, "-m", "skyblink.cli", "sim", "night", str(sim), *shape], env=env, check=True,
                       capture_output=True)
    t_sim = time.perf_counter() - t0
    if args.sim_only:
        print(f"simulated the visit into {sim} in {t_sim:.0f} s")
        return
    if args.ingest_only:
        ingest_only(sim, args.work, args.repeat)
        return
    (live / "exposures").mkdir(parents=True)
    shutil.copytree(sim / "references", live / "references", copy_function=_link_or_copy)  # 7.5 GB for a Rubin visit
    visit = next((sim / "exposures").glob("*.fits"))
    staged = live / "exposures" / f".{visit.name}.part"  # same file system: the rename is atomic
    try:
        os.link(visit, staged)  # instant; the simulated file stays for a --reuse-sim run
    except OSError:
        shutil.copyfile(visit, staged)
    report_path = args.work / "report.json"
    run = subprocess.Popen([sys.executable, "-m", "skyblink.cli", "night", "run", str(live), "--watch",
                            "--report", str(report_path)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    ready = threading.Event()
    seen: set[str] = set()
    lines: list[str] = []
    log = (args.work / "watch.log").open("w")  # the watch's output as it comes, also when the run is stopped

    def read() -> None:
        for line in run.stdout:  # type: ignore[union-attr]
            lines.append(line)
            log.write(f"{time.perf_counter() - t0 - t_sim:8.1f} s  {line}")
            log.flush()
            # The actors warm and the reference ingested and catalogued (the watch does both at once).
            seen.update(mark for mark in ("worker actor(s) ready", "reference catalog of") if mark in line)
            if len(seen) == 2:
                ready.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    deadline = time.monotonic() + 600
    while not ready.wait(timeout=1.0):
        if run.poll() is not None or time.monotonic() > deadline:
            run.kill()
            raise SystemExit("the watch ended or the reference's catalog was not ready in 600 s:\n" + "".join(lines[-40:]))
    t_ready = time.perf_counter() - t0 - t_sim
    time.sleep(2.0)  # a poll of the night directory with only the reference in it
    os.utime(staged)  # as if written just now: the run dates a file's appearance by its mtime
    staged.rename(live / "exposures" / visit.name)
    try:
        run.wait(timeout=args.max_wait)
    except subprocess.TimeoutExpired:
        run.kill()
        raise SystemExit(f"the watch did not end within {args.max_wait:.0f} s of the visit landing:\n" + "".join(lines[-40:])) from None
    reader.join(timeout=10)
    if run.returncode not in (0, 3):
        raise SystemExit(f"night run exited {run.returncode}:\n" + "".join(lines[-40:]))
    report = json.loads(report_path.read_text())
    latency = report["latency_s"].get(visit.stem.split(".")[0])
    actors = report["workers"].get("actors", [])
    exposure_id = visit.stem.split(".")[0]
    stages = ", ".join(f"{k} {v:.1f} s" for k, v in report["latency_stages_s"].get(exposure_id, {}).items())
    ccds, size = (189, 4096) if args.rubin_visit else (args.ccds, args.size)
    print(f"\nvisit of {ccds} CCDs of {size}^2 (sim {t_sim:.0f} s): latency from the file landing to its alerts in "
          f"Redis {latency:.1f} s (watch ready {t_ready:.0f} s after its start); {report['tiles_processed']} tiles, "
          f"{sum(report['alerts'].values())} alerts, {len(actors)} {report['workers'].get('kind')} actor(s) "
          f"{[a.get('seconds') for a in actors]}; where its latency went: {stages}")
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "visit_latency.json").write_text(json.dumps({"ccds": ccds, "size": size, "latency_s": latency,
                                                                              "report": report}, indent=1))


def _link_or_copy(src: str, dst: str) -> None:
    """Hard-link ``src`` to ``dst`` (instant, no second copy of a multi-GB file), else copy it."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def ingest_only(sim: Path, work: Path, repeat: int) -> None:
    """Ingest the reference, then the visit ``repeat`` times into fresh stores; print when each CCD landed."""
    import statistics

    from skyblink.cluster import ingest_night
    from skyblink.cluster.ingest import prestart_ingest_workers
    from skyblink.cluster.ray_runtime import ray_session
    from skyblink.config import load_config

    runs = []
    config = load_config(overrides={"store": str(work / "ingest-0.zarr")})
    with ray_session(config.ray):
        import ray

        ray.get(prestart_ingest_workers(int(ray.cluster_resources().get("CPU", 1))))  # warm, as a night run has them
        for i in range(repeat):
            night = work / f"ingest-night-{i}"
            (night / "exposures").mkdir(parents=True)
            shutil.copytree(sim / "references", night / "references", copy_function=_link_or_copy)
            store = load_config(overrides={"store": str(work / f"ingest-{i}.zarr")})
            ingest_night(night, store)  # the reference, landed before the visit
            visit = next((sim / "exposures").glob("*.fits"))
            os.link(visit, night / "exposures" / visit.name)
            landed: list[float] = []
            t0 = time.perf_counter()
            report = ingest_night(night, store,
                                  on_ccd=lambda _ccd, landed=landed, t0=t0: landed.append(time.perf_counter() - t0))
            whole = time.perf_counter() - t0
            assert len(report.ingested) == 1  # one file: the visit
            runs.append({"ccds": len(landed), "first_ccd_s": landed[0], "median_ccd_s": statistics.median(landed),
                         "last_ccd_s": landed[-1], "file_s": whole, "task_s": report.ingested[0].seconds})
            print(f"ingest {i}: {len(landed)} CCDs; first CCD in the store {landed[0]:.2f} s after the ingest began, "
                  f"median {statistics.median(landed):.2f} s, last {landed[-1]:.2f} s; the whole file {whole:.2f} s "
                  f"(its task {report.ingested[0].seconds:.2f} s)")
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "visit_ingest.json").write_text(json.dumps(runs, indent=1))


if __name__ == "__main__":
    main()
