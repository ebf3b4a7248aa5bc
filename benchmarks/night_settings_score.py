"""
A small simulated night scored against its truth under chosen configuration settings, so that a
change to the per-tile program (a PSF matching, a candidate rule) is judged on purity, depth,
astrometry and linking on the same files.

    python benchmarks/night_settings_score.py --fields 2 --size 1024 [--set night.psf_match=kernel ...] [--workdir DIR]

Simulates ``--fields`` fields x 4 exposures of ``--size`` pixels (seed 11; kept in the work
directory and reused), runs the night (local Ray with 2 CPUs, tiles of 256, a private
redis-server) and scores our catalogue (no SEP baseline, no plots). Prints one line of figures.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import ray

from skyblink.cluster.night import run_night
from skyblink.config import SimConfig, load_config
from skyblink.evaluation.truth_scoring import score_night
from skyblink.sim import simulate_night


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fields", type=int, default=1)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="Configuration override (repeatable).")
    parser.add_argument("--workdir", type=Path, default=None, help="Keep the night and the runs here (default: temporary).")
    args = parser.parse_args()
    root = args.workdir or Path(tempfile.mkdtemp(prefix="skyblink-night-settings-"))
    night = root / f"night-{args.fields}x{args.size}"
    if not night.exists():
        simulate_night(night, SimConfig(fields=args.fields, exposures_per_field=4, image_size=args.size, seed=11), max_workers=1)
    work = root / "run"
    shutil.rmtree(work, ignore_errors=True)
    overrides = dict(item.split("=", 1) for item in args.set)
    config = load_config(overrides={"store": str(work / "store.zarr"), "ingest.tile_size": 256, "night.redis_dir": str(work / "redis"),
                                    "alerts.spool_dir": str(work / "spool"), "ray.num_cpus": 2, **overrides}, environ={})
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    start = time.perf_counter()
    try:
        run_night(night, config)
        ours = score_night(night, str(work / "store.zarr"), out_dir=work / "score", config=config.night, baseline=False,
                           plots=False).ours
    finally:
        ray.shutdown()
    bright = ours.astrometry_rms_snr_gt_20
    print(f"{args.fields}x{args.size} {' '.join(args.set) or 'defaults'}: {time.perf_counter() - start:.0f} s; detections {ours.detections}, "
          f"alerts {ours.alerts} ({ours.real_alerts} real), purity {ours.purity:.3f}, m50 {ours.m50:.2f}, "
          f"astrometry RMS at S/N > 20 {bright:.3f}\", linking {ours.linking_efficiency:.2f}")


if __name__ == "__main__":
    main()
